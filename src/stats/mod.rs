//! Counters the reactors keep and anyone may read: `/metrics` and
//! `RelayHandle::stats`. Updated once per event, connection or write, never
//! per delivery, so they cost nothing on the hot path. Each reactor has its
//! own `Stats` (no cache line shared between cores on the hot path); the
//! relay-wide figures are their sum.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::CLOSE_KINDS;

mod exposition;
mod histogram;

pub use exposition::CONTENT_TYPE;
pub use histogram::{Depth, Histogram, HistogramSnapshot, Micros};

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
    /// WebSocket closes, by `error::CLOSE_KINDS` index.
    pub closes: [AtomicU64; CLOSE_KINDS.len()],
    pub replaced_events: AtomicU64,
    /// One turn of the reactor loop, readiness to the next wait.
    pub turn_us: Histogram<Micros>,
    /// Fanning one event out (router match and queue pushes); sampled.
    pub fanout_us: Histogram<Micros>,
    /// The writes of one flush pass, its steps summed.
    pub flush_pass_us: Histogram<Micros>,
    /// Frames in a socket's queue when it is written.
    pub flush_queue_depth: Histogram<Depth>,
    /// Log append to the end of the pass that wrote the event; sampled.
    pub publish_to_write_us: Histogram<Micros>,
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
    /// Queued events replaced by a newer one of their channel (and key)
    /// under `[[delivery]]` policy `latest`.
    pub replaced_events: u64,
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

    /// Every pattern with its subscribers, most first.
    pub fn all(&self) -> Vec<(String, u64)> {
        self.top(usize::MAX)
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
        self.replaced_events += get(&stats.replaced_events);
        self.queue_bytes_high_water = self
            .queue_bytes_high_water
            .max(get(&stats.queue_bytes_high_water));
    }
}

impl StatsSet {
    /// Every counter and histogram in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        exposition::exposition(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_lines() {
        let set = StatsSet::new(2);
        let stats = &set.reactors[1];
        Stats::add(&stats.deliveries, 5);
        Stats::add(&stats.connections, 2);
        Stats::sub(&stats.connections, 1);
        Stats::add(&stats.closes[CLOSE_KINDS.len() - 1], 3);
        stats.turn_us.observe(70);
        let text = set.prometheus();
        assert!(text.contains("\ntidings_deliveries_total 5\n"), "{text}");
        assert!(text.contains("\ntidings_connections 1\n"), "{text}");
        assert!(text.contains("# TYPE tidings_connections gauge\n"));
        assert!(text.contains("\ntidings_reactor_deliveries_total{reactor=\"1\"} 5\n"));
        assert!(
            text.contains("\ntidings_closes_total{reactor=\"1\",reason=\"io_error\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("tidings_reactor_turn_seconds_bucket{reactor=\"1\",le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("tidings_reactor_turn_seconds_sum{reactor=\"1\"} 0.00007\n"));
    }
}
