//! The publisher: POSTs events to the relay over one keep-alive HTTP
//! connection, batching the events that are due into JSON arrays.

use crate::http;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest request body the publisher builds (the relay's default limit is 1 MiB).
const MAX_BODY: usize = 512 * 1024;
/// Longest wait for one response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The publisher gives up after this many failed requests.
const MAX_ERRORS: u64 = 50;

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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PubStats {
    /// Events the relay accepted (200).
    pub accepted: u64,
    /// Events the relay answered with another status.
    pub rejected: u64,
    /// Events lost to a failed request (no answer).
    pub unsent: u64,
    pub requests: u64,
    pub largest_batch: u64,
    pub connects: u64,
    pub statuses: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
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

struct Client {
    cfg: PubCfg,
    conn: Option<TcpStream>,
    rbuf: Vec<u8>,
    /// Where the last response's body is in `rbuf`.
    body: Range<usize>,
    stats: PubStats,
}

impl Client {
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
}

/// Publishes from `start_us` until `end_us` (unix µs) and says how it went.
pub fn run(cfg: PubCfg, start_us: u64, end_us: u64) -> PubStats {
    run_until(cfg, start_us, end_us, &AtomicBool::new(false))
}

/// `run`, stopping early once `stop` is set.
pub fn run_until(cfg: PubCfg, start_us: u64, end_us: u64, stop: &AtomicBool) -> PubStats {
    let pad = "x".repeat(cfg.payload.saturating_sub(DATA_OVERHEAD));
    let event_len = DATA_OVERHEAD + pad.len() + cfg.channel.len() + 16;
    let batch_max = cfg.batch_max.clamp(1, (MAX_BODY / event_len).max(1));
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: ",
        cfg.path, cfg.host
    );
    let mut c = Client {
        cfg,
        conn: None,
        rbuf: Vec::with_capacity(4096),
        body: 0..0,
        stats: PubStats::default(),
    };
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
                    let next = start_us + ((sent + 1) as f64 * 1e6 / rate) as u64;
                    let until = next.min(end_us).saturating_sub(now).min(50_000);
                    std::thread::sleep(Duration::from_micros(until.max(1)));
                    continue;
                }
                (due - sent).min(batch_max as u64) as usize
            }
            None => batch_max,
        };
        body.clear();
        build_body(&mut body, &c.cfg.channel, n, sys::unix_us(), &pad);
        req.clear();
        req.extend_from_slice(head.as_bytes());
        let _ = write!(req, "{}\r\n\r\n", body.len());
        req.extend_from_slice(&body);
        c.stats.requests += 1;
        c.stats.largest_batch = c.stats.largest_batch.max(n as u64);
        sent += n as u64;
        match c.exchange(&req) {
            Ok(status) => {
                *c.stats.statuses.entry(status.to_string()).or_insert(0) += 1;
                if status == 200 {
                    c.stats.accepted += n as u64;
                } else {
                    c.stats.rejected += n as u64;
                }
            }
            Err(e) => {
                *c.stats.errors.entry(e).or_insert(0) += 1;
                c.stats.unsent += n as u64;
            }
        }
    }
    c.stats.seconds = sys::unix_us().saturating_sub(start_us) as f64 / 1e6;
    c.stats
}

/// The body of one event whose `data` is `data` (a JSON object).
pub fn one_event(channel: &str, data: &str) -> String {
    format!(r#"{{"channel":"{channel}","data":{data}}}"#)
}

/// Publishes one event with `data` and returns the `seq` the relay gave it.
pub fn publish_one(cfg: &PubCfg, data: &str) -> Result<u64, String> {
    let body = one_event(&cfg.channel, data);
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        cfg.path,
        cfg.host,
        body.len()
    );
    let mut c = Client {
        cfg: cfg.clone(),
        conn: None,
        rbuf: Vec::with_capacity(1024),
        body: 0..0,
        stats: PubStats::default(),
    };
    match c.exchange(req.as_bytes())? {
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
        };
        assert_eq!(publish_one(&cfg, r#"{"t":1,"marker":true}"#), Ok(42));
        let req = server.join().unwrap_or_default();
        let req = String::from_utf8_lossy(&req);
        assert!(req.starts_with("POST /api/publish HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with(r#"{"channel":"m.s","data":{"t":1,"marker":true}}"#));
    }
}
