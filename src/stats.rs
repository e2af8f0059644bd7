//! Counters the reactors keep and anyone may read: `/metrics` and
//! `RelayHandle::stats`. Updated once per event, connection or write, never
//! per delivery, so they cost nothing on the hot path. Each reactor has its
//! own `Stats` (no cache line shared between cores on the hot path); the
//! relay-wide figures are their sum.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub websockets: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub events_published: AtomicU64,
    pub deliveries: AtomicU64,
    pub dropped_frames: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub protocol_closes: AtomicU64,
    pub auth_failures: AtomicU64,
    pub http_requests: AtomicU64,
    pub writes: AtomicU64,
    pub write_interval_ms: AtomicU64,
    pub intake_pauses: AtomicU64,
    pub queue_bytes_high_water: AtomicU64,
    pub resyncs: AtomicU64,
    pub replayed: AtomicU64,
    pub origin_refusals: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Sockets open now, WebSocket and HTTP.
    pub connections: u64,
    /// Upgraded sockets open now.
    pub websockets: u64,
    pub accepted: u64,
    /// Sockets refused at `limits.max_connections` or `limits.max_connections_per_ip`.
    pub rejected_connections: u64,
    pub events_published: u64,
    /// Frames queued to subscribers (one per event per subscriber).
    pub deliveries: u64,
    /// Frames dropped by the `drop_oldest` slow-consumer policy.
    pub dropped_frames: u64,
    pub slow_consumer_closes: u64,
    pub protocol_closes: u64,
    pub auth_failures: u64,
    pub http_requests: u64,
    /// Writes that handed bytes to a socket; `deliveries / writes` is how
    /// many frames a write carries on average.
    pub writes: u64,
    /// The write interval the reactor coalesces to now (`timeouts.coalesce`
    /// at light load, up to `timeouts.coalesce_max` when busy).
    pub write_interval_ms: u64,
    /// Times the reactor stopped taking new events because a socket that is
    /// keeping up had a queue past half its limits (the relay was behind).
    pub intake_pauses: u64,
    /// The most bytes one socket's queue held when it was flushed, since the
    /// start (queues only grow between flushes, so this is their peak): the
    /// check on the hard cap documented in docs/security.md.
    pub queue_bytes_high_water: u64,
    /// `resync` notices queued: backlogs dropped under
    /// `slow_consumer = "resync"` or frames dropped under `"drop_oldest"`.
    pub resyncs: u64,
    /// Events sent from the history: resume replays and snapshots.
    pub replayed: u64,
    /// Upgrades refused (403) because their `Origin` is not allowed.
    pub origin_refusals: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        total.add(self);
        total
    }
}

/// Every `Stats` of one relay: one per reactor and one for what is counted
/// once per relay (events, by the sequencer); and the subscribers of each
/// pattern, over every reactor.
#[derive(Debug, Clone)]
pub(crate) struct StatsSet {
    pub relay: Arc<Stats>,
    pub reactors: Arc<[Arc<Stats>]>,
    pub patterns: Arc<PatternCounts>,
}

/// Sockets subscribed to each pattern, for `/api/stats` (the status page's
/// top channels). Touched once per subscribe or unsubscribe, never per
/// event; bounded by the patterns the router holds.
#[derive(Debug, Default)]
pub(crate) struct PatternCounts {
    counts: std::sync::Mutex<std::collections::HashMap<Box<str>, u64>>,
    /// Bumped when a pattern gets its first subscriber or loses its last:
    /// the fleet upstream subscribes to NATS by these.
    generation: AtomicU64,
}

impl PatternCounts {
    pub fn add(&self, pattern: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(pattern) {
            Some(n) => *n += 1,
            None => {
                counts.insert(pattern.into(), 1);
                self.generation.fetch_add(1, Ordering::Release);
            }
        }
    }

    pub fn remove(&self, pattern: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(pattern) {
            *n -= 1;
            if *n == 0 {
                counts.remove(pattern);
                self.generation.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Changes when the set of `patterns` does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every pattern with at least one subscriber.
    pub fn patterns(&self) -> Vec<Box<str>> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.keys().cloned().collect()
    }

    /// The `limit` patterns with the most subscribers, most first.
    pub fn top(&self, limit: usize) -> Vec<(String, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(String, u64)> = counts.iter().map(|(p, n)| (p.to_string(), *n)).collect();
        drop(counts);
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        all
    }
}

impl StatsSet {
    pub fn new(reactors: usize) -> StatsSet {
        StatsSet {
            relay: Arc::default(),
            reactors: (0..reactors).map(|_| Arc::default()).collect(),
            patterns: Arc::default(),
        }
    }

    /// The relay as a whole: counters summed, the write interval the
    /// largest of any reactor.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        total.add(&self.relay);
        for reactor in self.reactors.iter() {
            total.add(reactor);
        }
        total
    }

    /// Each reactor on its own (the relay-wide counts are in none of them).
    pub fn per_reactor(&self) -> Vec<StatsSnapshot> {
        self.reactors.iter().map(|r| r.snapshot()).collect()
    }
}

impl StatsSnapshot {
    fn add(&mut self, stats: &Stats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.connections += get(&stats.connections);
        self.websockets += get(&stats.websockets);
        self.accepted += get(&stats.accepted);
        self.rejected_connections += get(&stats.rejected_connections);
        self.events_published += get(&stats.events_published);
        self.deliveries += get(&stats.deliveries);
        self.dropped_frames += get(&stats.dropped_frames);
        self.slow_consumer_closes += get(&stats.slow_consumer_closes);
        self.protocol_closes += get(&stats.protocol_closes);
        self.auth_failures += get(&stats.auth_failures);
        self.http_requests += get(&stats.http_requests);
        self.writes += get(&stats.writes);
        self.write_interval_ms = self.write_interval_ms.max(get(&stats.write_interval_ms));
        self.intake_pauses += get(&stats.intake_pauses);
        self.resyncs += get(&stats.resyncs);
        self.replayed += get(&stats.replayed);
        self.origin_refusals += get(&stats.origin_refusals);
        self.queue_bytes_high_water = self
            .queue_bytes_high_water
            .max(get(&stats.queue_bytes_high_water));
    }
}

impl StatsSnapshot {
    /// The Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let rows: [(&str, &str, &str, u64); 18] = [
            (
                "tidings_connections",
                "gauge",
                "Open sockets, WebSocket and HTTP.",
                self.connections,
            ),
            (
                "tidings_websockets",
                "gauge",
                "Open WebSocket connections.",
                self.websockets,
            ),
            (
                "tidings_accepted_total",
                "counter",
                "Sockets accepted.",
                self.accepted,
            ),
            (
                "tidings_rejected_connections_total",
                "counter",
                "Sockets refused at limits.max_connections or limits.max_connections_per_ip.",
                self.rejected_connections,
            ),
            (
                "tidings_events_published_total",
                "counter",
                "Events fanned out.",
                self.events_published,
            ),
            (
                "tidings_deliveries_total",
                "counter",
                "Frames queued to subscribers.",
                self.deliveries,
            ),
            (
                "tidings_dropped_frames_total",
                "counter",
                "Frames dropped by the drop_oldest policy.",
                self.dropped_frames,
            ),
            (
                "tidings_slow_consumer_closes_total",
                "counter",
                "Sockets closed as slow consumers.",
                self.slow_consumer_closes,
            ),
            (
                "tidings_protocol_closes_total",
                "counter",
                "Sockets closed for protocol violations.",
                self.protocol_closes,
            ),
            (
                "tidings_auth_failures_total",
                "counter",
                "Failed authentications.",
                self.auth_failures,
            ),
            (
                "tidings_http_requests_total",
                "counter",
                "HTTP requests answered.",
                self.http_requests,
            ),
            (
                "tidings_writes_total",
                "counter",
                "Socket writes that carried bytes (deliveries / writes = frames per write).",
                self.writes,
            ),
            (
                "tidings_write_interval_ms",
                "gauge",
                "Current write coalescing interval (grows under load).",
                self.write_interval_ms,
            ),
            (
                "tidings_intake_pauses_total",
                "counter",
                "Times new events waited because the relay was behind its readers.",
                self.intake_pauses,
            ),
            (
                "tidings_resyncs_total",
                "counter",
                "Resync notices queued: backlogs dropped (resync policy) or frames dropped (drop_oldest).",
                self.resyncs,
            ),
            (
                "tidings_replayed_total",
                "counter",
                "Events sent from the history: resume replays and snapshots.",
                self.replayed,
            ),
            (
                "tidings_origin_refusals_total",
                "counter",
                "WebSocket upgrades refused (403) for an Origin not in allowed_origins.",
                self.origin_refusals,
            ),
            (
                "tidings_queue_bytes_high_water",
                "gauge",
                "Most bytes one socket's queue held when flushed, since the start.",
                self.queue_bytes_high_water,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lines() {
        let stats = Stats::default();
        Stats::add(&stats.deliveries, 5);
        Stats::add(&stats.connections, 2);
        Stats::sub(&stats.connections, 1);
        let text = stats.snapshot().prometheus();
        assert!(text.contains("\ntidings_deliveries_total 5\n"), "{text}");
        assert!(text.contains("\ntidings_connections 1\n"), "{text}");
        assert!(text.contains("# TYPE tidings_connections gauge\n"));
    }
}
