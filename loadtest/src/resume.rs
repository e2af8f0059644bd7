//! Resuming after a drop: what a client remembers of the event stream
//! (`Track`), the `subscribe` with `since` it sends back, the replies it
//! reads (`subscribed` with `epoch`/`seq`/`recovered`, `resync`), and the
//! arithmetic that turns published and received seqs into `missed`.
//!
//! The protocol (docs/protocol.md, "Resuming"):
//! - `{"type":"subscribe","channels":[…]}` → `{"type":"subscribed",
//!   "channels":[…],"epoch":"E","seq":S}`: S is the last seq assigned before
//!   the subscription took effect; later matching events are delivered.
//! - with `"since":{"epoch":"E","seq":N}` the reply carries
//!   `"recovered":true`, then every missed matching event with seq > N in
//!   seq order, then live events, "no gap, no duplicate"; or
//!   `"recovered":false,"reason":"epoch"|"gone"|"too_many"` and live
//!   events only.
//! - `{"type":"resync","data":{"reason":…,"epoch":"E","seq":S}}` when the
//!   relay dropped events for the client.
//!
//! Replies are rare, so they are parsed with serde; events go through the
//! byte scans in `scan.rs` and cost `Track::event` a few compares.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most holes a client records; past that it only counts them, and its
/// `missed` is a lower bound (`ResumeSummary::holes_untracked`).
pub const MAX_HOLES: usize = 1024;

/// The fields of a `subscribed` reply the swarm uses. All optional: a relay
/// without history answers `{"type":"subscribed","channels":[…]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Subscribed {
    pub epoch: Option<String>,
    pub seq: Option<u64>,
    pub recovered: Option<bool>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Resync {
    pub reason: String,
    pub epoch: Option<String>,
    pub seq: Option<u64>,
}

#[derive(Deserialize)]
struct ResyncMessage {
    data: Resync,
}

pub fn parse_subscribed(payload: &[u8]) -> Result<Subscribed, String> {
    serde_json::from_slice(payload).map_err(|e| format!("bad subscribed reply: {e}"))
}

pub fn parse_resync(payload: &[u8]) -> Result<Resync, String> {
    serde_json::from_slice::<ResyncMessage>(payload)
        .map(|m| m.data)
        .map_err(|e| format!("bad resync message: {e}"))
}

/// `plain` (`{"type":"subscribe","channels":[…]}`) with
/// `"since":{"epoch":E,"seq":N}` added before its closing brace.
pub fn with_since(plain: &[u8], epoch: &str, seq: u64) -> Vec<u8> {
    let body = plain.strip_suffix(b"}").unwrap_or(plain);
    let epoch = serde_json::to_string(epoch).unwrap_or_else(|_| "\"\"".into());
    let mut out = Vec::with_capacity(plain.len() + epoch.len() + 40);
    out.extend_from_slice(body);
    out.extend_from_slice(format!(r#","since":{{"epoch":{epoch},"seq":{seq}}}}}"#).as_bytes());
    out
}

/// How a `subscribed` reply went, for the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A plain subscribe (no `since` sent) was answered.
    Fresh,
    Recovered,
    /// `recovered:false` with this reason (`epoch`, `gone`, `too_many`, or
    /// `none` if the relay gave none).
    NotRecovered(String),
    /// `since` was sent and the reply said nothing about it (a relay
    /// without history).
    Ignored,
}

/// What one client knows of the event stream, across its connections.
#[derive(Debug, Clone, Default)]
pub struct Track {
    /// Epoch of the last `subscribed` reply that named one.
    pub epoch: Option<Box<str>>,
    /// Where the client stands: the highest seq received, or the `seq` of a
    /// reply that said later events follow (the first subscribe, one that
    /// did not recover). `since` resumes from here, and an event above
    /// `last + 1` leaves a hole.
    pub last: u64,
    /// `last` means something (a reply gave a seq, or an event arrived):
    /// seq 0 is a fresh relay's position, not "nothing yet".
    pub known: bool,
    /// (a, b): seqs strictly between a and b never arrived. They count as
    /// missed where they are published events (`count_between`).
    pub holes: Vec<(u64, u64)>,
    /// Holes not recorded (past `MAX_HOLES`).
    pub holes_untracked: u64,
    /// Events at or below `last` (a duplicate, or out of order).
    pub duplicates: u64,
    /// Seq of the last recovered reply: events up to it are replayed.
    pub replay_until: u64,
    pub replayed: u64,
    /// Unix µs of the first and last replayed event.
    pub replay_first_us: u64,
    pub replay_last_us: u64,
    /// Caught up once `last` reaches this (see `StormBook`-side `dropped`).
    pub target: u64,
    /// Unix µs of its last `subscribed` reply.
    pub subscribed_us: Option<u64>,
    /// Unix µs when it caught up after the drop.
    pub caught_up_us: Option<u64>,
}

impl Track {
    /// One event, on the hot path: a few compares.
    #[inline]
    pub fn event(&mut self, seq: u64, now_us: u64) {
        if seq <= self.last {
            self.duplicates += 1;
            return;
        }
        if seq > self.last + 1 && self.known {
            self.hole(self.last, seq);
        }
        self.last = seq;
        self.known = true;
        if seq <= self.replay_until {
            self.replayed += 1;
            if self.replay_first_us == 0 {
                self.replay_first_us = now_us;
            }
            self.replay_last_us = now_us;
        }
        self.check_caught_up(now_us);
    }

    fn hole(&mut self, a: u64, b: u64) {
        if self.holes.len() < MAX_HOLES {
            self.holes.push((a, b));
        } else {
            self.holes_untracked += 1;
        }
    }

    fn check_caught_up(&mut self, now_us: u64) {
        if self.caught_up_us.is_none() && self.subscribed_us.is_some() && self.last >= self.target {
            self.caught_up_us = Some(now_us);
        }
    }

    /// The `since` this client would send: its epoch and position.
    pub fn since(&self) -> Option<(&str, u64)> {
        self.epoch.as_deref().map(|e| (e, self.last))
    }

    /// The drop: from now on the client is caught up once it has every
    /// event up to `target` (and, after its reply, up to the reply's seq).
    pub fn dropped(&mut self, target: u64) {
        self.target = self.target.max(target);
        self.subscribed_us = None;
        self.caught_up_us = None;
    }

    /// A `subscribed` reply arrived; `asked` is the seq sent in `since`, if
    /// one was sent.
    pub fn subscribed(&mut self, r: &Subscribed, asked: Option<u64>, now_us: u64) -> Outcome {
        self.subscribed_us = Some(now_us);
        let new_epoch = match (&self.epoch, &r.epoch) {
            (Some(old), Some(new)) => **old != **new,
            _ => false,
        };
        if let Some(e) = &r.epoch {
            self.epoch = Some(e.as_str().into());
        }
        let outcome = match (asked, r.recovered) {
            (None, _) => Outcome::Fresh,
            (Some(_), Some(true)) => Outcome::Recovered,
            (Some(_), Some(false)) => {
                Outcome::NotRecovered(r.reason.clone().unwrap_or_else(|| "none".into()))
            }
            (Some(_), None) => Outcome::Ignored,
        };
        if let Some(s) = r.seq {
            if outcome == Outcome::Recovered {
                // Everything after `last` up to `s` is to be replayed.
                self.replay_until = s;
            } else if new_epoch || !self.known {
                // A new seq space (or the first subscribe): no hole to
                // count, the client starts from here.
                self.last = s;
                self.known = true;
            } else if s > self.last {
                // Live events only, from s + 1: (last, s] are lost.
                self.hole(self.last, s + 1);
                self.last = s;
            }
            self.target = self.target.max(s);
        }
        self.check_caught_up(now_us);
        outcome
    }

    /// A `resync`: the relay dropped events for this client; it goes on
    /// from the message's seq.
    pub fn resync(&mut self, r: &Resync, now_us: u64) {
        if let Some(s) = r.seq {
            if s > self.last || !self.known {
                if self.known {
                    self.hole(self.last, s + 1);
                }
                self.last = s;
                self.known = true;
            }
        }
        self.check_caught_up(now_us);
    }
}

/// How many of `sorted` lie strictly between `lo` and `hi`.
pub fn count_between(sorted: &[u64], lo: u64, hi: u64) -> u64 {
    if hi <= lo.saturating_add(1) {
        return 0;
    }
    let a = sorted.partition_point(|&p| p <= lo);
    let b = sorted.partition_point(|&p| p < hi);
    b.saturating_sub(a) as u64
}

/// One client's loss against the `published` seqs (sorted): `missed`, the
/// published events inside its holes (they can no longer come: a later one
/// did), and `behind`, those above its position up to `end` (not received
/// by the end of the run).
pub fn loss(t: &Track, published: &[u64], end: u64) -> (u64, u64) {
    let missed = t
        .holes
        .iter()
        .map(|&(a, b)| count_between(published, a, b))
        .sum();
    let behind = count_between(published, t.last, end.saturating_add(1));
    (missed, behind)
}

/// Replies and resyncs the swarm saw, by kind (reset at the drop).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replies {
    /// Plain subscribes answered (no `since` was sent).
    pub fresh: u64,
    pub recovered: u64,
    /// `recovered:false`, by reason.
    pub not_recovered: BTreeMap<String, u64>,
    /// `since` sent, and the reply did not say whether it recovered.
    pub ignored: u64,
    /// `resync` messages, by reason.
    pub resync: BTreeMap<String, u64>,
    /// Replies the swarm could not parse.
    pub unparsed: u64,
}

impl Replies {
    pub fn count(&mut self, o: &Outcome) {
        match o {
            Outcome::Fresh => self.fresh += 1,
            Outcome::Recovered => self.recovered += 1,
            Outcome::NotRecovered(why) => *self.not_recovered.entry(why.clone()).or_insert(0) += 1,
            Outcome::Ignored => self.ignored += 1,
        }
    }
}

/// The resume figures of a storm (times in seconds after the drop).
#[derive(Debug, Clone, Serialize)]
pub struct ResumeSummary {
    /// Whether clients sent `since` on reconnect.
    pub resume: bool,
    /// The newest seq any client had received at the drop.
    pub drop_seq: u64,
    /// Events the swarm's publisher had accepted (all of the run), and the
    /// last seq counted (the marker's, or the newest published).
    pub published: u64,
    pub end_seq: u64,
    pub replies: Replies,
    /// Published events that a client never got although a later one
    /// arrived (summed over clients), and the clients with any.
    pub missed: u64,
    pub missed_clients: u64,
    /// Published events up to `end_seq` a subscribed client had not
    /// received when the run ended, and the clients with any.
    pub behind: u64,
    pub behind_clients: u64,
    pub duplicates: u64,
    /// Clients whose holes overflowed `MAX_HOLES` (their missed is a floor).
    pub holes_untracked: u64,
    /// Events received as replay (seq up to a recovered reply's seq).
    pub replayed: u64,
    /// First to last replayed event, anywhere in the swarm.
    pub replay_window_s: Option<f64>,
    pub replayed_per_s: Option<f64>,
    /// Clients caught up (they had every event up to the newest at the
    /// drop and up to their reply's seq).
    pub caught_up: u64,
    /// Drop to the last client caught up (null unless all are).
    pub all_caught_up_s: Option<f64>,
    pub caught_up_p50_s: Option<f64>,
    pub caught_up_p99_s: Option<f64>,
    /// Each client's own catch-up: its `subscribed` reply to caught up.
    pub catchup_p50_s: Option<f64>,
    pub catchup_p99_s: Option<f64>,
    pub catchup_max_s: Option<f64>,
}

/// The inputs `summarize` needs besides the tracks.
pub struct SummaryInput<'a> {
    pub resume: bool,
    pub drop_unix_us: u64,
    pub drop_seq: u64,
    /// Sorted published seqs (the publisher's and the marker's).
    pub published: &'a [u64],
    pub end_seq: u64,
    pub replies: Replies,
}

/// Sums the storm's members: `(track, subscribed now)` for each.
pub fn summarize<'a>(
    members: impl Iterator<Item = (&'a Track, bool)>,
    i: SummaryInput<'_>,
) -> ResumeSummary {
    let mut s = ResumeSummary {
        resume: i.resume,
        drop_seq: i.drop_seq,
        published: i.published.len() as u64,
        end_seq: i.end_seq,
        replies: i.replies,
        missed: 0,
        missed_clients: 0,
        behind: 0,
        behind_clients: 0,
        duplicates: 0,
        holes_untracked: 0,
        replayed: 0,
        replay_window_s: None,
        replayed_per_s: None,
        caught_up: 0,
        all_caught_up_s: None,
        caught_up_p50_s: None,
        caught_up_p99_s: None,
        catchup_p50_s: None,
        catchup_p99_s: None,
        catchup_max_s: None,
    };
    let secs = |us: u64| us as f64 / 1e6;
    let (mut first, mut last) = (u64::MAX, 0u64);
    let (mut since_drop, mut own) = (Vec::new(), Vec::new());
    let mut n = 0u64;
    for (t, open) in members {
        n += 1;
        let (missed, behind) = loss(t, i.published, i.end_seq);
        s.missed += missed;
        s.missed_clients += u64::from(missed > 0);
        if open {
            s.behind += behind;
            s.behind_clients += u64::from(behind > 0);
        }
        s.duplicates += t.duplicates;
        s.holes_untracked += u64::from(t.holes_untracked > 0);
        s.replayed += t.replayed;
        if t.replayed > 0 {
            first = first.min(t.replay_first_us);
            last = last.max(t.replay_last_us);
        }
        if let Some(c) = t.caught_up_us {
            since_drop.push(c.saturating_sub(i.drop_unix_us));
            own.push(c.saturating_sub(t.subscribed_us.unwrap_or(c)));
        }
    }
    if first < last {
        let w = secs(last - first);
        s.replay_window_s = Some(w);
        s.replayed_per_s = Some(s.replayed as f64 / w);
    }
    since_drop.sort_unstable();
    own.sort_unstable();
    s.caught_up = since_drop.len() as u64;
    let at = |v: &[u64], q: f64| crate::storm::time_to_fraction(v, n, q).map(secs);
    s.all_caught_up_s = (s.caught_up == n).then(|| at(&since_drop, 1.0)).flatten();
    s.caught_up_p50_s = at(&since_drop, 0.5);
    s.caught_up_p99_s = at(&since_drop, 0.99);
    s.catchup_p50_s = at(&own, 0.5);
    s.catchup_p99_s = at(&own, 0.99);
    s.catchup_max_s = own.last().copied().map(secs);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(epoch: &str, seq: u64, recovered: Option<bool>, reason: Option<&str>) -> Subscribed {
        Subscribed {
            epoch: Some(epoch.into()),
            seq: Some(seq),
            recovered,
            reason: reason.map(Into::into),
        }
    }

    #[test]
    fn replies_parse_with_and_without_history() {
        let r = parse_subscribed(
            br#"{"type":"subscribed","channels":["a.*"],"epoch":"k3x","seq":41,"recovered":true}"#,
        );
        assert_eq!(r, Ok(reply("k3x", 41, Some(true), None)));
        let r = parse_subscribed(
            br#"{"type":"subscribed","channels":["a"],"epoch":"k3x","seq":9,"recovered":false,"reason":"too_many"}"#,
        );
        assert_eq!(r, Ok(reply("k3x", 9, Some(false), Some("too_many"))));
        // Today's relay: no history fields at all.
        let r = parse_subscribed(br#"{"type":"subscribed","channels":["a"]}"#);
        assert_eq!(r, Ok(Subscribed::default()));
        assert!(parse_subscribed(br#"{"type":"subscribed","seq":"x"}"#).is_err());
        let r = parse_resync(
            br#"{"type":"resync","data":{"reason":"overflow","epoch":"k3x","seq":77}}"#,
        );
        assert_eq!(
            r,
            Ok(Resync {
                reason: "overflow".into(),
                epoch: Some("k3x".into()),
                seq: Some(77)
            })
        );
        assert!(parse_resync(br#"{"type":"resync"}"#).is_err());
    }

    #[test]
    fn since_is_added_to_the_plain_subscribe() {
        let plain = br#"{"type":"subscribe","channels":["m.s"]}"#;
        let out = with_since(plain, "e\"1", 42);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        assert_eq!(v["channels"][0], "m.s");
        assert_eq!(v["since"]["epoch"], "e\"1");
        assert_eq!(v["since"]["seq"], 42);
    }

    #[test]
    fn counting_published_seqs_between() {
        let p = [3, 5, 6, 9, 12];
        assert_eq!(count_between(&p, 0, 100), 5);
        assert_eq!(count_between(&p, 3, 9), 2, "exclusive at both ends");
        assert_eq!(count_between(&p, 5, 6), 0);
        assert_eq!(count_between(&p, 6, 5), 0);
        assert_eq!(count_between(&p, 12, u64::MAX), 0);
        assert_eq!(count_between(&[], 0, 10), 0);
    }

    #[test]
    fn a_recovered_resume_misses_nothing_and_counts_the_replay() {
        let mut t = Track::default();
        assert_eq!(
            t.subscribed(&reply("e", 10, None, None), None, 0),
            Outcome::Fresh
        );
        assert_eq!(t.last, 10, "the first reply is where the client starts");
        for s in 11..=20 {
            t.event(s, 100);
        }
        assert_eq!(t.since(), Some(("e", 20)));
        t.dropped(20);
        assert_eq!(t.caught_up_us, None);
        // Away while 21..=30 were published; back with since 20.
        let o = t.subscribed(&reply("e", 30, Some(true), None), Some(20), 1000);
        assert_eq!(o, Outcome::Recovered);
        assert_eq!(t.caught_up_us, None, "replay still to come");
        for s in 21..=30 {
            t.event(s, 1000 + s);
        }
        assert_eq!(t.caught_up_us, Some(1030));
        t.event(31, 2000); // live
        assert_eq!(
            (t.replayed, t.replay_first_us, t.replay_last_us),
            (10, 1021, 1030)
        );
        let published: Vec<u64> = (11..=31).collect();
        assert_eq!(loss(&t, &published, 31), (0, 0));
        assert_eq!(t.duplicates, 0);
    }

    #[test]
    fn without_resume_the_gap_is_missed() {
        let mut t = Track::default();
        t.subscribed(&reply("e", 0, None, None), None, 0);
        for s in 1..=5 {
            t.event(s, 1);
        }
        t.dropped(5);
        // 6..=9 published while away; a plain subscribe answers seq 9.
        assert_eq!(
            t.subscribed(&reply("e", 9, None, None), None, 50),
            Outcome::Fresh
        );
        assert_eq!(t.caught_up_us, Some(50), "live from the reply on");
        t.event(10, 60);
        let published: Vec<u64> = (1..=10).collect();
        assert_eq!(loss(&t, &published, 10), (4, 0));
        // Foreign seqs in the gap (other channels) are not missed.
        assert_eq!(loss(&t, &[1, 2, 3, 4, 5, 7, 10], 10), (1, 0));
    }

    #[test]
    fn refusals_epochs_gaps_duplicates_and_the_tail() {
        let mut t = Track::default();
        t.subscribed(&reply("e", 100, None, None), None, 0);
        t.event(101, 1);
        // History gone: (101, 150] are lost, live from 151.
        let o = t.subscribed(&reply("e", 150, Some(false), Some("gone")), Some(101), 5);
        assert_eq!(o, Outcome::NotRecovered("gone".into()));
        assert_eq!(t.holes, [(101, 151)]);
        // A gap in the live stream, then a duplicate.
        t.event(151, 6);
        t.event(154, 7);
        t.event(153, 8);
        assert_eq!(t.duplicates, 1);
        let published: Vec<u64> = (101..=160).collect();
        // 102..=150 (49) and 152..=153 (2) missed; 155..=160 (6) behind.
        assert_eq!(loss(&t, &published, 160), (51, 6));
        // A relay restart: new epoch, new seq space, no hole counted.
        let o = t.subscribed(&reply("f", 3, Some(false), Some("epoch")), Some(154), 9);
        assert_eq!(o, Outcome::NotRecovered("epoch".into()));
        assert_eq!((t.last, t.holes.len()), (3, 2));
        assert_eq!(t.since(), Some(("f", 3)));
        // A resync moves the position and records the hole.
        t.resync(
            &Resync {
                reason: "overflow".into(),
                epoch: Some("f".into()),
                seq: Some(10),
            },
            10,
        );
        assert_eq!((t.last, t.holes.last()), (10, Some(&(3, 11))));
    }

    #[test]
    fn a_relay_without_history_ignores_since() {
        let mut t = Track::default();
        let none = Subscribed::default();
        assert_eq!(t.subscribed(&none, None, 0), Outcome::Fresh);
        assert_eq!(t.since(), None, "no epoch: nothing to resume from");
        assert_eq!(t.subscribed(&none, Some(0), 1), Outcome::Ignored);
    }

    #[test]
    fn holes_are_bounded() {
        let mut t = Track {
            last: 1,
            known: true,
            ..Track::default()
        };
        for k in 0..(MAX_HOLES as u64 + 10) {
            t.event(3 + 2 * k, 0);
        }
        assert_eq!((t.holes.len(), t.holes_untracked), (MAX_HOLES, 10));
    }

    #[test]
    fn summary_sums_members_and_times_the_catch_up() {
        let mut a = Track::default();
        a.subscribed(&reply("e", 10, None, None), None, 0);
        a.dropped(10);
        a.subscribed(&reply("e", 14, Some(true), None), Some(10), 1_000_000);
        for s in 11..=14 {
            a.event(s, 1_000_000 + s * 100_000);
        }
        let mut b = Track::default();
        b.subscribed(&reply("e", 10, None, None), None, 0);
        b.dropped(10);
        b.subscribed(&reply("e", 14, None, None), None, 2_000_000);
        let mut c = b.clone();
        c.caught_up_us = None;
        let published: Vec<u64> = (11..=14).collect();
        let replies = Replies {
            recovered: 1,
            fresh: 2,
            ..Replies::default()
        };
        let s = summarize(
            [(&a, true), (&b, true), (&c, false)].into_iter(),
            SummaryInput {
                resume: true,
                drop_unix_us: 0,
                drop_seq: 10,
                published: &published,
                end_seq: 14,
                replies,
            },
        );
        assert_eq!((s.missed, s.missed_clients), (8, 2));
        assert_eq!((s.behind, s.behind_clients), (0, 0));
        assert_eq!(s.replayed, 4);
        assert_eq!(s.replay_window_s, Some(0.3));
        assert!(s
            .replayed_per_s
            .is_some_and(|r| (r - 4.0 / 0.3).abs() < 1e-9));
        assert_eq!(s.caught_up, 2);
        assert_eq!(s.all_caught_up_s, None, "c never caught up");
        assert_eq!(s.caught_up_p50_s, Some(2.4), "2 of 3: the second");
        assert_eq!(s.caught_up_p99_s, None);
        assert_eq!(s.catchup_max_s, Some(1.4));
    }
}
