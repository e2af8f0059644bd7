//! The history ring and last values: what resume (`since`) and snapshots
//! are answered from.
//!
//! Pure data: no I/O and no clock. The sequencer pushes every event it has
//! just sequenced, under its lock, with a monotonic `now_ms`, and calls
//! [`History::expire`] from a timer so that age applies without traffic.
//!
//! The ring holds the same `Arc<Sequenced>` every reactor reads: a frame is
//! built once and never copied here. It is ordered by `seq`. Seqs in it may
//! have holes (in JetStream mode the seq is the stream's, and a relay may
//! not receive every subject), so whether a resume can be answered is not
//! read from contiguity but from [`History::resumable_from`]: the lowest
//! `since` after which the history holds every event the relay received,
//! with nothing lost in between (raised by evictions and by upstream cuts),
//! and from what the relay received at all (its coverage, when the
//! upstream filters by interest).
//!
//! Memory, for a configuration [`HistoryConfig`]:
//! - the ring: at most `max_bytes` of frames (`bytes()` counts both frames
//!   of each event, plain and deflated), plus per held event about 16 bytes
//!   in the ring, the `Sequenced` allocation (152 bytes with its counts, and the channel name)
//!   and the shared buffers' headers (about 32 bytes each): about 200 bytes
//!   and the channel name;
//! - last values: at most `max_channels` events, each held even after it has
//!   left the ring. `last_value_bytes()` counts their frames, including those
//!   still in the ring (the same bytes, counted in both). The bound is
//!   `max_channels` times the largest event a producer may publish; the
//!   operator chooses which channels match `last_value`.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::sequencer::Sequenced;
use crate::config::HistoryConfig;
use crate::route::pattern_matches;

/// Why a resume cannot be answered from the history; the client then
/// reloads its state (`recovered:false` with [`Gap::reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The client's `seq` is from another run of the relay.
    Epoch,
    /// Some event after the client's `seq` has left the history (or the
    /// history is off, or the `seq` was never assigned).
    Gone,
    /// More than `max_replay` events match: a reload is cheaper.
    TooMany,
}

impl Gap {
    /// The `reason` of `recovered:false`, as the protocol spells it.
    pub fn reason(self) -> &'static str {
        match self {
            Gap::Epoch => "epoch",
            Gap::Gone => "gone",
            Gap::TooMany => "too_many",
        }
    }
}

/// The answer to a resume.
#[derive(Debug)]
pub enum Replay {
    /// Every matching event after `since`, oldest first (possibly none).
    Recovered(Vec<Arc<Sequenced>>),
    NotRecovered(Gap),
}

/// One event in the ring, with when it was pushed.
#[derive(Debug)]
struct Held {
    event: Arc<Sequenced>,
    at_ms: u64,
}

/// A last value, hashed and compared by its channel so the set needs no
/// second copy of the name as a key.
#[derive(Debug)]
struct LastValue(Arc<Sequenced>);

impl Borrow<str> for LastValue {
    fn borrow(&self) -> &str {
        &self.0.channel
    }
}

impl Hash for LastValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash as the `str` it borrows as, for lookups by `&str`.
        self.0.channel.hash(state);
    }
}

impl PartialEq for LastValue {
    fn eq(&self, other: &Self) -> bool {
        self.0.channel == other.0.channel
    }
}

impl Eq for LastValue {}

/// A set of patterns, as coverage holds it.
type Patterns = Box<[Box<str>]>;

/// Most coverage changes remembered; past it the oldest is forgotten and
/// resumes from before it are refused (they would be refused soon anyway).
const MAX_COVERAGE_CHANGES: usize = 4096;

/// See the module doc.
#[derive(Debug)]
pub struct History {
    epoch: Box<str>,
    /// Events by rising seq (with holes), ending at most at `newest_seq`.
    ring: VecDeque<Held>,
    ring_bytes: usize,
    /// The highest seq pushed (or the base of this epoch); 0 before the first.
    newest_seq: u64,
    /// The highest seq after which something is missing: an evicted event,
    /// or events lost upstream (a cut). Only rises within an epoch.
    lost_to: u64,
    /// Resumes need `since` at least this, whatever was evicted: the base
    /// of an epoch until the events before it are backfilled.
    complete_from: u64,
    /// What the relay receives, by seq: from `.0` on, the channels matching
    /// `.1` (`None`: every channel). Empty: every channel, always.
    coverage: VecDeque<(u64, Option<Patterns>)>,
    /// The latest `at_ms` in the ring, so that times stay ordered.
    newest_at: u64,
    max_events: usize,
    max_bytes: usize,
    max_age_ms: u64,
    max_replay: usize,
    max_channels: usize,
    last_value_patterns: Box<[Box<str>]>,
    last_values: HashSet<LastValue>,
    last_value_bytes: usize,
    last_values_refused: u64,
}

impl History {
    /// An empty history of this run (`epoch`, see [`new_epoch`]). The
    /// config is expected to have passed `Config::validate`; invalid
    /// `last_value` patterns only match oddly, they cannot panic.
    pub fn new(config: &HistoryConfig, epoch: impl Into<Box<str>>) -> History {
        History {
            epoch: epoch.into(),
            ring: VecDeque::new(),
            ring_bytes: 0,
            newest_seq: 0,
            lost_to: 0,
            complete_from: 0,
            coverage: VecDeque::new(),
            newest_at: 0,
            max_events: config.max_events,
            max_bytes: config.max_bytes,
            max_age_ms: u64::try_from(config.max_age.as_millis()).unwrap_or(u64::MAX),
            max_replay: config.max_replay,
            max_channels: config.max_channels,
            last_value_patterns: config
                .last_value
                .iter()
                .map(|p| p.as_str().into())
                .collect(),
            last_values: HashSet::new(),
            last_value_bytes: 0,
            last_values_refused: 0,
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Keeps the event just sequenced, pushed at `now_ms`, and evicts what
    /// no longer fits by count, bytes or age.
    ///
    /// Seqs must rise; they may jump (seqs given by JetStream have holes
    /// where the relay receives nothing). A jump is not a loss: events lost
    /// upstream are declared with [`History::cut`].
    pub fn push(&mut self, event: Arc<Sequenced>, now_ms: u64) {
        if event.seq <= self.newest_seq {
            debug_assert!(false, "bug: seq {} after {}", event.seq, self.newest_seq);
            return;
        }
        self.newest_seq = event.seq;
        self.hold(event, now_ms);
    }

    /// Keeps an event from before this epoch's base (read back from
    /// JetStream at start), in rising seq order, as [`History::push`] does.
    pub fn push_backfill(&mut self, event: Arc<Sequenced>, now_ms: u64) {
        let newest_held = self.ring.back().map_or(0, |held| held.event.seq);
        if event.seq <= newest_held.max(self.lost_to) || event.seq > self.newest_seq {
            debug_assert!(false, "bug: backfill seq {} out of order", event.seq);
            return;
        }
        self.hold(event, now_ms);
    }

    fn hold(&mut self, event: Arc<Sequenced>, now_ms: u64) {
        self.keep_last_value(&event);
        if self.max_events == 0 {
            return;
        }
        // Callers read the clock before taking the sequencer's lock, so
        // times may arrive slightly out of order; age eviction from the
        // front needs them ordered.
        self.newest_at = self.newest_at.max(now_ms);
        self.ring_bytes += event.bytes();
        self.ring.push_back(Held {
            event,
            at_ms: self.newest_at,
        });
        while self.ring.len() > self.max_events || self.ring_bytes > self.max_bytes {
            self.pop_oldest();
        }
        self.expire(now_ms);
    }

    /// Evicts events held for `max_age` or longer. Called on a timer as
    /// well as by `push`, so between calls an event may outstay its age by
    /// up to the timer's period.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(oldest) = self.ring.front() {
            if now_ms.saturating_sub(oldest.at_ms) < self.max_age_ms {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(held) = self.ring.pop_front() {
            self.ring_bytes -= held.event.bytes();
            self.lost_to = self.lost_to.max(held.event.seq);
        }
    }

    /// Events were lost upstream (the relay was cut off from NATS, or
    /// JetStream no longer had them): a resume from any `since` below
    /// `resumable_from` spans the loss and is refused (`Gone`).
    pub fn cut(&mut self, resumable_from: u64) {
        self.lost_to = self.lost_to.max(resumable_from);
    }

    /// A new order (a new epoch, JetStream's stream): everything held goes,
    /// last values too, and seqs continue after `base`. Resumes need `since`
    /// at least `base` until [`History::backfilled`] says the events before
    /// it are in.
    pub fn restart(&mut self, epoch: &str, base: u64) {
        self.epoch = epoch.into();
        self.ring.clear();
        self.ring_bytes = 0;
        self.newest_seq = base;
        self.lost_to = 0;
        self.complete_from = base;
        self.coverage.clear();
        self.last_values.clear();
        self.last_value_bytes = 0;
    }

    /// The events after `from` up to the epoch's base were pushed (the
    /// backfill at start): resumes from `from` on can be answered, as far
    /// as nothing was evicted since.
    pub fn backfilled(&mut self, from: u64) {
        self.complete_from = self.complete_from.min(from);
    }

    /// From seq `from` on, the relay receives the channels matching
    /// `patterns` only (`None`: every channel). A resume is answered only if
    /// everything after its `since` covered its patterns.
    pub fn cover(&mut self, from: u64, patterns: Option<Vec<Box<str>>>) {
        let patterns = patterns.map(Vec::into_boxed_slice);
        if self
            .coverage
            .back()
            .is_some_and(|(_, last)| *last == patterns)
        {
            return;
        }
        while self.coverage.back().is_some_and(|(at, _)| *at >= from) {
            self.coverage.pop_back();
        }
        if self.coverage.is_empty() && patterns.is_none() {
            return;
        }
        self.coverage.push_back((from, patterns));
        // Changes no resume can reach any more (before the lowest `since`
        // answered) are forgotten; so is the oldest past the bound, which
        // then counts as a loss.
        let floor = self.resumable_from();
        while self.coverage.len() >= 2 && self.coverage[1].0 <= floor.saturating_add(1) {
            self.coverage.pop_front();
        }
        if self.coverage.len() > MAX_COVERAGE_CHANGES {
            self.coverage.pop_front();
            if let Some((next, _)) = self.coverage.front() {
                self.lost_to = self.lost_to.max(next.saturating_sub(1));
            }
        }
    }

    /// The lowest `since` a resume can be answered from (given coverage).
    pub fn resumable_from(&self) -> u64 {
        self.lost_to.max(self.complete_from)
    }

    /// Whether every event after `since` the relay received covered `patterns`.
    fn covered<P: AsRef<str>>(&self, since: u64, patterns: &[P]) -> bool {
        let changes = self.coverage.len();
        (0..changes).all(|i| {
            let reaches_past_since =
                i + 1 == changes || self.coverage[i + 1].0 > since.saturating_add(1);
            match &self.coverage[i].1 {
                _ if !reaches_past_since => true,
                None => true,
                Some(held) => patterns.iter().all(|p| {
                    held.iter()
                        .any(|h| crate::route::pattern_covers(h, p.as_ref()))
                }),
            }
        })
    }

    /// Keeps `event` as its channel's last value if it is newer than the
    /// one kept (an event read back from JetStream for a cold cache); it
    /// does not enter the ring.
    pub fn seed_last_value(&mut self, event: &Arc<Sequenced>) {
        match self.last_values.get(&*event.channel) {
            Some(kept) if kept.0.seq >= event.seq => {}
            _ => self.keep_last_value(event),
        }
    }

    /// When `max_channels` channels already keep a last value, a new
    /// channel is refused (and counted), rather than evicting another:
    /// the channels already kept stay complete and stable, and the counter
    /// tells the operator to raise the limit or narrow `last_value`.
    /// Channels are never removed; their value is replaced by the next event.
    fn keep_last_value(&mut self, event: &Arc<Sequenced>) {
        let bytes = event.bytes();
        if let Some(kept) = self.last_values.get(&*event.channel) {
            // A value read back from JetStream may be newer than a
            // backfilled event of the same channel.
            if kept.0.seq > event.seq {
                return;
            }
            let old = self.last_values.replace(LastValue(Arc::clone(event)));
            let old = old.expect("bug: a channel just found is in the set");
            self.last_value_bytes = self.last_value_bytes - old.0.bytes() + bytes;
            return;
        }
        let wanted = self
            .last_value_patterns
            .iter()
            .any(|p| pattern_matches(p, &event.channel));
        if !wanted {
            return;
        }
        if self.last_values.len() >= self.max_channels {
            self.last_values_refused += 1;
            return;
        }
        self.last_values.insert(LastValue(Arc::clone(event)));
        self.last_value_bytes += bytes;
    }

    /// [`History::replay`] for a client that gives the epoch its `seq` came from.
    pub fn resume<P: AsRef<str>>(
        &self,
        epoch: &str,
        since: u64,
        until: u64,
        patterns: &[P],
        allow: impl Fn(&str) -> bool,
    ) -> Replay {
        if epoch != &*self.epoch {
            return Replay::NotRecovered(Gap::Epoch);
        }
        self.replay(since, until, patterns, allow)
    }

    /// Every held event with `since` < seq <= `until` whose channel matches
    /// one of `patterns` and passes `allow`, oldest first. (`until` is where
    /// live delivery takes over: later events reach the client live.)
    ///
    /// `Gone` when an event after `since` is no longer held or was lost
    /// upstream (`since` below [`History::resumable_from`]), when the
    /// relay did not receive every channel of `patterns` all along since
    /// then (coverage), when the history is off (`max_events = 0`), and
    /// when `since` is past the newest seq: the client cannot have seen a
    /// seq never assigned here, so its state is from elsewhere and only a
    /// reload makes it right. `since` equal to the newest seq recovers with
    /// nothing to replay.
    pub fn replay<P: AsRef<str>>(
        &self,
        since: u64,
        until: u64,
        patterns: &[P],
        allow: impl Fn(&str) -> bool,
    ) -> Replay {
        if self.max_events == 0
            || since < self.resumable_from()
            || since > self.newest_seq
            || !self.covered(since, patterns)
        {
            return Replay::NotRecovered(Gap::Gone);
        }
        let start = self.ring.partition_point(|held| held.event.seq <= since);
        let mut events = Vec::new();
        for held in self.ring.range(start..) {
            if held.event.seq > until {
                break;
            }
            let channel = &*held.event.channel;
            if matches_any(patterns, channel) && allow(channel) {
                if events.len() == self.max_replay {
                    return Replay::NotRecovered(Gap::TooMany);
                }
                events.push(Arc::clone(&held.event));
            }
        }
        Replay::Recovered(events)
    }

    /// The last value of every kept channel matching one of `patterns` and
    /// passing `allow`, in seq order, leaving out those whose seq `keep`
    /// refuses (events a replay already sent, or that will come live). At
    /// most `max_channels` events.
    pub fn snapshot<P: AsRef<str>>(
        &self,
        patterns: &[P],
        keep: impl Fn(u64) -> bool,
        allow: impl Fn(&str) -> bool,
    ) -> Vec<Arc<Sequenced>> {
        let wanted = |event: &Arc<Sequenced>| keep(event.seq) && allow(&event.channel);
        let mut events: Vec<Arc<Sequenced>> = if patterns.iter().all(|p| is_literal(p.as_ref())) {
            // A lookup per channel rather than a scan of every kept channel.
            patterns
                .iter()
                .filter_map(|p| self.last_values.get(p.as_ref()))
                .map(|kept| &kept.0)
                .filter(|event| wanted(event))
                .cloned()
                .collect()
        } else {
            self.last_values
                .iter()
                .map(|kept| &kept.0)
                .filter(|event| matches_any(patterns, &event.channel) && wanted(event))
                .cloned()
                .collect()
        };
        events.sort_unstable_by_key(|event| event.seq);
        // A channel named twice among literal patterns.
        events.dedup_by_key(|event| event.seq);
        events
    }

    /// The latest event of `channel`, if it keeps a last value.
    pub fn last_value(&self, channel: &str) -> Option<&Arc<Sequenced>> {
        self.last_values.get(channel).map(|kept| &kept.0)
    }

    /// The seq of the oldest held event.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.ring.front().map(|held| held.event.seq)
    }

    /// The highest seq pushed, held or not; 0 before the first push.
    pub fn newest_seq(&self) -> u64 {
        self.newest_seq
    }

    /// Events held for resume.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Frame bytes held for resume (at most `max_bytes`).
    pub fn bytes(&self) -> usize {
        self.ring_bytes
    }

    /// Channels keeping a last value (at most `max_channels`).
    pub fn last_value_count(&self) -> usize {
        self.last_values.len()
    }

    /// Frame bytes of the last values, whether or not still in the ring.
    pub fn last_value_bytes(&self) -> usize {
        self.last_value_bytes
    }

    /// Events on a `last_value` channel not kept because `max_channels`
    /// channels already were.
    pub fn last_values_refused(&self) -> u64 {
        self.last_values_refused
    }
}

fn matches_any<P: AsRef<str>>(patterns: &[P], channel: &str) -> bool {
    patterns
        .iter()
        .any(|p| pattern_matches(p.as_ref(), channel))
}

/// True if the pattern matches only itself (as `route` decides it: a `>`
/// is a wildcard only as the last segment).
fn is_literal(pattern: &str) -> bool {
    pattern.split('.').all(|segment| segment != "*") && !pattern.ends_with(".>") && pattern != ">"
}

/// A new epoch: 12 characters (60 bits) of lowercase Crockford base32, so
/// it is short, URL- and JSON-safe and reads unambiguously.
///
/// The bits come from std's `RandomState`, whose keys are drawn from the
/// OS's randomness once per thread, hashed with the wall time and the
/// process id so two starts never share an epoch even if those keys were
/// fixed. Not a secret: it only tells runs of the relay apart.
pub fn new_epoch() -> String {
    let mut hasher = RandomState::new().build_hasher();
    std::process::id().hash(&mut hasher);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    nanos.hash(&mut hasher);
    epoch_text(hasher.finish())
}

/// The epoch of a JetStream stream: the same on every relay that reads it,
/// and new when the stream is deleted and created again. A fixed hash
/// (FNV-1a) of its name and creation time, so relays of different builds
/// agree.
pub fn stream_epoch(name: &str, created_unix_nanos: i128) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let created = created_unix_nanos.to_le_bytes();
    for byte in name.bytes().chain([0]).chain(created) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    epoch_text(hash)
}

fn epoch_text(bits: u64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    (0..12)
        .map(|i| ALPHABET[(bits >> (i * 5)) as usize & 31] as char)
        .collect()
}

#[cfg(test)]
mod tests;
