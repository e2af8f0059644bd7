//! `[[delivery]]` rules on real sockets: a stalled reader under `latest`
//! gets the newest value of each channel and key and no backlog;
//! `never_drop` events survive `drop_oldest`, and close the socket with 1008
//! when they alone fill its queue (or are dropped with the backlog and
//! announced, under `slow_consumer = "resync"`). docs/protocol.md,
//! "Delivery rules".

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tidings::config::{DeliveryPolicy, DeliveryRule};
use tidings::{Config, SlowConsumerPolicy};

fn rule(pattern: &str, policy: DeliveryPolicy, key: Option<&str>) -> DeliveryRule {
    DeliveryRule {
        pattern: pattern.into(),
        policy,
        key: key.map(str::to_string),
    }
}

/// Small kernel buffers, so a reader that does not read stalls soon and
/// its queue in the relay is what fills.
fn stalling(c: &mut Config) {
    c.limits.socket_send_buffer = 16 * 1024;
    c.timeouts.write_deadline = Duration::from_secs(600);
}

/// Subscribes a raw client that then does not read.
fn stuck_client(relay: &TestRelay, channels: &str) -> Raw {
    let mut raw = Raw::upgrade(relay.addr);
    raw.send_text(&format!(r#"{{"type":"subscribe","channels":{channels}}}"#));
    assert_eq!(raw.next_json()["type"], "subscribed");
    raw
}

/// Every text message until none arrives for a second.
fn read_all(raw: &mut Raw) -> Vec<Value> {
    raw.drain_frames(Duration::from_secs(1))
        .into_iter()
        .filter(|f| f.opcode == OP_TEXT)
        .map(|f| serde_json::from_slice(&f.payload).expect("JSON"))
        .collect()
}

/// A stalled reader of `alert.>` (`never_drop`, a queue of 16 frames under
/// `policy`) and 3,000 alerts of 2 kB published to it.
fn alerts_flooding_a_stalled_reader(policy: SlowConsumerPolicy) -> (TestRelay, Raw) {
    let relay = TestRelay::with(|c| {
        stalling(c);
        c.limits.slow_consumer = policy;
        c.limits.max_queue_messages = 16;
        c.delivery = vec![rule("alert.>", DeliveryPolicy::NeverDrop, None)];
    });
    let slow = stuck_client(&relay, r#"["alert.>"]"#);
    let pad = "x".repeat(2000);
    for i in 0..3000 {
        relay.publish("alert.error", json!({"i": i, "pad": pad}));
    }
    (relay, slow)
}

/// Events and notices come in seq order: a notice names the last event it
/// stands for, and every event after it is newer.
fn assert_in_seq_order(got: &[Value]) {
    let mut last = 0;
    for message in got {
        let seq = message["seq"]
            .as_u64()
            .or_else(|| message["data"]["seq"].as_u64())
            .expect("a seq");
        assert!(seq >= last, "seq {seq} after {last}: {message}");
        last = seq;
    }
}

#[test]
fn a_stalled_reader_under_latest_gets_the_newest_value_per_key_and_no_backlog() {
    let relay = TestRelay::with(|c| {
        stalling(c);
        c.delivery = vec![rule("metrics.>", DeliveryPolicy::Latest, Some("data.node"))];
    });
    let mut slow = stuck_client(&relay, r#"["metrics.>"]"#);
    let pad = "x".repeat(2000);
    const ROUNDS: u64 = 3000;
    let nodes = ["a", "b", "c"];
    for i in 0..ROUNDS {
        for node in nodes {
            relay.publish("metrics.system", json!({"node": node, "i": i, "pad": pad}));
        }
        relay.publish("metrics.disk", json!({"i": i, "pad": pad}));
    }
    let stats = relay.wait_stats("replaced events", |s| s.replaced_events > 0);
    assert_eq!(stats.slow_consumer_closes, 0);
    let got = read_all(&mut slow);
    let published = ROUNDS * 4;
    // What the kernel buffers took before the reader stalled, then one
    // event per (channel, key): far fewer than were published.
    assert!(
        (got.len() as u64) < published / 4,
        "{} of {published} events reached the stalled reader",
        got.len()
    );
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    for event in &got {
        let key = (
            event["type"].as_str().expect("type").to_string(),
            event["data"]["node"].as_str().unwrap_or("-").to_string(),
        );
        let i = event["data"]["i"].as_u64().expect("i");
        if let Some(before) = last.insert(key.clone(), i) {
            assert!(i > before, "{key:?}: {i} after {before}: never older");
        }
    }
    for node in nodes {
        assert_eq!(
            last.get(&("metrics.system".into(), node.into())),
            Some(&(ROUNDS - 1)),
            "node {node} ends on its newest value"
        );
    }
    assert_eq!(
        last.get(&("metrics.disk".into(), "-".into())),
        Some(&(ROUNDS - 1))
    );
    assert_eq!(
        metric(relay.addr, "tidings_replaced_events_total"),
        Some(relay.stats().replaced_events as f64)
    );
}

#[test]
fn never_drop_events_survive_drop_oldest() {
    let relay = TestRelay::with(|c| {
        stalling(c);
        c.limits.slow_consumer = SlowConsumerPolicy::DropOldest;
        c.limits.max_queue_messages = 64;
        c.delivery = vec![rule("alert.>", DeliveryPolicy::NeverDrop, None)];
    });
    let mut slow = stuck_client(&relay, r#"["flood.x","alert.>"]"#);
    let pad = "x".repeat(2000);
    const FLOOD: u64 = 3000;
    const ALERTS: u64 = 30;
    for i in 0..FLOOD {
        relay.publish("flood.x", json!({"i": i, "pad": pad}));
        if i % (FLOOD / ALERTS) == 0 {
            relay.publish("alert.error", json!({"n": i / (FLOOD / ALERTS)}));
        }
    }
    relay.wait_stats("dropped frames", |s| s.dropped_frames > 0);
    let got = read_all(&mut slow);
    let alerts: Vec<u64> = got
        .iter()
        .filter(|e| e["type"] == "alert.error")
        .map(|e| e["data"]["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(
        alerts,
        (0..ALERTS).collect::<Vec<_>>(),
        "every alert, in order"
    );
    let notices = got.iter().filter(|e| e["type"] == "resync").count();
    let floods = got.iter().filter(|e| e["type"] == "flood.x").count() as u64;
    assert!(notices > 0, "the dropped flood events were announced");
    assert!(floods < FLOOD, "flood events were dropped");
    assert_in_seq_order(&got);
    assert_eq!(relay.stats().slow_consumer_closes, 0);
}

#[test]
fn never_drop_events_that_fill_the_queue_close_it_with_1008() {
    let (relay, mut slow) = alerts_flooding_a_stalled_reader(SlowConsumerPolicy::DropOldest);
    relay.wait_stats("a slow consumer close", |s| s.slow_consumer_closes == 1);
    let closed = slow.expect_close();
    assert!(
        matches!(closed, Closed::Code(1008) | Closed::Dropped),
        "got {closed:?}"
    );
}

#[test]
fn never_drop_events_that_fill_the_queue_under_resync_are_announced_and_the_socket_stays() {
    let (relay, mut slow) = alerts_flooding_a_stalled_reader(SlowConsumerPolicy::Resync);
    relay.wait_stats("a resync", |s| s.resyncs > 0);
    let got = read_all(&mut slow);
    let notices: Vec<&Value> = got.iter().filter(|e| e["type"] == "resync").collect();
    assert!(!notices.is_empty(), "the dropped alerts were announced");
    for notice in &notices {
        assert_eq!(notice["data"]["reason"], "overflow", "{notice}");
    }
    let alerts = got.iter().filter(|e| e["type"] == "alert.error").count();
    assert!(alerts < 3000, "the backlog went, alerts included: {alerts}");
    assert_in_seq_order(&got);
    // Resynced, not closed: the socket still answers.
    assert_eq!(relay.stats().slow_consumer_closes, 0);
    slow.send_text(r#"{"type":"ping"}"#);
    assert_eq!(slow.next_json()["type"], "pong");
}
