//! The relay's hot path, piece by piece, without sockets.
//!
//! `cargo bench --bench hot_path`; figures are recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::io::{self, IoSlice, Write};
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use std::rc::Rc;
use tidings::config::CompressionMode;
use tidings::fanout::delivery::{Fate, Shaping};
use tidings::fanout::queue::{Frame, OutQueue, QueueLimits, SharedFrame};
use tidings::proto::command::parse_command;
use tidings::proto::handshake::{check_upgrade, parse_head};
use tidings::route::SubscriptionTrie;
use tidings::stats::{Depth, Histogram, Micros};
use tidings::{Config, Event};

const SUBSCRIPTIONS: u32 = 100_000;

/// 100k subscriptions spread over 1,000 exact channels plus wildcard ones.
fn populated_trie(cache: usize) -> SubscriptionTrie {
    let mut trie = SubscriptionTrie::new(cache);
    for id in 0..SUBSCRIPTIONS {
        let pattern = match id % 10 {
            0 => format!("job.{}.*", id % 1000),
            1 => format!("index.{}.>", id % 1000),
            _ => format!("metrics.host{}.cpu", id % 1000),
        };
        trie.insert(&pattern, id);
    }
    trie
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_100k_subscriptions");
    for (name, cache) in [("cached", 1024), ("uncached", 0)] {
        let mut trie = populated_trie(cache);
        group.bench_function(BenchmarkId::new("exact", name), |b| {
            b.iter(|| black_box(trie.matches(black_box("metrics.host7.cpu")).len()))
        });
        group.bench_function(BenchmarkId::new("wildcard", name), |b| {
            b.iter(|| black_box(trie.matches(black_box("job.7.progress")).len()))
        });
        group.bench_function(BenchmarkId::new("full_wildcard", name), |b| {
            b.iter(|| black_box(trie.matches(black_box("index.7.a.b.c")).len()))
        });
    }
    group.finish();
}

fn sample_event() -> Event {
    Event::new(
        "job.progress",
        &json!({"jobId": "import-abc123", "jobType": "import", "progress": 0.45,
                "processed": 450000, "total": 1000000, "rate": 15000, "eta_seconds": 37}),
    )
    .expect("serializable")
}

fn frame_building(c: &mut Criterion) {
    let now = SystemTime::now();
    c.bench_function("event/encode_on_producer", |b| {
        b.iter(|| black_box(sample_event().encode(now)))
    });
    let encoded = sample_event().encode(now);
    c.bench_function("event/frame_with_seq_on_reactor", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            black_box(encoded.frame(seq))
        })
    });
    // `compression = "on"`: the producer also deflates the part after
    // `seq`, and the sequencer builds the second frame.
    let compressing = Shaping::new(&Config {
        compression: CompressionMode::On,
        compression_min_size: 0,
        ..Config::default()
    });
    c.bench_function("event/encode_and_deflate_on_producer", |b| {
        b.iter(|| black_box(sample_event().encode_shaped(now, &compressing)))
    });
    let deflating = sample_event().encode_shaped(now, &compressing);
    c.bench_function("event/deflated_frame_with_seq_in_sequencer", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            black_box(deflating.deflated_frame(seq))
        })
    });
}

fn fan_out(c: &mut Criterion) {
    let frame: Frame = SharedFrame::plain(sample_event().encode(SystemTime::now()).frame(1));
    let limits = QueueLimits {
        max_messages: 1024,
        max_bytes: 1 << 20,
    };
    let mut group = c.benchmark_group("fan_out");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("one_event_into_10k_queues", |b| {
        let mut queues: Vec<OutQueue> = (0..10_000).map(|_| OutQueue::default()).collect();
        b.iter(|| {
            for queue in queues.iter_mut() {
                queue.push(&frame, limits);
            }
            // Empty them without I/O so every iteration starts alike.
            for queue in queues.iter_mut() {
                queue.discard_unsent();
            }
        })
    });
    // `[[delivery]] policy = "latest"`: each queue already holds 8 frames
    // of other slots, and the new frame replaces the one of its slot.
    let latest = |slot| {
        Rc::new(SharedFrame {
            bytes: frame.bytes.clone(),
            fate: Fate::Latest(slot),
        })
    };
    let others: Vec<Frame> = (1..=8).map(latest).collect();
    let newest = latest(4);
    group.bench_function("one_latest_event_into_10k_queues_of_8", |b| {
        let mut queues: Vec<OutQueue> = (0..10_000).map(|_| OutQueue::default()).collect();
        for queue in queues.iter_mut() {
            for other in &others {
                queue.push(other, limits);
            }
        }
        b.iter(|| {
            for queue in queues.iter_mut() {
                black_box(queue.push(&newest, limits));
            }
        })
    });
    group.finish();
}

/// Takes everything; counts calls, like a socket with room to spare.
struct CountingSink(usize);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += 1;
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0 += 1;
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn flushing(c: &mut Criterion) {
    let frame: Frame = SharedFrame::plain(sample_event().encode(SystemTime::now()).frame(1));
    let limits = QueueLimits {
        max_messages: 4096,
        max_bytes: 16 << 20,
    };
    let mut group = c.benchmark_group("flush_vectored");
    for n in [1usize, 16, 256] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            let mut queue = OutQueue::default();
            let mut sink = CountingSink(0);
            b.iter(|| {
                for _ in 0..n {
                    queue.push(&frame, limits);
                }
                black_box(queue.flush_to(&mut sink).expect("sink never fails"))
            })
        });
    }
    group.finish();
}

fn parsing(c: &mut Criterion) {
    let request = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: Bearer, mlg_your_token_here\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nOrigin: http://localhost:3000\r\n\r\n";
    c.bench_function("handshake/parse_and_accept", |b| {
        b.iter(|| {
            let head = parse_head(black_box(request), 8192, 64)
                .expect("valid")
                .expect("complete");
            black_box(check_upgrade(&head).expect("accepted").response())
        })
    });
    let command = r#"{"type":"subscribe","channels":["metrics.system","job.*","alert.*"]}"#;
    c.bench_function("command/parse_subscribe", |b| {
        b.iter(|| {
            black_box(
                parse_command(black_box(command), 64)
                    .command
                    .expect("valid"),
            )
        })
    });
}

/// What the reactor adds per event fanned out, per turn and per write for
/// `/metrics`: a clock read and a histogram observation (relaxed atomics on
/// the reactor's own counters).
fn metrics(c: &mut Criterion) {
    let turns = Histogram::<Micros>::default();
    c.bench_function("metrics/time_and_observe", |b| {
        b.iter(|| {
            let began = Instant::now();
            turns.observe(black_box(began.elapsed().as_micros() as u64));
        })
    });
    let depth = Histogram::<Depth>::default();
    c.bench_function("metrics/observe_queue_depth", |b| {
        b.iter(|| depth.observe(black_box(37)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = matching, frame_building, fan_out, flushing, parsing, metrics
}
criterion_main!(benches);
