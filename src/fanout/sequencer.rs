//! The sequencer: the one place every event gets its `seq` and its frame.
//!
//! Every producer (a `Publisher` thread, `POST /api/publish` on any reactor,
//! later the NATS upstream) appends to one bounded log under one lock, so the
//! order events are appended in is the order every reactor reads them in:
//! a connection gets each matching event in seq order whichever reactor holds
//! it. Each reactor reads the log from its own cursor; an event leaves the
//! log once every reactor has read it.
//!
//! The sequencer also appends each event to the history (`fanout::history`)
//! under the same lock, so a reactor that answers a resume sees exactly the
//! events it has fanned out: the hand-over from replay to live has no gap
//! and no duplicate.
//!
//! This is also the one back-pressure path. Every producer feels it the same
//! way (`publish` waits, `try_publish` and an HTTP publish get `Full`, and
//! the reactor holds the request until it is woken) while either:
//! - a reactor is behind its sockets (it paused intake: a socket that keeps
//!   up has a queue past half its limits), until its next flush pass has
//!   written; this keeps a saturated relay's latency at about one pass
//!   rather than a full log's worth of events;
//! - or the log holds `capacity` events not yet read by the slowest
//!   reactor (bursts larger than a reactor takes in one turn).

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;

use super::delivery::{Fate, Shaping};
use super::event::EncodedEvent;
use super::history::{History, Replay};
use super::queue::{Frame, SharedFrame};
use crate::stats::Stats;

/// An event with its place in the order: built once, shared by every reactor.
#[derive(Debug)]
pub struct Sequenced {
    pub seq: u64,
    pub channel: Box<str>,
    /// The complete WebSocket text frame every subscriber gets.
    pub frame: Bytes,
    /// The same message compressed (permessage-deflate), for subscribers
    /// that negotiated it; only with `compression = "on"`, for events of at
    /// least `compression_min_size` bytes.
    pub deflated: Option<Bytes>,
    /// What readers' queues do with it (`[[delivery]]`).
    pub fate: Fate,
    /// When it was appended, in ms on the sequencer's clock.
    pub appended_ms: u64,
    /// The same moment as an `Instant`, for the publish-to-write latency.
    pub appended_at: Instant,
    /// Set on the log's entries that are not events (no frame, not in the
    /// history): what the reactors must do at this point of the order.
    pub mark: Option<Box<Mark>>,
}

/// A point in the order where something other than an event happened.
/// Its entry's `seq` is the last event's seq before it (or the new base).
#[derive(Debug, PartialEq, Eq)]
pub enum Mark {
    /// Events were lost upstream after `seq` (the relay was cut off from
    /// NATS, or JetStream no longer had them): resumes across this point are
    /// refused, and subscribers get a `resync` notice (reason `upstream`).
    Cut,
    /// A new order begins under this epoch, positions continuing from `seq`
    /// (JetStream: the stream became known, or was created anew).
    Epoch(Arc<str>),
}

impl Sequenced {
    /// Bytes of its frames, deflated one included: what holding it costs.
    pub fn bytes(&self) -> usize {
        self.frame.len() + self.deflated.as_ref().map_or(0, Bytes::len)
    }

    /// A handle to the plain or the deflated frame (which must exist) with
    /// the event's fate, as queues hold it.
    pub fn shared_frame(&self, deflated: bool) -> Frame {
        let bytes = if deflated {
            self.deflated
                .clone()
                .expect("bug: no deflated frame to share")
        } else {
            self.frame.clone()
        };
        Rc::new(SharedFrame {
            bytes,
            fate: self.fate,
        })
    }
}

/// Producers wait while the oldest event a reactor has not read yet is
/// older than this: a reactor that busy (though not yet behind its sockets)
/// would only turn more events into latency. Normally a reactor takes new
/// events every turn, a few milliseconds at most.
const MAX_AHEAD_MS: u64 = 20;

/// Why an append did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendError {
    /// The log is full: the slowest reactor is `capacity` events behind.
    Full,
    /// The relay is stopping.
    Closed,
}

/// Wakes one reactor at most once per burst of appends.
#[doc(hidden)]
pub struct Wakeup {
    waker: mio::Waker,
    /// Set by the first producer of a burst, cleared by the reactor before it
    /// reads; so a burst of N appends costs one `eventfd` write.
    pending: AtomicBool,
}

impl Wakeup {
    pub fn new(waker: mio::Waker) -> Self {
        Wakeup {
            waker,
            pending: AtomicBool::new(false),
        }
    }

    pub fn wake(&self) {
        // A plain load first: when the reactor is busy the flag is already
        // set, and a swap would take the cache line from it every time.
        if !self.pending.load(Ordering::Acquire) && !self.pending.swap(true, Ordering::AcqRel) {
            // A failed wake (only when the eventfd counter would overflow,
            // i.e. the reactor has many unread wakes) still leaves the
            // reactor with a wake to read.
            let _ = self.waker.wake();
        }
    }

    /// Wakes the reactor even if a wake is already pending (for shutdown).
    pub fn wake_now(&self) {
        self.pending.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }

    /// Called by the reactor before it reads the log.
    pub fn clear(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

struct Log {
    /// The seq of the last event appended (or the base of the epoch): a
    /// relay numbering events itself gives the next one this plus one.
    last_seq: u64,
    /// The position of the next entry in the log. Positions count entries
    /// (events and marks), from 1; they are not seqs, which an upstream
    /// (JetStream) may give with holes.
    next_pos: u64,
    /// Entries from position `next_pos - events.len()` on.
    events: VecDeque<Arc<Sequenced>>,
    /// Per reactor: the position it reads next.
    cursors: Vec<u64>,
    /// A producer (publisher thread or held HTTP request) found the log
    /// full and waits for room.
    room_wanted: bool,
    /// Per reactor: intake paused (behind its sockets); and how many are.
    paused: Vec<bool>,
    paused_count: usize,
    closed: bool,
    /// Recent events and last values, for resumes and snapshots.
    history: History,
}

impl Log {
    /// Whether producers must wait for `incoming` more events at `now_ms`.
    fn no_room_for(&self, incoming: usize, capacity: usize, now_ms: u64) -> bool {
        self.paused_count > 0
            || self.unread() + incoming > capacity
            || self
                .oldest_unread_ms()
                .is_some_and(|at| at + MAX_AHEAD_MS < now_ms)
    }

    /// When the oldest event the slowest reactor has not read was appended.
    fn oldest_unread_ms(&self) -> Option<u64> {
        let slowest = self.cursors.iter().copied().min()?;
        let index = slowest.checked_sub(self.first_pos())?;
        self.events.get(index as usize).map(|e| e.appended_ms)
    }

    fn first_pos(&self) -> u64 {
        self.next_pos - self.events.len() as u64
    }

    /// Entries the slowest reactor has not read yet.
    fn unread(&self) -> usize {
        let slowest = self.cursors.iter().copied().min().unwrap_or(self.next_pos);
        (self.next_pos - slowest) as usize
    }
}

/// See the module doc. Public for the benches; embedders use `Publisher`.
#[doc(hidden)]
pub struct Sequencer {
    log: Mutex<Log>,
    /// Signalled when room frees up, for `publish` callers that wait.
    room: Condvar,
    /// One per reactor, by reactor index.
    wakeups: Box<[Arc<Wakeup>]>,
    capacity: usize,
    /// Events are counted here, once, not by each reactor.
    stats: Arc<Stats>,
    /// The history's epoch, readable without the log's lock; and how many
    /// times it changed (JetStream mode), so a reactor sees cheaply that it
    /// has not read the change yet.
    epoch: Mutex<Arc<str>>,
    epoch_changes: AtomicU64,
    /// The epoch the log began with: a reactor starts from it and reads
    /// every change after it from the log.
    first_epoch: Arc<str>,
    /// The history's clock (age limits).
    started: Instant,
    /// Delivery rules and compression, which producers apply as they encode.
    shaping: Shaping,
}

impl Sequencer {
    pub fn new(
        capacity: usize,
        wakeups: Vec<Arc<Wakeup>>,
        stats: Arc<Stats>,
        history: History,
        shaping: Shaping,
    ) -> Sequencer {
        let epoch: Arc<str> = history.epoch().into();
        let log = Log {
            last_seq: 0,
            next_pos: 1,
            events: VecDeque::new(),
            cursors: vec![1; wakeups.len()],
            room_wanted: false,
            paused: vec![false; wakeups.len()],
            paused_count: 0,
            closed: false,
            history,
        };
        Sequencer {
            log: Mutex::new(log),
            room: Condvar::new(),
            wakeups: wakeups.into(),
            capacity,
            stats,
            first_epoch: Arc::clone(&epoch),
            epoch: Mutex::new(epoch),
            epoch_changes: AtomicU64::new(0),
            started: Instant::now(),
            shaping,
        }
    }

    /// What producers apply to each event as they encode it
    /// (`Event::encode_shaped`).
    pub fn shaping(&self) -> &Shaping {
        &self.shaping
    }

    /// The current epoch: positions (`seq`) are meaningful within it. A
    /// relay on its own keeps one per run; in JetStream mode it is the
    /// stream's, and changes when the stream becomes known.
    pub fn epoch(&self) -> Arc<str> {
        Arc::clone(&self.epoch.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The epoch the log began with.
    pub fn first_epoch(&self) -> Arc<str> {
        Arc::clone(&self.first_epoch)
    }

    /// How many times the epoch changed since start.
    pub fn epoch_changes(&self) -> u64 {
        self.epoch_changes.load(Ordering::Acquire)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The held events matching `patterns` (and `allow`) after `since` up to
    /// `until`, for a resume from `epoch`; or why the gap cannot be filled.
    pub fn resume(
        &self,
        epoch: &str,
        since: u64,
        until: u64,
        patterns: &[String],
        allow: impl Fn(&str) -> bool,
    ) -> Replay {
        self.lock()
            .history
            .resume(epoch, since, until, patterns, allow)
    }

    /// The last values of the channels matching `patterns`, in seq order,
    /// those whose seq `keep` accepts.
    pub fn snapshot(
        &self,
        patterns: &[String],
        keep: impl Fn(u64) -> bool,
        allow: impl Fn(&str) -> bool,
    ) -> Vec<Arc<Sequenced>> {
        self.lock().history.snapshot(patterns, keep, allow)
    }

    /// The latest event of `channel`, if it keeps a last value.
    pub fn last_value(&self, channel: &str) -> Option<Arc<Sequenced>> {
        self.lock().history.last_value(channel).cloned()
    }

    /// Lets events older than `history.max_age` go, when nothing is
    /// appended to do it.
    pub fn expire_history(&self) {
        let now = self.now_ms();
        self.lock().history.expire(now);
    }

    /// Events and bytes the history holds.
    pub fn history_size(&self) -> (usize, usize) {
        let log = self.lock();
        (log.history.len(), log.history.bytes())
    }

    /// Events the slowest reactor has not read yet.
    pub fn unread(&self) -> usize {
        self.lock().unread()
    }

    pub fn is_full(&self) -> bool {
        self.lock().no_room_for(1, self.capacity, self.now_ms())
    }

    /// [`Sequencer::is_full`] for a reactor holding HTTP publishes: when it
    /// is full, every reactor is woken once room frees up, as after a failed
    /// append. A reactor retries its held publishes only when it turns, and
    /// a look that left no wake behind let one sleep, once its pass was
    /// written, while the producer it held waited for it.
    pub fn is_full_wake_on_room(&self) -> bool {
        let mut log = self.lock();
        let full = log.no_room_for(1, self.capacity, self.now_ms());
        if full {
            log.room_wanted = true;
        }
        full
    }

    /// A reactor paused its intake (`paused`) or resumed it. Producers wait
    /// while any reactor is paused; the last resume lets them go on.
    pub fn set_paused(&self, reactor: usize, paused: bool) {
        let mut log = self.lock();
        if log.paused[reactor] == paused {
            return;
        }
        log.paused[reactor] = paused;
        if paused {
            log.paused_count += 1;
            return;
        }
        log.paused_count -= 1;
        let woke = log.paused_count == 0 && std::mem::take(&mut log.room_wanted);
        drop(log);
        if woke {
            self.room.notify_all();
            self.wake_all();
        }
    }

    /// Appends one event, waiting while the log is full.
    pub fn append_waiting(&self, event: EncodedEvent) -> Result<u64, AppendError> {
        let mut log = self.lock();
        loop {
            if log.closed {
                return Err(AppendError::Closed);
            }
            if !log.no_room_for(1, self.capacity, self.now_ms()) {
                break;
            }
            log.room_wanted = true;
            log = self
                .room
                .wait(log)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let seq = log.last_seq + 1;
        self.push(&mut log, seq, event);
        drop(log);
        self.wake_all();
        Ok(seq)
    }

    /// Appends every event or none, without waiting; returns the first seq
    /// (the others follow it). Takes the events on success and leaves them
    /// on failure, for a retry. With `Full`, every reactor is woken once
    /// room frees up.
    ///
    /// More events at once than `capacity` are taken only into an empty log,
    /// so the log never holds more than `capacity` events or one request's.
    pub fn try_append(&self, events: &mut Vec<EncodedEvent>) -> Result<u64, AppendError> {
        let mut log = self.lock();
        self.make_room(&mut log, events.len())?;
        let first = log.last_seq + 1;
        for event in events.drain(..) {
            let seq = log.last_seq + 1;
            self.push(&mut log, seq, event);
        }
        drop(log);
        self.wake_all();
        Ok(first)
    }

    /// Whether `count` events can go in at once: room for them all, or the
    /// whole log for a request larger than it. With `Full`, every reactor is
    /// woken once room frees up.
    fn make_room(&self, log: &mut Log, count: usize) -> Result<(), AppendError> {
        if log.closed {
            return Err(AppendError::Closed);
        }
        let needed = count.min(self.capacity);
        if log.no_room_for(needed, self.capacity, self.now_ms())
            || (count > self.capacity && log.unread() > 0)
        {
            log.room_wanted = true;
            return Err(AppendError::Full);
        }
        Ok(())
    }

    /// [`Sequencer::try_append`] for events numbered upstream (JetStream's
    /// stream sequence): each keeps its seq, which must rise past every seq
    /// appended before (holes allowed); one that does not is dropped, and
    /// counted in the returned number.
    pub fn try_append_numbered(
        &self,
        events: &mut Vec<(u64, EncodedEvent)>,
    ) -> Result<usize, AppendError> {
        let mut log = self.lock();
        self.make_room(&mut log, events.len())?;
        let mut stale = 0;
        for (seq, event) in events.drain(..) {
            if seq <= log.last_seq {
                stale += 1;
                continue;
            }
            self.push(&mut log, seq, event);
        }
        drop(log);
        self.wake_all();
        Ok(stale)
    }

    /// Puts events from before the epoch's base (read back from JetStream
    /// at start) into the history only: reactors never deliver them, and
    /// resumes and snapshots are answered from them. Rising seqs, each at
    /// most the base.
    pub fn backfill(&self, events: Vec<(u64, EncodedEvent)>) {
        let mut log = self.lock();
        for (seq, event) in events {
            let sequenced = self.sequenced(seq, event);
            let now = sequenced.appended_ms;
            log.history.push_backfill(sequenced, now);
        }
    }

    /// The backfill reached the base: resumes from `from` on are answered.
    pub fn backfilled(&self, from: u64) {
        self.lock().history.backfilled(from);
    }

    /// Keeps events read back from JetStream as their channels' last
    /// values where the cache has none or an older one (a cold start).
    pub fn seed_last_values(&self, events: Vec<(u64, EncodedEvent)>) {
        let mut log = self.lock();
        for (seq, event) in events {
            let sequenced = self.sequenced(seq, event);
            log.history.seed_last_value(&sequenced);
        }
    }

    /// Events were lost upstream after the last one appended: resumes from
    /// before `resumable_from` (by default the next seq) are refused, and
    /// reactors tell their subscribers (`resync`, reason `upstream`).
    pub fn cut(&self, resumable_from: Option<u64>) {
        let mut log = self.lock();
        let from = resumable_from.unwrap_or(log.last_seq + 1);
        log.history.cut(from);
        self.push_mark(&mut log, Mark::Cut);
        drop(log);
        self.wake_all();
    }

    /// A new order begins: `epoch`, with seqs continuing after `base`. The
    /// history starts over; reactors take the new epoch and position when
    /// they read this point, and tell their subscribers.
    pub fn restart(&self, epoch: &str, base: u64) {
        let mut log = self.lock();
        log.history.restart(epoch, base);
        log.last_seq = base;
        let epoch: Arc<str> = epoch.into();
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&epoch);
        self.epoch_changes.fetch_add(1, Ordering::AcqRel);
        self.push_mark(&mut log, Mark::Epoch(epoch));
        drop(log);
        self.wake_all();
    }

    /// From the next seq on, the relay receives only the channels matching
    /// `patterns` (`None`: every channel), for the history's coverage.
    pub fn cover(&self, patterns: Option<Vec<Box<str>>>) {
        let mut log = self.lock();
        let from = log.last_seq + 1;
        log.history.cover(from, patterns);
    }

    /// [`Sequencer::cover`] from seq `from` on (at least the next seq).
    pub fn cover_at(&self, from: u64, patterns: Option<Vec<Box<str>>>) {
        let mut log = self.lock();
        let from = from.max(log.last_seq + 1);
        log.history.cover(from, patterns);
    }

    /// Whether the relay is stopping (appends are refused).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// An event read back for one resume (JetStream), as the history holds
    /// events; it enters neither the log nor the history.
    pub fn replay_entry(&self, seq: u64, event: EncodedEvent) -> Arc<Sequenced> {
        self.sequenced(seq, event)
    }

    /// Whether the history can answer a resume from `since` on `patterns`
    /// in `epoch` (it may still be `too_many`).
    pub fn can_resume(&self, epoch: &str, since: u64, patterns: &[String]) -> bool {
        matches!(
            self.lock()
                .history
                .resume(epoch, since, since, patterns, |_| true),
            Replay::Recovered(_)
        )
    }

    /// The last seq appended (or the epoch's base).
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    fn push_mark(&self, log: &mut Log, mark: Mark) {
        let appended_at = Instant::now();
        let entry = Arc::new(Sequenced {
            seq: log.last_seq,
            channel: "".into(),
            frame: Bytes::new(),
            deflated: None,
            fate: Fate::default(),
            appended_ms: appended_at.duration_since(self.started).as_millis() as u64,
            appended_at,
            mark: Some(Box::new(mark)),
        });
        log.events.push_back(entry);
        log.next_pos += 1;
    }

    fn sequenced(&self, seq: u64, event: EncodedEvent) -> Arc<Sequenced> {
        let frame = event.frame(seq);
        let deflated = event.deflated_frame(seq);
        let appended_at = Instant::now();
        let now = appended_at.duration_since(self.started).as_millis() as u64;
        Arc::new(Sequenced {
            seq,
            channel: event.channel,
            frame,
            deflated,
            fate: event.fate,
            appended_ms: now,
            appended_at,
            mark: None,
        })
    }

    fn push(&self, log: &mut Log, seq: u64, event: EncodedEvent) {
        log.last_seq = seq;
        log.next_pos += 1;
        let sequenced = self.sequenced(seq, event);
        let now = sequenced.appended_ms;
        log.history.push(Arc::clone(&sequenced), now);
        log.events.push_back(sequenced);
        Stats::add(&self.stats.events_published, 1);
    }

    /// Moves up to `max` events the reactor has not read into `into`, in seq
    /// order. Returns how many.
    pub fn read(&self, reactor: usize, max: usize, into: &mut VecDeque<Arc<Sequenced>>) -> usize {
        let mut log = self.lock();
        let cursor = log.cursors[reactor];
        let start = (cursor - log.first_pos()) as usize;
        let count = (log.events.len() - start).min(max);
        if count == 0 {
            return 0;
        }
        into.extend(log.events.range(start..start + count).cloned());
        log.cursors[reactor] = cursor + count as u64;
        // Events every reactor has read leave the log.
        let slowest = log.cursors.iter().copied().min().unwrap_or(cursor);
        let done = (slowest - log.first_pos()) as usize;
        log.events.drain(..done);
        let woke = done > 0 && std::mem::take(&mut log.room_wanted);
        drop(log);
        if woke {
            self.room.notify_all();
            // Reactors holding HTTP publishes retry them when woken.
            self.wake_all();
        }
        count
    }

    /// Refuses further appends and releases every waiting producer.
    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
    }

    pub fn wakeup(&self, reactor: usize) -> &Arc<Wakeup> {
        &self.wakeups[reactor]
    }

    /// Wakes every reactor even if wakes are pending (for shutdown).
    pub fn wake_all_now(&self) {
        for wakeup in self.wakeups.iter() {
            wakeup.wake_now();
        }
    }

    pub fn wake_all(&self) {
        for wakeup in self.wakeups.iter() {
            wakeup.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // Nothing under this lock can panic but allocation failure, which
        // aborts; a poisoned lock still holds a consistent log.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::event::Event;
    use std::time::{Duration, SystemTime};

    fn sequencer(reactors: usize, capacity: usize) -> Sequencer {
        // mio allows one waker per poll, as each reactor has.
        let wakeups = (0..reactors)
            .map(|_| {
                let poll = mio::Poll::new().expect("poll");
                let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker");
                Arc::new(Wakeup::new(waker))
            })
            .collect();
        let history = History::new(&crate::config::HistoryConfig::default(), "test-epoch");
        Sequencer::new(
            capacity,
            wakeups,
            Arc::default(),
            history,
            Shaping::default(),
        )
    }

    fn event(channel: &str) -> EncodedEvent {
        Event::from_json(channel, "1")
            .expect("json")
            .encode(SystemTime::UNIX_EPOCH)
    }

    fn read_all(s: &Sequencer, reactor: usize) -> Vec<u64> {
        let mut out = VecDeque::new();
        s.read(reactor, usize::MAX, &mut out);
        out.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn every_reactor_reads_every_event_in_one_order() {
        let s = sequencer(3, 100);
        assert_eq!(s.try_append(&mut vec![event("a"), event("b")]), Ok(1));
        assert_eq!(s.append_waiting(event("c")), Ok(3));
        assert_eq!(read_all(&s, 0), [1, 2, 3]);
        assert_eq!(s.try_append(&mut vec![event("d")]), Ok(4));
        assert_eq!(read_all(&s, 0), [4]);
        assert_eq!(read_all(&s, 1), [1, 2, 3, 4]);
        assert_eq!(read_all(&s, 2), [1, 2, 3, 4]);
        assert_eq!(s.lock().cursors, [5, 5, 5]);
        assert_eq!(s.lock().events.len(), 0, "read by all: gone");
    }

    #[test]
    fn frames_carry_their_seq() {
        let s = sequencer(1, 10);
        s.try_append(&mut vec![event("job.1"), event("job.2")])
            .expect("room");
        let mut out = VecDeque::new();
        s.read(0, 10, &mut out);
        for e in &out {
            let text = std::str::from_utf8(&e.frame[2..]).expect("utf8");
            assert!(text.contains(&format!("\"seq\":{}", e.seq)), "{text}");
        }
        assert_eq!(&*out[1].channel, "job.2");
    }

    #[test]
    fn the_slowest_reactor_bounds_the_log() {
        let s = sequencer(2, 3);
        assert_eq!(
            s.try_append(&mut vec![event("a"), event("b"), event("c")]),
            Ok(1)
        );
        read_all(&s, 0);
        assert_eq!(s.try_append(&mut vec![event("d")]), Err(AppendError::Full));
        assert!(s.is_full());
        let mut out = VecDeque::new();
        assert_eq!(s.read(1, 1, &mut out), 1);
        assert_eq!(s.try_append(&mut vec![event("d")]), Ok(4));
        assert_eq!(
            s.try_append(&mut vec![event("e"), event("f")]),
            Err(AppendError::Full),
            "all or nothing"
        );
        // More than the capacity at once: only into an empty log.
        assert_eq!(
            s.try_append(&mut (0..4).map(|_| event("x")).collect()),
            Err(AppendError::Full)
        );
        read_all(&s, 0);
        read_all(&s, 1);
        assert_eq!(
            s.try_append(&mut (0..4).map(|_| event("x")).collect()),
            Ok(5)
        );
    }

    #[test]
    fn producers_wait_while_a_reactor_is_behind() {
        let s = sequencer(2, 100);
        s.set_paused(1, true);
        assert_eq!(s.try_append(&mut vec![event("a")]), Err(AppendError::Full));
        assert!(s.is_full());
        s.set_paused(0, true);
        s.set_paused(1, false);
        assert!(s.is_full(), "reactor 0 is still behind");
        s.set_paused(0, false);
        assert_eq!(s.try_append(&mut vec![event("a")]), Ok(1));
    }

    #[test]
    fn a_reactor_that_found_no_room_is_woken_when_room_frees() {
        let s = sequencer(1, 100);
        let wakeup = Arc::clone(s.wakeup(0));
        s.set_paused(0, true);
        assert_eq!(s.try_append(&mut vec![event("a")]), Err(AppendError::Full));
        // The failed append's wake is spent (a resume, say, then another
        // pause) before the reactor looks again.
        s.set_paused(0, false);
        s.set_paused(0, true);
        wakeup.clear();
        assert!(s.is_full_wake_on_room());
        s.set_paused(0, false);
        assert!(
            wakeup.pending.load(Ordering::Acquire),
            "the reactor holding the publish must be woken"
        );
        assert!(!s.is_full_wake_on_room());
    }

    #[test]
    fn a_waiting_publisher_goes_on_when_room_frees() {
        let s = Arc::new(sequencer(1, 1));
        s.try_append(&mut vec![event("a")]).expect("room");
        let waiting = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.append_waiting(event("b")))
        };
        // The publisher cannot finish until the reactor reads; whether it
        // already waits or not, the read must release it.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(read_all(&s, 0), [1]);
        assert_eq!(waiting.join().expect("thread"), Ok(2));
    }

    #[test]
    fn close_releases_waiting_publishers() {
        let s = Arc::new(sequencer(1, 1));
        s.try_append(&mut vec![event("a")]).expect("room");
        let waiting = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.append_waiting(event("b")))
        };
        std::thread::sleep(Duration::from_millis(20));
        s.close();
        assert_eq!(waiting.join().expect("thread"), Err(AppendError::Closed));
        assert_eq!(
            s.try_append(&mut vec![event("c")]),
            Err(AppendError::Closed)
        );
    }

    #[test]
    fn numbered_events_keep_their_seq_and_marks_take_a_position() {
        let s = sequencer(2, 100);
        s.restart("stream-epoch", 10);
        assert_eq!(&*s.epoch(), "stream-epoch");
        assert_eq!(s.epoch_changes(), 1);
        s.backfill(vec![(8, event("a")), (10, event("a"))]);
        s.backfilled(7);
        let mut batch = vec![(12, event("a")), (11, event("b")), (15, event("a"))];
        assert_eq!(
            s.try_append_numbered(&mut batch),
            Ok(1),
            "11 after 12 is dropped"
        );
        let all = |_: &str| true;
        match s.resume("stream-epoch", 7, 15, &[">".to_string()], all) {
            Replay::Recovered(events) => {
                let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
                assert_eq!(seqs, [8, 10, 12, 15]);
            }
            other => panic!("{other:?}"),
        }
        s.cut(None);
        let mut out = VecDeque::new();
        s.read(0, usize::MAX, &mut out);
        let entries: Vec<(u64, bool)> = out.iter().map(|e| (e.seq, e.mark.is_some())).collect();
        assert_eq!(entries, [(10, true), (12, false), (15, false), (15, true)]);
        assert_eq!(
            out[0].mark.as_deref(),
            Some(&Mark::Epoch("stream-epoch".into()))
        );
        assert_eq!(out[3].mark.as_deref(), Some(&Mark::Cut));
        // The cut after 15: a resume from 15 would miss what was lost.
        assert_eq!(s.try_append(&mut vec![event("c")]), Ok(16));
        assert!(matches!(
            s.resume("stream-epoch", 15, 16, &[">".to_string()], all),
            Replay::NotRecovered(crate::fanout::history::Gap::Gone)
        ));
    }
}
