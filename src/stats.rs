//! Counters the reactor keeps and anyone may read: `/metrics` and
//! `RelayHandle::stats`. Updated once per event, connection or write, never
//! per delivery, so they cost nothing on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

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
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections: get(&self.connections),
            websockets: get(&self.websockets),
            accepted: get(&self.accepted),
            rejected_connections: get(&self.rejected_connections),
            events_published: get(&self.events_published),
            deliveries: get(&self.deliveries),
            dropped_frames: get(&self.dropped_frames),
            slow_consumer_closes: get(&self.slow_consumer_closes),
            protocol_closes: get(&self.protocol_closes),
            auth_failures: get(&self.auth_failures),
            http_requests: get(&self.http_requests),
            writes: get(&self.writes),
            write_interval_ms: get(&self.write_interval_ms),
            intake_pauses: get(&self.intake_pauses),
        }
    }
}

impl StatsSnapshot {
    /// The Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let rows: [(&str, &str, &str, u64); 14] = [
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
