//! The serial part of a multi-reactor relay: how many events per second the
//! sequencer takes from a producer and hands to 1, 2, 4 and 8 reactors.
//!
//! Each reactor is a thread that reads the log in chunks of 64, as a
//! reactor does, and drops what it read (the fan-out after it runs on that
//! reactor's own core and is measured by `hot_path`). One producer appends
//! in batches of 16 events (as a 16-event HTTP publish would) and a time is
//! taken when every reader has read every event.
//!
//! `cargo bench --bench sequencer`; figures are recorded in BENCHMARKS.md.
//! On a machine with fewer cores than readers plus one, readers share
//! cores and the figure is a floor.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidings::config::HistoryConfig;
use tidings::fanout::history::{new_epoch, History};
use tidings::fanout::sequencer::{AppendError, Sequencer, Wakeup};
use tidings::Event;

const BATCH: usize = 16;

struct Readers {
    sequencer: Arc<Sequencer>,
    read: Arc<[AtomicU64]>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    /// Kept alive for the wakers.
    _polls: Vec<mio::Poll>,
}

impl Readers {
    fn start(count: usize) -> Readers {
        let mut polls = Vec::new();
        let mut wakeups = Vec::new();
        for _ in 0..count {
            let poll = mio::Poll::new().expect("poll");
            let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker");
            wakeups.push(Arc::new(Wakeup::new(waker)));
            polls.push(poll);
        }
        // The default history, as a relay has: its append is part of the
        // serial cost.
        let history = History::new(&HistoryConfig::default(), new_epoch());
        let sequencer = Arc::new(Sequencer::new(
            65_536,
            wakeups,
            Arc::default(),
            history,
            Default::default(),
        ));
        let read: Arc<[AtomicU64]> = (0..count).map(|_| AtomicU64::new(0)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|index| {
                let (sequencer, read, stop) =
                    (Arc::clone(&sequencer), Arc::clone(&read), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut inbox = VecDeque::with_capacity(64);
                    while !stop.load(Ordering::Relaxed) {
                        let n = sequencer.read(index, 64, &mut inbox);
                        if n == 0 {
                            thread::yield_now();
                            continue;
                        }
                        black_box(&inbox);
                        inbox.clear();
                        read[index].fetch_add(n as u64, Ordering::Release);
                    }
                })
            })
            .collect();
        Readers {
            sequencer,
            read,
            stop,
            threads,
            _polls: polls,
        }
    }

    /// Appends `events` and waits until every reader has read them.
    fn run(&self, events: u64) -> Duration {
        let encoded = || {
            Event::from_json(
                "job.progress",
                r#"{"jobId":"import-abc123","progress":0.45}"#,
            )
            .expect("json")
            .encode(SystemTime::now())
        };
        let target: Vec<u64> = self
            .read
            .iter()
            .map(|r| r.load(Ordering::Acquire) + events)
            .collect();
        let started = Instant::now();
        let mut left = events as usize;
        while left > 0 {
            let n = left.min(BATCH);
            let mut batch: Vec<_> = (0..n).map(|_| encoded()).collect();
            match self.sequencer.try_append(&mut batch) {
                Ok(_) => left -= n,
                Err(AppendError::Full) => thread::yield_now(),
                Err(e) => panic!("append: {e:?}"),
            }
        }
        for (read, target) in self.read.iter().zip(&target) {
            while read.load(Ordering::Acquire) < *target {
                thread::yield_now();
            }
        }
        started.elapsed()
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn handing_to_reactors(c: &mut Criterion) {
    let mut group = c.benchmark_group("sequencer_events_to_reactors");
    group.throughput(Throughput::Elements(1));
    for reactors in [1, 2, 4, 8] {
        let readers = Readers::start(reactors);
        group.bench_function(BenchmarkId::from_parameter(reactors), |b| {
            b.iter_custom(|iters| readers.run(iters))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = handing_to_reactors
}
criterion_main!(benches);
