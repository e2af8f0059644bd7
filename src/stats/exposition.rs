//! `/metrics`: the counters and histograms the reactors keep, read at
//! scrape time and written in the Prometheus text format by the
//! `prometheus` crate's model and encoder. Nothing is registered or
//! updated through the crate on the hot path: the reactors keep plain
//! atomics (`Stats`), and each scrape turns a reading of them into metric
//! families.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};
use std::sync::atomic::{AtomicU64, Ordering};

use super::histogram::HistogramSnapshot;
use super::{Stats, StatsSet, StatsSnapshot};
use crate::error::CLOSE_KINDS;

/// The content type of [`exposition`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything `/metrics` shows, in the Prometheus text format.
pub fn exposition(set: &StatsSet) -> String {
    let mut families = relay_wide(&set.snapshot());
    families.extend(per_reactor(set));
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("bug: metric families are well formed");
    String::from_utf8(out).expect("bug: the text encoder writes UTF-8")
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

fn counter(value: u64, pairs: &[(&str, &str)]) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    let mut metric = Metric::from_label(labels(pairs));
    metric.set_counter(counter);
    metric
}

fn gauge(value: f64, pairs: &[(&str, &str)]) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_label(labels(pairs));
    metric.set_gauge(gauge);
    metric
}

/// A histogram; the observed unit divided by `per_unit` is the exposed one
/// (1e6 for microseconds to seconds: a division keeps bounds such as 5e-5
/// exact in the text, where a product with 1e-6 would not be).
fn histogram(snapshot: &HistogramSnapshot, per_unit: f64, pairs: &[(&str, &str)]) -> Metric {
    let mut histogram = Histogram::default();
    histogram.set_sample_count(snapshot.count);
    histogram.set_sample_sum(snapshot.sum as f64 / per_unit);
    let buckets = snapshot
        .buckets
        .iter()
        .map(|&(bound, count)| {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(bound as f64 / per_unit);
            bucket.set_cumulative_count(count);
            bucket
        })
        .collect();
    histogram.set_bucket(buckets);
    let mut metric = Metric::from_label(labels(pairs));
    metric.set_histogram(histogram);
    metric
}

/// The relay-wide series, unlabelled, as they always were.
fn relay_wide(s: &StatsSnapshot) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE};
    let rows: [(&str, MetricType, &str, f64); 19] = [
        ("tidings_connections", GAUGE, "Open sockets, WebSocket and HTTP.", s.connections as f64),
        ("tidings_websockets", GAUGE, "Open WebSocket connections.", s.websockets as f64),
        ("tidings_accepted_total", COUNTER, "Sockets accepted.", s.accepted as f64),
        (
            "tidings_rejected_connections_total",
            COUNTER,
            "Sockets refused at limits.max_connections or limits.max_connections_per_ip.",
            s.rejected_connections as f64,
        ),
        ("tidings_events_published_total", COUNTER, "Events fanned out.", s.events_published as f64),
        ("tidings_deliveries_total", COUNTER, "Frames queued to subscribers.", s.deliveries as f64),
        (
            "tidings_dropped_frames_total",
            COUNTER,
            "Frames dropped by the drop_oldest policy.",
            s.dropped_frames as f64,
        ),
        (
            "tidings_slow_consumer_closes_total",
            COUNTER,
            "Sockets closed as slow consumers.",
            s.slow_consumer_closes as f64,
        ),
        (
            "tidings_protocol_closes_total",
            COUNTER,
            "Sockets closed for protocol violations.",
            s.protocol_closes as f64,
        ),
        ("tidings_auth_failures_total", COUNTER, "Failed authentications.", s.auth_failures as f64),
        ("tidings_http_requests_total", COUNTER, "HTTP requests answered.", s.http_requests as f64),
        (
            "tidings_writes_total",
            COUNTER,
            "Socket writes that carried bytes (deliveries / writes = frames per write).",
            s.writes as f64,
        ),
        (
            "tidings_write_interval_seconds",
            GAUGE,
            "Current write coalescing interval (grows under load).",
            s.write_interval_ms as f64 / 1000.0,
        ),
        (
            "tidings_intake_pauses_total",
            COUNTER,
            "Times new events waited because the relay was behind its readers.",
            s.intake_pauses as f64,
        ),
        (
            "tidings_resyncs_total",
            COUNTER,
            "Resync notices queued: backlogs dropped (resync policy) or frames dropped (drop_oldest).",
            s.resyncs as f64,
        ),
        (
            "tidings_replayed_total",
            COUNTER,
            "Events sent from the history: resume replays and snapshots.",
            s.replayed as f64,
        ),
        (
            "tidings_origin_refusals_total",
            COUNTER,
            "WebSocket upgrades refused (403) for an Origin not in allowed_origins.",
            s.origin_refusals as f64,
        ),
        (
            "tidings_replaced_events_total",
            COUNTER,
            "Queued events replaced by a newer one of their channel (and key): delivery policy latest.",
            s.replaced_events as f64,
        ),
        (
            "tidings_queue_bytes_high_water",
            GAUGE,
            "Most bytes one socket's queue held when flushed, since the start.",
            s.queue_bytes_high_water as f64,
        ),
    ];
    rows.into_iter()
        .map(|(name, kind, help, value)| {
            let metric = match kind {
                COUNTER => counter(value as u64, &[]),
                _ => gauge(value, &[]),
            };
            family(name, help, kind, vec![metric])
        })
        .collect()
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// One reactor's sample of a family, given its `reactor` label.
type OneReactor = dyn Fn(&Stats, &[(&str, &str)]) -> Metric;

/// Series with a `reactor` label: where the load and the closes are.
fn per_reactor(set: &StatsSet) -> Vec<MetricFamily> {
    let names: Vec<String> = (0..set.reactors.len()).map(|i| i.to_string()).collect();
    let each = |f: &OneReactor| -> Vec<Metric> {
        set.reactors
            .iter()
            .zip(&names)
            .map(|(stats, name)| f(stats, &[("reactor", name)]))
            .collect()
    };
    let mut closes = Vec::new();
    for (stats, name) in set.reactors.iter().zip(&names) {
        for (kind, reason) in CLOSE_KINDS.iter().enumerate() {
            let pairs = [("reactor", name.as_str()), ("reason", *reason)];
            closes.push(counter(load(&stats.closes[kind]), &pairs));
        }
    }
    const MICROS: f64 = 1e6;
    vec![
        family(
            "tidings_closes_total",
            "WebSocket closes by reason (close frames sent, and peers gone without one).",
            MetricType::COUNTER,
            closes,
        ),
        family(
            "tidings_reactor_websockets",
            "Open WebSocket connections on each reactor.",
            MetricType::GAUGE,
            each(&|s, l| gauge(load(&s.websockets) as f64, l)),
        ),
        family(
            "tidings_reactor_deliveries_total",
            "Frames queued to subscribers by each reactor.",
            MetricType::COUNTER,
            each(&|s, l| counter(load(&s.deliveries), l)),
        ),
        family(
            "tidings_reactor_writes_total",
            "Socket writes that carried bytes, by each reactor.",
            MetricType::COUNTER,
            each(&|s, l| counter(load(&s.writes), l)),
        ),
        family(
            "tidings_reactor_turn_seconds",
            "Time a reactor spends on one turn of its loop, from readiness to the next wait.",
            MetricType::HISTOGRAM,
            each(&|s, l| histogram(&s.turn_us.snapshot(), MICROS, l)),
        ),
        family(
            "tidings_fanout_event_seconds",
            "Time to fan one event out to a reactor's subscribers (queue pushes, no writes), \
             for one event in metrics.latency_sample.",
            MetricType::HISTOGRAM,
            each(&|s, l| histogram(&s.fanout_us.snapshot(), MICROS, l)),
        ),
        family(
            "tidings_flush_pass_seconds",
            "Time spent writing one flush pass (its steps summed).",
            MetricType::HISTOGRAM,
            each(&|s, l| histogram(&s.flush_pass_us.snapshot(), MICROS, l)),
        ),
        family(
            "tidings_flush_queue_depth",
            "Frames in a socket's queue when it is flushed.",
            MetricType::HISTOGRAM,
            each(&|s, l| histogram(&s.flush_queue_depth.snapshot(), 1.0, l)),
        ),
        family(
            "tidings_publish_to_write_seconds",
            "From an event entering the log to the end of the flush pass that wrote it, \
             for one event in metrics.latency_sample.",
            MetricType::HISTOGRAM,
            each(&|s, l| histogram(&s.publish_to_write_us.snapshot(), MICROS, l)),
        ),
    ]
}
