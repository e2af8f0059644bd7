//! `OutQueue`: one socket's bounded queue of shared frames.
//!
//! It holds shared handles to frames built once per event, counts messages
//! and bytes, and writes many frames per syscall. It holds no allocation
//! while empty, so idle sockets cost nothing here. It applies the delivery
//! rules (`[[delivery]]`): a `latest` frame replaces a queued one of its
//! slot in place, and `drop_oldest` passes over `never_drop` frames.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::ops::Deref;
use std::rc::Rc;

use bytes::Bytes;

use super::delivery::Fate;

/// A frame as queues hold it: the event's one `Bytes` and its fate, shared
/// by every subscriber's queue through a plain (non-atomic) count. The
/// reactor is a single thread, and under load an atomic increment and
/// decrement per delivery (cloning `Bytes` itself) cost about a sixth of
/// its CPU; an `Rc` is also a quarter of a `Bytes` in the ring.
pub type Frame = Rc<SharedFrame>;

/// See [`Frame`].
#[derive(Debug)]
pub struct SharedFrame {
    pub bytes: Bytes,
    pub fate: Fate,
}

impl SharedFrame {
    /// A frame the delivery rules do not touch (replies, notices, tests).
    pub fn plain(bytes: Bytes) -> Frame {
        Rc::new(SharedFrame {
            bytes,
            fate: Fate::All,
        })
    }
}

/// A queued frame reads as its bytes.
impl Deref for SharedFrame {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// Frames handed to one `writev`: Linux's limit. Each syscall costs a few
/// microseconds whatever it carries and each frame in it tens of
/// nanoseconds, so under load long writes are what keep a core ahead
/// (BENCHMARKS.md, "kernel floor": 88 ns per frame at 64 per write, 48 at 256).
const MAX_IOVECS: usize = 1024;
/// Writes of up to this many frames build their iovec array on the stack;
/// longer ones (only under load, when the syscall dwarfs an allocation) on
/// the heap.
const STACK_IOVECS: usize = 16;

/// The limits of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// A `latest` frame took the place of a queued one of its slot.
    Replaced,
    /// The frame did not fit; nothing was queued.
    Full,
}

/// What [`OutQueue::drop_oldest_for`] dropped.
#[derive(Debug)]
pub struct Dropped {
    pub count: usize,
    pub last: Option<Frame>,
    /// Where the last dropped frame was: the `never_drop` frames kept before
    /// it are older, everything after it newer.
    pub gap_at: usize,
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub bytes: usize,
    /// The socket would take no more before the queue emptied.
    pub blocked: bool,
}

#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Frame>,
    /// Bytes of the front frame already written. `u32`s keep the struct
    /// small: a queue never holds 4 GiB, its limits say so.
    front_sent: u32,
    /// The ring's capacity when it was last given back (capped): the next
    /// burst starts at that size instead of growing to it through
    /// reallocations, which under load was several percent of the relay's
    /// CPU.
    last_capacity: u16,
    /// Unsent bytes across all frames.
    bytes: u32,
}

impl OutQueue {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Unsent bytes.
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    /// Whether more than half of either limit is taken.
    pub fn over_half(&self, limits: QueueLimits) -> bool {
        self.frames.len() * 2 > limits.max_messages || self.bytes() * 2 > limits.max_bytes
    }

    /// Queues a data frame if it fits within `limits`, or puts a `latest`
    /// frame in the place of the queued one of its slot.
    pub fn push(&mut self, frame: &Frame, limits: QueueLimits) -> Push {
        if let Fate::Latest(slot) = frame.fate {
            if self.replace(slot, frame, Some(limits)) {
                return Push::Replaced;
            }
        }
        if self.frames.len() >= limits.max_messages || self.bytes() + frame.len() > limits.max_bytes
        {
            return Push::Full;
        }
        self.push_shared(Rc::clone(frame));
        Push::Queued
    }

    /// Queues a shared frame past the limits (or replaces one, as `push`
    /// does): for a socket that is keeping up, whose queue the intake pause
    /// bounds instead (`Reactor::fan_out`: at most half the limits plus one
    /// frame).
    pub fn push_past_limits(&mut self, frame: &Frame) -> Push {
        if let Fate::Latest(slot) = frame.fate {
            if self.replace(slot, frame, None) {
                return Push::Replaced;
            }
        }
        self.push_shared(Rc::clone(frame));
        Push::Queued
    }

    /// Puts `frame` in the place of the unsent queued frame of `slot`, if
    /// there is one (and, with `limits`, if the new size fits them). A
    /// partly written front frame is never replaced: its rest must follow.
    ///
    /// A linear scan from the back, only for `latest` frames: under
    /// `latest` alone a queue holds one frame per slot, and any queue at
    /// most `max_messages` (or half of it while its reader keeps up).
    fn replace(&mut self, slot: u64, frame: &Frame, limits: Option<QueueLimits>) -> bool {
        let keep = usize::from(self.front_sent > 0);
        let Some(at) = self
            .frames
            .iter()
            .skip(keep)
            .rposition(|queued| queued.fate == Fate::Latest(slot))
            .map(|at| at + keep)
        else {
            return false;
        };
        let old = self.frames[at].len();
        let bytes = self.bytes() - old + frame.len();
        if limits.is_some_and(|l| bytes > l.max_bytes) {
            return false;
        }
        self.bytes = bytes as u32;
        self.frames[at] = Rc::clone(frame);
        true
    }

    /// Queues a frame whatever the limits: what the relay itself must say,
    /// one at a time: HTTP responses (one per request, answered in order),
    /// the 101, keepalive pings (one per interval), a close frame, a resync
    /// notice after the backlog was dropped. Replies to client commands go
    /// through `push`, within the limits.
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.push_shared(SharedFrame::plain(frame));
    }

    fn push_shared(&mut self, frame: Frame) {
        if self.frames.capacity() == 0 && self.last_capacity > 0 {
            self.frames.reserve_exact(usize::from(self.last_capacity));
        }
        self.bytes = self.bytes.saturating_add(frame.len() as u32);
        self.frames.push_back(frame);
    }

    /// Drops whole unsent frames, oldest first, until `incoming` more bytes
    /// and one more frame fit; `never_drop` frames stay. Returns what went
    /// (which may not be enough if `never_drop` frames fill the queue).
    pub fn drop_oldest_for(&mut self, incoming: usize, limits: QueueLimits) -> Dropped {
        let mut dropped = Dropped {
            count: 0,
            last: None,
            gap_at: 0,
        };
        // A partly written front frame must finish, or the stream breaks.
        let mut at = usize::from(self.front_sent > 0);
        dropped.gap_at = at;
        while at < self.frames.len()
            && (self.frames.len() >= limits.max_messages
                || self.bytes() + incoming > limits.max_bytes)
        {
            if self.frames[at].fate == Fate::NeverDrop {
                at += 1;
                continue;
            }
            let frame = self
                .frames
                .remove(at)
                .expect("bug: index checked against len");
            self.bytes -= frame.len() as u32;
            dropped.count += 1;
            dropped.last = Some(frame);
            dropped.gap_at = at;
        }
        dropped
    }

    /// Queues a frame at `at` among the unsent ones (never before a partly
    /// written front frame): the notice of what `drop_oldest_for` dropped
    /// goes where the gap is. Like `push_unbounded`, whatever the limits.
    pub fn insert_unsent(&mut self, at: usize, frame: Bytes) {
        let at = at
            .max(usize::from(self.front_sent > 0))
            .min(self.frames.len());
        self.bytes = self.bytes.saturating_add(frame.len() as u32);
        self.frames.insert(at, SharedFrame::plain(frame));
    }

    /// Drops every frame not yet started, keeping a partly written front frame
    /// so that what follows (a close frame) starts at a frame boundary.
    /// Returns how many were dropped.
    pub fn discard_unsent(&mut self) -> usize {
        let keep = usize::from(self.front_sent > 0);
        let dropped = self.frames.len().saturating_sub(keep);
        self.frames.truncate(keep);
        self.bytes = self
            .frames
            .front()
            .map_or(0, |f| (f.len() - self.front_sent as usize) as u32);
        self.release_if_empty();
        dropped
    }

    /// Writes as much as `sink` takes, many frames per call.
    pub fn flush_to(&mut self, sink: &mut impl Write) -> io::Result<Flushed> {
        let mut total = 0;
        while !self.frames.is_empty() {
            let written = match self.write_once(sink) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Flushed {
                        bytes: total,
                        blocked: true,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += written;
            self.advance(written);
        }
        self.release_if_empty();
        Ok(Flushed {
            bytes: total,
            blocked: false,
        })
    }

    fn write_once(&self, sink: &mut impl Write) -> io::Result<usize> {
        let front = &self.frames[0][self.front_sent as usize..];
        if self.frames.len() == 1 {
            return sink.write(front);
        }
        let rest = self.frames.iter().skip(1).map(|f| IoSlice::new(&f[..]));
        if self.frames.len() <= STACK_IOVECS {
            let mut slices = [IoSlice::new(&[]); STACK_IOVECS];
            slices[0] = IoSlice::new(front);
            let mut count = 1;
            for (slot, frame) in slices[1..].iter_mut().zip(rest) {
                *slot = frame;
                count += 1;
            }
            return sink.write_vectored(&slices[..count]);
        }
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(front))
            .chain(rest)
            .take(MAX_IOVECS)
            .collect();
        sink.write_vectored(&slices)
    }

    fn advance(&mut self, mut written: usize) {
        self.bytes -= written as u32;
        while written > 0 {
            let front_left = self.frames[0].len() - self.front_sent as usize;
            if written < front_left {
                self.front_sent += written as u32;
                return;
            }
            written -= front_left;
            self.frames.pop_front();
            self.front_sent = 0;
        }
    }

    /// Gives back the ring buffer after a burst: an idle socket keeps none.
    fn release_if_empty(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.last_capacity = self.frames.capacity().min(usize::from(u16::MAX)) as u16;
            self.frames = VecDeque::new();
            self.front_sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        max_messages: 4,
        max_bytes: 100,
    };

    /// A sink that takes at most `budget` bytes per call, then `WouldBlock`
    /// once `total` is used up.
    struct Sink {
        out: Vec<u8>,
        per_call: usize,
        total: usize,
        calls: usize,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut room = self.per_call.min(self.total - self.out.len());
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(room);
                self.out.extend_from_slice(&buf[..take]);
                room -= take;
                n += take;
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(byte: u8, len: usize) -> Frame {
        SharedFrame::plain(Bytes::from(vec![byte; len]))
    }

    fn with_fate(byte: u8, len: usize, fate: Fate) -> Frame {
        Rc::new(SharedFrame {
            bytes: Bytes::from(vec![byte; len]),
            fate,
        })
    }

    fn drain(q: &mut OutQueue) -> Vec<u8> {
        let mut sink = Sink {
            out: vec![],
            per_call: usize::MAX,
            total: usize::MAX,
            calls: 0,
        };
        q.flush_to(&mut sink).expect("flush");
        sink.out
    }

    #[test]
    fn limits_in_messages_and_bytes() {
        let mut q = OutQueue::default();
        for _ in 0..4 {
            assert_eq!(q.push(&frame(1, 10), LIMITS), Push::Queued);
        }
        assert_eq!(q.push(&frame(1, 10), LIMITS), Push::Full, "message limit");
        let mut q = OutQueue::default();
        assert_eq!(q.push(&frame(1, 60), LIMITS), Push::Queued);
        assert_eq!(q.push(&frame(1, 41), LIMITS), Push::Full, "byte limit");
        assert_eq!(q.push(&frame(1, 40), LIMITS), Push::Queued);
        assert_eq!(q.bytes(), 100);
        assert!(q.over_half(LIMITS), "100 of 100 bytes");
        let mut q = OutQueue::default();
        q.push(&frame(1, 49), LIMITS);
        q.push(&frame(1, 1), LIMITS);
        assert!(!q.over_half(LIMITS), "2 of 4 frames, 50 of 100 bytes");
        q.push(&frame(1, 1), LIMITS);
        assert!(q.over_half(LIMITS), "3 of 4 frames");
    }

    #[test]
    fn many_frames_per_call_and_order_kept() {
        let mut q = OutQueue::default();
        for i in 0..4 {
            q.push(&frame(i, 10), LIMITS);
        }
        let mut sink = Sink {
            out: vec![],
            per_call: 1000,
            total: 1000,
            calls: 0,
        };
        let done = q.flush_to(&mut sink).expect("flush");
        assert_eq!(
            done,
            Flushed {
                bytes: 40,
                blocked: false
            }
        );
        assert_eq!(sink.calls, 1, "one vectored write for four frames");
        let expected: Vec<u8> = (0..4).flat_map(|i| vec![i; 10]).collect();
        assert_eq!(sink.out, expected);
        assert!(q.is_empty());
    }

    #[test]
    fn long_queues_go_out_in_writes_of_up_to_iov_max_frames() {
        let roomy = QueueLimits {
            max_messages: 5000,
            max_bytes: 1 << 20,
        };
        let mut q = OutQueue::default();
        let n = MAX_IOVECS + STACK_IOVECS + 3;
        for i in 0..n {
            q.push(&frame((i % 251) as u8, 3), roomy);
        }
        let mut sink = Sink {
            out: vec![],
            per_call: usize::MAX,
            total: 1 << 20,
            calls: 0,
        };
        let done = q.flush_to(&mut sink).expect("flush");
        assert_eq!(done.bytes, 3 * n);
        assert_eq!(
            sink.calls, 2,
            "one full write of {MAX_IOVECS} frames, then the rest"
        );
        let expected: Vec<u8> = (0..n).flat_map(|i| vec![(i % 251) as u8; 3]).collect();
        assert_eq!(sink.out, expected);
        assert!(q.is_empty());
    }

    #[test]
    fn an_emptied_queue_holds_no_ring_and_the_next_burst_starts_at_the_last_size() {
        let mut q = OutQueue::default();
        let mut sink = Sink {
            out: vec![],
            per_call: usize::MAX,
            total: usize::MAX,
            calls: 0,
        };
        for i in 0..4 {
            q.push(&frame(i, 10), LIMITS);
        }
        let grown = q.frames.capacity();
        assert!(grown >= 4);
        q.flush_to(&mut sink).expect("flush");
        assert_eq!(q.frames.capacity(), 0, "an idle socket keeps no ring");
        q.push(&frame(9, 10), LIMITS);
        assert_eq!(q.frames.capacity(), grown);
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut q = OutQueue::default();
        q.push(&frame(1, 10), LIMITS);
        q.push(&frame(2, 10), LIMITS);
        let mut sink = Sink {
            out: vec![],
            per_call: 3,
            total: 14,
            calls: 0,
        };
        let done = q.flush_to(&mut sink).expect("flush");
        assert_eq!(
            done,
            Flushed {
                bytes: 14,
                blocked: true
            }
        );
        assert_eq!(q.bytes(), 6);
        // A close frame queued now must follow the partly written frame 2.
        q.discard_unsent();
        assert_eq!(q.len(), 1);
        q.push_unbounded(Bytes::from(vec![9; 2]));
        sink.total = 100;
        q.flush_to(&mut sink).expect("flush");
        let mut expected = vec![1; 10];
        expected.extend([2; 10]);
        expected.extend([9; 2]);
        assert_eq!(sink.out, expected);
    }

    #[test]
    fn discard_unsent_at_a_boundary_empties() {
        let mut q = OutQueue::default();
        q.push(&frame(1, 10), LIMITS);
        q.push(&frame(2, 10), LIMITS);
        q.discard_unsent();
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn drop_oldest_keeps_partial_front() {
        let mut q = OutQueue::default();
        for i in 0..4 {
            q.push(&frame(i, 20), LIMITS);
        }
        let mut sink = Sink {
            out: vec![],
            per_call: 5,
            total: 5,
            calls: 0,
        };
        q.flush_to(&mut sink).expect("flush");
        let dropped = q.drop_oldest_for(20, LIMITS);
        assert_eq!(dropped.count, 1);
        assert_eq!(dropped.last.map(|f| f[0]), Some(1), "frame 1 went");
        assert_eq!(q.push(&frame(9, 20), LIMITS), Push::Queued);
        sink.total = 1000;
        sink.per_call = 1000;
        q.flush_to(&mut sink).expect("flush");
        let mut expected = vec![0; 20];
        expected.extend([2; 20]);
        expected.extend([3; 20]);
        expected.extend([9; 20]);
        assert_eq!(
            sink.out, expected,
            "frame 1 dropped whole, frame 0 finished"
        );
    }

    #[test]
    fn a_notice_goes_where_the_gap_is_after_a_partly_written_frame() {
        let mut q = OutQueue::default();
        for i in 0..3 {
            q.push(&frame(i, 10), LIMITS);
        }
        let mut sink = Sink {
            out: vec![],
            per_call: 4,
            total: 4,
            calls: 0,
        };
        q.flush_to(&mut sink).expect("flush");
        let dropped = q.drop_oldest_for(
            10,
            QueueLimits {
                max_messages: 3,
                ..LIMITS
            },
        );
        assert_eq!(dropped.count, 1);
        assert_eq!(dropped.last.map(|f| f[0]), Some(1));
        q.insert_unsent(dropped.gap_at, Bytes::from(vec![7; 3]));
        assert_eq!(q.bytes(), 6 + 3 + 10);
        sink.total = 1000;
        sink.per_call = 1000;
        q.flush_to(&mut sink).expect("flush");
        let mut expected = vec![0; 10];
        expected.extend([7; 3]);
        expected.extend([2; 10]);
        assert_eq!(
            sink.out, expected,
            "frame 0 finished, then the notice, then frame 2"
        );
    }

    #[test]
    fn latest_replaces_in_place_and_counts_bytes() {
        let mut q = OutQueue::default();
        q.push(&with_fate(1, 10, Fate::Latest(7)), LIMITS);
        q.push(&frame(2, 10), LIMITS);
        q.push(&with_fate(3, 10, Fate::Latest(8)), LIMITS);
        assert_eq!(
            q.push(&with_fate(4, 20, Fate::Latest(7)), LIMITS),
            Push::Replaced
        );
        assert_eq!(q.len(), 3);
        assert_eq!(q.bytes(), 40);
        assert_eq!(
            q.push(&with_fate(5, 5, Fate::Latest(8)), LIMITS),
            Push::Replaced
        );
        let mut expected = vec![4; 20];
        expected.extend([2; 10]);
        expected.extend([5; 5]);
        assert_eq!(drain(&mut q), expected, "each in its predecessor's place");
        // Nothing of the slot queued: an ordinary push.
        assert_eq!(
            q.push(&with_fate(6, 10, Fate::Latest(7)), LIMITS),
            Push::Queued
        );
        // A replacement that would break the byte limit is refused.
        q.push(&frame(0, 80), LIMITS);
        assert_eq!(
            q.push(&with_fate(6, 30, Fate::Latest(7)), LIMITS),
            Push::Full
        );
        assert_eq!(
            q.push_past_limits(&with_fate(6, 30, Fate::Latest(7))),
            Push::Replaced
        );
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_partly_written_frame_is_not_replaced() {
        let mut q = OutQueue::default();
        q.push(&with_fate(1, 10, Fate::Latest(7)), LIMITS);
        let mut sink = Sink {
            out: vec![],
            per_call: 4,
            total: 4,
            calls: 0,
        };
        q.flush_to(&mut sink).expect("flush");
        assert_eq!(
            q.push(&with_fate(2, 10, Fate::Latest(7)), LIMITS),
            Push::Queued
        );
        assert_eq!(
            q.push(&with_fate(3, 10, Fate::Latest(7)), LIMITS),
            Push::Replaced
        );
        let mut expected = vec![1; 6];
        expected.extend([3; 10]);
        assert_eq!(drain(&mut q), expected);
    }

    #[test]
    fn drop_oldest_passes_over_never_drop_and_marks_the_gap() {
        let mut q = OutQueue::default();
        q.push(&with_fate(1, 10, Fate::NeverDrop), LIMITS);
        q.push(&frame(2, 10), LIMITS);
        q.push(&with_fate(3, 10, Fate::NeverDrop), LIMITS);
        q.push(&frame(4, 10), LIMITS);
        let dropped = q.drop_oldest_for(10, LIMITS);
        assert_eq!(dropped.count, 1, "one slot was needed");
        assert_eq!(dropped.last.map(|f| f[0]), Some(2));
        assert_eq!(dropped.gap_at, 1);
        q.insert_unsent(dropped.gap_at, Bytes::from(vec![9; 1]));
        let mut expected = vec![1; 10];
        expected.extend([9; 1]);
        expected.extend([3; 10]);
        expected.extend([4; 10]);
        assert_eq!(drain(&mut q), expected);
        // A queue of never_drop frames only gives nothing up.
        for _ in 0..4 {
            q.push(&with_fate(1, 10, Fate::NeverDrop), LIMITS);
        }
        let dropped = q.drop_oldest_for(10, LIMITS);
        assert_eq!(dropped.count, 0);
        assert_eq!(q.push(&frame(5, 10), LIMITS), Push::Full);
    }
}
