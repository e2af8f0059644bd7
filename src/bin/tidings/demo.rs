//! `--demo`: producer threads publishing events shaped like the ones users
//! know, so a new user sees traffic at once.

use std::thread;
use std::time::Duration;

use serde_json::json;
use tidings::{Event, Publisher};

/// A tiny deterministic generator; the demo needs variety, not randomness.
struct Wobble(u64);

impl Wobble {
    fn next(&mut self) -> f64 {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 10_000) as f64 / 10_000.0
    }
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// What the demo publishes to, as patterns: the default channels under
/// `--demo` when none are configured.
pub const CHANNELS: &[&str] = &["metrics.system", "job.*", "alert.*", "cluster.*"];

pub fn start(publisher: Publisher) {
    let metrics = publisher.clone();
    spawn("demo-metrics", move || metrics_loop(metrics));
    let jobs = publisher.clone();
    spawn("demo-jobs", move || jobs_loop(jobs));
    spawn("demo-alerts", move || alerts_loop(publisher));
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) {
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(body) {
        tracing::warn!("cannot start {name}: {e}");
    }
}

/// Publishes until the relay stops.
fn send(publisher: &Publisher, event: Result<Event, tidings::PublishError>) -> bool {
    match event.and_then(|e| publisher.publish(e)) {
        Ok(_) => true,
        Err(tidings::PublishError::Closed) => false,
        Err(e) => {
            tracing::warn!("demo event refused: {e}");
            true
        }
    }
}

fn metrics_loop(publisher: Publisher) {
    let mut w = Wobble(0x9E37_79B9_7F4A_7C15);
    loop {
        let data = json!({
            "qps": 1000 + (w.next() * 500.0) as u64,
            "latency_p50_ms": round(1.5 + w.next(), 1),
            "latency_p99_ms": round(12.0 + w.next() * 6.0, 1),
            "active_connections": 40 + (w.next() * 10.0) as u64,
            "memory_used_gb": round(12.0 + w.next(), 1),
        });
        if !send(&publisher, Event::new("metrics.system", &data)) {
            return;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

fn jobs_loop(publisher: Publisher) {
    let total = 1_000_000u64;
    for run in 1u64.. {
        let job_id = format!("import-{run:06x}");
        let started = json!({ "jobId": job_id, "jobType": "import", "total": total });
        if !send(&publisher, Event::new("job.started", &started)) {
            return;
        }
        for step in 1..=10u64 {
            thread::sleep(Duration::from_millis(700));
            let processed = total * step / 10;
            let progress = json!({
                "jobId": job_id,
                "jobType": "import",
                "progress": step as f64 / 10.0,
                "processed": processed,
                "total": total,
                "rate": 15_000,
                "eta_seconds": (total - processed) / 15_000,
            });
            if !send(&publisher, Event::new("job.progress", &progress)) {
                return;
            }
        }
        let done = json!({ "jobId": job_id, "jobType": "import", "processed": total });
        if !send(&publisher, Event::new("job.completed", &done)) {
            return;
        }
        let cluster = json!({ "name": "prod-cluster" });
        if !send(&publisher, Event::new("cluster.updated", &cluster)) {
            return;
        }
    }
}

fn alerts_loop(publisher: Publisher) {
    let mut w = Wobble(0xD1B5_4A32_D192_ED03);
    for n in 1u64.. {
        thread::sleep(Duration::from_secs(5));
        let value = round(0.80 + w.next() * 0.15, 2);
        let alert_id = format!("alert-{n:04}");
        let warning = json!({
            "alertId": alert_id,
            "severity": "warning",
            "title": "High memory usage",
            "message": format!("Node n1 memory at {}%", (value * 100.0).round()),
            "metadata": { "node": "n1", "value": value, "threshold": 0.80 },
        });
        if !send(&publisher, Event::new("alert.warning", &warning)) {
            return;
        }
        thread::sleep(Duration::from_secs(5));
        let resolved =
            json!({ "alertId": alert_id, "severity": "info", "title": "Memory back to normal" });
        if !send(&publisher, Event::new("alert.resolved", &resolved)) {
            return;
        }
    }
}
