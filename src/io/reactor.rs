//! A reactor: one thread, one `mio::Poll`, its own sockets in a slab, its
//! own router and timers. A relay runs one per core; they share nothing on
//! the event path but the sequencer's log, which each reads in seq order.
//!
//! Each turn, flat: handle readiness (drained to `WouldBlock`), fan out a
//! bounded batch of events from the log, apply the closes that fan-out asked
//! for, run due timers, then take one bounded step of the flush pass (one
//! vectored write per socket that got output). A long pass spans turns, so
//! new input and events are taken in between steps, never inside one.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tracing::{debug, info, warn};

use super::admin::PendingGather;
use super::admission::Admission;
use super::close_log::CloseLog;
use super::conn::{Closing, Conn, Phase, NOT_STALLED};
use super::gather::Mailboxes;
use super::outputs::session_cx;
use super::reload::TokenSlot;
use super::timer::{Entry, Millis, TimerWheel};
use crate::auth::Tokens;
use crate::config::{Config, SlowConsumerPolicy};
use crate::error::{CloseReason, Error, CLOSE_IO_ERROR, CLOSE_KINDS, CLOSE_PEER_GONE};
use crate::fanout::coalesce::Coalescer;
use crate::fanout::delivery::Fate;
use crate::fanout::event::seq_of_frame;
use crate::fanout::event::EncodedEvent;
use crate::fanout::history::Gap;
use crate::fanout::queue::OutQueue;
use crate::fanout::queue::{Frame, Push, QueueLimits};
use crate::fanout::sequencer::{Mark, Sequenced, Sequencer};
use crate::hooks::Hooks;
use crate::proto::command::notice_resync;
use crate::proto::frames::{encode_close, encode_text};
use crate::proto::http::Status;
use crate::rate::Pace;
use crate::route::{SubjectLimits, SubscriptionTrie};
use crate::session::HttpSession;
use crate::session::SubscribeAsk;
use crate::stats::{Stats, StatsSet};
use crate::upstream::link::{Fetched, UpstreamLink};

pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Reads per socket per turn, so one flooding client cannot starve the rest;
/// a socket with more to read is revisited next turn.
const READS_PER_TURN: usize = 8;
/// Shared read buffer: large reads, and no per-socket buffer while idle.
const READ_BUFFER: usize = 64 * 1024;
/// Sockets flushed per step of a flush pass while writes carry few frames,
/// between two looks at new input and events: about a millisecond of
/// one-frame writes. Events taken between steps reach the sockets later in
/// the pass in the same write; at one event per request that is most of the
/// batching there is (1,000 sockets at 200 events/s: 2 frames per write,
/// against 1.3 and 20% more CPU with steps of 1,024).
const FLUSH_STEP: usize = 256;
/// Sockets per step once writes carry `DEEP_WRITE_FRAMES` or more: a pass
/// over 1,000 sockets is one step. With steps of 256, the events taken
/// between steps went to sockets already written, which then waited a whole
/// pass, crossed half their limits sooner and paused intake twice as often:
/// at saturation 6-8% fewer deliveries/s (BENCHMARKS.md, "Saturation at
/// 1,000 subscribers").
const DEEP_FLUSH_STEP: usize = 1024;
/// Frames per write (over the coalescer's last period) from which writes
/// count as deep. Saturation gets there (about 1,000 frames per write with
/// the default limits), and sometimes the runs below it: at 1,000 × 8,000
/// events/s writes carry 170-430 and at 10,000 × 900/s 350-420. From 16
/// frames the large step cost 6% more CPU per delivery at 8,000/s.
const DEEP_WRITE_FRAMES: f64 = 384.0;
/// Events taken from the log under one lock.
const READ_CHUNK: usize = 64;
/// Resolution of the timer wheel.
const TIMER_TICK: Duration = Duration::from_millis(10);
/// Connections accepted per turn: a reconnect storm's handshakes take turns
/// with the sockets already open instead of holding the reactor until the
/// backlog is empty.
const ACCEPTS_PER_TURN: usize = 256;

pub(crate) struct Reactor {
    pub(super) index: usize,
    pub(super) poll: Poll,
    listener: Option<TcpListener>,
    pub(super) conns: Slab<Conn>,
    pub(super) router: SubscriptionTrie,
    timers: TimerWheel,
    pub(super) sequencer: Arc<Sequencer>,
    /// Events read from the log and not yet fanned out (at most a chunk,
    /// left when intake paused in the middle of one).
    inbox: VecDeque<Arc<Sequenced>>,
    /// The last intake stopped at its budget with events left in the log.
    more_events: bool,
    pub(super) admission: Arc<Admission>,
    shutdown: Arc<AtomicBool>,
    /// This reactor's counters.
    pub(super) stats: Arc<Stats>,
    /// Every reactor's, for `/metrics`.
    pub(super) all_stats: StatsSet,
    pub(super) config: Config,
    /// The client and publish tokens in force, replaced on a reload.
    pub(super) tokens: Arc<Tokens>,
    pub(super) token_slot: Arc<TokenSlot>,
    /// The slot's generation `tokens` came from.
    pub(super) tokens_generation: u64,
    pub(super) defaults: Rc<[Box<str>]>,
    pub(super) subject_limits: SubjectLimits,
    pub(super) queue_limits: QueueLimits,
    started: Instant,
    pub(super) now: Millis,
    /// The wall clock at the same moment, for timestamps clients see.
    pub(super) wall: SystemTime,
    next_id: u32,
    scratch: Vec<u8>,
    /// Sockets with output for the next flush pass.
    dirty: Vec<usize>,
    /// The flush pass under way: sockets, and how many are done.
    flushing: Vec<usize>,
    flushed: usize,
    /// Closes requested during fan-out, applied after it (invariant: the
    /// router and slab never change while an event is being fanned out).
    deferred_closes: Vec<(usize, CloseReason)>,
    pub(super) read_again: Vec<usize>,
    stopping_until: Option<Millis>,
    /// When the last flush pass that wrote anything started, for
    /// `timeouts.coalesce` (turns without output must not hold the next back).
    last_flush: Millis,
    /// The write interval, adapted to how busy the reactor is.
    coalescer: Coalescer,
    /// Set when a socket that is keeping up (not stalled) has a queue past
    /// half its limits: the reactor, not the reader, is behind. It then
    /// reads no more events from the log until the next flush pass, which
    /// starts at once, instead of overflowing healthy sockets' queues and
    /// closing them as slow consumers. The log fills, and producers wait
    /// (see `fanout::sequencer`).
    pub(super) intake_paused: bool,
    /// The seq of the last event fanned out here: where a subscription made
    /// now starts (`subscribed` replies carry it).
    pub(super) last_seq: u64,
    /// The epoch of the events fanned out so far, for replies and notices.
    pub(super) epoch: Arc<str>,
    /// Epoch changes read from the log (`Mark::Epoch`).
    epoch_changes_seen: u64,
    /// Flush passes started so far, and the one whose end lifts the pause.
    passes: u64,
    resume_after_pass: u64,
    /// HTTP publish requests that found the log full, with their events,
    /// retried when the sequencer wakes this reactor with room (the
    /// publisher waits for its answer, as with a slower server).
    pub(super) held: Vec<HeldPublish>,
    /// Sockets with replies or responses to write this turn, before the
    /// fan-out and whatever the write interval says.
    urgent: Vec<usize>,
    /// Client addresses of open sockets, kept only while
    /// `limits.max_connections_per_ip` is set.
    ip_of: HashMap<usize, IpAddr>,
    /// The deepest queue flushed so far, in bytes (mirrored in the stats).
    queue_bytes_high_water: u64,
    tls: Option<Arc<rustls::ServerConfig>>,
    close_log: CloseLog,
    /// The embedder's hooks, called on this thread (`io::hooks`).
    pub(super) hooks: Option<Arc<dyn Hooks>>,
    /// `limits.accept_rate`, this reactor's share of it.
    accept_pace: Option<Pace>,
    /// Connections were left in the listen backlog (the turn's or the
    /// pace's budget ran out): accept again without a new readiness, which
    /// an edge-triggered listener would not give.
    accept_waiting: bool,
    /// Keys the hash that draws each client's `retry_after_ms` at shutdown.
    retry_draw: RandomState,
    /// Every reactor's mailbox, for answers that need them all.
    pub(super) mail: Arc<Mailboxes>,
    /// Admin connection views this reactor owes, waiting on the others.
    pub(super) gathers: Vec<PendingGather>,
    /// When this turn's poll returned, for `tidings_reactor_turn_seconds`.
    turn_began: Duration,
    /// Microseconds the flush pass under way has spent writing so far.
    pass_us: u64,
    /// A sampled event's append time and the pass that will have written
    /// it (`sample_latency`).
    latency_probe: Option<(Instant, u64)>,
    /// Fleet mode: publishes go to NATS through it.
    pub(super) upstream: Option<Arc<UpstreamLink>>,
    /// JetStream mode: subscribes whose resume is being read from the
    /// stream, by socket; their input is not read meanwhile.
    pub(super) fetching: HashMap<usize, PendingFetch>,
    /// What such a read gave, for the subscribe's answer.
    pub(super) fetched: HashMap<usize, Result<Fetched, Gap>>,
}

/// A subscribe waiting for its resume's events from JetStream.
pub(super) struct PendingFetch {
    /// The socket's id, since the slab key may be reused.
    pub id: u32,
    pub ask: Box<SubscribeAsk>,
}

/// What one accept did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepted {
    /// Took a connection from the backlog; there may be more.
    One,
    /// The backlog is empty (or accepting failed, or there is no listener).
    Empty,
    /// `limits.accept_rate` has no token now.
    Paced,
}

/// A publish request waiting for room in the sequencer's log.
pub(super) struct HeldPublish {
    pub key: usize,
    /// The socket's id, since the slab key may be reused.
    pub id: u32,
    pub events: Vec<EncodedEvent>,
    /// When it is answered 503 if it is still held (`timeouts.publish_wait`).
    pub deadline: Millis,
}

pub(crate) struct ReactorParts {
    pub index: usize,
    pub config: Config,
    pub poll: Poll,
    pub listener: TcpListener,
    pub sequencer: Arc<Sequencer>,
    pub admission: Arc<Admission>,
    pub shutdown: Arc<AtomicBool>,
    pub stats: StatsSet,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub token_slot: Arc<TokenSlot>,
    pub hooks: Option<Arc<dyn Hooks>>,
    pub mail: Arc<Mailboxes>,
    pub upstream: Option<Arc<UpstreamLink>>,
}

impl Reactor {
    pub fn new(parts: ReactorParts) -> Reactor {
        let config = parts.config;
        let defaults: Rc<[Box<str>]> = config
            .default_channels
            .iter()
            .map(|p| p.as_str().into())
            .collect();
        let queue_limits = QueueLimits {
            max_messages: config.limits.max_queue_messages,
            max_bytes: config.limits.max_queue_bytes,
        };
        let coalescer = Coalescer::new(
            config.timeouts.coalesce.as_millis() as Millis,
            config.timeouts.coalesce_max.as_millis() as Millis,
            queue_limits,
            0,
        );
        let stats = Arc::clone(&parts.stats.reactors[parts.index]);
        let reactors = parts.stats.reactors.len() as u32;
        let accept_pace = (config.limits.accept_rate > 0)
            .then(|| Pace::new(config.limits.accept_rate.div_ceil(reactors), 0));
        // The epoch at the start of the log (changes come as marks in it).
        let epoch: Arc<str> = parts.sequencer.first_epoch();
        Stats::set(&stats.write_interval_ms, coalescer.interval());
        let (tokens_generation, tokens) = parts.token_slot.current();
        let close_log = CloseLog::new(parts.index, config.limits.close_log_per_second);
        Reactor {
            index: parts.index,
            poll: parts.poll,
            listener: Some(parts.listener),
            conns: Slab::new(),
            router: SubscriptionTrie::default(),
            timers: TimerWheel::new(TIMER_TICK),
            sequencer: parts.sequencer,
            inbox: VecDeque::new(),
            more_events: false,
            admission: parts.admission,
            shutdown: parts.shutdown,
            stats,
            all_stats: parts.stats,
            tokens,
            token_slot: parts.token_slot,
            tokens_generation,
            defaults,
            subject_limits: config.subject_limits(),
            queue_limits,
            config,
            started: Instant::now(),
            now: 0,
            wall: SystemTime::now(),
            next_id: 0,
            scratch: vec![0; READ_BUFFER],
            dirty: Vec::new(),
            flushing: Vec::new(),
            flushed: 0,
            deferred_closes: Vec::new(),
            read_again: Vec::new(),
            stopping_until: None,
            last_flush: 0,
            coalescer,
            intake_paused: false,
            last_seq: 0,
            epoch,
            epoch_changes_seen: 0,
            passes: 0,
            resume_after_pass: 0,
            held: Vec::new(),
            urgent: Vec::new(),
            ip_of: HashMap::new(),
            queue_bytes_high_water: 0,
            tls: parts.tls,
            close_log,
            hooks: parts.hooks,
            accept_pace,
            accept_waiting: false,
            retry_draw: RandomState::new(),
            mail: parts.mail,
            gathers: Vec::new(),
            turn_began: Duration::ZERO,
            pass_us: 0,
            latency_probe: None,
            upstream: parts.upstream,
            fetching: HashMap::new(),
            fetched: HashMap::new(),
        }
    }

    pub fn run(mut self) -> Result<(), Error> {
        let result = self.turns();
        // A reactor that stopped reads no more: its cursor would hold the
        // log, and every producer, forever.
        self.sequencer.close();
        result
    }

    fn turns(&mut self) -> Result<(), Error> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            self.poll_and_dispatch(&mut events, timeout)?;
            self.take_reloaded_tokens();
            if self.accept_waiting {
                self.accept_all();
            }
            self.read_mail();
            self.retry_reads();
            self.retry_held_publishes();
            self.flush_urgent();
            self.take_events();
            self.take_upstream_answers();
            self.expire_timers();
            self.flush_step();
            self.adapt_write_interval();
            self.close_log.report(self.now);
            let turn = self.started.elapsed().saturating_sub(self.turn_began);
            self.stats.turn_us.observe(micros(turn));
            if self.stopping_until.is_none() && self.shutdown.load(Ordering::Acquire) {
                self.begin_shutdown();
            }
            if let Some(until) = self.stopping_until {
                if self.conns.is_empty() || self.now >= until {
                    info!("stopped; {} sockets were still closing", self.conns.len());
                    return Ok(());
                }
            }
        }
    }

    /// Waits for readiness (at most `timeout`) and handles it.
    fn poll_and_dispatch(
        &mut self,
        events: &mut Events,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        let before = self.started.elapsed();
        let polled = self.poll.poll(events, timeout);
        let after = self.started.elapsed();
        self.turn_began = after;
        self.coalescer
            .idle(after.saturating_sub(before).as_micros() as u64);
        if let Err(e) = polled {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(Error::Io(e));
        }
        self.now = after.as_millis() as Millis;
        self.wall = SystemTime::now();
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(),
                WAKER => {}
                Token(key) => {
                    if event.is_writable() {
                        self.flush(key);
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.on_readable(key);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether this turn flushes: always, unless the write interval is set
    /// and the last pass was less than that long ago.
    fn flush_is_due(&self) -> bool {
        let window = self.coalescer.interval();
        self.intake_paused || window == 0 || self.now >= self.last_flush + window
    }

    /// Lets the write interval follow the load (`fanout::coalesce`).
    fn adapt_write_interval(&mut self) {
        let before = self.coalescer.interval();
        let deliveries = self.stats.deliveries.load(Ordering::Relaxed);
        let writes = self.stats.writes.load(Ordering::Relaxed);
        if let Some(busy) = self.coalescer.tick(self.now, deliveries, writes) {
            let after = self.coalescer.interval();
            if after != before {
                debug!(
                    "reactor {:.0}% busy: write interval {before} -> {after} ms",
                    busy * 100.0
                );
                Stats::set(&self.stats.write_interval_ms, after);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        // Held publishes wait for the sequencer's wake, not for a timeout.
        let pass_left = self.flushed < self.flushing.len();
        // Replies queued after this turn's urgent writes (answers to publishes
        // fanned out, timer responses) go out on the next turn, at once.
        let replies = !self.urgent.is_empty();
        let accept = self.accept_waiting.then(|| {
            let at = self
                .accept_pace
                .map_or(self.now, |p| p.next_token_at(self.now));
            Duration::from_millis(at.saturating_sub(self.now))
        });
        if !self.read_again.is_empty()
            || accept == Some(Duration::ZERO)
            || self.intake_paused
            || self.more_events
            || pass_left
            || replies
        {
            return Some(Duration::ZERO);
        }
        // Sockets dirtied while the last flush pass took in new events (or
        // held back to coalesce) wait for the next pass: never sleep past it.
        let flush = (!self.dirty.is_empty()).then(|| {
            let window = self.coalescer.interval();
            Duration::from_millis((self.last_flush + window).saturating_sub(self.now))
        });
        let timer = [self.timers.next_timeout(self.now), flush, accept]
            .into_iter()
            .flatten()
            .min();
        if self.stopping_until.is_some() {
            return Some(timer.map_or(TIMER_TICK, |t| t.min(TIMER_TICK)));
        }
        timer
    }

    /// Accepts what the listen backlog holds, within this turn's budget and
    /// `limits.accept_rate`; what is left waits there (`accept_waiting`).
    fn accept_all(&mut self) {
        self.accept_waiting = false;
        for _ in 0..ACCEPTS_PER_TURN {
            match self.accept_one() {
                Accepted::One => {}
                Accepted::Empty => return,
                Accepted::Paced => break,
            }
        }
        self.accept_waiting = true;
    }

    /// Accepts every connection the listen backlog holds now, whatever the
    /// budgets: closing the listener would reset them.
    fn accept_backlog(&mut self) {
        self.accept_pace = None;
        while self.accept_one() == Accepted::One {}
        self.accept_waiting = false;
    }

    /// Accepts one connection (or refuses it at the admission limits).
    fn accept_one(&mut self) -> Accepted {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return Accepted::Empty;
            };
            if let Some(pace) = self.accept_pace.as_mut() {
                if !pace.try_take(self.now) {
                    return Accepted::Paced;
                }
            }
            let (mut socket, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: log, and try again on the next
                    // readiness rather than spin.
                    warn!("accept failed: {e}");
                    return Accepted::Empty;
                }
            };
            if let Err(limit) = self.admission.admit(peer.ip()) {
                Stats::add(&self.stats.rejected_connections, 1);
                info!("refusing {peer}: {limit} reached");
                if self.tls.is_none() {
                    let refusal =
                        crate::proto::handshake::upgrade_refusal(Status::ServiceUnavailable);
                    // Best effort on a fresh socket, which has room for a few bytes.
                    let _ = io::Write::write(&mut socket, &refusal);
                }
                return Accepted::One;
            }
            let _ = socket.set_nodelay(true);
            let send_buffer = self.config.limits.socket_send_buffer;
            if send_buffer > 0 {
                let _ = socket2::SockRef::from(&socket).set_send_buffer_size(send_buffer);
            }
            let tls = match self.tls.as_ref().map(super::tls::accept).transpose() {
                Ok(tls) => tls,
                Err(e) => {
                    warn!("cannot start TLS for {peer}: {e}");
                    self.admission.release(Some(peer.ip()));
                    continue;
                }
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut socket,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("cannot register socket from {peer}: {e}");
                self.admission.release(Some(peer.ip()));
                continue;
            }
            if self.config.limits.max_connections_per_ip > 0 {
                self.ip_of.insert(key, peer.ip());
            }
            self.next_id = self.next_id.wrapping_add(1);
            let session = HttpSession::new(self.now, &session_cx!(self));
            let deadline = session.deadline();
            let mut conn = Conn::new(
                socket,
                self.next_id,
                Phase::Http(Box::new(session)),
                self.now,
            );
            conn.tls = tls;
            entry.insert(conn);
            Stats::add(&self.stats.accepted, 1);
            Stats::add(&self.stats.connections, 1);
            self.arm(key, deadline);
            return Accepted::One;
        }
    }

    fn on_readable(&mut self, key: usize) {
        if self.fetching.contains_key(&key) {
            // Read again once the resume is answered (`take_fetches`).
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut reads = 0;
        while let Some(conn) = self.conns.get_mut(key) {
            if reads == READS_PER_TURN {
                self.read_again.push(key);
                break;
            }
            reads += 1;
            let read = match conn.tls.as_mut() {
                Some(tls) => super::tls::read_plaintext(tls, &mut conn.socket, &mut scratch),
                None => conn.socket.read(&mut scratch),
            };
            // The TLS handshake answers from inside the read.
            if conn.tls.as_ref().is_some_and(|t| t.wants_write()) && !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
            let n = match read {
                Ok(0) => {
                    self.on_eof(key);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.log_lost(key, CLOSE_IO_ERROR, &format!("read failed: {e}"));
                    self.drop_conn(key);
                    break;
                }
            };
            conn.last_rx = self.now;
            if !self.on_bytes(key, &mut scratch[..n]) {
                break;
            }
        }
        self.scratch = scratch;
    }

    fn retry_reads(&mut self) {
        for key in std::mem::take(&mut self.read_again) {
            self.on_readable(key);
        }
    }

    /// Writes the replies and responses sessions produced this turn.
    fn flush_urgent(&mut self) {
        for key in std::mem::take(&mut self.urgent) {
            self.flush(key);
        }
    }

    fn on_eof(&mut self, key: usize) {
        self.log_lost(key, CLOSE_PEER_GONE, "peer went away without a close frame");
        self.drop_conn(key);
    }

    /// Fans out up to `limits.ingest_batch` events from the log, in seq
    /// order, stopping early when intake pauses.
    fn take_events(&mut self) {
        self.sequencer.wakeup(self.index).clear();
        let mut budget = self.config.limits.ingest_batch;
        loop {
            // Stopped with events possibly left in the log: their wake is
            // spent, so the loop must come back for them by itself.
            self.more_events = true;
            if self.intake_paused || budget == 0 {
                break;
            }
            if self.inbox.is_empty() {
                let chunk = READ_CHUNK.min(budget);
                if self.sequencer.read(self.index, chunk, &mut self.inbox) == 0 {
                    self.more_events = false;
                    break;
                }
            }
            let Some(event) = self.inbox.pop_front() else {
                break;
            };
            // One event in `metrics.latency_sample` is timed: two clock
            // reads cost as much as fanning an event out to a few sockets.
            let every = self.config.metrics.latency_sample;
            if every != 0 && event.seq % every == 0 {
                let began = Instant::now();
                let delivered = self.fan_out(&event);
                self.stats.fanout_us.observe(micros(began.elapsed()));
                self.sample_latency(&event, delivered);
            } else {
                self.fan_out(&event);
            }
            budget -= 1;
        }
        self.apply_deferred_closes();
    }

    /// Queues a handle to the event's one frame on every matching socket;
    /// returns how many got it.
    fn fan_out(&mut self, event: &Sequenced) -> u64 {
        if let Some(mark) = &event.mark {
            self.at_mark(event.seq, mark);
            return 0;
        }
        // One atomic increment per event (and frame) for this reactor; each
        // delivery then only counts an `Rc`.
        let plain = event.shared_frame(false);
        let deflated = event.deflated.is_some().then(|| event.shared_frame(true));
        let subscribers = self.router.matches(&event.channel);
        let limits = self.queue_limits;
        let policy = self.config.limits.slow_consumer;
        let epoch: &str = &self.epoch;
        let (mut delivered, mut dropped, mut resyncs, mut replaced) = (0, 0, 0, 0);
        self.last_seq = event.seq;
        let mut behind = false;
        for &key in subscribers.iter() {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            // A socket the kernel took everything from last time is keeping
            // up: a deep queue there is the relay's lag, not the reader's,
            // and its limits are not enforced. The intake pause below bounds
            // it instead: intake stops after the event that takes a
            // keeping-up queue past half its limits, so such a queue holds
            // at most half its limits plus one frame (docs/security.md).
            let keeping_up = conn.stalled_since == NOT_STALLED;
            let frame = match &deflated {
                Some(deflated) if conn.deflate => deflated,
                _ => &plain,
            };
            let mut pushed = conn.out.push(frame, limits);
            if pushed == Push::Full {
                if keeping_up {
                    pushed = conn.out.push_past_limits(frame);
                } else {
                    match policy {
                        SlowConsumerPolicy::Close => {
                            self.deferred_closes.push((key, CloseReason::QueueOverflow));
                            continue;
                        }
                        SlowConsumerPolicy::DropOldest => {
                            let (count, kept) = drop_oldest(&mut conn.out, frame, limits, epoch);
                            dropped += count;
                            resyncs += u64::from(count > 0);
                            if count > 0 {
                                conn.resyncs = conn.resyncs.saturating_add(1);
                            }
                            if !kept {
                                // Only `never_drop` frames fill the queue,
                                // and this one may not be dropped either.
                                if frame.fate == Fate::NeverDrop {
                                    self.deferred_closes.push((key, CloseReason::QueueOverflow));
                                }
                                continue;
                            }
                        }
                        SlowConsumerPolicy::Resync => {
                            // The backlog and this event go; the notice
                            // names this event, the last one dropped.
                            dropped += conn.out.discard_unsent() + 1;
                            let notice = notice_resync("overflow", epoch, event.seq);
                            conn.out.push_unbounded(encode_text(notice.as_bytes()));
                            resyncs += 1;
                            conn.resyncs = conn.resyncs.saturating_add(1);
                            if !conn.dirty {
                                conn.dirty = true;
                                self.dirty.push(key);
                            }
                            continue;
                        }
                    }
                }
            }
            delivered += 1;
            replaced += u64::from(pushed == Push::Replaced);
            behind |= keeping_up && conn.out.over_half(limits);
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        if behind && !self.intake_paused {
            self.intake_paused = true;
            // Producers wait too, rather than fill the log: a relay that is
            // behind keeps its latency at about one pass.
            self.sequencer.set_paused(self.index, true);
            // The sockets past half are on this pass or, if this pass
            // already wrote them, on the next one: resume after that.
            self.resume_after_pass = self.passes + 1;
            Stats::add(&self.stats.intake_pauses, 1);
        }
        Stats::add(&self.stats.deliveries, delivered);
        if dropped > 0 || resyncs > 0 {
            Stats::add(&self.stats.dropped_frames, dropped as u64);
            Stats::add(&self.stats.resyncs, resyncs);
        }
        if replaced > 0 {
            Stats::add(&self.stats.replaced_events, replaced);
        }
        delivered
    }

    /// A point in the order that is not an event: takes the new epoch and
    /// position, and tells every subscribed socket that events may have
    /// been missed here (`resync`, reason `upstream`): it resumes from its
    /// position, which the history refuses across a loss or an epoch.
    fn at_mark(&mut self, seq: u64, mark: &Mark) {
        if let Mark::Epoch(epoch) = mark {
            self.epoch = Arc::clone(epoch);
            self.epoch_changes_seen += 1;
        }
        self.last_seq = seq;
        let notice = notice_resync("upstream", &self.epoch, seq);
        let mut resyncs = 0;
        for (key, conn) in self.conns.iter_mut() {
            let Phase::WebSocket(session) = &conn.phase else {
                continue;
            };
            if session.patterns().is_empty() {
                continue;
            }
            conn.out.push_unbounded(encode_text(notice.as_bytes()));
            conn.resyncs = conn.resyncs.saturating_add(1);
            resyncs += 1;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        Stats::add(&self.stats.resyncs, resyncs);
    }

    /// Reads the log through the last epoch change, if this reactor has not
    /// yet: a resume or a snapshot compares seqs with the history's, which
    /// must be of the same order.
    pub(super) fn catch_up_epoch(&mut self) {
        while self.epoch_changes_seen < self.sequencer.epoch_changes() && self.fan_out_next() {}
    }

    /// Fans out the next event of the log, if it has one.
    fn fan_out_next(&mut self) -> bool {
        if self.inbox.is_empty()
            && self.sequencer.read(self.index, READ_CHUNK, &mut self.inbox) == 0
        {
            return false;
        }
        let Some(event) = self.inbox.pop_front() else {
            return false;
        };
        self.fan_out(&event);
        true
    }

    /// Times a sampled event from its entry in the log to the end of the
    /// flush pass that writes it: the next pass to start (a pass under way
    /// may already have written some of its sockets, but not those it
    /// dirtied). One probe at a time; events no socket here got are not
    /// timed.
    fn sample_latency(&mut self, event: &Sequenced, delivered: u64) {
        if delivered == 0 || self.latency_probe.is_some() {
            return;
        }
        self.latency_probe = Some((event.appended_at, self.passes + 1));
    }

    /// Fans out events from the log until this reactor has passed `seq`, or
    /// the log has no more. For a client that resumes from a position
    /// another reactor, further ahead, gave it: answered from here before
    /// this reactor got there, it would get those events twice.
    pub(super) fn catch_up(&mut self, seq: u64) {
        while self.last_seq < seq && self.fan_out_next() {}
    }

    pub(super) fn apply_deferred_closes(&mut self) {
        for (key, reason) in std::mem::take(&mut self.deferred_closes) {
            self.close(key, reason);
        }
    }

    /// One step of the flush pass: up to `FLUSH_STEP` sockets
    /// (`DEEP_FLUSH_STEP` while writes are deep), one write each. A pass over
    /// many sockets takes a while (each write costs microseconds in the
    /// kernel), so it is cut into steps with the rest of the loop in between:
    /// sockets later in the pass then carry the events taken in meanwhile in
    /// the same write, and sockets already flushed get them on the next pass.
    fn flush_step(&mut self) {
        if self.flushed == self.flushing.len() {
            if self.dirty.is_empty() {
                // Everything queued has been written: intake need not wait
                // (it paused in the middle of the pass just finished).
                self.resume_intake();
                return;
            }
            if !self.flush_is_due() {
                return;
            }
            self.last_flush = self.now;
            // Keep the larger allocation for the list after next.
            self.flushing.clear();
            std::mem::swap(&mut self.flushing, &mut self.dirty);
            self.flushed = 0;
            self.passes += 1;
        }
        let began = Instant::now();
        let step = if self.coalescer.frames_per_write() >= DEEP_WRITE_FRAMES {
            DEEP_FLUSH_STEP
        } else {
            FLUSH_STEP
        };
        let end = (self.flushed + step).min(self.flushing.len());
        for at in self.flushed..end {
            let key = self.flushing[at];
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
                self.flush(key);
            }
        }
        self.flushed = end;
        self.pass_us += micros(began.elapsed());
        if end == self.flushing.len() {
            self.pass_done();
        }
        if end == self.flushing.len() && self.passes >= self.resume_after_pass {
            // This pass wrote every socket that made intake pause. Resuming
            // only now, not between steps, keeps sockets past half their
            // limits from taking more events: a queue that keeps up holds at
            // most half its limits plus one frame.
            self.resume_intake();
        }
    }

    /// A flush pass wrote its last socket: its time, and the latency probe
    /// it completes.
    fn pass_done(&mut self) {
        self.stats
            .flush_pass_us
            .observe(std::mem::take(&mut self.pass_us));
        if let Some((appended_at, pass)) = self.latency_probe {
            if self.passes >= pass {
                let latency = micros(appended_at.elapsed());
                self.stats.publish_to_write_us.observe(latency);
                self.latency_probe = None;
            }
        }
    }

    /// Takes events again, and lets producers go on (`Sequencer::set_paused`).
    fn resume_intake(&mut self) {
        if self.intake_paused {
            self.intake_paused = false;
            self.sequencer.set_paused(self.index, false);
        }
    }

    /// Marks a socket for a write this turn, ahead of the flush pass.
    pub(super) fn flush_soon(&mut self, key: usize) {
        if !self.urgent.contains(&key) {
            self.urgent.push(key);
        }
    }

    /// Marks a socket for the end-of-turn flush.
    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    pub(super) fn flush(&mut self, key: usize) {
        let now = self.now;
        let write_deadline = self.config.timeouts.write_deadline.as_millis() as Millis;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let tls_pending = conn.tls.as_ref().is_some_and(|t| t.wants_write());
        if conn.out.is_empty() && !tls_pending {
            return;
        }
        let queued = conn.out.bytes() as u64;
        self.stats.flush_queue_depth.observe(conn.out.len() as u64);
        if queued > self.queue_bytes_high_water {
            self.queue_bytes_high_water = queued;
            Stats::set(&self.stats.queue_bytes_high_water, queued);
        }
        // A stalled reader's queue is deep because of the reader: it must
        // not shorten everyone's write interval.
        if conn.stalled_since == NOT_STALLED {
            self.coalescer.queue_depth(conn.out.len(), conn.out.bytes());
        }
        let result = match conn.tls.as_mut() {
            Some(tls) => super::tls::flush(&mut conn.out, tls, &mut conn.socket),
            None => conn.out.flush_to(&mut conn.socket),
        };
        let flushed = match result {
            Ok(flushed) => flushed,
            Err(e) => {
                self.log_lost(key, CLOSE_IO_ERROR, &format!("write failed: {e}"));
                self.drop_conn(key);
                return;
            }
        };
        if flushed.bytes > 0 {
            Stats::add(&self.stats.writes, 1);
        }
        if flushed.blocked {
            if flushed.bytes > 0 || conn.stalled_since == NOT_STALLED {
                conn.stalled_since = now;
                self.arm(key, now + write_deadline);
            }
            return;
        }
        conn.stalled_since = NOT_STALLED;
        if let Phase::Closing(closing) = &mut conn.phase {
            if closing.drop_when_flushed {
                self.drop_conn(key);
            } else if !closing.write_shut {
                closing.write_shut = true;
                if let Some(tls) = conn.tls.as_mut() {
                    super::tls::close_notify(tls, &mut conn.socket);
                }
                // FIN after the close frame; the socket lingers for the peer's.
                let _ = conn.socket.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    /// Starts closing a socket: a WebSocket gets a close frame after any
    /// partly written frame; an HTTP socket is dropped.
    pub(super) fn close(&mut self, key: usize, reason: CloseReason) {
        let linger = self.config.timeouts.close_linger.as_millis() as Millis;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let old = match conn.phase {
            Phase::Closing(_) => return,
            Phase::Http(_) => {
                self.drop_conn(key);
                return;
            }
            Phase::WebSocket(_) => std::mem::replace(
                &mut conn.phase,
                Phase::Closing(Closing {
                    until: self.now + linger,
                    drop_when_flushed: matches!(reason, CloseReason::Echo(_)),
                    write_shut: false,
                }),
            ),
        };
        // A slow consumer's backlog is what got it closed: drop it so the
        // close frame can go. Anything else leaves in order, close frame last.
        if reason.is_slow_consumer() {
            conn.out.discard_unsent();
        }
        conn.out.push_unbounded(encode_close(&reason));
        Stats::sub(&self.stats.websockets, 1);
        Stats::add(&self.stats.closes[reason.kind()], 1);
        if reason == CloseReason::AuthTimeout {
            Stats::add(&self.stats.auth_failures, 1);
        }
        if reason.is_slow_consumer() {
            Stats::add(&self.stats.slow_consumer_closes, 1);
        } else if reason.is_protocol_error() {
            Stats::add(&self.stats.protocol_closes, 1);
        }
        if self.close_log.admit(self.now) {
            let peer = peer_text(&conn.socket);
            let kind = CLOSE_KINDS[reason.kind()];
            let code = reason.code();
            info!(
                peer,
                socket = key,
                code,
                reason = kind,
                "closing {peer} with {code}: {reason}"
            );
        }
        if let Phase::WebSocket(ws) = old {
            self.unsubscribe_all(key, ws.patterns());
        }
        self.arm(key, self.now + linger);
        self.mark_dirty(key);
    }

    /// Sends a final HTTP response, then closes after it is written.
    pub(super) fn respond_and_close(&mut self, key: usize, response: Vec<u8>) {
        let linger = self.config.timeouts.close_linger.as_millis() as Millis;
        let until = self.now + linger;
        if let Some(conn) = self.conns.get_mut(key) {
            // Refusals an operator looks for: auth and origin, with who.
            match response.get(9..12) {
                Some(b"401") | Some(b"403") => {
                    let status = String::from_utf8_lossy(&response[9..12]).into_owned();
                    info!(
                        "refusing {} (socket {key}) with {status}",
                        peer_text(&conn.socket)
                    );
                }
                _ => {}
            }
            conn.out.push_unbounded(response.into());
            conn.phase = Phase::Closing(Closing {
                until,
                drop_when_flushed: false,
                write_shut: false,
            });
            self.arm(key, until);
            self.mark_dirty(key);
        }
    }

    pub(super) fn unsubscribe_all(&mut self, key: usize, patterns: &[Box<str>]) {
        for pattern in patterns {
            self.route_remove(key, pattern);
        }
    }

    /// Counts and logs a WebSocket that goes without a close frame (the
    /// caller then drops it); `kind` indexes `CLOSE_KINDS`.
    fn log_lost(&mut self, key: usize, kind: usize, why: &str) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if !matches!(conn.phase, Phase::WebSocket(_)) {
            debug!("socket {key}: {why}");
            return;
        }
        Stats::add(&self.stats.closes[kind], 1);
        if self.close_log.admit(self.now) {
            let peer = peer_text(&conn.socket);
            let reason = CLOSE_KINDS[kind];
            info!(peer, socket = key, reason, "lost {peer}: {why}");
        }
    }

    /// Removes a socket at once; the kernel closes it when the stream drops.
    pub(super) fn drop_conn(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let conn = self.conns.remove(key);
        self.fetching.remove(&key);
        self.fetched.remove(&key);
        self.admission.release(self.ip_of.remove(&key));
        if let Phase::WebSocket(ws) = &conn.phase {
            Stats::sub(&self.stats.websockets, 1);
            self.unsubscribe_all(key, ws.patterns());
        }
        Stats::sub(&self.stats.connections, 1);
    }

    /// Makes sure the timer wheel looks at `key` no later than `at`.
    pub(super) fn arm(&mut self, key: usize, at: Millis) {
        if let Some(conn) = self.conns.get_mut(key) {
            if at < conn.timer_at {
                conn.timer_at = at;
                self.timers.schedule(Entry {
                    key: key as u32,
                    id: conn.id,
                    at,
                });
            }
        }
    }

    fn expire_timers(&mut self) {
        let mut due = Vec::new();
        self.timers.expire(self.now, &mut due);
        for entry in due {
            let key = entry.key as usize;
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            // A stale entry: the socket was replaced or rescheduled since.
            if conn.id != entry.id || conn.timer_at != entry.at {
                continue;
            }
            if entry.at > self.now {
                // It sat on the wheel's horizon; its time has not come yet.
                self.timers.schedule(entry);
                continue;
            }
            conn.timer_at = Millis::MAX;
            self.on_timer(key);
        }
    }

    fn on_timer(&mut self, key: usize) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match &mut conn.phase {
            Phase::Http(_) => {
                if self.expire_held_publish(key) || self.expire_gathering(key) {
                    return;
                }
                let timed =
                    self.http_call(key, |s, now, cx, out| s.handle_timeout(now.millis, cx, out));
                if let Some((next, out)) = timed {
                    self.apply_http(key, out);
                    if let Some(at) = next {
                        self.arm(key, at);
                    }
                }
            }
            Phase::Closing(closing) => {
                if now >= closing.until {
                    self.drop_conn(key);
                } else {
                    let at = closing.until;
                    self.arm(key, at);
                }
            }
            Phase::WebSocket(_) => {
                if let Some(at) = self.ws_timeout(key) {
                    self.arm(key, at);
                }
            }
        }
    }

    /// Stops accepting and sends every WebSocket away with 1001 and its
    /// own `retry_after_ms`. HTTP requests under way are still answered (an
    /// upgrade among them is sent away the same way) until the sockets are
    /// gone or `timeouts.close_linger` has passed.
    fn begin_shutdown(&mut self) {
        // Connections the kernel completed for this listener are reset when
        // it closes: take them first. A relay started on the same port
        // (SO_REUSEPORT) gets every connection after that.
        self.accept_backlog();
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        info!(
            "reactor {}: shutting down: closing {} sockets",
            self.index,
            self.conns.len()
        );
        self.sequencer.close();
        let websockets: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| matches!(conn.phase, Phase::WebSocket(_)))
            .map(|(key, _)| key)
            .collect();
        for key in websockets {
            self.send_away(key);
        }
        // Closing sockets get one linger to finish their handshakes.
        let linger = self.config.timeouts.close_linger.as_millis() as Millis;
        self.stopping_until = Some(self.now + linger);
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping_until.is_some()
    }

    /// Closes a WebSocket for shutdown, telling it when to come back: a
    /// delay drawn for it from `shutdown.reconnect_spread`, so a crowd of
    /// clients returns spread out.
    pub(super) fn send_away(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let spread = self.config.shutdown.reconnect_spread.as_millis() as u64;
        let draw = self.retry_draw.hash_one((self.index, conn.id));
        let retry_after_ms = draw % (spread + 1);
        self.close(key, CloseReason::Shutdown { retry_after_ms });
    }
}

/// `slow_consumer = "drop_oldest"` for one queue: drops its oldest frames
/// (but `never_drop` ones) to make room for `frame` and a notice, and puts
/// the notice (`resync`, reason `"dropped"`, the last dropped seq) where
/// they were. `frame` itself is dropped if it still does not fit, unless it
/// is `never_drop`. Returns the frames dropped and whether `frame` was
/// queued.
fn drop_oldest(
    out: &mut OutQueue,
    frame: &Frame,
    limits: QueueLimits,
    epoch: &str,
) -> (usize, bool) {
    // Room for the notice too: a message slot and its bytes.
    const NOTICE_ROOM: usize = 128;
    let room = QueueLimits {
        max_messages: limits.max_messages.saturating_sub(1).max(1),
        max_bytes: limits.max_bytes,
    };
    let mut dropped = out.drop_oldest_for(frame.len() + NOTICE_ROOM, room);
    let kept = out.push(frame, limits) != Push::Full;
    if !kept && frame.fate != Fate::NeverDrop {
        dropped.count += 1;
        dropped.gap_at = out.len();
        dropped.last = Some(Rc::clone(frame));
    }
    if let Some(seq) = dropped.last.and_then(|f| seq_of_frame(&f)) {
        let notice = notice_resync("dropped", epoch, seq);
        out.insert_unsent(dropped.gap_at, encode_text(notice.as_bytes()));
    }
    (dropped.count, kept)
}

/// A duration as whole microseconds, for the histograms.
fn micros(duration: Duration) -> u64 {
    duration.as_micros() as u64
}

/// The peer's address for a log line, or why there is none.
pub(super) fn peer_text(socket: &mio::net::TcpStream) -> String {
    match socket.peer_addr() {
        Ok(addr) => addr.to_string(),
        Err(_) => "a peer already gone".to_string(),
    }
}
