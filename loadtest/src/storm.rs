//! The pure parts of `storm` mode: the reconnect backoff schedule, the
//! per-client bookkeeping, the close reason's retry hint, and the figures
//! made from them. The socket work is in `swarm.rs` (`Swarm::storm`).

use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// How a client's connection ends at the start of the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DropHow {
    /// Even clients close the TCP socket, odd ones send a close frame first.
    Mixed,
    /// Close the TCP socket (FIN) without a close frame.
    Tcp,
    /// Send a close frame (1000), then close the socket without waiting.
    Frame,
    /// Abort the socket (SO_LINGER 0: RST).
    Reset,
    /// The clients keep their connections and wait for the relay to close
    /// them (a restart: SIGTERM to `--server-pid`).
    Server,
}

impl DropHow {
    /// What client `i` does under this setting.
    pub fn for_client(self, i: usize) -> DropHow {
        match self {
            DropHow::Mixed if i.is_multiple_of(2) => DropHow::Tcp,
            DropHow::Mixed => DropHow::Frame,
            other => other,
        }
    }
}

/// The `retry_after_ms` of a close reason such as a stopping relay sends,
/// `{"reason":"server shutting down","retry_after_ms":N}` (docs/protocol.md);
/// `None` if the reason is not such a JSON object.
pub fn retry_after_ms(reason: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Hint {
        retry_after_ms: u64,
    }
    if reason.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Hint>(reason)
        .ok()
        .map(|h| h.retry_after_ms)
}

/// A small seedable RNG (xorshift64*), so the schedule can be tested.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Any non-zero state works; mix the seed so 0 and 1 differ a lot.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Exponential backoff with full jitter: attempt `k` (0 = the first
/// reconnect after the drop) waits uniformly in [0, min(cap, base·2^k)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base_us: u64,
    pub cap_us: u64,
}

impl Backoff {
    /// The upper bound of the wait before attempt `k`.
    pub fn ceiling_us(&self, attempt: u32) -> u64 {
        let doubled = self
            .base_us
            .checked_shl(attempt.min(63))
            .filter(|v| v >> attempt.min(63) == self.base_us)
            .unwrap_or(u64::MAX);
        doubled.min(self.cap_us).max(1)
    }

    /// The wait before attempt `k`, in µs.
    pub fn delay_us(&self, attempt: u32, rng: &mut Rng) -> u64 {
        let c = self.ceiling_us(attempt);
        ((rng.unit() * c as f64) as u64).min(c - 1)
    }
}

/// One client's storm so far.
#[derive(Debug, Clone, Default)]
pub struct Slot {
    /// Part of the storm (it was subscribed when the drop came).
    pub member: bool,
    /// Still on its connection from before the storm, waiting for the
    /// relay to close it (`DropHow::Server`).
    pub awaiting_close: bool,
    /// Reconnect attempts failed so far in a row (next attempt's backoff index).
    pub failures: u32,
    /// Attempts started.
    pub attempts: u32,
    /// µs after the drop when it was last subscribed again; `None` while
    /// it is not (a client that is back and loses its connection again is
    /// no longer back).
    pub back_us: Option<u64>,
}

/// Everything the storm counts, with times in µs after the drop.
#[derive(Debug, Clone)]
pub struct StormBook {
    pub backoff: Backoff,
    pub rng: Rng,
    pub slots: Vec<Slot>,
    /// (due µs after the drop, client): reconnects waiting for their time.
    pub due: BinaryHeap<Reverse<(u64, usize)>>,
    /// Upgrades completed (101 received), µs after the drop.
    pub accepts_us: Vec<u64>,
    /// Failed attempts by reason (refused, reset, timeout, http_503, ...).
    pub failures: BTreeMap<String, u64>,
    /// Clients that were back and lost their connection again.
    pub lost_after_back: BTreeMap<String, u64>,
    pub members: u64,
    /// Members subscribed now.
    pub back: u64,
    /// Stop scheduling reconnects due at or after this (µs after the drop).
    pub deadline_us: u64,
    /// Wait a close's `retry_after_ms` before reconnecting, where it has
    /// one, instead of the backoff (as `client/tidings.js` does).
    pub honour_hint: bool,
    /// When the relay closed each member's connection from before the
    /// storm (`DropHow::Server`), µs after the drop.
    pub server_closes_us: Vec<u64>,
    /// Reconnects scheduled by a close's `retry_after_ms`.
    pub hints_honoured: u64,
    /// The largest `retry_after_ms` a subscribed connection's close
    /// carried (honoured or not): the relay's spread, seen from outside.
    pub max_hint_ms: Option<u64>,
}

impl StormBook {
    pub fn new(n: usize, backoff: Backoff, seed: u64, deadline_us: u64) -> Self {
        StormBook {
            backoff,
            rng: Rng::new(seed),
            slots: vec![Slot::default(); n],
            due: BinaryHeap::with_capacity(n),
            accepts_us: Vec::with_capacity(n),
            failures: BTreeMap::new(),
            lost_after_back: BTreeMap::new(),
            members: 0,
            back: 0,
            deadline_us,
            honour_hint: true,
            server_closes_us: Vec::new(),
            hints_honoured: 0,
            max_hint_ms: None,
        }
    }

    /// Client `i` is subscribed when the storm begins and waits for the
    /// relay to close it: nothing is scheduled until it does.
    pub fn awaiting(&mut self, i: usize) {
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        s.member = true;
        s.awaiting_close = true;
        self.members += 1;
    }

    /// Client `i` was dropped at time 0: schedule its first reconnect.
    pub fn dropped(&mut self, i: usize) {
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        s.member = true;
        self.members += 1;
        let d = self.backoff.delay_us(0, &mut self.rng);
        self.due.push(Reverse((d, i)));
    }

    /// All the clients whose reconnect is due at `now_us`, earliest first
    /// (the swarm takes them in batches: `take_due_at_most`).
    #[cfg(test)]
    pub fn take_due(&mut self, now_us: u64, out: &mut Vec<usize>) {
        self.take_due_at_most(now_us, usize::MAX, out);
    }

    /// At most `max` of the clients whose reconnect is due at `now_us`,
    /// earliest first; the others stay due.
    pub fn take_due_at_most(&mut self, now_us: u64, max: usize, out: &mut Vec<usize>) {
        out.clear();
        while let Some(&Reverse((t, i))) = self.due.peek() {
            if t > now_us || out.len() >= max {
                break;
            }
            self.due.pop();
            out.push(i);
            if let Some(s) = self.slots.get_mut(i) {
                s.attempts += 1;
            }
        }
    }

    /// µs after the drop when the next reconnect is due.
    pub fn next_due(&self) -> Option<u64> {
        self.due.peek().map(|Reverse((t, _))| *t)
    }

    pub fn upgraded(&mut self, now_us: u64) {
        self.accepts_us.push(now_us);
    }

    pub fn subscribed(&mut self, i: usize, now_us: u64) {
        let Some(s) = self.slots.get_mut(i).filter(|s| s.member) else {
            return;
        };
        s.failures = 0;
        if s.back_us.is_none() {
            s.back_us = Some(now_us);
            self.back += 1;
        }
    }

    /// Client `i`'s connection ended: an attempt failed (`was_ready` false)
    /// or a subscribed connection was closed, with the close reason's
    /// `retry_after_ms` if it had one. It tries again after that hint (a
    /// subscribed connection's close, when hints are honoured) or else a
    /// backoff, if that is before the deadline.
    pub fn closed(
        &mut self,
        i: usize,
        was_ready: bool,
        why: &str,
        now_us: u64,
        retry_after_ms: Option<u64>,
    ) {
        let Some(s) = self.slots.get_mut(i).filter(|s| s.member) else {
            return;
        };
        let retry_after_ms = retry_after_ms.filter(|_| was_ready);
        self.max_hint_ms = self.max_hint_ms.max(retry_after_ms);
        let hint_us = retry_after_ms
            .filter(|_| self.honour_hint)
            .map(|ms| ms.saturating_mul(1000));
        if s.awaiting_close {
            // The close the storm waited for: the start of this client's return.
            s.awaiting_close = false;
            self.server_closes_us.push(now_us);
        } else if was_ready {
            *self.lost_after_back.entry(why.to_string()).or_insert(0) += 1;
            s.failures = 0;
            if s.back_us.take().is_some() {
                self.back -= 1;
            }
        } else {
            *self.failures.entry(why.to_string()).or_insert(0) += 1;
            s.failures = s.failures.saturating_add(1);
        }
        let wait_us = match hint_us {
            Some(h) => {
                self.hints_honoured += 1;
                h
            }
            None => self.backoff.delay_us(s.failures, &mut self.rng),
        };
        let at = now_us.saturating_add(wait_us);
        if at < self.deadline_us {
            self.due.push(Reverse((at, i)));
        }
    }

    pub fn all_back(&self) -> bool {
        self.back >= self.members
    }

    pub fn attempts(&self) -> u64 {
        self.slots.iter().map(|s| u64::from(s.attempts)).sum()
    }

    /// Members the relay has not closed yet (`DropHow::Server`).
    pub fn still_awaiting(&self) -> u64 {
        self.slots.iter().filter(|s| s.awaiting_close).count() as u64
    }
}

/// Counts of `times_us` in consecutive buckets of `bucket_us`, from 0 to
/// the last bucket holding one.
pub fn buckets(times_us: &[u64], bucket_us: u64) -> Vec<u32> {
    let bucket_us = bucket_us.max(1);
    let Some(last) = times_us.iter().max() else {
        return Vec::new();
    };
    let mut out = vec![0u32; (last / bucket_us) as usize + 1];
    for t in times_us {
        out[(t / bucket_us) as usize] += 1;
    }
    out
}

/// The busiest bucket: (its index, its count).
pub fn peak(buckets: &[u32]) -> Option<(usize, u32)> {
    buckets
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .filter(|&(_, n)| n > 0)
}

/// When a fraction `q` of `total` clients were back: the ⌈q·total⌉-th
/// smallest of `sorted_us`, or `None` if fewer came back.
pub fn time_to_fraction(sorted_us: &[u64], total: u64, q: f64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    let k = ((q * total as f64).ceil() as u64).clamp(1, total) as usize;
    sorted_us.get(k - 1).copied()
}

#[derive(Debug, Clone, Serialize)]
pub struct MarkerSummary {
    /// The marker event's `seq` (from the publish reply).
    pub seq: u64,
    /// Storm clients open when the marker was published.
    pub open: u64,
    /// Storm clients that received it (their highest seq reached it).
    pub received: u64,
    /// Storm clients (all of them, open or not) that did not.
    pub missing: u64,
    pub wait_s: f64,
}

/// The storm's figures (times in seconds after the drop).
#[derive(Debug, Clone, Serialize)]
pub struct StormSummary {
    pub drop: DropHow,
    pub base_s: f64,
    pub cap_s: f64,
    pub deadline_s: f64,
    /// Clients dropped (those subscribed when the storm began).
    pub clients: u64,
    /// Seconds the swarm took to drop them all.
    pub drop_seconds: f64,
    pub back: u64,
    pub left_out: u64,
    pub all_back: bool,
    /// Drop to the last client's `subscribed` (null if some never came back).
    pub full_resubscription_s: Option<f64>,
    pub back_p50_s: Option<f64>,
    pub back_p90_s: Option<f64>,
    pub back_p99_s: Option<f64>,
    pub attempts: u64,
    /// Attempts beyond each client's first.
    pub retries: u64,
    pub failed_attempts: u64,
    pub failures: BTreeMap<String, u64>,
    pub lost_after_back: BTreeMap<String, u64>,
    /// Upgrades completed (101) per 100 ms bucket after the drop.
    pub accepts_per_100ms: Vec<u32>,
    /// The busiest bucket, as upgrades per second.
    pub peak_accepts_per_s: f64,
    pub peak_at_s: Option<f64>,
    /// `--drop server`: connections the relay closed, and when the last
    /// close came.
    pub closed_by_server: u64,
    pub last_server_close_s: Option<f64>,
    /// `--drop server`: members whose connection the relay never closed.
    pub never_closed: u64,
    /// Reconnects that waited the close reason's `retry_after_ms`.
    pub retry_hints_honoured: u64,
    /// The largest `retry_after_ms` received, in seconds.
    pub retry_after_max_s: Option<f64>,
}

pub fn summarize(b: &StormBook, drop: DropHow, drop_seconds: f64) -> StormSummary {
    let mut back: Vec<u64> = b.slots.iter().filter_map(|s| s.back_us).collect();
    back.sort_unstable();
    let secs = |us: u64| us as f64 / 1e6;
    let at = |q: f64| time_to_fraction(&back, b.members, q).map(secs);
    let bk = buckets(&b.accepts_us, 100_000);
    let pk = peak(&bk);
    let attempts = b.attempts();
    let tried = b.slots.iter().filter(|s| s.attempts > 0).count() as u64;
    StormSummary {
        drop,
        base_s: secs(b.backoff.base_us),
        cap_s: secs(b.backoff.cap_us),
        deadline_s: secs(b.deadline_us),
        clients: b.members,
        drop_seconds,
        back: b.back,
        left_out: b.members - b.back.min(b.members),
        all_back: b.all_back(),
        full_resubscription_s: b
            .all_back()
            .then(|| back.last().copied().map(secs))
            .flatten(),
        back_p50_s: at(0.50),
        back_p90_s: at(0.90),
        back_p99_s: at(0.99),
        attempts,
        retries: attempts - tried.min(attempts),
        failed_attempts: b.failures.values().sum(),
        failures: b.failures.clone(),
        lost_after_back: b.lost_after_back.clone(),
        peak_accepts_per_s: pk.map_or(0.0, |(_, n)| f64::from(n) * 10.0),
        peak_at_s: pk.map(|(i, _)| i as f64 / 10.0),
        accepts_per_100ms: bk,
        closed_by_server: b.server_closes_us.len() as u64,
        last_server_close_s: b.server_closes_us.iter().max().copied().map(secs),
        never_closed: b.still_awaiting(),
        retry_hints_honoured: b.hints_honoured,
        retry_after_max_s: b.max_hint_ms.map(|ms| ms as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(base_ms: u64, cap_ms: u64) -> Backoff {
        Backoff {
            base_us: base_ms * 1000,
            cap_us: cap_ms * 1000,
        }
    }

    #[test]
    fn ceilings_double_to_the_cap() {
        let b = backoff(1000, 30_000);
        let c: Vec<u64> = (0..8).map(|k| b.ceiling_us(k) / 1000).collect();
        assert_eq!(c, [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
        // No overflow at absurd attempt counts.
        assert_eq!(b.ceiling_us(200), 30_000_000);
        assert_eq!(backoff(50, 1000).ceiling_us(5), 1_000_000);
    }

    #[test]
    fn delays_are_full_jitter_and_seeded() {
        let b = backoff(1000, 30_000);
        let run = |seed| {
            let mut r = Rng::new(seed);
            (0..2000)
                .map(|i| b.delay_us(i % 8, &mut r))
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same schedule");
        assert_ne!(a, run(8));
        for (i, d) in a.iter().enumerate() {
            assert!(*d < b.ceiling_us(i as u32 % 8), "{i}: {d}");
        }
        // First attempts: uniform in [0, 1 s): mean near 0.5 s, both halves used.
        let mut r = Rng::new(42);
        let first: Vec<u64> = (0..10_000).map(|_| b.delay_us(0, &mut r)).collect();
        let mean = first.iter().sum::<u64>() as f64 / first.len() as f64;
        assert!((mean - 500_000.0).abs() < 20_000.0, "{mean}");
        assert!(first.iter().any(|&d| d < 100_000));
        assert!(first.iter().any(|&d| d > 900_000));
        // Capped attempts spread over [0, 30 s).
        assert!((0..1000).any(|_| b.delay_us(10, &mut r) > 25_000_000));
    }

    #[test]
    fn book_schedules_retries_and_counts() {
        let mut b = StormBook::new(4, backoff(50, 1000), 1, 10_000_000);
        for i in 0..3 {
            b.dropped(i);
        }
        assert_eq!(b.members, 3);
        let mut due = Vec::new();
        b.take_due(50_000, &mut due);
        due.sort_unstable();
        assert_eq!(due, [0, 1, 2], "all first attempts within the base");
        // 0 comes back, 1 is refused twice, 2 times out once.
        b.upgraded(60_000);
        b.subscribed(0, 61_000);
        b.closed(1, false, "refused", 70_000, None);
        b.closed(2, false, "timeout", 80_000, None);
        b.take_due(u64::MAX / 2, &mut due);
        due.sort_unstable();
        assert_eq!(due, [1, 2]);
        assert_eq!(b.slots[1].failures, 1);
        b.closed(1, false, "refused", 300_000, None);
        assert_eq!(b.slots[1].failures, 2);
        assert!(b.next_due().is_some_and(|t| t < 300_000 + 200_000));
        b.take_due(u64::MAX / 2, &mut due);
        b.upgraded(400_000);
        b.subscribed(1, 401_000);
        b.subscribed(1, 402_000); // twice: counted once
        b.subscribed(3, 1); // not a member
        assert_eq!((b.back, b.all_back()), (2, false));
        let s = summarize(&b, DropHow::Mixed, 0.01);
        assert_eq!(s.clients, 3);
        assert_eq!(s.left_out, 1);
        assert_eq!(s.full_resubscription_s, None);
        assert_eq!(s.attempts, 3 + 1 + 1 + 1);
        assert_eq!(s.retries, 3);
        assert_eq!(s.failed_attempts, 3);
        assert_eq!(s.failures.get("refused"), Some(&2));
        assert_eq!(s.back_p50_s, Some(0.401));
        assert_eq!(s.back_p99_s, None);
        b.subscribed(2, 900_000);
        let s = summarize(&b, DropHow::Mixed, 0.01);
        assert!(s.all_back);
        assert_eq!(s.full_resubscription_s, Some(0.9));
        assert_eq!(s.back_p99_s, Some(0.9));
        // Lost again after being back: counted apart, not back, rescheduled.
        b.closed(0, true, "1001", 950_000, None);
        assert_eq!(b.lost_after_back.get("1001"), Some(&1));
        assert_eq!((b.back, b.all_back()), (2, false));
        assert!(b.next_due().is_some());
        b.take_due(u64::MAX / 2, &mut due);
        assert_eq!(due, [0]);
        b.subscribed(0, 1_200_000);
        let s = summarize(&b, DropHow::Mixed, 0.01);
        assert_eq!(s.full_resubscription_s, Some(1.2));
        assert_eq!(s.back_p50_s, Some(0.9));
    }

    #[test]
    fn no_retries_past_the_deadline() {
        let mut b = StormBook::new(1, backoff(1000, 1000), 3, 500_000);
        b.dropped(0);
        let mut due = Vec::new();
        b.take_due(u64::MAX / 2, &mut due);
        b.closed(0, false, "reset", 500_000, None);
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn accept_times_bucket_by_100ms() {
        let t = [0, 99_999, 100_000, 250_000, 250_001, 250_002, 730_000];
        let b = buckets(&t, 100_000);
        assert_eq!(b, [2, 1, 3, 0, 0, 0, 0, 1]);
        assert_eq!(peak(&b), Some((2, 3)));
        assert_eq!(peak(&[1, 3, 3]), Some((1, 3)), "ties: the earliest");
        assert!(buckets(&[], 100_000).is_empty());
        assert_eq!(peak(&[0, 0]), None);
    }

    #[test]
    fn fractions_back() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(time_to_fraction(&sorted, 100, 0.5), Some(50));
        assert_eq!(time_to_fraction(&sorted, 100, 0.99), Some(99));
        assert_eq!(time_to_fraction(&sorted, 100, 1.0), Some(100));
        assert_eq!(time_to_fraction(&sorted[..98], 100, 0.99), None);
        assert_eq!(time_to_fraction(&[5], 3, 0.5), None);
        assert_eq!(time_to_fraction(&[], 0, 0.5), None);
    }

    #[test]
    fn retry_hints_from_close_reasons() {
        let r = |s: &str| retry_after_ms(s.as_bytes());
        assert_eq!(
            r(r#"{"reason":"server shutting down","retry_after_ms":7300}"#),
            Some(7300)
        );
        assert_eq!(r(r#"{"retry_after_ms":0}"#), Some(0));
        assert_eq!(r(r#"{"reason":"server shutting down"}"#), None);
        assert_eq!(r(r#"{"retry_after_ms":-5}"#), None);
        assert_eq!(r(r#"{"retry_after_ms":"5"}"#), None);
        assert_eq!(r("going away"), None);
        assert_eq!(r(""), None);
        assert_eq!(r(r#"{"retry_after_ms":5"#), None, "cut short");
    }

    #[test]
    fn server_closes_start_each_return_after_its_hint() {
        let mut b = StormBook::new(4, backoff(1000, 1000), 5, 60_000_000);
        for i in 0..3 {
            b.awaiting(i);
        }
        assert_eq!((b.members, b.still_awaiting()), (3, 3));
        assert_eq!(
            b.next_due(),
            None,
            "nothing scheduled before the relay closes"
        );
        // The relay closes all three 10 ms in; two carry a hint.
        b.closed(0, true, "1001", 10_000, Some(4000));
        b.closed(1, true, "1001", 10_000, Some(0));
        b.closed(2, true, "eof", 10_000, None);
        assert_eq!(b.still_awaiting(), 0);
        assert!(
            b.lost_after_back.is_empty(),
            "the awaited close is not a loss"
        );
        let mut due = Vec::new();
        b.take_due(10_000, &mut due);
        assert_eq!(due, [1], "a zero hint: at once");
        b.take_due(1_010_000, &mut due);
        assert_eq!(due, [2], "no hint: within the first backoff");
        b.take_due(4_009_999, &mut due);
        assert!(due.is_empty());
        b.take_due(4_010_000, &mut due);
        assert_eq!(due, [0], "exactly its hint after the close");
        // A failed attempt falls back to the backoff, whatever the hint.
        b.closed(0, false, "refused", 4_020_000, Some(30_000));
        assert!(b.next_due().is_some_and(|t| t < 4_020_000 + 1_000_000));
        let s = summarize(&b, DropHow::Server, 0.001);
        assert_eq!(s.closed_by_server, 3);
        assert_eq!(s.last_server_close_s, Some(0.01));
        assert_eq!(s.never_closed, 0);
        assert_eq!(s.retry_hints_honoured, 2);
        assert_eq!(s.retry_after_max_s, Some(4.0));
        assert_eq!(s.failures.get("refused"), Some(&1));
    }

    #[test]
    fn due_reconnects_are_taken_in_batches_earliest_first() {
        let mut b = StormBook::new(3, backoff(1000, 1000), 5, 60_000_000);
        for i in 0..3 {
            b.awaiting(i);
            // Hints 30, 20 and 10 ms: due in the opposite order.
            b.closed(i, true, "1001", 0, Some(30 - 10 * i as u64));
        }
        let mut due = Vec::new();
        b.take_due_at_most(50_000, 2, &mut due);
        assert_eq!(due, [2, 1]);
        b.take_due_at_most(50_000, 2, &mut due);
        assert_eq!(due, [0]);
        b.take_due_at_most(50_000, 2, &mut due);
        assert!(due.is_empty());
        assert_eq!(b.attempts(), 3, "each counted once");
    }

    #[test]
    fn hints_can_be_ignored() {
        let mut b = StormBook::new(1, backoff(1000, 1000), 5, 60_000_000);
        b.honour_hint = false;
        b.awaiting(0);
        b.closed(0, true, "1001", 0, Some(9_000));
        assert!(b.next_due().is_some_and(|t| t < 1_000_000));
        assert_eq!(b.hints_honoured, 0);
        assert_eq!(b.max_hint_ms, Some(9_000), "seen, though not honoured");
        let s = summarize(&b, DropHow::Server, 0.0);
        assert_eq!((s.closed_by_server, s.never_closed), (1, 0));
        let mut b = StormBook::new(2, backoff(1000, 1000), 5, 60_000_000);
        b.awaiting(0);
        b.awaiting(1);
        b.closed(1, true, "1001", 0, None);
        assert_eq!(summarize(&b, DropHow::Server, 0.0).never_closed, 1);
    }

    #[test]
    fn mixed_drop_alternates() {
        assert_eq!(DropHow::Mixed.for_client(0), DropHow::Tcp);
        assert_eq!(DropHow::Mixed.for_client(1), DropHow::Frame);
        assert_eq!(DropHow::Reset.for_client(1), DropHow::Reset);
        assert_eq!(DropHow::Server.for_client(0), DropHow::Server);
    }
}
