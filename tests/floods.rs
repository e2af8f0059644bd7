//! Subscription floods: within the rate they leave routing intact and
//! memory flat; over it they cost the sender its connection.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The first test measures the process's RSS: the tests of this file run
/// one at a time, so that another test's relay starting meanwhile is not
/// counted as churn.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn subscribe_unsubscribe_flood_within_the_rate_leaves_routing_intact() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let relay = TestRelay::with(|c| {
        c.limits.messages_per_second = 1_000_000;
        c.limits.message_burst = 1_000_000;
    });
    let mut client = connect(relay.addr);
    // Warm up first (as churn.rs does): the first rounds fault in code and
    // allocator pools, which is not growth; a leak shows over the rest.
    for round in 0..100 {
        let pattern = format!("flood.{}.*", round % 50);
        client.send_json(&json!({"type": "subscribe", "channels": [pattern, "flood.>"]}));
        client.send_json(&json!({"type": "unsubscribe", "channels": [pattern, "flood.>"]}));
    }
    for _ in 0..200 {
        client.next_json();
    }
    let rss_before = rss_bytes();
    for round in 0..2_000 {
        let pattern = format!("flood.{}.*", round % 50);
        client.send_json(&json!({"type": "subscribe", "channels": [pattern, "flood.>"]}));
        client.send_json(&json!({"type": "unsubscribe", "channels": [pattern, "flood.>"]}));
        // Read the replies as they come: a client that does not read its
        // replies is a slow consumer and gets cut off (1008).
        if round % 100 == 99 {
            for _ in 0..200 {
                let reply = client.next_json();
                assert!(
                    reply["type"] == "subscribed" || reply["type"] == "unsubscribed",
                    "{reply}"
                );
            }
        }
    }
    // A subscription takes effect when its reply is sent: publish after it.
    client.subscribe(&["flood.final"]);
    relay.publish("flood.7.x", json!(1));
    relay.publish("flood.final", json!(2));
    // The one event must be flood.final.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no event arrived");
        let message = client.next_json_within(Duration::from_secs(5));
        match message["type"].as_str() {
            Some("subscribed" | "unsubscribed") => continue,
            Some("flood.final") => break,
            other => panic!("unsubscribed pattern still routed: {other:?} {message}"),
        }
    }
    assert!(
        rss_bytes() <= rss_before + 1024 * 1024,
        "subscription churn grew memory: {} -> {}",
        rss_before,
        rss_bytes()
    );
}

#[test]
fn subscribe_flood_over_the_rate_is_cut_off() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let relay = TestRelay::start();
    let mut raw = Raw::upgrade(relay.addr);
    let subscribe = json!({"type": "subscribe", "channels": ["a.*"]}).to_string();
    for _ in 0..500 {
        raw.send_lenient(&client_frame(OP_TEXT, subscribe.as_bytes()));
    }
    assert_eq!(raw.expect_close(), Closed::Code(1008));
    relay.wait_stats("the close to be counted", |s| s.protocol_closes == 1);
}
