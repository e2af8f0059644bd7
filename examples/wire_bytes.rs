//! Bytes on the wire per event, plain and deflated, for the seed-shaped
//! events (BENCHMARKS.md, "Compression"):
//!
//! `cargo run --release --example wire_bytes`
//!
//! For each event: the plain frame; the relay's deflated frame (its
//! envelope and `seq` stored, the rest deflated on its own, built once per
//! event); the whole message deflated on its own, for comparison (what a
//! per-event compressor that knew the `seq` up front would send); and a
//! per-socket compressor that keeps its window from event to event
//! (context takeover), averaged over 100 events of the kind, which is what
//! the relay gives up to share one frame among all subscribers.

use std::time::SystemTime;

use flate2::{Compress, Compression, FlushCompress};
use serde_json::{json, Value};
use tidings::config::CompressionMode;
use tidings::fanout::delivery::Shaping;
use tidings::{Config, Event};

fn seed_events() -> Vec<(&'static str, Value)> {
    vec![
        (
            "metrics.system",
            json!({"qps": 1250, "latency_p50_ms": 2.1, "latency_p99_ms": 15.3,
                   "active_connections": 42, "memory_used_gb": 12.4}),
        ),
        (
            "job.progress",
            json!({"jobId": "import-abc123", "jobType": "import", "progress": 0.45,
                   "processed": 450000, "total": 1000000, "rate": 15000, "eta_seconds": 37}),
        ),
        (
            "alert.warning",
            json!({"alertId": "alert-xyz", "severity": "warning", "title": "High memory usage",
                   "message": "Node n1 memory at 85%",
                   "metadata": {"node": "n1", "value": 0.85, "threshold": 0.80}}),
        ),
    ]
}

/// Bytes of `payload` deflated with a sync flush, its 4-byte tail removed.
fn deflated_len(compressor: &mut Compress, payload: &[u8]) -> usize {
    let mut out = Vec::with_capacity(payload.len() + 64);
    compressor
        .compress_vec(payload, &mut out, FlushCompress::Sync)
        .expect("deflate");
    out.len() - 4
}

/// A frame header for `len` payload bytes, server to client.
fn header(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

fn main() {
    let config = Config {
        compression: CompressionMode::On,
        compression_min_size: 0,
        ..Config::default()
    };
    let shaping = Shaping::new(&config);
    let seq = 1_234_567;
    println!("| event | plain frame | relay's deflated frame | whole message deflated alone | per-socket context takeover (mean of 100) |");
    println!("|---|---|---|---|---|");
    for (channel, data) in seed_events() {
        let encoded = Event::new(channel, &data)
            .expect("serializable")
            .encode_shaped(SystemTime::now(), &shaping);
        let plain = encoded.frame(seq);
        let deflated = encoded.deflated_frame(seq).expect("compression on");
        let payload = &plain[header(plain.len() - 2)..];
        let alone = deflated_len(&mut Compress::new(Compression::default(), false), payload);
        let mut stream = Compress::new(Compression::default(), false);
        let rounds = 100;
        let streamed: usize = (0..rounds)
            .map(|i| {
                let frame = encoded.frame(seq + i);
                deflated_len(&mut stream, &frame[header(frame.len() - 2)..])
            })
            .sum();
        let streamed = streamed / rounds as usize;
        println!(
            "| `{channel}` | {} | {} ({:.0}%) | {} ({:.0}%) | {} ({:.0}%) |",
            plain.len(),
            deflated.len(),
            100.0 * deflated.len() as f64 / plain.len() as f64,
            header(alone) + alone,
            100.0 * (header(alone) + alone) as f64 / plain.len() as f64,
            header(streamed) + streamed,
            100.0 * (header(streamed) + streamed) as f64 / plain.len() as f64,
        );
    }
}
