//! Memory under overload (docs/security.md, "When the relay is behind"):
//! a client posts maximal batches as fast as it can to 1,000 subscribers
//! that keep up; every socket queue stays under its hard cap, the relay's
//! resident memory under the sum of the documented caps, and no reader is
//! cut for the relay's own lag.
//!
//! The relay runs as a child process (the `tidings` binary with a config
//! file) so that its resident memory is measured alone: the 1,000 client
//! sockets, the readers' buffers and this test's own allocations live in
//! the test process, not in the one measured.

mod common;

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::proc::*;
use common::*;
use serde_json::json;

const SUBSCRIBERS: usize = 1000;
/// Threads reading the subscribers' sockets, each with a share of them.
const READER_THREADS: usize = 4;
/// Connections the publishing client posts on, each from its own thread.
const POSTERS: usize = 2;
const POSTS_EACH: usize = 20;
const CHANNEL: &str = "mem.flood";
/// Characters of each posted event's `data` string.
const DATA_LEN: usize = 1000;
/// The `data` of the final marker event, and how its frame ends on the wire.
const MARKER_DATA: &str = "\"tidings-memtest-end\"";
const MARKER_TAIL: &[u8] = b"\"data\":\"tidings-memtest-end\"}";
/// Everything after the subscribers are connected must be done by then.
const FLOOD_DEADLINE: Duration = Duration::from_secs(90);

// The relay's limits: small, so that the documented sum is small too.
const MAX_QUEUE_BYTES: usize = 64 * 1024;
const MAX_QUEUE_MESSAGES: usize = 1024;
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const MAX_REQUEST_BODY: usize = 256 * 1024;
const INGEST_CAPACITY: usize = 2048;
/// Events a reactor reads from the log at once (docs/security.md: "per
/// reactor, at most 64 events read from the log and not yet fanned out").
const READ_AHEAD: usize = 64;

/// The hard caps, even under overload (docs/security.md, "When the relay is
/// behind"), with `F` the largest frame sent (the posted events' frame with
/// the largest seq, computed with the relay's own encoder), `S` = 1,000
/// subscribers, `R` reactors (2 by default) and `P` = 2 posting connections:
///
/// * a socket that keeps up: half its limits plus one frame, so its queue
///   holds at most `max_queue_bytes / 2 + F` = 32,768 + F bytes (33,853
///   with F = 1,085; in whole frames, 31 = 33,635 bytes: 30 are not past
///   the half, the 31st crosses it and intake stops; the message half, 512
///   frames, is never the nearer one). Checked exactly with
///   `queue_bytes_high_water`, the most bytes one queue held when flushed.
///
/// Resident memory the flood may add to the relay, over what it held with
/// the 1,000 subscribers connected and idle (slab entries, subscriptions,
/// read buffers: docs/security.md "Memory bounds", all in the baseline):
///
/// * the sequencer's log: `ingest_capacity` × F = 2,048 × 1,085 ≈ 2.2 MB;
/// * read-ahead: R × 64 × F ≈ 0.14 MB;
/// * queues: S × (32,768 + F) ≈ 33.9 MB. Loose: queues hold pointers to
///   frames shared by every subscriber, so this is an upper bound on what
///   they keep alive, not a copy per socket;
/// * the posting connections: P × one partial HTTP request,
///   `max_request_head + max_request_body` = 2 × 270,336 ≈ 0.54 MB;
/// * per reactor, the publish request it is handling (again on each retry
///   of a held one): a copy of the body, the events' owned data and their
///   encoded bodies, 3 × `max_request_body` each, R × 786,432 ≈ 1.57 MB
///   (working memory that docs/security.md does not list; the events'
///   frames go into the log and are counted there).
///
/// That is about 38.3 MB for R = 2. Resident memory is the child's
/// `VmHWM` (peak RSS, reset to the current RSS with `/proc/PID/clear_refs`
/// when the baseline is taken), so no peak between two samples is missed.
struct Bound {
    frame: usize,
    reactors: usize,
}

impl Bound {
    fn keeping_up_queue(&self) -> usize {
        MAX_QUEUE_BYTES / 2 + self.frame
    }

    fn log(&self) -> usize {
        INGEST_CAPACITY * self.frame
    }

    fn read_ahead(&self) -> usize {
        self.reactors * READ_AHEAD * self.frame
    }

    fn queues(&self) -> usize {
        SUBSCRIBERS * self.keeping_up_queue()
    }

    fn requests(&self) -> usize {
        POSTERS * (MAX_REQUEST_HEAD + MAX_REQUEST_BODY) + self.reactors * 3 * MAX_REQUEST_BODY
    }

    fn rss_growth(&self) -> usize {
        self.log() + self.read_ahead() + self.queues() + self.requests()
    }
}

#[test]
fn queues_and_rss_stay_under_the_documented_caps_while_maximal_batches_flood_1000_readers() {
    ensure_fd_limit((SUBSCRIBERS + 256) as libc::rlim_t);
    let started = Instant::now();
    let reactors_text = std::env::var("TIDINGS_TEST_REACTORS").unwrap_or_else(|_| "2".into());
    let reactors = reactors_text
        .parse::<tidings::Reactors>()
        .expect("TIDINGS_TEST_REACTORS: a number or auto")
        .count();
    let config = TempFile::new(
        "memory.toml",
        &format!(
            "[limits]\nmax_queue_bytes = {MAX_QUEUE_BYTES}\n\
             max_queue_messages = {MAX_QUEUE_MESSAGES}\n\
             max_request_head = {MAX_REQUEST_HEAD}\n\
             max_request_body = {MAX_REQUEST_BODY}\n\
             ingest_capacity = {INGEST_CAPACITY}\n"
        ),
    );
    let (mut relay, addr) = start_relay(&config, &reactors_text);

    // The subscribers: upgraded and subscribed one by one (replies checked),
    // then handed to the reader threads as plain sockets.
    let subscribe = json!({"type": "subscribe", "channels": [CHANNEL]}).to_string();
    let mut raws: Vec<Raw> = (0..SUBSCRIBERS).map(|_| Raw::upgrade(addr)).collect();
    for raw in &mut raws {
        raw.send_text(&subscribe);
    }
    for (i, raw) in raws.iter_mut().enumerate() {
        let reply = raw.next_json();
        assert_eq!(reply["type"], "subscribed", "subscriber {i}: {reply}");
        assert_eq!(reply["channels"], json!([CHANNEL]), "subscriber {i}");
    }
    let streams: Vec<TcpStream> = raws.into_iter().map(|raw| raw.stream).collect();
    assert_eq!(
        metric(addr, "tidings_websockets"),
        Some(SUBSCRIBERS as f64),
        "every subscriber is open"
    );
    eprintln!(
        "{SUBSCRIBERS} subscribers ready after {:?}",
        started.elapsed()
    );

    // Baseline: the relay with its subscribers connected and idle.
    let rss_before = status_bytes(&relay, "VmRSS");
    reset_peak_rss(&relay);

    let deadline = Instant::now() + FLOOD_DEADLINE;
    let stop = Arc::new(AtomicBool::new(false));
    let per_thread = SUBSCRIBERS.div_ceil(READER_THREADS);
    let mut streams = streams.into_iter();
    let readers: Vec<_> = (0..READER_THREADS)
        .map(|_| {
            let share: Vec<TcpStream> = streams.by_ref().take(per_thread).collect();
            let stop = Arc::clone(&stop);
            thread::spawn(move || read_until_marker(share, &stop, deadline))
        })
        .collect();

    // The publishing client: maximal bodies, as fast as it can.
    let (body, per_post) = maximal_body();
    let body = Arc::new(body);
    let flood_started = Instant::now();
    let posters: Vec<_> = (0..POSTERS)
        .map(|_| {
            let body = Arc::clone(&body);
            thread::spawn(move || post_batches(addr, &body, per_post))
        })
        .collect();
    let mut posted = Vec::new();
    for poster in posters {
        match poster.join() {
            Ok(results) => posted.extend(results),
            Err(panic) => {
                stop.store(true, Ordering::Release);
                std::panic::resume_unwind(panic);
            }
        }
    }
    // The marker, last: once a subscriber has it, it has everything.
    let marker_seq = publish_marker(addr);
    // The sockets stay open until the end: the relay must still count them.
    let (mut tallies, mut open) = (Vec::new(), Vec::new());
    for reader in readers {
        let (streams, tally) = reader.join().expect("reader thread panicked");
        open.extend(streams);
        tallies.extend(tally);
    }
    let flood_time = flood_started.elapsed();

    let peak = status_bytes(&relay, "VmHWM");
    let growth = peak.saturating_sub(rss_before);
    let metric_u64 =
        |name: &str| metric(addr, name).unwrap_or_else(|| panic!("no {name} in /metrics")) as u64;
    let high_water = metric_u64("tidings_queue_bytes_high_water");
    let slow_consumer_closes = metric_u64("tidings_slow_consumer_closes_total");
    let intake_pauses = metric_u64("tidings_intake_pauses_total");
    let websockets = metric_u64("tidings_websockets");

    // What every subscriber must have received: each accepted event's
    // frame, then the marker's, byte for byte.
    let seqs: Vec<u64> = posted.iter().flat_map(|p| p.seqs.iter().copied()).collect();
    let accepted = posted.iter().filter(|p| p.status == 200).count();
    let saturated = posted.len() - accepted;
    let data = format!("\"{}\"", "x".repeat(DATA_LEN));
    let expected_bytes: u64 = seqs
        .iter()
        .map(|&seq| frame_len(&data, seq) as u64)
        .sum::<u64>()
        + frame_len(MARKER_DATA, marker_seq) as u64;
    let largest_seq = seqs.iter().copied().max().unwrap_or(0);
    let bound = Bound {
        frame: frame_len(&data, largest_seq),
        reactors,
    };
    let slowest_post = posted.iter().map(|p| p.took).max().unwrap_or_default();
    eprintln!(
        "{} POSTs of {} bytes ({per_post} events each): {accepted} answered 200, \
         {saturated} 503; slowest answer {slowest_post:?}; {} events, marker seq \
         {marker_seq}; flood took {flood_time:?}",
        posted.len(),
        body.len(),
        seqs.len()
    );
    eprintln!(
        "queue bytes high water {high_water} (cap {} = {} + frame {}); \
         intake pauses {intake_pauses}; slow consumer closes {slow_consumer_closes}",
        bound.keeping_up_queue(),
        MAX_QUEUE_BYTES / 2,
        bound.frame
    );
    eprintln!(
        "relay RSS {rss_before} before, peak {peak}: growth {growth} bytes; bound {} \
         (log {} + read-ahead {} + queues {} + requests {})",
        bound.rss_growth(),
        bound.log(),
        bound.read_ahead(),
        bound.queues(),
        bound.requests()
    );
    drop(open);

    // Every reader kept up, got everything and nothing else, and is open.
    for (i, tally) in tallies.iter().enumerate() {
        assert_eq!(tally.ended, None, "subscriber {i} was cut: {tally:?}");
        assert!(
            tally.got_marker,
            "subscriber {i} never got the marker within {FLOOD_DEADLINE:?}: {tally:?}"
        );
        assert_eq!(
            tally.bytes, expected_bytes,
            "subscriber {i} did not get exactly every event"
        );
    }
    assert_eq!(tallies.len(), SUBSCRIBERS);
    assert_eq!(slow_consumer_closes, 0, "readers that keep up were cut");
    assert_eq!(websockets, SUBSCRIBERS as u64, "a subscriber was closed");
    assert!(
        accepted * per_post > INGEST_CAPACITY,
        "too few events got in to fill the log: this tested nothing"
    );
    assert!(
        intake_pauses > 0,
        "the relay never fell behind its readers: this tested nothing"
    );

    // The hard caps.
    assert!(
        high_water <= bound.keeping_up_queue() as u64,
        "a queue held {high_water} bytes ({:.2} frames of {}); the cap for a socket \
         that keeps up is max_queue_bytes / 2 + one frame = {}",
        high_water as f64 / bound.frame as f64,
        bound.frame,
        bound.keeping_up_queue()
    );
    assert!(
        growth <= bound.rss_growth(),
        "the relay's RSS grew by {growth} bytes; the documented caps sum to {}",
        bound.rss_growth()
    );
    relay.signal(libc::SIGTERM);
    let status = relay.wait_exit();
    assert!(status.success(), "tidings exited with {status}");
}

/// The largest body of `[{"channel":CHANNEL,"data":"xxx…"}, …]` within
/// `max_request_body`, and how many events it holds.
fn maximal_body() -> (String, usize) {
    let event = json!({"channel": CHANNEL, "data": "x".repeat(DATA_LEN)}).to_string();
    // `[` + events joined by `,` + `]`.
    let count = (MAX_REQUEST_BODY - 1) / (event.len() + 1);
    let body = format!("[{}]", vec![event.as_str(); count].join(","));
    assert!(body.len() <= MAX_REQUEST_BODY);
    assert!(
        body.len() + event.len() + 1 > MAX_REQUEST_BODY,
        "not maximal: room for one more event"
    );
    (body, count)
}

/// The bytes of the frame the relay sends for an event on `CHANNEL` with
/// `data` (JSON text) and `seq`, from its own encoder; timestamps have a
/// fixed width.
fn frame_len(data: &str, seq: u64) -> usize {
    tidings::Event::from_json(CHANNEL, data)
        .expect("event")
        .encode(SystemTime::now())
        .frame(seq)
        .len()
}

/// One POST's answer.
#[derive(Debug)]
struct Posted {
    status: u16,
    seqs: Vec<u64>,
    took: Duration,
}

/// Posts `body` `POSTS_EACH` times over one kept-alive connection, each as
/// soon as the last was answered. A 503 (the log stayed full for
/// `timeouts.publish_wait`) closes the connection: reconnect at once.
fn post_batches(addr: SocketAddr, body: &str, per_post: usize) -> Vec<Posted> {
    let request = publish_request(body, "");
    let mut raw = Raw::connect(addr);
    let mut results = Vec::new();
    for post in 0..POSTS_EACH {
        let sent = Instant::now();
        raw.send(request.as_bytes());
        let response = raw.read_response();
        let took = sent.elapsed();
        match response.status {
            200 => {
                let seqs: Vec<u64> = response.json()["seqs"]
                    .as_array()
                    .expect("seqs")
                    .iter()
                    .map(|s| s.as_u64().expect("numeric seq"))
                    .collect();
                assert_eq!(seqs.len(), per_post, "POST {post}: one seq per event");
                results.push(Posted {
                    status: 200,
                    seqs,
                    took,
                });
            }
            503 => {
                assert_eq!(
                    response.header("Retry-After"),
                    Some("1"),
                    "POST {post}: 503 without Retry-After: {}",
                    response.head
                );
                results.push(Posted {
                    status: 503,
                    seqs: Vec::new(),
                    took,
                });
                raw = Raw::connect(addr);
            }
            other => panic!("POST {post}: {other}: {}", response.body_text()),
        }
    }
    results
}

/// Publishes the marker event over HTTP; its seq.
fn publish_marker(addr: SocketAddr) -> u64 {
    let body = format!(r#"{{"channel":"{CHANNEL}","data":{MARKER_DATA}}}"#);
    let deadline = Instant::now() + WAIT;
    loop {
        let response = http_publish(addr, &body, "");
        if response.status == 200 {
            return response.json()["seq"].as_u64().expect("seq");
        }
        assert_eq!(response.status, 503, "marker: {}", response.body_text());
        assert!(Instant::now() < deadline, "marker: 503 for {WAIT:?}");
    }
}

/// What one subscriber received.
#[derive(Debug, Default)]
struct Tally {
    bytes: u64,
    got_marker: bool,
    /// Why reading stopped early: EOF or an error.
    ended: Option<String>,
}

/// Reads every socket as fast as it comes (poll, then read until it would
/// block) until each has received the marker frame last, the deadline
/// passes, or `stop` is set. Frames are not parsed: byte counts and the
/// marker's tail are enough. Then checks that nothing follows the marker.
fn read_until_marker(
    streams: Vec<TcpStream>,
    stop: &AtomicBool,
    deadline: Instant,
) -> (Vec<TcpStream>, Vec<Tally>) {
    let mut tallies: Vec<Tally> = streams.iter().map(|_| Tally::default()).collect();
    let mut tails: Vec<Vec<u8>> = streams.iter().map(|_| Vec::new()).collect();
    let mut fds: Vec<libc::pollfd> = streams
        .iter()
        .map(|s| {
            s.set_nonblocking(true).expect("set_nonblocking");
            libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }
        })
        .collect();
    let mut buf = vec![0u8; 256 * 1024];
    let mut reading = streams.len();
    while reading > 0 && Instant::now() < deadline && !stop.load(Ordering::Acquire) {
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs;
        // negative fds (sockets done) are ignored by poll(2).
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if ready <= 0 {
            continue;
        }
        for (i, pollfd) in fds.iter_mut().enumerate() {
            if pollfd.fd < 0 || pollfd.revents == 0 {
                continue;
            }
            let tally = &mut tallies[i];
            let tail = &mut tails[i];
            loop {
                match (&streams[i]).read(&mut buf) {
                    Ok(0) => {
                        tally.ended = Some("EOF".into());
                        break;
                    }
                    Ok(n) => {
                        tally.bytes += n as u64;
                        tail.extend_from_slice(&buf[n.saturating_sub(MARKER_TAIL.len())..n]);
                        let excess = tail.len().saturating_sub(MARKER_TAIL.len());
                        tail.drain(..excess);
                        tally.got_marker = tail == MARKER_TAIL;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        tally.ended = Some(e.to_string());
                        break;
                    }
                }
            }
            if tally.got_marker || tally.ended.is_some() {
                pollfd.fd = -1;
                reading -= 1;
            }
        }
    }
    // Nothing after the marker (a close frame, say) and still open: give
    // the relay a moment to send what it would, then expect nothing.
    thread::sleep(Duration::from_millis(100));
    for (stream, tally) in streams.iter().zip(&mut tallies) {
        if tally.ended.is_some() {
            continue;
        }
        match (&*stream).read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(0) => tally.ended = Some("EOF after the marker".into()),
            Ok(n) => tally.ended = Some(format!("{n} bytes after the marker")),
            Err(e) => tally.ended = Some(format!("after the marker: {e}")),
        }
    }
    (streams, tallies)
}

/// Starts the relay binary with `config` and `reactors`; returns it and its
/// address. Warnings are enough in its log (one line per connection at info).
fn start_relay(config: &TempFile, reactors: &str) -> (Proc, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--reactors",
            reactors,
            "--config",
        ])
        .arg(config.path())
        .env("TIDINGS_LOG", "warn");
    let mut relay = Proc::spawn_command(command);
    let addr = parse_startup_line(&relay.startup_line());
    (relay, addr)
}

/// A `/proc/PID/status` field given in kB (`VmRSS`, `VmHWM`), in bytes.
fn status_bytes(relay: &Proc, field: &str) -> usize {
    let path = format!("/proc/{}/status", relay.child.id());
    let status = std::fs::read_to_string(&path).expect("read /proc/PID/status");
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"));
    kib * 1024
}

/// Resets the peak RSS (`VmHWM`) to the current RSS (proc(5), clear_refs).
fn reset_peak_rss(relay: &Proc) {
    let path = format!("/proc/{}/clear_refs", relay.child.id());
    std::fs::write(&path, "5").expect("reset the peak RSS through clear_refs");
}
