//! Turning merged counts into the figures people read: a table on stderr
//! and one `RESULT {json}` line on stdout.

use crate::publisher::{PubStats, PublishMode};
use crate::stats::{hist_from_hex, ConnectReport, PhaseStats};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectSummary {
    pub requested: u64,
    pub ready: u64,
    pub failed: BTreeMap<String, u64>,
    pub seconds: f64,
    pub rate_per_s: f64,
    /// Subscribed connections with permessage-deflate agreed (`null`: not
    /// offered).
    pub deflate: Option<u64>,
    /// The relay's CPU while connecting (with `--server-pid`), in all and
    /// per subscribed connection.
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_connection: Option<f64>,
}

pub fn connect_summary(r: &ConnectReport) -> ConnectSummary {
    ConnectSummary {
        requested: r.requested,
        ready: r.ready,
        failed: r.failed.clone(),
        seconds: r.seconds,
        rate_per_s: per_s(r.ready as f64, r.seconds),
        deflate: r.deflate,
        server_cpu_s: r.server_cpu_s,
        server_cpu_us_per_connection: r
            .server_cpu_s
            .filter(|_| r.ready > 0)
            .map(|s| s * 1e6 / r.ready as f64),
    }
}

/// One fanout phase, all figures.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    /// Target events/s (`null`: as fast as the relay answers).
    pub rate_target: Option<f64>,
    pub events_published: u64,
    pub events_per_s: f64,
    pub publish: PubStats,
    pub connections_at_start: u64,
    pub connections_at_end: u64,
    pub expected: u64,
    pub received: u64,
    pub missing: u64,
    pub completeness: f64,
    pub seq_gaps: u64,
    pub out_of_order: u64,
    pub foreign_events: u64,
    pub closes: BTreeMap<String, u64>,
    pub steady_seconds: f64,
    pub steady_deliveries: u64,
    pub deliveries_per_s: f64,
    /// Publish `t` to the kernel's receive timestamp (the relay's latency).
    pub latency: Latency,
    /// Publish `t` to the swarm's read (adds the swarm's own lag).
    pub latency_read: Latency,
    /// Deliveries whose latency used a kernel receive timestamp.
    pub kernel_stamped: u64,
    /// Events received compressed (permessage-deflate).
    pub deflated: u64,
    /// Bytes the sockets read per event received: the frames on the wire,
    /// headers included (pings and replies too, a rounding error).
    pub wire_bytes_per_event: Option<f64>,
    pub server_pings: u64,
    /// CPU of the swarm's own threads during the phase (members + publisher).
    pub swarm_cpu_s: f64,
    pub publisher_cpu_s: f64,
    /// Seconds from the publisher's start until every member reported.
    pub wall_seconds: f64,
    /// Swarm CPU seconds per second of publishing (1.0 = one core busy; CPU
    /// spent draining a backlog after publishing counts too, so a value near
    /// or above 1 per member means the swarm could not keep up).
    pub swarm_cores: f64,
    pub swarm_cpu_s_per_million: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub server_cores: Option<f64>,
    pub server_cpu_s_per_million: Option<f64>,
    /// Each `--server-pid`'s CPU seconds during the phase (a fleet: relays
    /// and NATS apart).
    pub server_cpu_s_by_pid: BTreeMap<u32, f64>,
    /// The merged latency histogram (hex), for `--plot`; not in the JSON.
    #[serde(skip)]
    pub hist: String,
}

pub struct PhaseInput<'a> {
    pub rate: Option<f64>,
    pub publish: &'a PubStats,
    pub stats: &'a PhaseStats,
    pub steady_seconds: f64,
    pub wall_seconds: f64,
    pub publisher_cpu_s: f64,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_by_pid: BTreeMap<u32, f64>,
}

pub fn phase_summary(i: &PhaseInput<'_>) -> PhaseSummary {
    let s = i.stats;
    let expected = i.publish.accepted.saturating_mul(s.open_at_start);
    let million = s.received as f64 / 1e6;
    let per_million = |cpu: f64| (s.received > 0).then(|| cpu / million);
    let swarm_cpu = s.cpu_s + i.publisher_cpu_s;
    PhaseSummary {
        rate_target: i.rate,
        events_published: i.publish.accepted,
        events_per_s: per_s(i.publish.accepted as f64, i.publish.seconds),
        publish: i.publish.clone(),
        connections_at_start: s.open_at_start,
        connections_at_end: s.open_at_end,
        expected,
        received: s.received,
        missing: expected.saturating_sub(s.received),
        completeness: if expected == 0 {
            0.0
        } else {
            s.received as f64 / expected as f64
        },
        seq_gaps: s.seq_gaps,
        out_of_order: s.out_of_order,
        foreign_events: s.foreign,
        closes: s.closes.clone(),
        steady_seconds: i.steady_seconds,
        steady_deliveries: s.received_steady,
        deliveries_per_s: per_s(s.received_steady as f64, i.steady_seconds),
        latency: latency(&s.hist),
        latency_read: latency(&s.hist_read),
        kernel_stamped: s.kernel_stamped,
        deflated: s.deflated,
        wire_bytes_per_event: (s.received > 0).then(|| s.wire_bytes as f64 / s.received as f64),
        server_pings: s.pings,
        swarm_cpu_s: swarm_cpu,
        publisher_cpu_s: i.publisher_cpu_s,
        wall_seconds: i.wall_seconds,
        swarm_cores: per_s(swarm_cpu, i.publish.seconds),
        swarm_cpu_s_per_million: per_million(swarm_cpu),
        server_cpu_s: i.server_cpu_s,
        server_cores: i.server_cpu_s.map(|c| per_s(c, i.publish.seconds)),
        server_cpu_s_per_million: i.server_cpu_s.and_then(per_million),
        server_cpu_s_by_pid: i.server_cpu_by_pid.clone(),
        hist: s.hist.clone(),
    }
}

fn per_s(n: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

pub fn latency(hex: &str) -> Latency {
    let Ok(h) = hist_from_hex(hex) else {
        return Latency::default();
    };
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        count: h.len(),
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
    }
}

/// Rows of a two-column table.
pub struct Table(Vec<(String, String)>);

impl Table {
    pub fn new() -> Self {
        Table(Vec::new())
    }
    pub fn row(&mut self, k: &str, v: impl std::fmt::Display) {
        self.0.push((k.to_string(), v.to_string()));
    }
    pub fn print(&self) {
        let w = self.0.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.0 {
            eprintln!("  {k:<w$}  {v}");
        }
    }
}

pub fn connect_rows(t: &mut Table, c: &ConnectSummary) {
    t.row(
        "connections",
        format!("{} ready of {} requested", c.ready, c.requested),
    );
    t.row(
        "connect",
        format!("{:.1} s, {:.0}/s", c.seconds, c.rate_per_s),
    );
    if !c.failed.is_empty() {
        t.row("connect failures", map(&c.failed));
    }
    if let Some(n) = c.deflate {
        t.row(
            "permessage-deflate",
            format!("agreed on {n} of {} subscribed", c.ready),
        );
    }
    if let (Some(s), Some(per)) = (c.server_cpu_s, c.server_cpu_us_per_connection) {
        t.row(
            "server CPU connecting",
            format!("{s:.2} s, {per:.1} µs per connection"),
        );
    }
}

pub fn phase_rows(t: &mut Table, p: &PhaseSummary) {
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    publish_rows(t, p);
    t.row(
        "deliveries/s",
        format!(
            "{:.0} (steady {:.1} s)",
            p.deliveries_per_s, p.steady_seconds
        ),
    );
    t.row(
        "completeness",
        format!(
            "{:.5} ({} of {}, {} missing, {} seq gaps)",
            p.completeness, p.received, p.expected, p.missing, p.seq_gaps
        ),
    );
    if let Some(bytes) = p.wire_bytes_per_event {
        t.row(
            "on the wire",
            format!(
                "{bytes:.1} bytes per event; {} of {} events compressed",
                p.deflated, p.received
            ),
        );
    }
    t.row(
        "closes",
        if p.closes.is_empty() {
            "none".to_string()
        } else {
            map(&p.closes)
        },
    );
    for (name, l) in [
        ("latency ms", &p.latency),
        ("  at swarm read (1 in 8)", &p.latency_read),
    ] {
        t.row(
            name,
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                ms(l.p999_us),
                ms(l.max_us),
                l.count
            ),
        );
    }
    let pm = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    t.row(
        "swarm CPU",
        format!(
            "{:.2} s ({:.2} cores), {} s per million deliveries",
            p.swarm_cpu_s,
            p.swarm_cores,
            pm(p.swarm_cpu_s_per_million)
        ),
    );
    if let Some(c) = p.server_cpu_s {
        t.row(
            "server CPU",
            format!(
                "{c:.2} s ({:.2} cores), {} s per million deliveries",
                p.server_cores.unwrap_or(0.0),
                pm(p.server_cpu_s_per_million)
            ),
        );
    }
    if p.server_cpu_s_by_pid.len() > 1 {
        let each: Vec<String> = p
            .server_cpu_s_by_pid
            .iter()
            .map(|(pid, s)| format!("{pid}: {s:.2} s"))
            .collect();
        t.row("server CPU by pid", each.join(", "));
    }
}

/// The publisher's mode, and its offered against its achieved rate.
fn publish_rows(t: &mut Table, p: &PhaseSummary) {
    let u = &p.publish;
    let conns = if u.connections == 1 {
        "1 connection".to_string()
    } else {
        format!("{} connections", u.connections)
    };
    let how = match u.mode {
        PublishMode::Batch => format!(
            "batch: the events due in each POST (largest {})",
            u.largest_batch
        ),
        PublishMode::Single => "single: one event per POST".to_string(),
    };
    t.row(
        "publisher",
        format!("{how}, {conns}, {} requests", u.requests),
    );
    let behind = u.max_behind_us as f64 / 1000.0;
    t.row(
        "publish rate",
        match p.rate_target {
            Some(r) => format!(
                "offered {r:.1}/s, achieved {:.1}/s; {} of {} due events accepted ({:.1}%), \
                 at most {behind:.2} ms behind schedule",
                p.events_per_s,
                u.accepted,
                u.due,
                100.0 * u.accepted as f64 / u.due.max(1) as f64
            ),
            None => format!(
                "offered max (back to back), achieved {:.1}/s",
                p.events_per_s
            ),
        },
    );
    t.row(
        "published",
        format!(
            "{} events accepted, {} rejected, {} unsent",
            p.events_published, u.rejected, u.unsent
        ),
    );
}

pub fn storm_rows(t: &mut Table, s: &crate::storm::StormSummary) {
    let secs = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.3} s"));
    let how = if s.drop == crate::storm::DropHow::Server {
        format!(
            "{} clients left for the relay to close (SIGTERM)",
            s.clients
        )
    } else {
        format!(
            "{} clients dropped ({}) in {:.3} s",
            s.clients,
            format!("{:?}", s.drop).to_lowercase(),
            s.drop_seconds
        )
    };
    t.row(
        "storm",
        format!(
            "{how}; backoff base {} s cap {} s, full jitter",
            s.base_s, s.cap_s
        ),
    );
    t.row(
        "back",
        format!(
            "{} of {} subscribed again ({} left out after {} s)",
            s.back, s.clients, s.left_out, s.deadline_s
        ),
    );
    t.row("full resubscription", secs(s.full_resubscription_s));
    t.row(
        "back by",
        format!(
            "50% {}, 90% {}, 99% {}",
            secs(s.back_p50_s),
            secs(s.back_p90_s),
            secs(s.back_p99_s)
        ),
    );
    t.row(
        "peak accept rate",
        format!(
            "{:.0} upgrades/s (100 ms bucket at {})",
            s.peak_accepts_per_s,
            secs(s.peak_at_s)
        ),
    );
    t.row(
        "attempts",
        format!(
            "{} ({} retries, {} failed{})",
            s.attempts,
            s.retries,
            s.failed_attempts,
            if s.failures.is_empty() {
                String::new()
            } else {
                format!(": {}", map(&s.failures))
            }
        ),
    );
    if !s.lost_after_back.is_empty() {
        t.row("lost after back", map(&s.lost_after_back));
    }
    if s.drop == crate::storm::DropHow::Server {
        t.row(
            "closed by the relay",
            format!(
                "{} (the last {} after the SIGTERM), {} never closed",
                s.closed_by_server,
                secs(s.last_server_close_s),
                s.never_closed
            ),
        );
    }
    if let Some(max) = s.retry_after_max_s {
        t.row(
            "retry_after_ms",
            format!(
                "up to {max:.3} s; {} reconnects waited their hint",
                s.retry_hints_honoured
            ),
        );
    }
}

pub fn resume_rows(t: &mut Table, r: &crate::resume::ResumeSummary) {
    let secs = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.3} s"));
    let rp = &r.replies;
    let refused: u64 = rp.not_recovered.values().sum();
    t.row(
        "resume",
        format!(
            "{}: {} recovered, {} not recovered{}, {} plain subscribes, {} ignored",
            if r.resume {
                "on (since sent when the relay gave an epoch)"
            } else {
                "off (--no-resume)"
            },
            rp.recovered,
            refused,
            if refused > 0 {
                format!(" ({})", map(&rp.not_recovered))
            } else {
                String::new()
            },
            rp.fresh,
            rp.ignored,
        ),
    );
    if !rp.resync.is_empty() || rp.unparsed > 0 {
        t.row(
            "resync",
            format!("{} ({} replies unparsed)", map(&rp.resync), rp.unparsed),
        );
    }
    t.row(
        "missed",
        format!(
            "{} events by {} clients (of {} published, seq {} at the drop, up to seq {}); \
             {} duplicates{}",
            r.missed,
            r.missed_clients,
            r.published,
            r.drop_seq,
            r.end_seq,
            r.duplicates,
            if r.holes_untracked > 0 {
                format!(
                    "; {} clients with too many holes to list (a floor)",
                    r.holes_untracked
                )
            } else {
                String::new()
            }
        ),
    );
    if r.behind > 0 {
        t.row(
            "behind at the end",
            format!("{} events by {} clients", r.behind, r.behind_clients),
        );
    }
    t.row(
        "replayed",
        format!(
            "{} events over {} ({})",
            r.replayed,
            secs(r.replay_window_s),
            r.replayed_per_s
                .map_or("-".to_string(), |v| format!("{v:.0} /s"))
        ),
    );
    t.row(
        "caught up",
        format!(
            "{} clients; all by {}; 50% {}, 99% {} after the drop",
            r.caught_up,
            secs(r.all_caught_up_s),
            secs(r.caught_up_p50_s),
            secs(r.caught_up_p99_s)
        ),
    );
    t.row(
        "catch-up per client",
        format!(
            "reply to caught up: p50 {}, p99 {}, max {}",
            secs(r.catchup_p50_s),
            secs(r.catchup_p99_s),
            secs(r.catchup_max_s)
        ),
    );
}

fn map(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the one machine-readable line.
pub fn emit(json: &serde_json::Value) {
    println!("RESULT {json}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{hist_to_hex, new_hist};

    #[test]
    fn summary_figures() {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v).unwrap_or_else(|e| panic!("{e:?}"));
        }
        let stats = PhaseStats {
            open_at_start: 100,
            received: 1_000_000,
            received_steady: 800_000,
            cpu_s: 2.0,
            hist: hist_to_hex(&h),
            ..Default::default()
        };
        let publish = PubStats {
            accepted: 10_001,
            seconds: 10.0,
            ..Default::default()
        };
        let p = phase_summary(&PhaseInput {
            rate: Some(1000.0),
            publish: &publish,
            stats: &stats,
            steady_seconds: 8.0,
            wall_seconds: 10.0,
            publisher_cpu_s: 0.5,
            server_cpu_s: Some(4.0),
            server_cpu_by_pid: BTreeMap::from([(7, 3.0), (8, 1.0)]),
        });
        assert_eq!(p.expected, 1_000_100);
        assert_eq!(p.missing, 100);
        assert!((p.deliveries_per_s - 100_000.0).abs() < 1e-6);
        assert_eq!(p.swarm_cpu_s_per_million, Some(2.5));
        assert_eq!(p.server_cpu_s_per_million, Some(4.0));
        assert_eq!(p.latency.p50_us, 500);
        assert_eq!(p.latency.max_us, 1000);
        let json = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(json["latency"]["p99_us"], 990);
        assert_eq!(json["server_cpu_s_by_pid"]["8"], 1.0);
    }

    #[test]
    fn table_shows_the_publisher_mode_and_offered_against_achieved() {
        let publish = PubStats {
            mode: PublishMode::Single,
            connections: 2,
            offered_per_s: Some(450.0),
            due: 4_500,
            accepted: 3_600,
            requests: 3_600,
            largest_batch: 1,
            seconds: 10.0,
            ..Default::default()
        };
        let p = phase_summary(&PhaseInput {
            rate: Some(450.0),
            publish: &publish,
            stats: &PhaseStats::default(),
            steady_seconds: 8.0,
            wall_seconds: 10.0,
            publisher_cpu_s: 0.1,
            server_cpu_s: None,
            server_cpu_by_pid: BTreeMap::new(),
        });
        let mut t = Table::new();
        phase_rows(&mut t, &p);
        let row = |k: &str| {
            t.0.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            row("publisher"),
            "single: one event per POST, 2 connections, 3600 requests"
        );
        let rate = row("publish rate");
        assert!(
            rate.starts_with(
                "offered 450.0/s, achieved 360.0/s; 3600 of 4500 due events accepted (80.0%)"
            ),
            "{rate}"
        );
        let json = serde_json::to_value(&p).unwrap_or_default();
        assert_eq!(json["publish"]["mode"], "single");
        assert_eq!(json["publish"]["connections"], 2);
    }
}
