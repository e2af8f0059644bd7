//! The swarm member: many WebSocket client connections on one mio poll loop.

use crate::cli::Target;
use crate::conn::{Conn, Ctx, Fate, State};
use crate::control::{Cmd, Control, Msg};
use crate::frame::{self, MAX_FRAME_LEFTOVER};
use crate::handshake::{self, MAX_HEAD};
use crate::inflate::{self, Inflater};
use crate::resume::{Replies, Track};
use crate::scan;
use crate::stats::{Arrival, ConnectReport, PhaseAcc};
use crate::storm::{self, Backoff, DropHow, MarkerSummary, StormBook, StormSummary};
use crate::sys::{self, Who};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

pub const WAKE: Token = Token(usize::MAX);
/// Bytes read per `read` call into the buffer all connections share.
const READ_SIZE: usize = 64 * 1024;
/// Reads per connection per readiness before others get a turn.
const READS_PER_TURN: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmCfg {
    /// The endpoints; connection k of the whole swarm goes to
    /// `targets[k % len]`.
    pub targets: Vec<Target>,
    pub pattern: String,
    /// Sent with every upgrade as the `Bearer` subprotocol.
    pub token: Option<String>,
    pub connections: usize,
    /// Index of this member's first connection in the whole swarm (picks
    /// source addresses).
    pub offset: usize,
    pub connect_rate: f64,
    pub per_source: usize,
    pub connect_timeout_ms: u64,
    pub max_inflight: usize,
    pub drain_ms: u64,
    /// A member with no phase and no command for this long exits.
    pub idle_limit_s: u64,
    /// Offer permessage-deflate and inflate what comes compressed.
    #[serde(default)]
    pub deflate: bool,
}

impl SwarmCfg {
    /// The endpoint of connection `i` of this member.
    pub fn target(&self, i: usize) -> &Target {
        &self.targets[(self.offset + i) % self.targets.len()]
    }

    /// The source address of connection `i` of this member.
    pub fn source(&self, i: usize) -> Option<IpAddr> {
        if !self.target(i).addr.ip().is_loopback() {
            return None;
        }
        let n = 2 + (self.offset + i) / self.per_source.max(1);
        u8::try_from(n)
            .ok()
            .filter(|&n| n < 255)
            .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
    }
}

pub struct Swarm {
    cfg: SwarmCfg,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    streams: Vec<Option<TcpStream>>,
    buf: Vec<u8>,
    subscribe: Vec<u8>,
    rng: u64,
    /// Connections that may have more to read.
    again: Vec<usize>,
    /// This turn's readiness, reused from turn to turn.
    ready: Vec<(usize, bool, bool)>,
    /// Subscribed connections.
    open: u64,
    /// Connections started and neither ready nor failed.
    inflight: usize,
    failed: BTreeMap<String, u64>,
    closes: BTreeMap<String, u64>,
    pings: u64,
    fields: scan::FieldScanner,
    acc: Option<PhaseAcc>,
    /// Storm mode: the reconnect book and when the drop came.
    storm: Option<(StormBook, Instant)>,
    /// Keep each client's `Track` (storm mode).
    track: bool,
    /// Reconnect with `since` (storm mode, unless turned off).
    resume: bool,
    replies: Replies,
    /// One for all of this thread's connections (`--deflate`): with no
    /// context takeover no message needs the state of another.
    inflater: Option<Inflater>,
}

impl Swarm {
    pub fn new(poll: Poll, cfg: SwarmCfg) -> Self {
        let subscribe =
            format!(r#"{{"type":"subscribe","channels":["{}"]}}"#, cfg.pattern).into_bytes();
        let seed = sys::unix_us() ^ (u64::from(std::process::id()) << 32) ^ cfg.offset as u64;
        Swarm {
            poll,
            events: Events::with_capacity(4096),
            conns: Vec::with_capacity(cfg.connections),
            streams: Vec::with_capacity(cfg.connections),
            buf: vec![0; MAX_HEAD.max(MAX_FRAME_LEFTOVER) + READ_SIZE],
            subscribe,
            rng: seed | 1,
            again: Vec::new(),
            ready: Vec::with_capacity(4096),
            open: 0,
            inflight: 0,
            failed: BTreeMap::new(),
            closes: BTreeMap::new(),
            pings: 0,
            fields: scan::FieldScanner::default(),
            acc: None,
            storm: None,
            track: false,
            resume: false,
            replies: Replies::default(),
            inflater: cfg.deflate.then(Inflater::default),
            cfg,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: random enough for masks and handshake keys.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn mask(&mut self) -> [u8; 4] {
        (self.random() as u32).to_ne_bytes()
    }

    /// Opens all connections at the configured rate and waits until each is
    /// subscribed, failed or timed out.
    pub fn connect_all(&mut self, progress: &mut dyn FnMut(u64, u64, u64)) -> ConnectReport {
        let t0 = Instant::now();
        let n = self.cfg.connections;
        let rate = self.cfg.connect_rate.max(1.0);
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let deadline = t0 + Duration::from_secs_f64(n as f64 / rate) + timeout * 2;
        let mut last_tick = t0;
        // Bounded by `deadline`.
        while Instant::now() < deadline {
            let failed: u64 = self.failed.values().sum();
            if self.conns.len() == n && self.inflight == 0 {
                break;
            }
            let allowed = ((t0.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
            while self.conns.len() < allowed && self.inflight < self.cfg.max_inflight {
                self.open_one();
            }
            self.turn(Duration::from_millis(1));
            if last_tick.elapsed() >= Duration::from_millis(100) {
                last_tick = Instant::now();
                self.expire(timeout);
                progress(self.conns.len() as u64, self.open, failed);
            }
        }
        // Whatever is not subscribed by now has failed.
        for i in 0..self.conns.len() {
            if !matches!(self.conns[i].state, State::Ready | State::Closed) {
                self.close(i, "timeout".into());
            }
        }
        let unstarted = (n - self.conns.len()) as u64;
        if unstarted > 0 {
            *self.failed.entry("not_started".into()).or_insert(0) += unstarted;
        }
        let failed = self.failed.values().sum();
        progress(self.conns.len() as u64, self.open, failed);
        let deflate = self.cfg.deflate.then(|| {
            self.conns
                .iter()
                .filter(|c| c.state == State::Ready && c.deflate)
                .count() as u64
        });
        ConnectReport {
            requested: n as u64,
            ready: self.open,
            failed: std::mem::take(&mut self.failed),
            seconds: t0.elapsed().as_secs_f64(),
            deflate,
            server_cpu_s: None,
        }
    }

    fn open_one(&mut self) {
        let i = self.conns.len();
        self.conns.push(Conn::new(Vec::new(), 0));
        self.streams.push(None);
        self.start(i);
    }

    /// Opens connection `i` afresh (new socket, key and state); it must be
    /// new or closed.
    fn start(&mut self, i: usize) {
        if self.streams.get(i).is_none_or(Option::is_some) {
            return;
        }
        let key = handshake::key(
            ((u128::from(self.random())) << 64 | u128::from(self.random())).to_ne_bytes(),
        );
        let target = self.cfg.target(i);
        let offer = self.cfg.deflate.then_some(inflate::OFFER);
        let request = handshake::request(
            &target.host,
            &target.path,
            &key,
            offer,
            self.cfg.token.as_deref(),
        );
        let addr = target.addr;
        let track = std::mem::take(&mut self.conns[i].track);
        self.conns[i] = Conn::new(request, 0);
        self.conns[i].track = track;
        self.inflight += 1;
        let stream = open_socket(self.cfg.source(i), addr).and_then(|mut s| {
            self.poll
                .registry()
                .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                .map(|()| s)
        });
        match stream {
            Ok(s) => {
                self.streams[i] = Some(s);
                self.conns[i].started_ms = now_ms();
            }
            Err(e) => self.close(i, io_reason(&e)),
        }
    }

    /// Fails connections that have been connecting for longer than `timeout`.
    fn expire(&mut self, timeout: Duration) {
        let limit = now_ms().saturating_sub(timeout.as_millis() as u64);
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            if !matches!(c.state, State::Ready | State::Closed) && c.started_ms < limit {
                self.close(i, "timeout".into());
            }
        }
    }

    /// One poll and the work it brings.
    fn turn(&mut self, timeout: Duration) {
        let timeout = if self.again.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                // Nothing sensible to do but try again next turn.
                std::thread::sleep(Duration::from_millis(1));
            }
            return;
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().filter(|e| e.token() != WAKE).map(|e| {
            let readable = e.is_readable() || e.is_read_closed() || e.is_error();
            (e.token().0, readable, e.is_writable())
        }));
        for &(i, r, w) in &ready {
            self.on_event(i, r, w);
        }
        self.ready = ready;
        let again = std::mem::take(&mut self.again);
        for i in again {
            if self.read(i) {
                self.again.push(i);
            }
        }
    }

    fn on_event(&mut self, i: usize, readable: bool, writable: bool) {
        let Some(stream) = self.streams.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if self.conns[i].state == State::Connecting {
            match stream.take_error() {
                Ok(Some(e)) | Err(e) => return self.close(i, io_reason(&e)),
                Ok(None) => {}
            }
            match stream.peer_addr() {
                Ok(_) => self.conns[i].state = State::Handshake,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => return,
                Err(e) => return self.close(i, io_reason(&e)),
            }
            if let Err(why) = self.flush(i) {
                return self.close(i, why);
            }
        } else if writable && !self.conns[i].out.is_empty() {
            if let Err(why) = self.flush(i) {
                return self.close(i, why);
            }
        }
        if readable && self.read(i) {
            self.again.push(i);
        }
    }

    /// Reads what connection `i` has; true if it may have more.
    fn read(&mut self, i: usize) -> bool {
        for _ in 0..READS_PER_TURN {
            let mask = self.mask();
            let Some(stream) = self.streams.get_mut(i).and_then(Option::as_mut) else {
                return false;
            };
            let c = &mut self.conns[i];
            let l = c.leftover.len();
            if l > self.buf.len() - READ_SIZE {
                self.close(i, "leftover_overflow".into());
                return false;
            }
            self.buf[..l].copy_from_slice(&c.leftover);
            let (n, kernel_us) =
                match sys::recv_stamped(stream.as_raw_fd(), &mut self.buf[l..l + READ_SIZE]) {
                    Ok((0, _)) => {
                        self.close(i, "eof".into());
                        return false;
                    }
                    Ok(got) => got,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.close(i, io_reason(&e));
                        return false;
                    }
                };
            let was = c.state;
            if let Some(acc) = self.acc.as_mut() {
                acc.stats.wire_bytes += n as u64;
            }
            // Stamp after the read: a turn-wide time could predate the data.
            let mut cx = Ctx {
                at: Arrival {
                    kernel_us,
                    read_us: sys::unix_us(),
                },
                acc: self.acc.as_mut(),
                subscribe: &self.subscribe,
                mask,
                pings: &mut self.pings,
                fields: &mut self.fields,
                track: self.track,
                resume: self.resume,
                replies: &mut self.replies,
                inflater: self.inflater.as_mut(),
            };
            let fate = c.feed(&self.buf[..l + n], &mut cx);
            let (upgraded, subscribed) = (
                was == State::Handshake && c.state != State::Handshake,
                was != State::Ready && c.state == State::Ready,
            );
            if subscribed {
                self.open += 1;
                self.inflight = self.inflight.saturating_sub(1);
            }
            if let Some((book, t0)) = self.storm.as_mut() {
                let now = t0.elapsed().as_micros() as u64;
                if upgraded {
                    book.upgraded(now);
                }
                if subscribed {
                    book.subscribed(i, now);
                }
            }
            let pending_out = !c.out.is_empty();
            if let Fate::Close(why) = fate {
                self.close(i, why);
                return false;
            }
            if pending_out {
                if let Err(why) = self.flush(i) {
                    self.close(i, why);
                    return false;
                }
            }
            if n < READ_SIZE {
                // A short read drained the socket; new data raises a new edge.
                return false;
            }
        }
        true
    }

    /// Writes as much of connection `i`'s pending output as the socket takes.
    fn flush(&mut self, i: usize) -> Result<(), String> {
        let Some(stream) = self.streams.get_mut(i).and_then(Option::as_mut) else {
            return Ok(());
        };
        let c = &mut self.conns[i];
        let mut written = 0;
        for _ in 0..64 {
            if written == c.out.len() {
                break;
            }
            match stream.write(&c.out[written..]) {
                Ok(0) => return Err("eof".into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_reason(&e)),
            }
        }
        c.out.drain(..written);
        Ok(())
    }

    /// Drops connection `i` and counts why: as a connect failure if it was
    /// never subscribed, as a close otherwise.
    fn close(&mut self, i: usize, why: String) {
        let Some(c) = self.conns.get(i) else { return };
        if c.state == State::Closed {
            return;
        }
        if c.state != State::Connecting && !c.out.is_empty() {
            let _ = self.flush(i); // best effort: the echoed close frame
        }
        if let Some(mut s) = self.streams[i].take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        let c = &mut self.conns[i];
        if let Some((book, t0)) = self.storm.as_mut() {
            book.closed(
                i,
                c.state == State::Ready,
                &why,
                t0.elapsed().as_micros() as u64,
                c.retry_after_ms,
            );
        }
        if c.state == State::Ready {
            self.open = self.open.saturating_sub(1);
            *self.closes.entry(why).or_insert(0) += 1;
        } else {
            self.inflight = self.inflight.saturating_sub(1);
            *self.failed.entry(why).or_insert(0) += 1;
        }
        c.state = State::Closed;
        c.leftover = Vec::new();
        c.out = Vec::new();
    }

    /// Serves commands until `Quit`, reporting each phase through `out`.
    pub fn serve(&mut self, ctl: &Control, out: &mut dyn FnMut(Msg)) {
        let idle_limit = Duration::from_secs(self.cfg.idle_limit_s);
        let drain_us = self.cfg.drain_ms * 1000;
        let mut last_cmd = Instant::now();
        let mut end: Option<(u64, u64)> = None;
        let mut cpu0 = 0.0;
        loop {
            self.turn(Duration::from_millis(10));
            let now_us = sys::unix_us();
            for cmd in ctl.take() {
                last_cmd = Instant::now();
                match cmd {
                    Cmd::Go(w) => {
                        // Closes since the last report (also those between
                        // phases) are reported with this phase.
                        self.acc = Some(PhaseAcc::new(w, self.open));
                        self.pings = 0;
                        end = None;
                        cpu0 = sys::cpu_seconds(Who::Thread);
                    }
                    Cmd::End { published } => end = Some((published, now_us)),
                    Cmd::Quit => return,
                }
            }
            if let Some(acc) = &self.acc {
                let expected = |p: u64| p.saturating_mul(acc.stats.open_at_start);
                let done = now_us >= acc.window.deadline_us
                    || end.is_some_and(|(p, at)| {
                        acc.stats.received >= expected(p) || now_us >= at + drain_us
                    });
                if done {
                    if let Some(mut acc) = self.acc.take() {
                        acc.stats.closes = std::mem::take(&mut self.closes);
                        acc.stats.pings = self.pings;
                        let cpu = sys::cpu_seconds(Who::Thread) - cpu0;
                        out(Msg::Phase(acc.finish(self.open, cpu)));
                    }
                    last_cmd = Instant::now();
                }
            } else if last_cmd.elapsed() > idle_limit {
                out(Msg::Fatal(format!(
                    "no command for {} s",
                    idle_limit.as_secs()
                )));
                return;
            }
        }
    }
}

fn now_ms() -> u64 {
    sys::unix_us() / 1000
}

fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::EADDRNOTAVAIL) => "addr_not_available".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_files".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        Some(libc::EPIPE) => "broken_pipe".into(),
        _ => format!("io_{:?}", e.kind()).to_lowercase(),
    }
}

/// A non-blocking TCP socket bound to `source` (port chosen at connect
/// time) with a connect to `target` in progress.
fn open_socket(source: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    sys::enable_rx_timestamps(s.as_raw_fd());
    if let Some(src) = source {
        // Let connect pick the port per 4-tuple, so each source address can
        // hold a full ephemeral range towards the one target.
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.bind(&SocketAddr::new(src, 0).into())?;
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// How a storm runs.
#[derive(Debug, Clone)]
pub struct StormCfg {
    pub drop: DropHow,
    pub backoff: Backoff,
    /// Clients not back this long after the drop are left out.
    pub deadline: Duration,
    pub seed: u64,
    /// After everyone is back, wait at most this long for the marker.
    pub marker_wait: Duration,
    /// Reconnect with `since` (the epoch of the last `subscribed`, the
    /// client's last seq).
    pub resume: bool,
    /// Hold the subscribed clients this long (reading) before the drop.
    pub lead: Duration,
    /// After a close whose reason has `retry_after_ms`, wait that long
    /// before reconnecting, instead of the backoff.
    pub honour_retry_after: bool,
}

/// What the driver does at the storm's turning points.
pub struct StormHooks<'a> {
    /// Everyone is connected; the lead (if any) starts now.
    pub connected: &'a mut dyn FnMut(),
    /// Just before the drop, after the lead (start a successor relay).
    pub before_drop: &'a mut dyn FnMut() -> Result<(), String>,
    /// Right after the drop (start a background publisher; with
    /// `DropHow::Server`, tell the relay to stop). An error ends the storm.
    pub dropped: &'a mut dyn FnMut() -> Result<(), String>,
    /// Once all are back and caught up, or the deadline passed (stop the
    /// publisher, publish a marker): the marker's seq, if there is one.
    pub settled: &'a mut dyn FnMut(bool) -> Option<u64>,
    /// Every 100 ms: (back, clients, attempts started).
    pub progress: &'a mut dyn FnMut(u64, u64, u64),
}

/// What a storm leaves for the report.
pub struct StormRun {
    pub connect: ConnectReport,
    pub summary: StormSummary,
    pub marker: Option<MarkerSummary>,
    /// Each member's track, and whether it was subscribed at the end.
    pub tracks: Vec<(Track, bool)>,
    /// Replies since the drop.
    pub replies: Replies,
    pub drop_unix_us: u64,
    /// The newest seq any client had at the drop.
    pub drop_seq: u64,
}

/// Reconnects the storm loop starts before it polls again: a crowd of
/// separate machines reads its answers while others are still
/// connecting, and so must the swarm (starting 19,000 sockets in one go
/// takes it about a second, with every answer left unread meanwhile).
const STARTS_PER_TURN: usize = 256;

/// How often the storm loop checks whether every client has caught up.
const CAUGHT_UP_CHECK: Duration = Duration::from_millis(10);

impl Swarm {
    /// Whether every member is subscribed and caught up.
    fn all_caught_up(&self, book: &StormBook) -> bool {
        self.conns.iter().zip(&book.slots).all(|(c, slot)| {
            !slot.member || (c.state == State::Ready && c.track.caught_up_us.is_some())
        })
    }

    /// Drops every subscribed connection at once (or, with
    /// `DropHow::Server`, waits for the relay to close them); each then
    /// reconnects after its retry hint or backoff and resubscribes, until
    /// all are back and caught up, or the deadline.
    pub fn storm(&mut self, sc: &StormCfg, hooks: &mut StormHooks<'_>) -> Result<StormRun, String> {
        (hooks.connected)();
        let lead_end = Instant::now() + sc.lead;
        // Bounded by the lead.
        while Instant::now() < lead_end {
            self.turn(Duration::from_millis(1));
        }
        let deadline_us = sc.deadline.as_micros() as u64;
        let mut book = StormBook::new(self.conns.len(), sc.backoff, sc.seed, deadline_us);
        book.honour_hint = sc.honour_retry_after;
        let drop_seq = self
            .conns
            .iter()
            .filter(|c| c.state == State::Ready && c.track.known)
            .map(|c| c.track.last)
            .max()
            .unwrap_or(0);
        (hooks.before_drop)()?;
        let drop_unix_us = sys::unix_us();
        let t0 = Instant::now();
        for i in 0..self.conns.len() {
            if self.conns[i].state != State::Ready {
                continue;
            }
            match sc.drop.for_client(i) {
                DropHow::Server => {
                    // A new relay starts a new seq space: nothing to catch up to.
                    self.conns[i].track.dropped(0);
                    book.awaiting(i);
                    continue;
                }
                DropHow::Frame => {
                    let mask = self.mask();
                    frame::encode_close(&mut self.conns[i].out, 1000, mask);
                    let _ = self.flush(i);
                }
                DropHow::Reset => {
                    if let Some(s) = &self.streams[i] {
                        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                    }
                }
                DropHow::Tcp | DropHow::Mixed => {}
            }
            self.close(i, "storm_drop".into());
            self.conns[i].track.dropped(drop_seq);
            book.dropped(i);
        }
        let drop_seconds = t0.elapsed().as_secs_f64();
        self.closes.clear();
        self.replies = Replies::default();
        self.resume = sc.resume;
        let members = book.members;
        self.storm = Some((book, t0));
        (hooks.dropped)()?;
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let mut due = Vec::new();
        let mut last_tick = Instant::now();
        let mut last_check = Instant::now();
        // Bounded by the deadline.
        loop {
            let now = t0.elapsed().as_micros() as u64;
            let Some((book, _)) = self.storm.as_mut() else {
                break;
            };
            if now >= deadline_us {
                break;
            }
            if book.all_back() && last_check.elapsed() >= CAUGHT_UP_CHECK {
                last_check = Instant::now();
                if let Some((b, _)) = &self.storm {
                    if self.all_caught_up(b) {
                        break;
                    }
                }
            }
            let Some((book, _)) = self.storm.as_mut() else {
                break;
            };
            book.take_due_at_most(now, STARTS_PER_TURN, &mut due);
            for &i in &due {
                self.start(i);
            }
            // Sleep no longer than until the next reconnect is due.
            let wait = self
                .storm
                .as_ref()
                .and_then(|(b, _)| b.next_due())
                .map_or(1000, |t| t.saturating_sub(now).min(1000));
            self.turn(Duration::from_micros(wait));
            if last_tick.elapsed() >= Duration::from_millis(100) {
                last_tick = Instant::now();
                self.expire(timeout);
                if let Some((b, _)) = &self.storm {
                    (hooks.progress)(b.back, b.members, b.attempts());
                }
            }
        }
        let Some((book, _)) = self.storm.take() else {
            unreachable!("the storm book is set above")
        };
        (hooks.progress)(book.back, book.members, book.attempts());
        let summary = storm::summarize(&book, sc.drop, drop_seconds);
        // Left-out clients stop trying: they are not counted back later.
        for i in 0..self.conns.len() {
            if book.slots[i].member && self.conns[i].state != State::Ready {
                self.close(i, "left_out".into());
            }
        }
        let marker = (hooks.settled)(book.all_back()).map(|seq| {
            let w0 = Instant::now();
            let got = |s: &Swarm| {
                s.conns
                    .iter()
                    .zip(&book.slots)
                    .filter(|(c, slot)| slot.member && c.state == State::Ready)
                    .fold((0u64, 0u64), |(open, got), (c, _)| {
                        (open + 1, got + u64::from(c.last_seq >= seq))
                    })
            };
            // Bounded by `marker_wait`.
            while w0.elapsed() < sc.marker_wait && got(self).1 < got(self).0 {
                self.turn(Duration::from_millis(1));
            }
            let (open, received) = got(self);
            MarkerSummary {
                seq,
                open,
                received,
                missing: members - received.min(members),
                wait_s: w0.elapsed().as_secs_f64(),
            }
        });
        let tracks = self
            .conns
            .iter_mut()
            .zip(&book.slots)
            .filter(|(_, slot)| slot.member)
            .map(|(c, _)| (std::mem::take(&mut c.track), c.state == State::Ready))
            .collect();
        Ok(StormRun {
            connect: ConnectReport::default(),
            summary,
            marker,
            tracks,
            replies: std::mem::take(&mut self.replies),
            drop_unix_us,
            drop_seq,
        })
    }
}

/// Storm mode in this thread: connect, storm, report.
pub fn run_storm(
    cfg: SwarmCfg,
    sc: &StormCfg,
    connect_progress: &mut dyn FnMut(u64, u64, u64),
    hooks: &mut StormHooks<'_>,
) -> Result<StormRun, String> {
    let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut swarm = Swarm::new(poll, cfg);
    swarm.track = true;
    let report = swarm.connect_all(connect_progress);
    if report.ready == 0 {
        return Err(format!(
            "no connection subscribed ({:?}), no storm",
            report.failed
        ));
    }
    let mut run = swarm.storm(sc, hooks)?;
    run.connect = report;
    Ok(run)
}

/// Runs one member: connect, report, then serve commands.
pub fn run_member(poll: Poll, ctl: &Control, cfg: SwarmCfg, out: &mut dyn FnMut(Msg)) {
    let mut swarm = Swarm::new(poll, cfg);
    let report = swarm.connect_all(&mut |started, ready, failed| {
        out(Msg::Progress {
            started,
            ready,
            failed,
        })
    });
    out(Msg::Ready(report));
    swarm.serve(ctl, out);
}
