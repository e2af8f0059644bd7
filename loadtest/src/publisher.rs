//! The publisher: POSTs events to the relay over keep-alive HTTP
//! connections, in one of two modes (`PublishMode`): `batch` sends the events
//! that are due in one JSON array over one connection; `single` sends one
//! event per request over K connections. Neither pipelines: a connection
//! sends a request and reads its answer before the next, so K connections
//! have at most K requests in flight.

use crate::http;
use crate::sys::{self, Who};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest request body the publisher builds (the relay's default limit is 1 MiB).
const MAX_BODY: usize = 512 * 1024;
/// Longest wait for one response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The publisher gives up after this many failed requests (all connections).
const MAX_ERRORS: u64 = 50;
/// Most connections `single` mode opens (one thread each).
pub const MAX_CONNS: usize = 64;
/// Longest sleep between checks of the stop flag.
const MAX_NAP_US: u64 = 50_000;

/// How the publisher turns its schedule into requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// One connection; each POST carries every event due when it is built
    /// (a JSON array when more than one, at most --batch-max).
    #[default]
    Batch,
    /// One event per POST over --publish-conns connections, each with one
    /// request in flight.
    Single,
}

impl PublishMode {
    /// `batch` or `single:K`: the label the report and compare.sh use.
    pub fn label(self, conns: usize) -> String {
        match self {
            PublishMode::Batch => "batch".into(),
            PublishMode::Single => format!("single:{conns}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PubCfg {
    pub target: SocketAddr,
    pub host: String,
    pub path: String,
    pub channel: String,
    /// Events per second; `None` publishes as fast as the relay answers.
    pub rate: Option<f64>,
    /// Bytes of each event's `data` object.
    pub payload: usize,
    pub batch_max: usize,
    pub mode: PublishMode,
    /// Connections of `single` mode (`batch` uses one).
    pub conns: usize,
    /// Keep the seq of every accepted event (`PubStats::seqs`).
    pub record_seqs: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PubStats {
    /// `batch` or `single`.
    #[serde(default)]
    pub mode: PublishMode,
    /// Connections the requests were spread over.
    #[serde(default)]
    pub connections: u64,
    /// Events/s the schedule offered (`None`: as fast as the relay answers).
    #[serde(default)]
    pub offered_per_s: Option<f64>,
    /// Events the schedule had due before publishing stopped.
    #[serde(default)]
    pub due: u64,
    /// Events the relay accepted (200).
    pub accepted: u64,
    /// Events the relay answered with another status.
    pub rejected: u64,
    /// Events lost to a failed request (no answer).
    pub unsent: u64,
    pub requests: u64,
    pub largest_batch: u64,
    pub connects: u64,
    /// Most a request was sent after its oldest event was due (µs): how far
    /// the publisher fell behind its schedule. The event's `t` is the send
    /// time, so latency does not include this wait.
    #[serde(default)]
    pub max_behind_us: u64,
    pub statuses: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    /// CPU seconds of the publisher's threads.
    #[serde(default)]
    pub cpu_s: f64,
    /// The seqs the relay gave the accepted events, with `record_seqs`
    /// (not in the report: the storm's `missed` is counted against them).
    #[serde(skip)]
    pub seqs: Vec<u64>,
}

impl PubStats {
    /// Adds the counts of another connection's stats.
    fn absorb(&mut self, o: PubStats) {
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.unsent += o.unsent;
        self.requests += o.requests;
        self.largest_batch = self.largest_batch.max(o.largest_batch);
        self.connects += o.connects;
        self.max_behind_us = self.max_behind_us.max(o.max_behind_us);
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_insert(0) += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        self.cpu_s += o.cpu_s;
        self.seqs.extend(o.seqs);
    }
}

/// Bytes of `data` besides the padding: `{"t":` 16 digits `,"p":"` `"}`.
const DATA_OVERHEAD: usize = 29;

/// Appends one event or, for `n > 1`, an array of `n` events.
pub fn build_body(out: &mut Vec<u8>, channel: &str, n: usize, t_us: u64, pad: &str) {
    if n > 1 {
        out.push(b'[');
    }
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(
            out,
            r#"{{"channel":"{channel}","data":{{"t":{t_us},"p":"{pad}"}}}}"#
        );
    }
    if n > 1 {
        out.push(b']');
    }
}

/// The request head up to the Content-Length value.
fn request_head(cfg: &PubCfg) -> String {
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: ",
        cfg.path, cfg.host
    )
}

/// `head`, the length and `body` into `req`.
fn build_request(req: &mut Vec<u8>, head: &str, body: &[u8]) {
    req.clear();
    req.extend_from_slice(head.as_bytes());
    let _ = write!(req, "{}\r\n\r\n", body.len());
    req.extend_from_slice(body);
}

/// When event `i` (0-based) of a schedule of `rate` events/s is due: event
/// `k = i + 1` once `k / rate` seconds have passed since `start_us`.
fn due_us(start_us: u64, rate: f64, i: u64) -> u64 {
    start_us + ((i + 1) as f64 * 1e6 / rate) as u64
}

/// Events a schedule of `rate` events/s has due strictly before `until_us`.
fn due_before(start_us: u64, until_us: u64, rate: Option<f64>) -> u64 {
    let Some(rate) = rate else { return 0 };
    let x = until_us.saturating_sub(start_us) as f64 * rate / 1e6;
    (x.ceil() as u64).saturating_sub(1)
}

struct Client {
    cfg: PubCfg,
    conn: Option<TcpStream>,
    rbuf: Vec<u8>,
    /// Where the last response's body is in `rbuf`.
    body: Range<usize>,
    stats: PubStats,
}

impl Client {
    fn new(cfg: PubCfg, rbuf: usize) -> Client {
        Client {
            cfg,
            conn: None,
            rbuf: Vec::with_capacity(rbuf),
            body: 0..0,
            stats: PubStats::default(),
        }
    }

    fn connect(&mut self) -> Result<&mut TcpStream, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.cfg.target, Duration::from_secs(2))
                .map_err(|e| format!("connect_{:?}", e.kind()))?;
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            self.stats.connects += 1;
            self.conn = Some(s);
        }
        self.conn.as_mut().ok_or_else(|| "no connection".into())
    }

    /// Sends one request and returns the response status.
    fn exchange(&mut self, req: &[u8]) -> Result<u16, String> {
        let r = self.exchange_inner(req);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn exchange_inner(&mut self, req: &[u8]) -> Result<u16, String> {
        self.connect()?;
        let Client {
            conn, rbuf, body, ..
        } = self;
        let s = conn.as_mut().ok_or("no_connection")?;
        s.write_all(req)
            .map_err(|e| format!("write_{:?}", e.kind()))?;
        rbuf.clear();
        let mut tmp = [0u8; 16 * 1024];
        let give_up = Instant::now() + RESPONSE_TIMEOUT;
        // Bounded in reads and in time.
        for _ in 0..1024 {
            if Instant::now() > give_up {
                return Err("response_timeout".into());
            }
            let n = match s.read(&mut tmp) {
                Ok(0) => return Err("eof".into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read_{:?}", e.kind())),
            };
            rbuf.extend_from_slice(&tmp[..n]);
            match http::parse_response(rbuf) {
                Ok(Some(r)) => {
                    *body = r.body_start.min(r.len)..r.len.min(rbuf.len());
                    if r.close {
                        *conn = None;
                    }
                    return Ok(r.status);
                }
                Ok(None) => {}
                Err(e) => return Err(e.replace(' ', "_")),
            }
        }
        Err("response_too_long".into())
    }

    /// Sends a request of `n` events and counts the outcome; false if it failed.
    fn post(&mut self, req: &[u8], n: u64) -> bool {
        self.stats.requests += 1;
        self.stats.largest_batch = self.stats.largest_batch.max(n);
        match self.exchange(req) {
            Ok(status) => {
                *self.stats.statuses.entry(status.to_string()).or_insert(0) += 1;
                if status == 200 {
                    self.stats.accepted += n;
                    if self.cfg.record_seqs {
                        let body = self.rbuf.get(self.body.clone()).unwrap_or_default();
                        self.stats.seqs.extend(crate::scan::seq_list(body));
                    }
                } else {
                    self.stats.rejected += n;
                }
                true
            }
            Err(e) => {
                *self.stats.errors.entry(e).or_insert(0) += 1;
                self.stats.unsent += n;
                false
            }
        }
    }
}

/// Publishes from `start_us` until `end_us` (unix µs) and says how it went.
pub fn run(cfg: PubCfg, start_us: u64, end_us: u64) -> PubStats {
    run_until(cfg, start_us, end_us, &AtomicBool::new(false))
}

/// `run`, stopping early once `stop` is set.
pub fn run_until(cfg: PubCfg, start_us: u64, end_us: u64, stop: &AtomicBool) -> PubStats {
    let (mode, rate) = (cfg.mode, cfg.rate);
    let mut stats = match mode {
        PublishMode::Batch => run_batch(cfg, start_us, end_us, stop),
        PublishMode::Single => run_single(cfg, start_us, end_us, stop),
    };
    let now = sys::unix_us();
    // A caller's stop ends the schedule early; giving up on errors does not.
    let until = if stop.load(Ordering::Relaxed) {
        now.min(end_us)
    } else {
        end_us
    };
    stats.mode = mode;
    stats.offered_per_s = rate;
    stats.due = due_before(start_us, until, rate);
    stats.seconds = now.saturating_sub(start_us) as f64 / 1e6;
    stats
}

/// `batch`: one connection; each POST carries the events due when it is built.
fn run_batch(cfg: PubCfg, start_us: u64, end_us: u64, stop: &AtomicBool) -> PubStats {
    let cpu0 = sys::cpu_seconds(Who::Thread);
    let pad = "x".repeat(cfg.payload.saturating_sub(DATA_OVERHEAD));
    let event_len = DATA_OVERHEAD + pad.len() + cfg.channel.len() + 16;
    let batch_max = cfg.batch_max.clamp(1, (MAX_BODY / event_len).max(1));
    let head = request_head(&cfg);
    let mut c = Client::new(cfg, 4096);
    c.stats.connections = 1;
    let _ = c.connect(); // connect before the clock starts
    let wait = start_us.saturating_sub(sys::unix_us());
    std::thread::sleep(Duration::from_micros(wait));
    let mut sent: u64 = 0;
    let mut body = Vec::with_capacity(batch_max * event_len + 2);
    let mut req = Vec::with_capacity(body.capacity() + head.len() + 16);
    let errors = |s: &PubStats| s.errors.values().sum::<u64>();
    // Bounded by `end_us` and by MAX_ERRORS.
    loop {
        let now = sys::unix_us();
        if now >= end_us || errors(&c.stats) >= MAX_ERRORS || stop.load(Ordering::Relaxed) {
            break;
        }
        let n = match c.cfg.rate {
            Some(rate) => {
                let due = ((now - start_us.min(now)) as f64 * rate / 1e6) as u64;
                if due <= sent {
                    let next = due_us(start_us, rate, sent);
                    let until = next.min(end_us).saturating_sub(now).min(MAX_NAP_US);
                    std::thread::sleep(Duration::from_micros(until.max(1)));
                    continue;
                }
                let behind = now.saturating_sub(due_us(start_us, rate, sent));
                c.stats.max_behind_us = c.stats.max_behind_us.max(behind);
                (due - sent).min(batch_max as u64) as usize
            }
            None => batch_max,
        };
        body.clear();
        build_body(&mut body, &c.cfg.channel, n, sys::unix_us(), &pad);
        build_request(&mut req, &head, &body);
        sent += n as u64;
        c.post(&req, n as u64);
    }
    c.stats.cpu_s = sys::cpu_seconds(Who::Thread) - cpu0;
    c.stats
}

/// What the connections of `single` mode share: the schedule and when to stop.
struct Schedule<'a> {
    start_us: u64,
    end_us: u64,
    rate: Option<f64>,
    /// The next event's number; whichever connection is free takes it, so a
    /// slow answer on one connection does not hold back the others.
    next: AtomicU64,
    /// Failed requests, all connections.
    errors: AtomicU64,
    stop: &'a AtomicBool,
}

impl Schedule<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.errors.load(Ordering::Relaxed) >= MAX_ERRORS
    }

    /// Sleeps until `t_us`; false if told to stop meanwhile.
    fn sleep_until(&self, t_us: u64) -> bool {
        // Bounded: each nap brings `t_us` closer by up to MAX_NAP_US.
        loop {
            if self.stopped() {
                return false;
            }
            let now = sys::unix_us();
            if now >= t_us {
                return true;
            }
            std::thread::sleep(Duration::from_micros((t_us - now).min(MAX_NAP_US)));
        }
    }
}

/// `single`: one event per POST over `cfg.conns` connections, one thread
/// each, sharing one schedule.
fn run_single(cfg: PubCfg, start_us: u64, end_us: u64, stop: &AtomicBool) -> PubStats {
    let sched = Schedule {
        start_us,
        end_us,
        rate: cfg.rate,
        next: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop,
    };
    let conns = cfg.conns.clamp(1, MAX_CONNS);
    let parts: Vec<PubStats> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..conns)
            .map(|_| s.spawn(|| single_conn(cfg.clone(), &sched)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| PubStats {
                    errors: BTreeMap::from([("publisher_thread_panicked".to_string(), 1)]),
                    ..PubStats::default()
                })
            })
            .collect()
    });
    let mut stats = PubStats {
        connections: conns as u64,
        ..PubStats::default()
    };
    for p in parts {
        stats.absorb(p);
    }
    stats
}

/// One connection of `single` mode: takes the next event, waits until it is
/// due, sends it, reads the answer, and again.
fn single_conn(cfg: PubCfg, sched: &Schedule<'_>) -> PubStats {
    let cpu0 = sys::cpu_seconds(Who::Thread);
    let pad = "x".repeat(cfg.payload.saturating_sub(DATA_OVERHEAD));
    let head = request_head(&cfg);
    let mut c = Client::new(cfg, 4096);
    let _ = c.connect(); // connect before the clock starts
    let mut body = Vec::with_capacity(DATA_OVERHEAD + pad.len() + c.cfg.channel.len() + 32);
    let mut req = Vec::with_capacity(body.capacity() + head.len() + 16);
    // Bounded by `end_us`, `stop` and MAX_ERRORS.
    while sched.sleep_until(sched.start_us) {
        let due = match sched.rate {
            Some(rate) => due_us(
                sched.start_us,
                rate,
                sched.next.fetch_add(1, Ordering::Relaxed),
            ),
            None => sched.start_us,
        };
        if due >= sched.end_us || !sched.sleep_until(due) {
            break;
        }
        let now = sys::unix_us();
        if now >= sched.end_us {
            break;
        }
        if sched.rate.is_some() {
            c.stats.max_behind_us = c.stats.max_behind_us.max(now - due);
        }
        body.clear();
        build_body(&mut body, &c.cfg.channel, 1, now, &pad);
        build_request(&mut req, &head, &body);
        if !c.post(&req, 1) {
            sched.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    c.stats.cpu_s = sys::cpu_seconds(Who::Thread) - cpu0;
    c.stats
}

/// The body of one event whose `data` is `data` (a JSON object).
pub fn one_event(channel: &str, data: &str) -> String {
    format!(r#"{{"channel":"{channel}","data":{data}}}"#)
}

/// Publishes one event with `data` and returns the `seq` the relay gave it.
pub fn publish_one(cfg: &PubCfg, data: &str) -> Result<u64, String> {
    let body = one_event(&cfg.channel, data);
    let mut req = Vec::new();
    build_request(&mut req, &request_head(cfg), body.as_bytes());
    let mut c = Client::new(cfg.clone(), 1024);
    match c.exchange(&req)? {
        200 => {}
        status => return Err(format!("publish answered {status}")),
    }
    let reply = c.rbuf.get(c.body.clone()).unwrap_or_default();
    crate::scan::uint_after(reply, b"\"seq\":")
        .map(|(seq, _)| seq)
        .ok_or_else(|| format!("no seq in {:?}", String::from_utf8_lossy(reply)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_valid_json_of_the_requested_size() {
        let pad = "x".repeat(150 - DATA_OVERHEAD);
        let mut one = Vec::new();
        build_body(&mut one, "metrics.system", 1, 1_732_545_600_123_456, &pad);
        let v: serde_json::Value = serde_json::from_slice(&one).unwrap_or_default();
        assert_eq!(v["channel"], "metrics.system");
        assert_eq!(v["data"]["t"], 1_732_545_600_123_456u64);
        assert_eq!(
            serde_json::to_string(&v["data"]).map(|s| s.len()).ok(),
            Some(150)
        );
        let mut many = Vec::new();
        build_body(&mut many, "a.b", 3, 5, "");
        let v: serde_json::Value = serde_json::from_slice(&many).unwrap_or_default();
        assert_eq!(v.as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn publish_one_reads_the_seq() {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap_or_else(|e| panic!("{e}"));
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            // Bounded: the request is one small read or a few.
            for _ in 0..100 {
                let n = s.read(&mut buf).unwrap_or(0);
                got.extend_from_slice(&buf[..n]);
                if n == 0 || got.ends_with(b"}}") {
                    break;
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"seq\":42}");
            got
        });
        let cfg = PubCfg {
            target: addr,
            host: addr.to_string(),
            path: "/api/publish".into(),
            channel: "m.s".into(),
            rate: None,
            payload: 0,
            batch_max: 1,
            mode: PublishMode::Batch,
            conns: 1,
            record_seqs: false,
        };
        assert_eq!(publish_one(&cfg, r#"{"t":1,"marker":true}"#), Ok(42));
        let req = server.join().unwrap_or_default();
        let req = String::from_utf8_lossy(&req);
        assert!(req.starts_with("POST /api/publish HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with(r#"{"channel":"m.s","data":{"t":1,"marker":true}}"#));
    }

    /// A keep-alive server that answers every request with 200 and records
    /// each request's body, per connection.
    fn fake_relay(conns: usize) -> (SocketAddr, std::thread::JoinHandle<Vec<Vec<String>>>) {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let server = std::thread::spawn(move || {
            let serve = |mut s: TcpStream| {
                let mut bodies = Vec::new();
                let mut got: Vec<u8> = Vec::new();
                let mut buf = vec![0u8; 4096];
                // Bounded: the client closes its connection when it is done.
                loop {
                    while let Some(end) = crate::scan::find(&got, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if got.len() < end + 4 + len {
                            break;
                        }
                        bodies.push(String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into());
                        got.drain(..end + 4 + len);
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"seq\":1}";
                        if s.write_all(reply).is_err() {
                            return bodies;
                        }
                    }
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return bodies,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            };
            let accepted: Vec<TcpStream> = (0..conns)
                .filter_map(|_| l.accept().ok().map(|(s, _)| s))
                .collect();
            let threads: Vec<_> = accepted
                .into_iter()
                .map(|s| std::thread::spawn(move || serve(s)))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_default())
                .collect()
        });
        (addr, server)
    }

    fn cfg_for(addr: SocketAddr, mode: PublishMode, conns: usize, rate: f64) -> PubCfg {
        PubCfg {
            target: addr,
            host: addr.to_string(),
            path: "/api/publish".into(),
            channel: "m.s".into(),
            rate: Some(rate),
            payload: 60,
            batch_max: 1000,
            mode,
            conns,
            record_seqs: true,
        }
    }

    #[test]
    fn single_mode_sends_one_event_per_request_over_k_connections() {
        let (addr, server) = fake_relay(2);
        let start = sys::unix_us() + 50_000;
        let p = run(
            cfg_for(addr, PublishMode::Single, 2, 200.0),
            start,
            start + 500_000,
        );
        let per_conn = server.join().unwrap_or_default();
        // 200/s for 0.5 s: events due at 5, 10, ... 495 ms.
        // A send woken after the end (a busy machine) is skipped, not late.
        assert_eq!(p.due, 99, "{p:?}");
        assert!(p.accepted <= 99 && p.accepted >= 95, "{p:?}");
        assert_eq!((p.requests, p.largest_batch), (p.accepted, 1), "{p:?}");
        assert_eq!(p.seqs.len() as u64, p.accepted, "one seq kept per answer");
        assert_eq!((p.connections, p.connects), (2, 2), "{p:?}");
        assert_eq!(
            (p.mode, p.offered_per_s),
            (PublishMode::Single, Some(200.0))
        );
        assert_eq!(per_conn.len(), 2);
        assert!(
            per_conn.iter().all(|b| !b.is_empty()),
            "both connections used"
        );
        for body in per_conn.iter().flatten() {
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            assert_eq!(v["channel"], "m.s", "one event, not an array: {body}");
            assert!(v["data"]["t"].as_u64().unwrap_or(0) >= start, "{body}");
        }
    }

    #[test]
    fn batch_mode_reports_its_schedule_too() {
        let (addr, server) = fake_relay(1);
        let start = sys::unix_us() + 50_000;
        let p = run(
            cfg_for(addr, PublishMode::Batch, 1, 200.0),
            start,
            start + 300_000,
        );
        drop(server.join());
        assert_eq!(p.due, 59, "{p:?}");
        assert!(p.accepted <= 59 && p.accepted >= 55, "{p:?}");
        assert_eq!((p.mode, p.connections), (PublishMode::Batch, 1));
    }

    #[test]
    fn schedule_counts() {
        assert_eq!(due_us(1_000, 100.0, 0), 11_000);
        assert_eq!(due_before(0, 3_000_000, Some(100.0)), 299);
        assert_eq!(due_before(0, 2_995_000, Some(100.0)), 299);
        assert_eq!(due_before(0, 3_005_000, Some(100.0)), 300);
        assert_eq!(due_before(0, 0, Some(100.0)), 0);
        assert_eq!(due_before(0, 1_000_000, None), 0);
        assert_eq!(PublishMode::Single.label(2), "single:2");
        assert_eq!(PublishMode::Batch.label(1), "batch");
    }
}
