//! Answers that need every reactor: `/api/admin/connections`.
//!
//! A request arrives on one reactor (the origin), but each reactor's sockets
//! are its own. The origin posts a [`Gathering`] to every reactor's mailbox
//! and wakes it; each reactor adds its rows at the start of its next turn
//! (a bounded scan of its own sockets, never waiting on another thread), and
//! the last one to answer posts the gathering back to the origin, which
//! answers the request. No reactor ever blocks on another: a stopped one
//! only leaves the request to time out (`GATHER_WAIT`, then 503).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::session::ConnectionSort;

/// How long the origin waits for every reactor before answering 503.
pub(crate) const GATHER_WAIT_MS: u64 = 2_000;

/// One socket as the admin view shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectionRow {
    pub reactor: usize,
    /// The socket's id on its reactor (unique there, unlike slab keys).
    pub id: u32,
    pub remote: String,
    pub age_s: u64,
    pub queue_messages: usize,
    pub queue_bytes: usize,
    /// Milliseconds since a write last left output behind (0: keeping up).
    pub stalled_ms: u64,
    /// Times frames were dropped for it under `slow_consumer =
    /// "drop_oldest"` or `"resync"` (each with a `resync` notice).
    pub resyncs: u16,
    pub patterns: Vec<String>,
}

impl ConnectionRow {
    /// The sort key: larger comes first.
    pub fn rank(&self, sort: ConnectionSort) -> (u64, u64) {
        match sort {
            ConnectionSort::Queue => (self.queue_bytes as u64, self.queue_messages as u64),
            ConnectionSort::Resyncs => (u64::from(self.resyncs), self.queue_bytes as u64),
            ConnectionSort::Age => (self.age_s, 0),
        }
    }
}

/// A request for every reactor's rows.
pub(crate) struct Gathering {
    /// The reactor that answers, and the socket it answers on.
    pub origin: usize,
    pub key: usize,
    pub id: u32,
    pub sort: ConnectionSort,
    pub limit: usize,
    rows: Mutex<Vec<ConnectionRow>>,
    /// Reactors that have not added their rows yet.
    remaining: AtomicUsize,
}

impl Gathering {
    pub fn new(
        origin: usize,
        (key, id): (usize, u32),
        sort: ConnectionSort,
        limit: usize,
        reactors: usize,
    ) -> Gathering {
        Gathering {
            origin,
            key,
            id,
            sort,
            limit,
            rows: Mutex::new(Vec::new()),
            remaining: AtomicUsize::new(reactors),
        }
    }

    /// Adds one reactor's rows (its top `limit` already); true for the
    /// last reactor, which hands the gathering back to the origin.
    pub fn add(&self, rows: Vec<ConnectionRow>) -> bool {
        let mut all = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(rows);
        drop(all);
        self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Every reactor's rows, the top `limit` of them in order.
    pub fn take_rows(&self) -> Vec<ConnectionRow> {
        let mut all = std::mem::take(&mut *self.rows.lock().unwrap_or_else(|p| p.into_inner()));
        let sort = self.sort;
        all.sort_by_key(|row| std::cmp::Reverse(row.rank(sort)));
        all.truncate(self.limit);
        all
    }
}

/// What one reactor posts to another.
pub(crate) enum Letter {
    /// Add your rows to this.
    Collect(Arc<Gathering>),
    /// Every reactor has added its rows: answer.
    Gathered(Arc<Gathering>),
}

/// One mailbox per reactor. Posting takes a short lock; a reactor looks at
/// its flag once a turn and takes the lock only when there is mail.
pub(crate) struct Mailboxes {
    boxes: Box<[Mailbox]>,
}

#[derive(Default)]
struct Mailbox {
    has_mail: AtomicBool,
    letters: Mutex<Vec<Letter>>,
}

impl Mailboxes {
    pub fn new(reactors: usize) -> Mailboxes {
        Mailboxes {
            boxes: (0..reactors).map(|_| Mailbox::default()).collect(),
        }
    }

    pub fn count(&self) -> usize {
        self.boxes.len()
    }

    /// Posts a letter; the caller then wakes the reactor.
    pub fn post(&self, reactor: usize, letter: Letter) {
        let mailbox = &self.boxes[reactor];
        mailbox
            .letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(letter);
        mailbox.has_mail.store(true, Ordering::Release);
    }

    /// The letters waiting for `reactor`, if any.
    pub fn take(&self, reactor: usize) -> Vec<Letter> {
        let mailbox = &self.boxes[reactor];
        // A plain load first: this runs every turn, and a swap would write
        // the cache line every time.
        if !mailbox.has_mail.load(Ordering::Acquire)
            || !mailbox.has_mail.swap(false, Ordering::AcqRel)
        {
            return Vec::new();
        }
        std::mem::take(&mut *mailbox.letters.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Keeps the `limit` rows that rank first while a reactor scans its
/// sockets, so the scan holds at most `limit` candidates whatever the
/// number of sockets.
pub(crate) struct TopRows<T> {
    limit: usize,
    /// Min-heap on rank: the weakest kept candidate is on top.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<((u64, u64), T)>>,
}

impl<T: Ord> TopRows<T> {
    pub fn new(limit: usize) -> TopRows<T> {
        TopRows {
            limit,
            heap: std::collections::BinaryHeap::with_capacity(limit.min(1024) + 1),
        }
    }

    pub fn offer(&mut self, rank: (u64, u64), item: T) {
        self.heap.push(std::cmp::Reverse((rank, item)));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    pub fn into_items(self) -> Vec<T> {
        self.heap.into_iter().map(|r| r.0 .1).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(reactor: usize, bytes: usize, resyncs: u16, age_s: u64) -> ConnectionRow {
        ConnectionRow {
            reactor,
            id: 0,
            remote: String::new(),
            age_s,
            queue_messages: bytes / 10,
            queue_bytes: bytes,
            stalled_ms: 0,
            resyncs,
            patterns: Vec::new(),
        }
    }

    #[test]
    fn top_rows_keeps_the_largest() {
        let mut top = TopRows::new(3);
        for (i, rank) in [5u64, 1, 9, 7, 3, 8].into_iter().enumerate() {
            top.offer((rank, 0), i);
        }
        let mut kept = top.into_items();
        kept.sort();
        assert_eq!(kept, [2, 3, 5]);
    }

    #[test]
    fn the_last_reactor_hands_back_and_rows_come_sorted() {
        let g = Gathering::new(0, (4, 1), ConnectionSort::Queue, 2, 2);
        assert!(!g.add(vec![row(0, 10, 0, 1), row(0, 500, 0, 1)]));
        assert!(g.add(vec![row(1, 300, 0, 1)]));
        let rows = g.take_rows();
        let bytes: Vec<usize> = rows.iter().map(|r| r.queue_bytes).collect();
        assert_eq!(bytes, [500, 300]);
        let g = Gathering::new(0, (4, 1), ConnectionSort::Age, 5, 1);
        assert!(g.add(vec![row(0, 1, 0, 5), row(0, 1, 0, 50), row(0, 1, 0, 7)]));
        let ages: Vec<u64> = g.take_rows().iter().map(|r| r.age_s).collect();
        assert_eq!(ages, [50, 7, 5]);
    }

    #[test]
    fn mailboxes_hand_over_letters_once() {
        let boxes = Mailboxes::new(2);
        assert!(boxes.take(1).is_empty());
        let g = Arc::new(Gathering::new(0, (1, 1), ConnectionSort::Queue, 1, 2));
        boxes.post(1, Letter::Collect(Arc::clone(&g)));
        assert_eq!(boxes.take(1).len(), 1);
        assert!(boxes.take(1).is_empty());
        assert!(boxes.take(0).is_empty());
    }
}
