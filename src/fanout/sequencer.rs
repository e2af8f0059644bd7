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
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The seq the next appended event gets; seqs start at 1.
    next_seq: u64,
    /// Events from seq `next_seq - events.len()` on.
    events: VecDeque<Arc<Sequenced>>,
    /// Per reactor: the seq it reads next.
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
        let index = slowest.checked_sub(self.first_seq())?;
        self.events.get(index as usize).map(|e| e.appended_ms)
    }

    fn first_seq(&self) -> u64 {
        self.next_seq - self.events.len() as u64
    }

    /// Events the slowest reactor has not read yet.
    fn unread(&self) -> usize {
        let slowest = self.cursors.iter().copied().min().unwrap_or(self.next_seq);
        (self.next_seq - slowest) as usize
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
    /// The history's epoch, readable without the lock.
    epoch: Arc<str>,
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
            next_seq: 1,
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
            epoch,
            started: Instant::now(),
            shaping,
        }
    }

    /// What producers apply to each event as they encode it
    /// (`Event::encode_shaped`).
    pub fn shaping(&self) -> &Shaping {
        &self.shaping
    }

    /// This run's epoch: positions (`seq`) are meaningful within it.
    pub fn epoch(&self) -> &str {
        &self.epoch
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
        let seq = self.push(&mut log, event);
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
        if log.closed {
            return Err(AppendError::Closed);
        }
        // What must be free: room for them all, or the whole log.
        let needed = events.len().min(self.capacity);
        if log.no_room_for(needed, self.capacity, self.now_ms())
            || (events.len() > self.capacity && log.unread() > 0)
        {
            log.room_wanted = true;
            return Err(AppendError::Full);
        }
        let first = log.next_seq;
        for event in events.drain(..) {
            self.push(&mut log, event);
        }
        drop(log);
        self.wake_all();
        Ok(first)
    }

    fn push(&self, log: &mut Log, event: EncodedEvent) -> u64 {
        let seq = log.next_seq;
        log.next_seq += 1;
        let frame = event.frame(seq);
        let deflated = event.deflated_frame(seq);
        let appended_at = Instant::now();
        let now = appended_at.duration_since(self.started).as_millis() as u64;
        let sequenced = Arc::new(Sequenced {
            seq,
            channel: event.channel,
            frame,
            deflated,
            fate: event.fate,
            appended_ms: now,
            appended_at,
        });
        log.history.push(Arc::clone(&sequenced), now);
        log.events.push_back(sequenced);
        Stats::add(&self.stats.events_published, 1);
        seq
    }

    /// Moves up to `max` events the reactor has not read into `into`, in seq
    /// order. Returns how many.
    pub fn read(&self, reactor: usize, max: usize, into: &mut VecDeque<Arc<Sequenced>>) -> usize {
        let mut log = self.lock();
        let cursor = log.cursors[reactor];
        let start = (cursor - log.first_seq()) as usize;
        let count = (log.events.len() - start).min(max);
        if count == 0 {
            return 0;
        }
        into.extend(log.events.range(start..start + count).cloned());
        log.cursors[reactor] = cursor + count as u64;
        // Events every reactor has read leave the log.
        let slowest = log.cursors.iter().copied().min().unwrap_or(cursor);
        let done = (slowest - log.first_seq()) as usize;
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
}
