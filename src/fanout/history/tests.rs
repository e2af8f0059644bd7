use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn config(max_events: usize, max_bytes: usize, max_age_ms: u64) -> HistoryConfig {
    HistoryConfig {
        max_events,
        max_bytes,
        max_age: Duration::from_millis(max_age_ms),
        max_replay: 100,
        last_value: Vec::new(),
        max_channels: 10,
    }
}

fn event(seq: u64, channel: &str, len: usize) -> Arc<Sequenced> {
    Arc::new(Sequenced {
        seq,
        channel: channel.into(),
        frame: Bytes::from(vec![b'x'; len]),
        deflated: None,
        fate: Default::default(),
        appended_ms: 0,
        appended_at: std::time::Instant::now(),
        mark: None,
    })
}

/// Pushes seqs `from..=to` on `channel`, 10 bytes each, at time 0.
fn fill(history: &mut History, from: u64, to: u64, channel: &str) {
    for seq in from..=to {
        history.push(event(seq, channel, 10), 0);
    }
}

fn seqs(events: &[Arc<Sequenced>]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// A replay as the seqs it recovers, or its gap.
fn replayed(replay: Replay) -> Result<Vec<u64>, Gap> {
    match replay {
        Replay::Recovered(events) => Ok(seqs(&events)),
        Replay::NotRecovered(gap) => Err(gap),
    }
}

fn all(_: &str) -> bool {
    true
}

#[test]
fn evicts_by_count() {
    let mut h = History::new(&config(3, 1000, 1000), "e");
    fill(&mut h, 1, 5, "a");
    assert_eq!((h.len(), h.bytes()), (3, 30));
    assert_eq!((h.oldest_seq(), h.newest_seq()), (Some(3), 5));
    assert_eq!(
        replayed(h.replay(2, u64::MAX, &[">"], all)),
        Ok(vec![3, 4, 5])
    );
    // Live delivery takes over after `until`.
    assert_eq!(replayed(h.replay(2, 4, &[">"], all)), Ok(vec![3, 4]));
    assert_eq!(
        replayed(h.replay(1, u64::MAX, &[">"], all)),
        Err(Gap::Gone),
        "seq 2 left"
    );
}

#[test]
fn evicts_by_bytes() {
    let mut h = History::new(&config(100, 100, 1000), "e");
    for seq in 1..=3 {
        h.push(event(seq, "a", 40), 0);
    }
    assert_eq!((h.len(), h.bytes(), h.oldest_seq()), (2, 80, Some(2)));
    // An event larger than the whole budget is not held at all...
    h.push(event(4, "a", 101), 0);
    assert_eq!((h.len(), h.bytes(), h.oldest_seq()), (0, 0, None));
    assert_eq!(replayed(h.replay(3, u64::MAX, &[">"], all)), Err(Gap::Gone));
    // ...but a client that saw it has missed nothing.
    assert_eq!(replayed(h.replay(4, u64::MAX, &[">"], all)), Ok(vec![]));
    h.push(event(5, "a", 100), 0);
    assert_eq!((h.len(), h.bytes()), (1, 100), "exactly max_bytes fits");
}

#[test]
fn evicts_by_age() {
    let mut h = History::new(&config(100, 1000, 1000), "e");
    h.push(event(1, "a", 1), 0);
    h.push(event(2, "a", 1), 500);
    h.push(event(3, "a", 1), 1000);
    assert_eq!(h.oldest_seq(), Some(2), "held for max_age, not longer");
    h.expire(1499);
    assert_eq!(h.oldest_seq(), Some(2));
    h.expire(1500);
    assert_eq!(h.oldest_seq(), Some(3));
    h.expire(5000);
    assert!(h.is_empty());
    assert_eq!(replayed(h.replay(3, u64::MAX, &[">"], all)), Ok(vec![]));
    assert_eq!(replayed(h.replay(2, u64::MAX, &[">"], all)), Err(Gap::Gone));
}

#[test]
fn times_out_of_order_are_kept_in_order() {
    let mut h = History::new(&config(100, 1000, 1000), "e");
    h.push(event(1, "a", 1), 2000);
    // Read before the sequencer's lock by a thread that got it later.
    h.push(event(2, "a", 1), 1990);
    h.expire(2999);
    assert_eq!(h.len(), 2);
    h.expire(3000);
    assert!(h.is_empty(), "seq 2 counts from 2000, not 1990");
}

#[test]
fn since_at_or_beyond_the_newest() {
    let mut h = History::new(&config(10, 1000, 1000), "e");
    assert_eq!(
        replayed(h.replay(0, u64::MAX, &[">"], all)),
        Ok(vec![]),
        "nothing yet"
    );
    assert_eq!(replayed(h.replay(1, u64::MAX, &[">"], all)), Err(Gap::Gone));
    fill(&mut h, 1, 3, "a");
    assert_eq!(
        replayed(h.replay(0, u64::MAX, &[">"], all)),
        Ok(vec![1, 2, 3])
    );
    assert_eq!(replayed(h.replay(3, u64::MAX, &[">"], all)), Ok(vec![]));
    // A seq never assigned: the client's state is not ours.
    assert_eq!(replayed(h.replay(4, u64::MAX, &[">"], all)), Err(Gap::Gone));
    assert_eq!(
        replayed(h.replay(u64::MAX, u64::MAX, &[">"], all)),
        Err(Gap::Gone)
    );
}

#[test]
fn only_matching_and_allowed_events_are_replayed() {
    let mut h = History::new(&config(10, 1000, 1000), "e");
    for (seq, channel) in [(1, "job.a"), (2, "alert.x"), (3, "job.b"), (4, "job.a.b")] {
        h.push(event(seq, channel, 1), 0);
    }
    assert_eq!(
        replayed(h.replay(0, u64::MAX, &["job.*"], all)),
        Ok(vec![1, 3])
    );
    assert_eq!(
        replayed(h.replay(0, u64::MAX, &["job.*", "alert.>", "job.a"], all)),
        Ok(vec![1, 2, 3]),
        "once each, however many patterns match"
    );
    let not_b = |channel: &str| channel != "job.b";
    assert_eq!(
        replayed(h.replay(0, u64::MAX, &["job.>"], not_b)),
        Ok(vec![1, 4])
    );
    let none: [&str; 0] = [];
    assert_eq!(replayed(h.replay(0, u64::MAX, &none, all)), Ok(vec![]));
}

#[test]
fn too_many_counts_only_what_would_be_sent() {
    let mut h = History::new(
        &HistoryConfig {
            max_replay: 2,
            ..config(10, 1000, 1000)
        },
        "e",
    );
    for (seq, channel) in [(1, "a"), (2, "b"), (3, "a"), (4, "c")] {
        h.push(event(seq, channel, 1), 0);
    }
    assert_eq!(
        replayed(h.replay(0, u64::MAX, &[">"], all)),
        Err(Gap::TooMany)
    );
    assert_eq!(
        replayed(h.replay(1, u64::MAX, &["a", "b"], all)),
        Ok(vec![2, 3])
    );
    assert_eq!(
        replayed(h.replay(0, u64::MAX, &["a"], all)),
        Ok(vec![1, 3]),
        "exactly max"
    );
    let not_b = |channel: &str| channel != "b";
    assert_eq!(
        replayed(h.replay(0, u64::MAX, &["a", "b"], not_b)),
        Ok(vec![1, 3])
    );
}

#[test]
fn history_off_answers_gone_but_keeps_last_values() {
    let mut h = History::new(
        &HistoryConfig {
            last_value: vec!["a".into()],
            ..config(0, 1000, 1000)
        },
        "e",
    );
    fill(&mut h, 1, 3, "a");
    assert_eq!((h.len(), h.bytes(), h.newest_seq()), (0, 0, 3));
    for since in [0, 2, 3] {
        assert_eq!(
            replayed(h.replay(since, u64::MAX, &[">"], all)),
            Err(Gap::Gone)
        );
    }
    assert_eq!(seqs(&h.snapshot(&["a"], |seq| seq > 0, all)), [3]);
}

#[test]
fn resume_checks_the_epoch_first() {
    let mut h = History::new(&config(10, 1000, 1000), "run-1");
    fill(&mut h, 1, 2, "a");
    assert_eq!(h.epoch(), "run-1");
    assert_eq!(
        replayed(h.resume("run-1", 1, u64::MAX, &["a"], all)),
        Ok(vec![2])
    );
    assert_eq!(
        replayed(h.resume("run-0", 1, u64::MAX, &["a"], all)),
        Err(Gap::Epoch)
    );
    assert_eq!(
        replayed(h.resume("run-0", 9, u64::MAX, &["a"], all)),
        Err(Gap::Epoch)
    );
    let reasons = [Gap::Epoch, Gap::Gone, Gap::TooMany].map(Gap::reason);
    assert_eq!(reasons, ["epoch", "gone", "too_many"]);
}

#[test]
fn holes_in_seq_are_not_losses() {
    let mut h = History::new(&config(10, 1000, 1000), "e");
    fill(&mut h, 1, 2, "a");
    h.push(event(5, "a", 10), 0);
    h.push(event(9, "a", 10), 0);
    assert_eq!((h.len(), h.oldest_seq()), (4, Some(1)));
    assert_eq!(replayed(h.replay(2, u64::MAX, &[">"], all)), Ok(vec![5, 9]));
    assert_eq!(replayed(h.replay(3, u64::MAX, &[">"], all)), Ok(vec![5, 9]));
    assert_eq!(replayed(h.replay(5, 8, &[">"], all)), Ok(vec![]));
    assert_eq!(replayed(h.replay(9, u64::MAX, &[">"], all)), Ok(vec![]));
    // Evicting 1 and 2 leaves "complete after 2": a client at 2, 3 or 4
    // missed only 5 and 9.
    let mut small = History::new(&config(2, 1000, 1000), "e");
    for seq in [1, 2, 5, 9] {
        small.push(event(seq, "a", 10), 0);
    }
    assert_eq!(small.resumable_from(), 2);
    assert_eq!(
        replayed(small.replay(1, u64::MAX, &[">"], all)),
        Err(Gap::Gone)
    );
    assert_eq!(
        replayed(small.replay(4, u64::MAX, &[">"], all)),
        Ok(vec![5, 9])
    );
}

#[test]
fn a_cut_refuses_resumes_across_it() {
    let mut h = History::new(&config(10, 1000, 1000), "e");
    fill(&mut h, 1, 3, "a");
    // Events were lost after 3: the next one will be 4.
    h.cut(4);
    fill(&mut h, 4, 5, "a");
    assert_eq!(replayed(h.replay(2, u64::MAX, &[">"], all)), Err(Gap::Gone));
    assert_eq!(replayed(h.replay(3, u64::MAX, &[">"], all)), Err(Gap::Gone));
    assert_eq!(replayed(h.replay(4, u64::MAX, &[">"], all)), Ok(vec![5]));
}

#[test]
fn a_restart_starts_an_epoch_at_its_base_until_backfilled() {
    let mut h = History::new(&last_value_config(&["lv.*"], 10), "e");
    fill(&mut h, 1, 3, "lv.a");
    h.restart("f", 100);
    assert_eq!((h.epoch(), h.len(), h.last_value_count()), ("f", 0, 0));
    assert_eq!(h.newest_seq(), 100);
    assert_eq!(replayed(h.replay(100, u64::MAX, &[">"], all)), Ok(vec![]));
    // Backfill under way: 91..=100 not all in yet.
    for seq in 91..=95 {
        h.push_backfill(event(seq, "lv.a", 10), 0);
    }
    assert_eq!(
        replayed(h.replay(92, u64::MAX, &[">"], all)),
        Err(Gap::Gone)
    );
    for seq in 96..=100 {
        h.push_backfill(event(seq, "lv.a", 10), 0);
    }
    h.backfilled(90);
    assert_eq!(
        replayed(h.replay(97, u64::MAX, &[">"], all)),
        Ok(vec![98, 99, 100])
    );
    assert_eq!(
        replayed(h.replay(89, u64::MAX, &[">"], all)),
        Err(Gap::Gone)
    );
    assert_eq!(h.last_value("lv.a").map(|e| e.seq), Some(100));
}

#[test]
fn coverage_limits_what_a_resume_may_rely_on() {
    let mut h = History::new(&config(100, 10_000, 1000), "e");
    h.cover(1, Some(vec!["a.*".into()]));
    fill(&mut h, 1, 3, "a.x");
    // From 4 on, b.> too.
    h.cover(4, Some(vec!["a.*".into(), "b.>".into()]));
    fill(&mut h, 4, 6, "b.y");
    assert_eq!(
        replayed(h.replay(1, u64::MAX, &["a.x"], all)),
        Ok(vec![2, 3])
    );
    assert_eq!(
        replayed(h.replay(1, u64::MAX, &["b.y"], all)),
        Err(Gap::Gone),
        "b.y was not received before 4"
    );
    assert_eq!(
        replayed(h.replay(3, u64::MAX, &["b.y"], all)),
        Ok(vec![4, 5, 6])
    );
    assert_eq!(
        replayed(h.replay(3, u64::MAX, &["b.>"], all)),
        Ok(vec![4, 5, 6])
    );
    assert_eq!(replayed(h.replay(3, u64::MAX, &[">"], all)), Err(Gap::Gone));
    // Everything again from 7.
    h.cover(7, None);
    assert_eq!(replayed(h.replay(6, u64::MAX, &[">"], all)), Ok(vec![]));
    assert_eq!(replayed(h.replay(5, u64::MAX, &[">"], all)), Err(Gap::Gone));
}

#[test]
fn seeded_last_values_keep_the_newest() {
    let mut h = History::new(&last_value_config(&["lv.*"], 10), "e");
    h.seed_last_value(&event(50, "lv.a", 10));
    h.seed_last_value(&event(40, "lv.a", 10));
    assert_eq!(h.last_value("lv.a").map(|e| e.seq), Some(50));
    assert!(h.is_empty(), "seeds do not enter the ring");
    // A backfilled older event does not replace it; a newer one does.
    h.push(event(45, "lv.a", 10), 0);
    assert_eq!(h.last_value("lv.a").map(|e| e.seq), Some(50));
    h.push(event(60, "lv.a", 10), 0);
    assert_eq!(h.last_value("lv.a").map(|e| e.seq), Some(60));
    h.seed_last_value(&event(1, "other", 10));
    assert_eq!(h.last_value_count(), 1, "only last_value channels");
}

#[test]
fn stream_epochs_are_stable_and_tell_streams_apart() {
    assert_eq!(stream_epoch("TIDINGS", 1), stream_epoch("TIDINGS", 1));
    assert_ne!(stream_epoch("TIDINGS", 1), stream_epoch("TIDINGS", 2));
    assert_ne!(stream_epoch("TIDINGS", 1), stream_epoch("OTHER", 1));
    assert_eq!(stream_epoch("TIDINGS", 1).len(), 12);
}

fn last_value_config(patterns: &[&str], max_channels: usize) -> HistoryConfig {
    HistoryConfig {
        last_value: patterns.iter().map(|p| p.to_string()).collect(),
        max_channels,
        ..config(100, 10_000, 1000)
    }
}

fn last_values(patterns: &[&str], max_channels: usize) -> History {
    let config = HistoryConfig {
        last_value: patterns.iter().map(|p| p.to_string()).collect(),
        max_channels,
        ..config(1, 1000, 1000)
    };
    History::new(&config, "e")
}

#[test]
fn snapshots_hold_the_latest_of_each_kept_channel() {
    let mut h = last_values(&["metrics.>", "cluster.*"], 10);
    let pushes = [
        (1, "metrics.cpu"),
        (2, "cluster.a"),
        (3, "job.x"),
        (4, "metrics.cpu"),
        (5, "metrics.mem.used"),
        (6, "cluster.a.b"),
    ];
    for (seq, channel) in pushes {
        h.push(event(seq, channel, 1), 0);
    }
    assert_eq!(h.len(), 1, "the ring holds one event...");
    assert_eq!(
        seqs(&h.snapshot(&[">"], |seq| seq > 0, all)),
        [2, 4, 5],
        "...last values more"
    );
    assert_eq!(seqs(&h.snapshot(&["metrics.*"], |seq| seq > 0, all)), [4]);
    assert_eq!(
        seqs(&h.snapshot(&["metrics.>", "*.cpu"], |seq| seq > 0, all)),
        [4, 5]
    );
    assert_eq!(
        seqs(&h.snapshot(&[">"], |seq| seq > 4, all)),
        [5],
        "after a replay up to 4"
    );
    let not_cluster = |channel: &str| !channel.starts_with("cluster.");
    assert_eq!(
        seqs(&h.snapshot(&[">"], |seq| seq > 0, not_cluster)),
        [4, 5]
    );
    // Literal patterns are looked up, duplicates and all.
    let literals = ["metrics.cpu", "cluster.a", "metrics.cpu", "job.x"];
    assert_eq!(seqs(&h.snapshot(&literals, |seq| seq > 0, all)), [2, 4]);
    assert_eq!(seqs(&h.snapshot(&literals, |seq| seq > 2, all)), [4]);
    assert_eq!(h.last_value("metrics.cpu").map(|e| e.seq), Some(4));
    assert!(h.last_value("job.x").is_none(), "not a last_value channel");
    assert!(
        h.last_value("cluster.a.b").is_none(),
        "cluster.* is one segment"
    );
    assert_eq!((h.last_value_count(), h.last_value_bytes()), (3, 3));
}

#[test]
fn a_full_set_of_last_values_refuses_new_channels() {
    let mut h = last_values(&[">"], 2);
    h.push(event(1, "a", 10), 0);
    h.push(event(2, "b", 20), 0);
    h.push(event(3, "c", 30), 0);
    assert!(h.last_value("c").is_none());
    assert_eq!(h.last_values_refused(), 1);
    h.push(event(4, "a", 5), 0);
    h.push(event(5, "c", 30), 0);
    assert_eq!(
        h.last_value("a").map(|e| e.seq),
        Some(4),
        "kept ones update"
    );
    assert_eq!(h.last_values_refused(), 2, "counted per event");
    assert_eq!((h.last_value_count(), h.last_value_bytes()), (2, 25));
    assert_eq!(seqs(&h.snapshot(&[">"], |seq| seq > 0, all)), [2, 4]);
}

#[test]
fn epochs_are_short_and_differ() {
    let a = new_epoch();
    let b = new_epoch();
    assert_eq!(a.len(), 12);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()),
        "{a}"
    );
    assert_ne!(a, b);
    assert_eq!(epoch_text(0), "000000000000");
    assert_eq!(epoch_text(u64::MAX), "zzzzzzzzzzzz");
    assert_eq!(epoch_text(31), "z00000000000");
}

// The model: every event ever pushed, and the rules re-applied from scratch.

const CHANNELS: [&str; 6] = ["a", "a.b", "a.c", "x.y", "x.y.z", "b.c.d"];
const PATTERNS: [&str; 11] = [
    ">", "a.*", "a.b", "a.>", "x.>", "x.*.z", "*.c", "b.>", "*", "x.y", "a.c",
];

#[derive(Debug, Clone)]
enum Op {
    Push {
        channel: usize,
        len: usize,
        dt: u64,
    },
    Expire {
        dt: u64,
    },
    Replay {
        since: Since,
        patterns: Vec<usize>,
        deny: Option<usize>,
    },
    Snapshot {
        patterns: Vec<usize>,
        after: Since,
        deny: Option<usize>,
    },
}

/// A seq relative to the newest: `back` before it, or past it.
#[derive(Debug, Clone, Copy)]
struct Since {
    back: u64,
    beyond: bool,
}

impl Since {
    fn at(self, newest: u64) -> u64 {
        if self.beyond {
            newest + 1 + self.back % 3
        } else {
            newest.saturating_sub(self.back)
        }
    }
}

fn since() -> impl Strategy<Value = Since> {
    (0..15u64, prop::bool::weighted(0.1)).prop_map(|(back, beyond)| Since { back, beyond })
}

fn patterns() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..PATTERNS.len(), 0..4)
}

fn deny() -> impl Strategy<Value = Option<usize>> {
    prop::option::weighted(0.3, 0..CHANNELS.len())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CHANNELS.len(), 1..40usize, 0..15u64)
            .prop_map(|(channel, len, dt)| Op::Push { channel, len, dt }),
        1 => (0..30u64).prop_map(|dt| Op::Expire { dt }),
        2 => (since(), patterns(), deny())
            .prop_map(|(since, patterns, deny)| Op::Replay { since, patterns, deny }),
        2 => (patterns(), since(), deny())
            .prop_map(|(patterns, after, deny)| Op::Snapshot { patterns, after, deny }),
    ]
}

fn history_config() -> impl Strategy<Value = HistoryConfig> {
    (
        0..8usize,
        1..120usize,
        1..40u64,
        1..6usize,
        prop::collection::vec(0..PATTERNS.len(), 0..3),
        1..4usize,
    )
        .prop_map(
            |(max_events, max_bytes, age, max_replay, last_value, max_channels)| HistoryConfig {
                max_events,
                max_bytes,
                max_age: Duration::from_millis(age),
                max_replay,
                last_value: last_value.iter().map(|&p| PATTERNS[p].to_owned()).collect(),
                max_channels,
            },
        )
}

struct Model {
    config: HistoryConfig,
    /// Every event pushed, with its time; seq n is at index n - 1.
    all: Vec<(Arc<Sequenced>, u64)>,
    /// The oldest seq held; `all.len() + 1` when none is.
    floor: u64,
    now: u64,
}

impl Model {
    fn newest(&self) -> u64 {
        self.all.len() as u64
    }

    /// Re-applies count, bytes and age to what was held.
    fn evict(&mut self) {
        let c = &self.config;
        let mut held: Vec<_> = self.all[self.floor as usize - 1..]
            .iter()
            .filter(|(_, at)| c.max_events > 0 && self.now - at < c.max_age.as_millis() as u64)
            .collect();
        let over = held.len().saturating_sub(c.max_events);
        held.drain(..over);
        while held.iter().map(|(e, _)| e.frame.len()).sum::<usize>() > c.max_bytes {
            held.remove(0);
        }
        self.floor = held.first().map_or(self.newest() + 1, |(e, _)| e.seq);
    }

    fn replay(&self, since: u64, patterns: &[&str], deny: Option<&str>) -> Result<Vec<u64>, Gap> {
        if self.config.max_events == 0 || since > self.newest() || since + 1 < self.floor {
            return Err(Gap::Gone);
        }
        let matching: Vec<u64> = self
            .all
            .iter()
            .map(|(e, _)| e)
            .filter(|e| e.seq > since && wanted(e, patterns, deny))
            .map(|e| e.seq)
            .collect();
        if matching.len() > self.config.max_replay {
            return Err(Gap::TooMany);
        }
        Ok(matching)
    }

    /// Channels that keep a last value: the first `max_channels` to appear.
    fn kept_channels(&self) -> Vec<&str> {
        let mut kept: Vec<&str> = Vec::new();
        for (e, _) in &self.all {
            let listed = self.config.last_value.iter();
            let wanted = listed.clone().any(|p| pattern_matches(p, &e.channel));
            if wanted && !kept.contains(&&*e.channel) && kept.len() < self.config.max_channels {
                kept.push(&e.channel);
            }
        }
        kept
    }

    fn latest(&self, channel: &str) -> &Arc<Sequenced> {
        let found = self.all.iter().rev().find(|(e, _)| &*e.channel == channel);
        &found.expect("a kept channel has events").0
    }

    fn snapshot(&self, patterns: &[&str], after: u64, deny: Option<&str>) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .kept_channels()
            .into_iter()
            .map(|channel| self.latest(channel))
            .filter(|e| e.seq > after && wanted(e, patterns, deny))
            .map(|e| e.seq)
            .collect();
        out.sort_unstable();
        out
    }
}

fn wanted(event: &Sequenced, patterns: &[&str], deny: Option<&str>) -> bool {
    patterns.iter().any(|p| pattern_matches(p, &event.channel)) && Some(&*event.channel) != deny
}

proptest! {
    #[test]
    fn history_matches_the_model(
        config in history_config(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut h = History::new(&config, "e");
        let mut m = Model { config: config.clone(), all: Vec::new(), floor: 1, now: 0 };
        for op in ops {
            match op {
                Op::Push { channel, len, dt } => {
                    m.now += dt;
                    let e = event(m.newest() + 1, CHANNELS[channel], len);
                    m.all.push((Arc::clone(&e), m.now));
                    m.evict();
                    h.push(e, m.now);
                }
                Op::Expire { dt } => {
                    m.now += dt;
                    m.evict();
                    h.expire(m.now);
                }
                Op::Replay { since, patterns, deny } => {
                    let since = since.at(m.newest());
                    let patterns: Vec<&str> = patterns.iter().map(|&p| PATTERNS[p]).collect();
                    let deny = deny.map(|c| CHANNELS[c]);
                    let allow = |channel: &str| Some(channel) != deny;
                    prop_assert_eq!(
                        replayed(h.replay(since, u64::MAX, &patterns, allow)),
                        m.replay(since, &patterns, deny),
                        "since {}", since
                    );
                }
                Op::Snapshot { patterns, after, deny } => {
                    let after = after.at(m.newest());
                    let patterns: Vec<&str> = patterns.iter().map(|&p| PATTERNS[p]).collect();
                    let deny = deny.map(|c| CHANNELS[c]);
                    let allow = |channel: &str| Some(channel) != deny;
                    prop_assert_eq!(
                        seqs(&h.snapshot(&patterns, |seq| seq > after, allow)),
                        m.snapshot(&patterns, after, deny)
                    );
                }
            }
            let held = m.all.len() + 1 - m.floor as usize;
            let held_bytes: usize =
                m.all[m.floor as usize - 1..].iter().map(|(e, _)| e.frame.len()).sum();
            prop_assert_eq!((h.len(), h.bytes()), (held, held_bytes));
            prop_assert!(h.len() <= config.max_events && h.bytes() <= config.max_bytes);
            prop_assert_eq!(h.oldest_seq(), (held > 0).then_some(m.floor));
            let kept = m.kept_channels();
            prop_assert!(h.last_value_count() <= config.max_channels);
            prop_assert_eq!(h.last_value_count(), kept.len());
            let kept_bytes: usize = kept.iter().map(|c| m.latest(c).frame.len()).sum();
            prop_assert_eq!(h.last_value_bytes(), kept_bytes);
        }
    }
}
