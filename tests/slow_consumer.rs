//! Slow consumers: a socket that never reads must not hold up the others,
//! and is closed with 1008 (policy `close`) or loses its oldest frames
//! (policy `drop_oldest`). docs/protocol.md, "Close codes"; src/config.rs.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tidings::{Config, SlowConsumerPolicy};

const EVENTS: u64 = 20_000;
/// Most events the publisher may run ahead of the fast reader. 48 events of
/// ~1 KB stay under the 64 KiB queue even if none had reached the kernel, so
/// the fast reader can never be a slow consumer itself on a loaded machine.
const WINDOW: u64 = 48;

fn small_queues(c: &mut Config, policy: SlowConsumerPolicy, write_deadline: Duration) {
    c.limits.max_queue_bytes = 64 * 1024;
    c.limits.slow_consumer = policy;
    c.timeouts.write_deadline = write_deadline;
}

/// Connects a raw client that subscribes to `flood.x` and then never reads.
fn stuck_client(relay: &TestRelay) -> Raw {
    let mut raw = Raw::upgrade(relay.addr);
    raw.send_text(r#"{"type":"subscribe","channels":["flood.x"]}"#);
    assert_eq!(raw.next_json()["type"], "subscribed");
    raw
}

/// Publishes `EVENTS` ~1 KB events on `flood.x` (data `i` = 0, 1, ...)
/// while a fast reader drains them on its own thread; asserts the reader got
/// every one, in order, with rising seqs.
fn flood_with_fast_reader(relay: &TestRelay) {
    let mut fast = connect(relay.addr);
    fast.subscribe(&["flood.x"]);
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let received = Arc::clone(&received);
        thread::spawn(move || {
            let mut last_seq = 0;
            for i in 0..EVENTS {
                let event = fast.next_json();
                let seq = event_seq(&event, "flood.x");
                assert!(
                    i == 0 || seq > last_seq,
                    "fast reader: seq {seq} after {last_seq}"
                );
                assert_eq!(
                    event["data"]["i"], i,
                    "fast reader lost or reordered events"
                );
                last_seq = seq;
                received.fetch_add(1, Ordering::Release);
            }
            fast.assert_alive();
        })
    };

    let pad = "x".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..EVENTS {
        // Pace the publisher to the fast reader (bounded: the reader may have died).
        while i >= received.load(Ordering::Acquire) + WINDOW {
            assert!(Instant::now() < deadline, "fast reader stalled at {i}");
            assert!(!reader.is_finished(), "fast reader thread ended early");
            thread::sleep(Duration::from_micros(200));
        }
        relay.publish("flood.x", json!({"i": i, "pad": pad}));
    }
    reader
        .join()
        .expect("fast reader failed (see its panic above)");
}

#[test]
fn never_reading_client_is_closed_and_fast_reader_gets_everything() {
    let relay =
        TestRelay::with(|c| small_queues(c, SlowConsumerPolicy::Close, Duration::from_secs(2)));
    let mut slow = stuck_client(&relay);
    flood_with_fast_reader(&relay);
    let stats = relay.wait_stats("a slow consumer close", |s| s.slow_consumer_closes >= 1);
    // docs/security.md: counted in tidings_slow_consumer_closes_total too.
    let counted = metric(relay.addr, "tidings_slow_consumer_closes_total");
    assert_eq!(counted, Some(stats.slow_consumer_closes as f64));
    // Whatever was buffered comes first; then a 1008 close, or just EOF/reset
    // if the relay could not fit a close frame into a full socket.
    let closed = slow.expect_close();
    eprintln!("stuck client: {closed:?}");
    assert!(
        matches!(closed, Closed::Code(1008) | Closed::Dropped),
        "got {closed:?}"
    );
    relay.wait_stats("the stuck socket to be gone", |s| s.connections == 0);
}

#[test]
fn drop_oldest_keeps_the_slow_client_open_and_says_where_the_gap_is() {
    // A long write deadline so that only the queue policy is in play.
    let relay = TestRelay::with(|c| {
        small_queues(c, SlowConsumerPolicy::DropOldest, Duration::from_secs(600))
    });
    let mut slow = stuck_client(&relay);
    flood_with_fast_reader(&relay);
    assert_eq!(relay.stats().slow_consumer_closes, 0);

    // Now drain the slow socket: whole frames only (the parser checks),
    // rising seqs and `i`, fewer than published, and the newest event last.
    // Where frames were dropped a `resync` notice names the last dropped
    // seq: loss is never silent.
    let (mut last_seq, mut last_i, mut count, mut notices) = (0, None, 0u64, 0);
    let deadline = Instant::now() + WAIT;
    while last_i != Some(EVENTS - 1) {
        assert!(
            Instant::now() < deadline,
            "slow client never got the last event (at i={last_i:?})"
        );
        let event = slow.next_json();
        if event["type"] == "resync" {
            assert_eq!(event["data"]["reason"], "dropped", "{event}");
            let dropped = event["data"]["seq"].as_u64().expect("seq");
            assert!(dropped > last_seq, "{event} after seq {last_seq}");
            assert!(event["data"]["epoch"].is_string(), "{event}");
            (last_seq, notices) = (dropped, notices + 1);
            continue;
        }
        let seq = event_seq(&event, "flood.x");
        let i = event["data"]["i"].as_u64().expect("data.i");
        assert!(seq > last_seq, "seq went from {last_seq} to {seq}");
        assert!(
            last_i.map_or(true, |l| i > l),
            "i went from {last_i:?} to {i}"
        );
        (last_seq, last_i, count) = (seq, Some(i), count + 1);
    }
    eprintln!("slow client received {count} of {EVENTS} events");
    assert!(count < EVENTS, "no frames were dropped ({count} received)");
    assert!(notices > 0, "frames were dropped without a notice");
    assert!(relay.stats().resyncs > 0);
    slow.send_text(r#"{"type":"ping"}"#);
    assert_eq!(slow.next_json()["type"], "pong");
}

#[test]
fn write_deadline_closes_a_stalled_socket() {
    // Queues big enough never to overflow: only the write deadline can fire.
    let relay = TestRelay::with(|c| {
        c.limits.max_queue_bytes = 64 * 1024 * 1024;
        c.limits.max_queue_messages = 1_000_000;
        c.timeouts.write_deadline = Duration::from_millis(500);
    });
    let mut slow = stuck_client(&relay);
    // 16 MB: more than loopback socket buffers hold for a reader that never reads.
    let pad = "x".repeat(1000);
    for i in 0..16_000 {
        relay.publish("flood.x", json!({"i": i, "pad": pad}));
    }
    relay.wait_stats("a write-deadline close", |s| s.slow_consumer_closes >= 1);
    let closed = slow.expect_close();
    assert!(
        matches!(closed, Closed::Code(1008) | Closed::Dropped),
        "got {closed:?}"
    );
}

#[test]
fn queue_message_limit_closes_slow_consumer() {
    // Lots of room in bytes, little in frames: the message cap must bite.
    let relay = TestRelay::with(|c| {
        c.limits.max_queue_messages = 64;
        c.limits.max_queue_bytes = 64 * 1024 * 1024;
        c.timeouts.write_deadline = Duration::from_secs(600);
    });
    let mut slow = stuck_client(&relay);
    // ~12 MB of small events: more than the socket buffers hold.
    let pad = "y".repeat(100);
    for i in 0..100_000 {
        relay.publish("flood.x", json!({"i": i, "pad": pad}));
    }
    relay.wait_stats("a queue-overflow close", |s| s.slow_consumer_closes >= 1);
    let closed = slow.expect_close();
    assert!(
        matches!(closed, Closed::Code(1008) | Closed::Dropped),
        "got {closed:?}"
    );
}

#[test]
fn slow_but_progressing_reader_is_not_closed() {
    // write_deadline is "no byte for this long", not "pending for this long":
    // a reader that keeps taking bytes, with pauses shorter than the deadline,
    // must stay open although output is pending for much longer in total.
    let relay = TestRelay::with(|c| {
        c.limits.max_queue_bytes = 64 * 1024 * 1024;
        c.limits.max_queue_messages = 100_000;
        c.timeouts.write_deadline = WRITE_DEADLINE;
    });
    // Each pause is a fifth of the deadline, so a loaded machine that
    // stretches one still stays under it; together they are twice it.
    const WRITE_DEADLINE: Duration = Duration::from_secs(2);
    const PAUSE: Duration = Duration::from_millis(400);
    let mut client = connect(relay.addr);
    client.subscribe(&["steady.x"]);
    let pad = "s".repeat(4000);
    const COUNT: u64 = 3000; // ~12 MB: well past the socket buffers
    for i in 0..COUNT {
        relay.publish("steady.x", json!({"i": i, "pad": pad}));
    }
    let started = Instant::now();
    for i in 0..COUNT {
        if i % 300 == 299 {
            thread::sleep(PAUSE); // a pause, not a check
        }
        let event = client.next_json();
        assert_eq!(event["data"]["i"], i, "lost or reordered");
    }
    let pending = started.elapsed();
    eprintln!("drained {COUNT} events in {pending:?}");
    assert!(
        pending > WRITE_DEADLINE,
        "output was pending for less than the deadline, so this tested nothing"
    );
    assert_eq!(relay.stats().slow_consumer_closes, 0);
    client.assert_alive();
}

#[test]
fn a_producer_faster_than_the_relay_waits_instead_of_cutting_readers_that_keep_up() {
    // Queues of 64 frames, and a producer that publishes as fast as it can:
    // the reactor could take thousands of events in one turn. Once a reader
    // that keeps up has half a queue, it must stop taking them until that is
    // written (the producer waits), not overflow the queue and close it.
    let relay = TestRelay::with(|c| c.limits.max_queue_messages = 64);
    let mut reader = connect(relay.addr);
    reader.subscribe(&["burst.x"]);
    let reading = thread::spawn(move || {
        for i in 0..EVENTS {
            let event = reader.next_json();
            assert_eq!(event["data"]["i"], i, "lost or reordered");
        }
        reader.assert_alive();
    });
    for i in 0..EVENTS {
        relay.publish("burst.x", json!({"i": i}));
    }
    reading.join().expect("reader failed (see its panic above)");
    let stats = relay.stats();
    assert_eq!(stats.slow_consumer_closes, 0, "{stats:?}");
    assert!(
        stats.intake_pauses > 0,
        "the producer never outran the reactor, so this tested nothing: {stats:?}"
    );
}

#[test]
fn http_publishes_wait_while_the_relay_is_behind() {
    // Two hundred POSTs of 20 events each, pipelined in one go, against
    // queues of 64 frames: intake pauses many times on the way, and the
    // requests that arrive meanwhile are held, then answered once there is
    // room. Every one must be answered (none left held), once, with 200, and
    // the reader, which keeps up, must get all 4,000 events and stay open.
    const POSTS: u64 = 200;
    const PER_POST: u64 = 20;
    let relay = TestRelay::with(|c| c.limits.max_queue_messages = 64);
    let mut reader = connect(relay.addr);
    reader.subscribe(&["burst.http"]);
    let reading = thread::spawn(move || {
        for i in 0..POSTS * PER_POST {
            let event = reader.next_json();
            assert_eq!(event["data"]["i"], i, "lost or reordered");
        }
        reader.assert_alive();
    });
    let requests_before = relay.stats().http_requests;
    let mut pipeline = Vec::new();
    for post in 0..POSTS {
        let events: Vec<_> = (0..PER_POST)
            .map(|k| json!({"channel": "burst.http", "data": {"i": post * PER_POST + k}}))
            .collect();
        pipeline.extend_from_slice(publish_request(&json!(events).to_string(), "").as_bytes());
    }
    let mut raw = Raw::connect(relay.addr);
    raw.send(&pipeline);
    for post in 0..POSTS {
        let response = raw.read_response();
        assert_eq!(
            response.status,
            200,
            "POST {post}: {}",
            response.body_text()
        );
        assert_eq!(
            response.json()["seqs"].as_array().map(Vec::len),
            Some(PER_POST as usize)
        );
    }
    reading.join().expect("reader failed (see its panic above)");
    let stats = relay.stats();
    assert_eq!(stats.slow_consumer_closes, 0, "{stats:?}");
    assert!(stats.intake_pauses > 0, "no POST ever waited: {stats:?}");
    assert_eq!(
        stats.http_requests - requests_before,
        POSTS,
        "each request counted once, when answered"
    );
}
