//! Helpers shared by the integration tests.
//!
//! Every wait here is bounded by [`WAIT`] (or an explicit deadline) so that a
//! relay bug makes a test fail instead of hang. Sockets get short read
//! timeouts and the helpers loop until a deadline, which keeps them usable on
//! a loaded 2-core machine without turning sleeps into timing assertions.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings::{Config, Event, Publisher, Relay, RelayHandle, StatsSnapshot};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

pub mod jwt;
pub mod nats;
pub mod proc;

/// Upper bound for anything the relay should do "soon". Generous on purpose.
pub const WAIT: Duration = Duration::from_secs(10);

/// Read timeout on test sockets: short, so loops can check their deadline.
const TICK: Duration = Duration::from_millis(50);

/// The sample key from RFC 6455 section 1.3 and the accept value it must produce.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The masking key from RFC 6455 section 5.7; any key would do.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

// Opcodes (RFC 6455 section 5.2).
pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

// ---------------------------------------------------------------------------
// Relay

/// A default config listening on an ephemeral loopback port, with the
/// reactors `TIDINGS_TEST_REACTORS` asks for (2 by default, so that every
/// test also crosses reactors; CI runs the suite once more with 1).
pub fn config() -> Config {
    let reactors = std::env::var("TIDINGS_TEST_REACTORS")
        .map(|n| n.parse().expect("TIDINGS_TEST_REACTORS: a number or auto"))
        .unwrap_or(tidings::Reactors::Count(2));
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors,
        ..Config::default()
    }
}

/// A spawned relay that is shut down when dropped.
pub struct TestRelay {
    handle: Option<RelayHandle>,
    pub addr: SocketAddr,
    pub publisher: Publisher,
}

impl TestRelay {
    pub fn start() -> TestRelay {
        TestRelay::with(|_| {})
    }

    /// Starts a relay on `config()` after `tweak` has adjusted it.
    pub fn with(tweak: impl FnOnce(&mut Config)) -> TestRelay {
        let mut config = config();
        tweak(&mut config);
        let relay = Relay::new(config).expect("Relay::new");
        let addr = relay.local_addr();
        assert_ne!(addr.port(), 0, "local_addr must report the bound port");
        let publisher = relay.publisher();
        let handle = relay.spawn().expect("Relay::spawn");
        assert_eq!(
            handle.local_addr(),
            addr,
            "handle and relay disagree on the address"
        );
        TestRelay {
            handle: Some(handle),
            addr,
            publisher,
        }
    }

    /// Publishes `data` on `channel` through the embedding API.
    pub fn publish(&self, channel: &str, data: Value) -> Published {
        let event = Event::new(channel, &data).expect("Event::new");
        self.publisher.publish(event).expect("Publisher::publish");
        Published {
            channel: channel.to_string(),
            data,
        }
    }

    /// The running relay's handle.
    pub fn handle(&self) -> &RelayHandle {
        self.handle.as_ref().expect("relay is running")
    }

    /// `RelayHandle::publisher()`, as opposed to the one from `Relay`.
    pub fn handle_publisher(&self) -> Publisher {
        self.handle.as_ref().expect("relay is running").publisher()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.handle.as_ref().expect("relay is running").stats()
    }

    /// Each reactor's counters, by reactor index.
    pub fn reactor_stats(&self) -> Vec<StatsSnapshot> {
        self.handle
            .as_ref()
            .expect("relay is running")
            .reactor_stats()
    }

    /// Polls `stats()` until `pred` holds, or panics after [`WAIT`].
    pub fn wait_stats(&self, what: &str, pred: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stats:?}"
            );
            thread::sleep(TICK);
        }
    }

    /// Shuts the relay down, failing the test if that takes longer than [`WAIT`].
    pub fn shutdown(mut self) {
        let handle = self.handle.take().expect("relay is running");
        assert!(
            shutdown_bounded(handle),
            "RelayHandle::shutdown failed or did not return within {WAIT:?}"
        );
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Runs during panics too; a hung shutdown must not hang the test.
            shutdown_bounded(handle);
        }
    }
}

/// Calls `shutdown` on a helper thread; false if it failed or did not return
/// in time (the thread is then leaked, which is all a test can do).
pub fn shutdown_bounded(handle: RelayHandle) -> bool {
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let result = handle.shutdown();
        if let Err(e) = &result {
            eprintln!("RelayHandle::shutdown: {e}");
        }
        let _ = done_tx.send(result.is_ok());
    });
    done_rx.recv_timeout(WAIT).unwrap_or(false)
}

/// What a test published, to recognise it on the wire.
#[derive(Debug, Clone)]
pub struct Published {
    pub channel: String,
    pub data: Value,
}

/// Asserts `v` is the event `p` (type = channel, same data) and returns its
/// seq. The reactor assigns seqs as events leave, so `publish` cannot know it.
pub fn assert_event(v: &Value, p: &Published) -> u64 {
    let seq = event_seq(v, &p.channel);
    assert_eq!(v["data"], p.data, "wrong event data: {v}");
    seq
}

// ---------------------------------------------------------------------------
// JSON shapes

/// Checks a `subscribed` reply for `channels` (a plain one: no resume
/// fields) and returns its position.
pub fn assert_subscribed(reply: &Value, channels: &[&str]) -> u64 {
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["channels"], json!(channels), "{reply}");
    assert!(
        reply["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{reply}"
    );
    let fields = reply.as_object().map_or(0, |o| o.len());
    assert_eq!(fields, 4, "unexpected fields: {reply}");
    reply["seq"].as_u64().expect("subscribed carries seq")
}

/// Checks `YYYY-MM-DDTHH:MM:SS.mmmZ` without a regex crate.
pub fn is_rfc3339_millis_utc(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() != 24 {
        return false;
    }
    let punct = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ];
    if punct.iter().any(|&(i, c)| b[i] != c) {
        return false;
    }
    let digits_ok = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !punct.iter().any(|&(p, _)| p == *i))
        .all(|(_, c)| c.is_ascii_digit());
    if !digits_ok {
        return false;
    }
    let num = |from: usize, to: usize| text[from..to].parse::<u32>().unwrap();
    (1..=12).contains(&num(5, 7))
        && (1..=31).contains(&num(8, 10))
        && num(11, 13) < 24
        && num(14, 16) < 60
        && num(17, 19) < 61
}

/// Asserts `v` is an event on `channel` (type == channel) and returns its seq.
pub fn event_seq(v: &Value, channel: &str) -> u64 {
    assert_eq!(
        v["type"], channel,
        "expected an event on {channel}, got {v}"
    );
    assert!(
        v.get("channel").is_none(),
        "plain events carry no channel field: {v}"
    );
    let ts = v["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no timestamp: {v}"));
    assert!(is_rfc3339_millis_utc(ts), "bad timestamp {ts:?} in {v}");
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric seq: {v}"))
}

/// Asserts `v` is an error reply with `code`; returns the message text.
pub fn error_message(v: &Value, code: &str) -> String {
    assert_eq!(v["type"], "error", "expected error {code}, got {v}");
    assert_eq!(v["data"]["code"], code, "wrong error code in {v}");
    v["data"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error without message text: {v}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// WebSocket client on tungstenite

/// What ended a read: a close frame (with its code) or a dropped connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    /// A close frame without a status code.
    NoCode,
    /// EOF or reset without a close frame.
    Dropped,
}

/// A tungstenite client. tungstenite answers server pings by itself while we read.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// Server pings seen so far.
    pub pings: usize,
}

/// Connects to `/ws`, panicking if the upgrade fails.
pub fn connect(addr: SocketAddr) -> Client {
    try_connect(addr, None).expect("WebSocket upgrade")
}

/// Connects with an optional `Sec-WebSocket-Protocol` header value.
pub fn try_connect(addr: SocketAddr, protocol: Option<&str>) -> Result<Client, tungstenite::Error> {
    let stream = TcpStream::connect(addr).expect("TCP connect");
    stream.set_read_timeout(Some(TICK)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    if let Some(protocol) = protocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).unwrap(),
        );
    }
    let deadline = Instant::now() + WAIT;
    let mut attempt = tungstenite::client::client(request, stream);
    loop {
        match attempt {
            Ok((ws, _response)) => return Ok(Client { ws, pings: 0 }),
            Err(HandshakeError::Failure(e)) => return Err(e),
            // A read timed out mid-handshake: resume until the deadline.
            Err(HandshakeError::Interrupted(mid)) => {
                assert!(Instant::now() < deadline, "WebSocket handshake timed out");
                attempt = mid.handshake();
            }
        }
    }
}

fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
}

impl Client {
    /// The next message other than ping/pong, `Err` when the socket closed,
    /// `Ok(None)` when nothing came before `deadline`.
    pub fn read_until(&mut self, deadline: Instant) -> Result<Option<Message>, Closed> {
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_)) => self.pings += 1,
                Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
                Ok(Message::Close(frame)) => {
                    return Err(match frame {
                        Some(f) => Closed::Code(f.code.into()),
                        None => Closed::NoCode,
                    })
                }
                Ok(message) => return Ok(Some(message)),
                Err(e) if is_timeout(&e) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(e) => {
                    // Shown with a failing test's output: why the socket ended.
                    eprintln!("WebSocket read ended: {e}");
                    return Err(Closed::Dropped);
                }
            }
        }
    }

    /// The next text message as JSON; panics on close, binary or timeout.
    pub fn next_json(&mut self) -> Value {
        self.next_json_within(WAIT)
    }

    pub fn next_json_within(&mut self, wait: Duration) -> Value {
        match self.read_until(Instant::now() + wait) {
            Ok(Some(Message::Text(text))) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|e| panic!("relay sent invalid JSON {text:?}: {e}")),
            Ok(Some(other)) => panic!("expected a text message, got {other:?}"),
            Ok(None) => panic!("no message within {wait:?}"),
            Err(closed) => panic!("socket closed ({closed:?}) while waiting for a message"),
        }
    }

    /// The next text message as raw text (to check field order on the wire).
    pub fn next_text(&mut self) -> String {
        match self.read_until(Instant::now() + WAIT) {
            Ok(Some(Message::Text(text))) => text.as_str().to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .expect("send text message");
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// Sends `v` and returns the next message.
    pub fn request(&mut self, v: &Value) -> Value {
        self.send_json(v);
        self.next_json()
    }

    /// Subscribes and checks that the reply echoes the channels.
    /// Subscribes and checks the reply; returns its position (`seq`).
    pub fn subscribe(&mut self, channels: &[&str]) -> u64 {
        let reply = self.request(&json!({"type": "subscribe", "channels": channels}));
        assert_subscribed(&reply, channels)
    }

    pub fn unsubscribe(&mut self, channels: &[&str]) {
        let reply = self.request(&json!({"type": "unsubscribe", "channels": channels}));
        assert_eq!(
            reply,
            json!({"type": "unsubscribed", "channels": channels}),
            "unsubscribe reply"
        );
    }

    /// Starts the closing handshake with `code`.
    pub fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        };
        self.ws.close(Some(frame)).expect("send close");
    }

    /// Round-trips an application ping: proves the socket is open and usable.
    pub fn assert_alive(&mut self) {
        let reply = self.request(&json!({"type": "ping"}));
        assert_eq!(reply["type"], "pong", "expected pong, got {reply}");
    }

    /// Reads (skipping data) until the socket closes; panics after `wait`.
    /// Returns how it closed and how many data messages came before.
    pub fn expect_close_within(&mut self, wait: Duration) -> (Closed, usize) {
        let deadline = Instant::now() + wait;
        let mut skipped = 0;
        loop {
            match self.read_until(deadline) {
                Ok(Some(_)) => skipped += 1,
                Ok(None) => panic!("socket still open after {wait:?} ({skipped} messages read)"),
                Err(closed) => return (closed, skipped),
            }
        }
    }

    pub fn expect_close(&mut self) -> Closed {
        self.expect_close_within(WAIT).0
    }
}

// ---------------------------------------------------------------------------
// Raw TCP: HTTP requests and hand-made frames

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Everything before the blank line, for "does not contain" checks.
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A frame as the relay sent it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: the message is compressed (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Builds one frame. `mask` is `None` only to test unmasked client frames.
pub fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked, final frame: what a well-behaved client sends.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, payload, Some(MASK))
}

/// A close frame payload: code then reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// A valid upgrade request for `/ws` with the RFC sample key plus `extra`
/// header lines (each ending in `\r\n`).
pub fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A `POST /api/publish` request with a correct Content-Length.
pub fn publish_request(body: &str, extra: &str) -> String {
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// A raw TCP connection with a read buffer that survives between calls, so
/// bytes after an HTTP head (the first frames) are not lost.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    /// permessage-deflate was agreed, so the relay may set RSV1.
    pub deflate: bool,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("TCP connect");
        stream.set_read_timeout(Some(TICK)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            eof: false,
            deflate: false,
        }
    }

    /// Connects and completes a WebSocket upgrade, asserting 101.
    pub fn upgrade(addr: SocketAddr) -> Raw {
        let (raw, response) = Raw::upgrade_with(addr, "");
        assert_eq!(response.status, 101, "upgrade failed: {}", response.head);
        raw
    }

    /// Connects and sends an upgrade request with `extra` header lines.
    pub fn upgrade_with(addr: SocketAddr, extra: &str) -> (Raw, HttpResponse) {
        let mut raw = Raw::connect(addr);
        raw.send(upgrade_request(extra).as_bytes());
        let response = raw.read_response();
        (raw, response)
    }

    /// Writes everything; panics on error. Use `send_lenient` when the relay
    /// may legitimately close first.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to relay");
    }

    /// Writes, ignoring errors: the relay may already have answered and closed.
    pub fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// One bounded read into the buffer. Ok(true) if bytes arrived,
    /// Ok(false) on timeout, Err on EOF or reset.
    fn fill(&mut self) -> Result<bool, io::Error> {
        if self.eof {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Err(ErrorKind::UnexpectedEof.into())
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(e) => {
                self.eof = true;
                Err(e)
            }
        }
    }

    /// Makes sure at least `n` bytes are buffered. Err if the connection
    /// ended first; panics at `deadline`.
    fn need(&mut self, n: usize, deadline: Instant) -> Result<(), io::Error> {
        while self.buf.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} bytes (have {}: {:?})",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
            self.fill()?;
        }
        Ok(())
    }

    /// Reads one HTTP response (head, then a Content-Length body, or a body
    /// up to EOF when there is no length and the status is not 101).
    pub fn read_response(&mut self) -> HttpResponse {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("connection ended before a response: {e}"))
    }

    /// Reads a response that has no body by definition (1xx).
    pub fn read_response_head_only(&mut self) -> HttpResponse {
        self.read_head(Instant::now() + WAIT)
            .unwrap_or_else(|e| panic!("connection ended before a response: {e}"))
    }

    /// As `read_response`, but Err if the connection ended before a full head.
    pub fn try_read_response(&mut self) -> Result<HttpResponse, io::Error> {
        let deadline = Instant::now() + WAIT;
        let mut response = self.read_head(deadline)?;
        // 1xx (here 101) responses have no body.
        if response.status < 200 {
            return Ok(response);
        }
        match response.header("Content-Length") {
            Some(len) => {
                let len: usize = len.parse().expect("numeric Content-Length");
                // A short body is a relay bug; report what we got.
                if let Err(e) = self.need(len, deadline) {
                    panic!(
                        "body cut short ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                }
                response.body = self.buf.drain(..len).collect();
            }
            None => {
                // No length: the body runs to EOF (RFC 9112 section 6.3).
                while self.fill_until(deadline) {}
                response.body = std::mem::take(&mut self.buf);
            }
        }
        Ok(response)
    }

    /// Reads and parses a response head; the body (if any) stays buffered.
    fn read_head(&mut self, deadline: Instant) -> Result<HttpResponse, io::Error> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.need(self.buf.len() + 1, deadline)?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version.starts_with("HTTP/1."),
            "not an HTTP response: {head:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(HttpResponse {
            status,
            head,
            headers,
            body: Vec::new(),
        })
    }

    /// One read attempt; false once the connection ended. Panics at `deadline`.
    fn fill_until(&mut self, deadline: Instant) -> bool {
        assert!(
            Instant::now() < deadline,
            "connection not closed by the deadline"
        );
        self.fill().is_ok()
    }

    /// True if the relay closes the connection (EOF or reset) within `wait`;
    /// any bytes that arrive first are discarded.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.fill().is_err() {
                return true;
            }
            self.buf.clear();
        }
        false
    }

    pub fn send_frame(
        &mut self,
        fin: bool,
        rsv: u8,
        opcode: u8,
        payload: &[u8],
        mask: Option<[u8; 4]>,
    ) {
        self.send_lenient(&frame(fin, rsv, opcode, payload, mask));
    }

    /// Sends a masked text message in one frame.
    pub fn send_text(&mut self, text: &str) {
        self.send(&client_frame(OP_TEXT, text.as_bytes()));
    }

    /// Reads the next frame; None if the connection ended. Panics after WAIT
    /// or if the relay masks its frames (RFC 6455 5.1 forbids that).
    pub fn read_frame(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + WAIT;
        self.need(2, deadline).ok()?;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
        let reserved = if self.deflate { 0x30 } else { 0x70 };
        assert_eq!(b0 & reserved, 0, "server set RSV bits no extension allows");
        let (len, header) = match b1 & 0x7f {
            126 => {
                self.need(4, deadline).ok()?;
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                self.need(10, deadline).ok()?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        let total = header + usize::try_from(len).unwrap();
        self.need(total, deadline).ok()?;
        let payload = self.buf[header..total].to_vec();
        self.buf.drain(..total);
        Some(Frame {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            opcode: b0 & 0x0f,
            payload,
        })
    }

    /// Every frame that arrives until the connection stays quiet for
    /// `quiet` (or ends): for a reader that stalled and now catches up.
    pub fn drain_frames(&mut self, quiet: Duration) -> Vec<Frame> {
        let mut idle_since = Instant::now();
        loop {
            match self.fill() {
                Ok(true) => idle_since = Instant::now(),
                Ok(false) if idle_since.elapsed() < quiet => {}
                Ok(false) | Err(_) => break,
            }
        }
        let mut frames = Vec::new();
        while !self.buf.is_empty() {
            match self.read_frame() {
                Some(frame) => frames.push(frame),
                None => break,
            }
        }
        frames
    }

    /// Reads frames until a close frame; returns its code (`Closed::Dropped`
    /// if the connection ended without one). Data and pings are skipped.
    pub fn expect_close(&mut self) -> Closed {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no close within {WAIT:?}");
            match self.read_frame() {
                None => return Closed::Dropped,
                Some(f) if f.opcode == OP_CLOSE => {
                    // RFC 6455 5.5 / 5.5.1: at most 125 bytes, UTF-8 reason.
                    assert!(f.fin && f.payload.len() <= 125, "bad close frame {f:?}");
                    if f.payload.len() > 2 {
                        let reason = std::str::from_utf8(&f.payload[2..]);
                        assert!(reason.is_ok(), "close reason is not UTF-8: {f:?}");
                    }
                    return match f.close_code() {
                        Some(code) => Closed::Code(code),
                        None => Closed::NoCode,
                    };
                }
                Some(_) => {}
            }
        }
    }

    /// Like `expect_close`, but also returns the close reason text.
    pub fn expect_close_reason(&mut self) -> (Closed, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no close within {WAIT:?}");
            match self.read_frame() {
                None => return (Closed::Dropped, String::new()),
                Some(f) if f.opcode == OP_CLOSE => {
                    let reason = String::from_utf8_lossy(f.payload.get(2..).unwrap_or_default());
                    let closed = f.close_code().map_or(Closed::NoCode, Closed::Code);
                    return (closed, reason.into_owned());
                }
                Some(_) => {}
            }
        }
    }

    /// The next text frame as JSON, skipping pings; panics on anything else.
    pub fn next_json(&mut self) -> Value {
        loop {
            let f = self
                .read_frame()
                .expect("connection ended while waiting for a message");
            match f.opcode {
                OP_PING | OP_PONG => continue,
                OP_TEXT => {
                    assert!(f.fin, "relay fragmented a small message");
                    return serde_json::from_slice(&f.payload).expect("relay sent valid JSON");
                }
                OP_CLOSE => panic!(
                    "closed with {:?} while waiting for a message",
                    f.close_code()
                ),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }
}

/// Sends one raw HTTP request on a fresh connection and reads the response.
pub fn http(addr: SocketAddr, request: &str) -> HttpResponse {
    let mut raw = Raw::connect(addr);
    raw.send_lenient(request.as_bytes());
    raw.read_response()
}

/// `GET path` on a fresh connection.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
    )
}

/// `GET path` on a fresh connection with `extra` header lines (each ending
/// in `\r\n`), e.g. an `Authorization` header.
pub fn http_get_with(addr: SocketAddr, path: &str, extra: &str) -> HttpResponse {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"),
    )
}

/// `POST /api/publish` with `body` (and extra header lines) on a fresh connection.
pub fn http_publish(addr: SocketAddr, body: &str, extra: &str) -> HttpResponse {
    http(addr, &publish_request(body, extra))
}

/// Now as `YYYY-MM-DDTHH:MM:SS.mmmZ`, computed here (not with the relay's
/// formatter) so timestamp tests compare against an independent clock reading.
pub fn utc_now_rfc3339() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The value of an unlabelled sample `name` in `GET /metrics`, if present.
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let response = http_get(addr, "/metrics");
    assert_eq!(response.status, 200, "{}", response.head);
    response.body_text().lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse().expect("numeric sample"))
    })
}

// ---------------------------------------------------------------------------
// This process's resources: the relay under test runs in it.

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

// ---------------------------------------------------------------------------
// Process resources

/// Raises the soft open-file limit to `needed` (each connection is a
/// descriptor, two when relay and client share the process).
pub fn ensure_fd_limit(needed: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < needed {
            limit.rlim_cur = limit.rlim_max.min(needed);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    assert!(
        limit.rlim_cur >= needed,
        "RLIMIT_NOFILE {} is below the {needed} this test needs",
        limit.rlim_cur
    );
}

/// A file in the temp dir, removed on drop.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// A file of its own, even for tests of one process that run at once
    /// and pass the same `name`.
    pub fn new(name: &str, text: &str) -> TempFile {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tidings-it-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }

    /// A TOML config file.
    pub fn config(name: &str, text: &str) -> TempFile {
        TempFile::new(&format!("{name}.toml"), text)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Says loudly that a test is skipped for want of `what` (a tool the test
/// drives); under CI, where .ci/run installs every such tool, fails instead,
/// so a CI run never passes a test it did not run.
pub fn skipping(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is required under CI (.ci/run installs it)"
    );
    eprintln!("\n*** SKIPPING: {what} ***\n");
}
