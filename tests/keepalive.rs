//! Keepalive: server pings every `timeouts.ping_interval`, and a socket from
//! which nothing arrives for `timeouts.pong_wait` is closed with 1001.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tidings::Config;

fn fast_keepalive(c: &mut Config) {
    c.timeouts.ping_interval = Duration::from_millis(200);
    // Wider than the 600 ms suggested: a reading client on a loaded 2-core
    // machine may take a while to answer, and that must not close it.
    c.timeouts.pong_wait = Duration::from_millis(1500);
}

#[test]
fn reading_client_that_answers_pings_stays_open() {
    let relay = TestRelay::with(fast_keepalive);
    let mut client = connect(relay.addr);
    // tungstenite answers each ping with a pong while we read.
    let until = Instant::now() + Duration::from_secs(2);
    match client.read_until(until) {
        Ok(None) => {}
        other => panic!("expected only pings for 2 s, got {other:?}"),
    }
    assert!(
        client.pings >= 1,
        "no server ping in 2 s with ping_interval 200 ms"
    );
    client.assert_alive();
}

#[test]
fn server_ping_frame_is_observed_and_unmasked() {
    let relay = TestRelay::with(fast_keepalive);
    let mut raw = Raw::upgrade(relay.addr);
    // read_frame also asserts the server does not mask its frames.
    let frame = raw.read_frame().expect("connection open");
    assert_eq!(
        frame.opcode, OP_PING,
        "first frame should be a ping: {frame:?}"
    );
    assert!(frame.fin && frame.payload.len() <= 125, "{frame:?}");
}

#[test]
fn silent_raw_client_is_closed_1001() {
    let relay = TestRelay::with(fast_keepalive);
    let mut raw = Raw::upgrade(relay.addr);
    let start = Instant::now();
    // Never answer the pings: nothing at all arrives at the relay.
    let closed = raw.expect_close();
    assert!(
        matches!(closed, Closed::Code(1001) | Closed::Dropped),
        "got {closed:?}"
    );
    // Not instantly: the relay must have waited for pong_wait, give or take.
    assert!(
        start.elapsed() >= Duration::from_millis(1000),
        "closed after {:?}, before pong_wait (1.5 s)",
        start.elapsed()
    );
    relay.wait_stats("the idle socket to be gone", |s| s.connections == 0);
}

#[test]
fn application_messages_also_count_as_activity() {
    // "Nothing at all arrived": a client that never answers pings but keeps
    // sending messages is alive.
    let relay = TestRelay::with(fast_keepalive);
    let mut raw = Raw::upgrade(relay.addr);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        raw.send_text(r#"{"type":"ping"}"#);
        assert_eq!(
            raw.next_json()["type"],
            "pong",
            "closed despite steady traffic"
        );
        std::thread::sleep(Duration::from_millis(100)); // traffic rate, not a timing check
    }
}
