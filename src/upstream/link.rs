//! What the reactors and producer threads share with the upstream thread:
//! a bounded queue of publishes, the answers coming back, and the state
//! and counters of the NATS connection. Everything here is non-blocking.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::fanout::event::EncodedEvent;
use crate::fanout::history::Gap;
use crate::fanout::sequencer::Sequencer;

/// A publish on its way to NATS.
pub(crate) enum Outgoing {
    /// A `POST /api/publish` held by reactor `reactor` on socket `key`
    /// (`id` tells a reused slab key apart); answered in `answers`.
    Http {
        reactor: usize,
        key: usize,
        id: u32,
        events: Vec<EncodedEvent>,
    },
    /// From the embedded `Publisher`: nobody waits for the answer, so a
    /// failure is counted (`lost_publishes`).
    Embedded(EncodedEvent),
    /// JetStream mode: a resume the history cannot serve; answered in
    /// `fetches`.
    Fetch(FetchRequest),
    /// A fetch taken out of a batch (a placeholder).
    Fetched,
    Stop,
}

/// A resume's missing events, to be read from JetStream by start sequence.
#[derive(Debug)]
pub(crate) struct FetchRequest {
    pub reactor: usize,
    pub key: usize,
    pub id: u32,
    /// The client's position: events after it are read.
    pub since: u64,
    /// The subscription's patterns.
    pub channels: Vec<String>,
}

/// What JetStream gave for a [`FetchRequest`].
pub(crate) struct FetchAnswer {
    pub key: usize,
    pub id: u32,
    pub result: Result<Fetched, Gap>,
}

/// Every event matching the request's patterns after its `since`, up to
/// `through` (the stream's last sequence when the read began), in order.
pub(crate) struct Fetched {
    pub events: Vec<(u64, EncodedEvent)>,
    pub through: u64,
}

/// Most resumes read from JetStream at once; more are answered from the
/// history alone (`gone`).
const MAX_FETCHES: usize = 64;

/// How NATS took an HTTP publish.
pub(crate) struct PublishAnswer {
    pub key: usize,
    pub id: u32,
    /// The events NATS confirmed, or why not.
    pub result: Result<Published, Refused>,
}

/// What NATS confirmed of an HTTP publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    pub count: usize,
    /// JetStream mode: the stream sequence of the request's last event.
    pub seq: Option<u64>,
}

/// Why a publish did not go to NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not connected to NATS (or it did not confirm within
    /// `upstream.publish_timeout`).
    Down,
    /// `upstream.publish_capacity` events are already waiting.
    Full,
}

/// Counters of the NATS link, for `/metrics`.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    /// Events NATS confirmed (HTTP) or took (embedded).
    pub published: AtomicU64,
    /// Publishes answered 503 or refused to `Publisher` (down or full).
    pub refused: AtomicU64,
    /// Embedded publishes taken but not confirmed: the connection failed
    /// under them.
    pub lost_publishes: AtomicU64,
    /// Messages received and handed to the sequencer.
    pub received: AtomicU64,
    /// Times events were lost upstream and subscribers told (`resync`,
    /// reason `upstream`): core NATS reconnects and slow-consumer drops,
    /// and JetStream events gone from the stream before this relay read them.
    pub upstream_cuts: AtomicU64,
    /// Messages this relay dropped itself because its sequencer did not take
    /// them fast enough (core NATS; each also makes a cut).
    pub dropped: AtomicU64,
    /// JetStream mode: events read back into the history at start, and
    /// last values read for a cold cache.
    pub backfilled: AtomicU64,
    pub last_values_read: AtomicU64,
    /// JetStream mode: times the ordered consumer was (re)created.
    pub consumers_created: AtomicU64,
    /// JetStream mode: resumes read from the stream (their history did not
    /// reach back), and events they read.
    pub fetches: AtomicU64,
    pub fetched: AtomicU64,
    /// Second copies of a message (overlapping patterns), dropped.
    pub duplicates: AtomicU64,
    /// Messages that are not events (bad subject or payload), dropped.
    pub invalid: AtomicU64,
    /// Times the NATS client reported this relay a slow consumer: it
    /// dropped messages because the relay did not take them fast enough.
    pub slow_consumer: AtomicU64,
    /// Times the connection to NATS was lost.
    pub disconnects: AtomicU64,
    /// NATS subscriptions held now (one per pattern clients hold); when
    /// connected, counted once NATS has confirmed them.
    pub subscriptions: AtomicU64,
    /// Subscription changes sent to NATS (subscribes plus unsubscribes).
    pub interest_changes: AtomicU64,
}

pub(crate) struct UpstreamLink {
    outgoing: UnboundedSender<Outgoing>,
    /// Events in `outgoing` and not yet answered, bounded by `capacity`.
    queued: AtomicUsize,
    capacity: usize,
    publish_timeout: Duration,
    /// Per reactor, by index.
    answers: Box<[Mutex<Vec<PublishAnswer>>]>,
    fetches: Box<[Mutex<Vec<FetchAnswer>>]>,
    fetching: AtomicUsize,
    /// Connected to NATS.
    up: AtomicBool,
    /// JetStream mode: the stream is found (or created) and read; core NATS
    /// needs nothing more than the connection (always true).
    ready: AtomicBool,
    /// Core NATS: ready needs no stream (and resumes are not fetched).
    ready_is_implicit: bool,
    pub counters: UpstreamCounters,
    /// Reactors are woken through the sequencer's wakeups.
    sequencer: Arc<Sequencer>,
}

impl UpstreamLink {
    pub fn new(
        outgoing: UnboundedSender<Outgoing>,
        capacity: usize,
        publish_timeout: Duration,
        reactors: usize,
        sequencer: Arc<Sequencer>,
        jetstream: bool,
    ) -> UpstreamLink {
        UpstreamLink {
            outgoing,
            queued: AtomicUsize::new(0),
            capacity,
            publish_timeout,
            answers: (0..reactors).map(|_| Mutex::default()).collect(),
            fetches: (0..reactors).map(|_| Mutex::default()).collect(),
            fetching: AtomicUsize::new(0),
            up: AtomicBool::new(false),
            ready: AtomicBool::new(!jetstream),
            ready_is_implicit: !jetstream,
            counters: UpstreamCounters::default(),
            sequencer,
        }
    }

    /// Connected, and in JetStream mode with the stream in hand: what
    /// `/healthz` and the gauge report, and what publishes need.
    pub fn is_up(&self) -> bool {
        self.is_connected() && self.ready.load(Ordering::Acquire)
    }

    pub fn is_connected(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// JetStream mode: whether the stream is found and read.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    /// Queues an HTTP publish for the upstream thread, or says at once why
    /// not, handing the events back (never waits).
    pub fn submit_http(
        &self,
        reactor: usize,
        key: usize,
        id: u32,
        events: Vec<EncodedEvent>,
    ) -> Result<(), (Refused, Vec<EncodedEvent>)> {
        let count = events.len();
        let outgoing = Outgoing::Http {
            reactor,
            key,
            id,
            events,
        };
        self.submit(count, outgoing)
            .map_err(|(why, back)| match back {
                Outgoing::Http { events, .. } => {
                    if why == Refused::Full {
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    (why, events)
                }
                _ => unreachable!("bug: submit hands back what it was given"),
            })
    }

    /// Queues an embedded publish, or hands the event back with why not.
    pub fn submit_embedded(&self, event: EncodedEvent) -> Result<(), (Refused, EncodedEvent)> {
        self.submit(1, Outgoing::Embedded(event))
            .map_err(|(why, back)| match back {
                Outgoing::Embedded(event) => (why, event),
                _ => unreachable!("bug: submit hands back what it was given"),
            })
    }

    fn submit(&self, count: usize, outgoing: Outgoing) -> Result<(), (Refused, Outgoing)> {
        let why = if !self.is_up() {
            Refused::Down
        } else if !self.reserve(count) {
            Refused::Full
        } else {
            match self.outgoing.send(outgoing) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    self.release(count);
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    return Err((Refused::Down, back.0));
                }
            }
        };
        // A `Full` an embedded `publish` waits out is not a refusal yet.
        if why == Refused::Down {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        Err((why, outgoing))
    }

    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
    }

    fn reserve(&self, count: usize) -> bool {
        let mut queued = self.queued.load(Ordering::Relaxed);
        loop {
            // An empty queue takes any request, as the sequencer does, so a
            // request larger than the capacity is not refused forever.
            if queued > 0 && queued + count > self.capacity {
                return false;
            }
            match self.queued.compare_exchange_weak(
                queued,
                queued + count,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => queued = now,
            }
        }
    }

    pub fn release(&self, count: usize) {
        self.queued.fetch_sub(count, Ordering::AcqRel);
    }

    pub fn is_full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.capacity
    }

    /// Hands an answer to its reactor and wakes it.
    pub fn answer(&self, reactor: usize, answer: PublishAnswer) {
        let Some(slot) = self.answers.get(reactor) else {
            return;
        };
        slot.lock().unwrap_or_else(|p| p.into_inner()).push(answer);
        self.sequencer.wakeup(reactor).wake();
    }

    /// The answers for reactor `reactor` (called after it cleared its wake).
    pub fn take_answers(&self, reactor: usize, into: &mut Vec<PublishAnswer>) {
        if let Some(slot) = self.answers.get(reactor) {
            let mut answers = slot.lock().unwrap_or_else(|p| p.into_inner());
            into.append(&mut answers);
        }
    }

    /// Asks the upstream thread to read a resume's events from JetStream;
    /// false (nothing asked) when it is down or `MAX_FETCHES` are under way.
    pub fn submit_fetch(&self, request: FetchRequest) -> bool {
        if !self.is_up() {
            return false;
        }
        if self.fetching.fetch_add(1, Ordering::AcqRel) >= MAX_FETCHES {
            self.fetching.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if self.outgoing.send(Outgoing::Fetch(request)).is_err() {
            self.fetching.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Hands a fetch's answer to its reactor and wakes it.
    pub fn answer_fetch(&self, reactor: usize, answer: FetchAnswer) {
        self.fetching.fetch_sub(1, Ordering::AcqRel);
        let Some(slot) = self.fetches.get(reactor) else {
            return;
        };
        slot.lock().unwrap_or_else(|p| p.into_inner()).push(answer);
        self.sequencer.wakeup(reactor).wake();
    }

    /// The fetch answers for reactor `reactor`.
    pub fn take_fetches(&self, reactor: usize, into: &mut Vec<FetchAnswer>) {
        if let Some(slot) = self.fetches.get(reactor) {
            let mut answers = slot.lock().unwrap_or_else(|p| p.into_inner());
            into.append(&mut answers);
        }
    }

    /// Whether resumes the history cannot serve are read from JetStream.
    pub fn fetches_resumes(&self) -> bool {
        !self.ready_is_implicit
    }

    pub fn stop(&self) {
        let _ = self.outgoing.send(Outgoing::Stop);
    }

    /// The Prometheus text of the link's state and counters.
    pub fn prometheus(&self) -> String {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 18] = [
            (
                "tidings_upstream_up",
                "gauge",
                "1 while connected to NATS (and, with JetStream, reading the stream)",
                u64::from(self.is_up()),
            ),
            (
                "tidings_upstream_published_total",
                "counter",
                "events published to NATS",
                load(&c.published),
            ),
            (
                "tidings_upstream_refused_total",
                "counter",
                "publishes refused: NATS down or the queue full",
                load(&c.refused),
            ),
            (
                "tidings_upstream_lost_publishes_total",
                "counter",
                "embedded publishes taken but not confirmed by NATS",
                load(&c.lost_publishes),
            ),
            (
                "tidings_upstream_received_total",
                "counter",
                "events received from NATS",
                load(&c.received),
            ),
            (
                "tidings_upstream_duplicates_total",
                "counter",
                "second copies of a message dropped",
                load(&c.duplicates),
            ),
            (
                "tidings_upstream_invalid_total",
                "counter",
                "messages from NATS that are not events",
                load(&c.invalid),
            ),
            (
                "tidings_upstream_slow_consumer_total",
                "counter",
                "times NATS dropped messages for this relay",
                load(&c.slow_consumer),
            ),
            (
                "tidings_upstream_disconnects_total",
                "counter",
                "times the NATS connection was lost",
                load(&c.disconnects),
            ),
            (
                "tidings_upstream_cuts_total",
                "counter",
                "times events were lost upstream and subscribers were sent resync",
                load(&c.upstream_cuts),
            ),
            (
                "tidings_upstream_dropped_total",
                "counter",
                "messages this relay dropped because its sequencer was full",
                load(&c.dropped),
            ),
            (
                "tidings_upstream_backfilled_total",
                "counter",
                "events read back from JetStream into the history",
                load(&c.backfilled),
            ),
            (
                "tidings_upstream_last_values_read_total",
                "counter",
                "last values read from JetStream for a cold cache",
                load(&c.last_values_read),
            ),
            (
                "tidings_upstream_consumers_created_total",
                "counter",
                "times the JetStream consumer was created or recreated",
                load(&c.consumers_created),
            ),
            (
                "tidings_upstream_fetches_total",
                "counter",
                "resumes read from JetStream by start sequence",
                load(&c.fetches),
            ),
            (
                "tidings_upstream_fetched_total",
                "counter",
                "events read from JetStream for resumes",
                load(&c.fetched),
            ),
            (
                "tidings_upstream_subscriptions",
                "gauge",
                "NATS subscriptions held",
                load(&c.subscriptions),
            ),
            (
                "tidings_upstream_interest_changes_total",
                "counter",
                "subscribes and unsubscribes sent to NATS",
                load(&c.interest_changes),
            ),
        ];
        let mut text = String::new();
        for (name, kind, help, value) in rows {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        text
    }
}
