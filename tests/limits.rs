//! Hardening limits over real sockets: origin allow-list, connections per
//! IP, and the per-connection message rate.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn foreign_origin_is_403_when_origins_are_listed() {
    let relay = TestRelay::with(|c| c.allowed_origins = vec!["https://dash.example.com".into()]);
    let (_, refused) = Raw::upgrade_with(relay.addr, "Origin: https://evil.example.net\r\n");
    assert_eq!(refused.status, 403, "{}", refused.head);
    let (_, accepted) = Raw::upgrade_with(relay.addr, "Origin: https://DASH.example.com\r\n");
    assert_eq!(accepted.status, 101, "{}", accepted.head);
    // Non-browser clients send no Origin and are not affected.
    let (_, plain) = Raw::upgrade_with(relay.addr, "");
    assert_eq!(plain.status, 101, "{}", plain.head);
}

#[test]
fn any_origin_passes_without_a_list() {
    let relay = TestRelay::start();
    let (_, response) = Raw::upgrade_with(relay.addr, "Origin: https://anywhere.example\r\n");
    assert_eq!(response.status, 101, "{}", response.head);
}

#[test]
fn connections_per_ip_are_capped_and_released() {
    let relay = TestRelay::with(|c| c.limits.max_connections_per_ip = 2);
    let first = connect(relay.addr);
    let mut second = connect(relay.addr);
    let (_, refused) = Raw::upgrade_with(relay.addr, "");
    assert_eq!(refused.status, 503, "{}", refused.head);
    assert_eq!(relay.stats().rejected_connections, 1);
    // Closing one frees its place.
    drop(first);
    relay.wait_stats("the first socket to go", |s| s.websockets == 1);
    let (_, accepted) = Raw::upgrade_with(relay.addr, "");
    assert_eq!(accepted.status, 101, "{}", accepted.head);
    second.assert_alive();
}

#[test]
fn message_flood_is_warned_then_closed_1008() {
    let relay = TestRelay::with(|c| {
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 3;
    });
    let mut client = connect(relay.addr);
    for _ in 0..3 {
        client.assert_alive();
    }
    let warning = client.request(&json!({"type": "ping"}));
    assert_eq!(warning["type"], "error", "{warning}");
    assert_eq!(warning["data"]["code"], "rate_limited", "{warning}");
    client.send_json(&json!({"type": "ping"}));
    assert_eq!(client.expect_close(), Closed::Code(1008));
    relay.wait_stats("the protocol close to be counted", |s| {
        s.protocol_closes == 1
    });
}

#[test]
fn ping_frame_flood_is_rate_limited_too() {
    let relay = TestRelay::with(|c| {
        c.limits.messages_per_second = 1;
        c.limits.message_burst = 5;
    });
    let mut raw = Raw::upgrade(relay.addr);
    for _ in 0..50 {
        raw.send_lenient(&client_frame(OP_PING, b"flood"));
    }
    // Pongs for the burst come first, then the warning, then the close.
    assert_eq!(raw.expect_close(), Closed::Code(1008));
}

#[test]
fn a_patient_client_is_never_limited() {
    let relay = TestRelay::with(|c| {
        c.limits.messages_per_second = 20;
        c.limits.message_burst = 2;
    });
    let mut client = connect(relay.addr);
    for _ in 0..6 {
        client.assert_alive();
        std::thread::sleep(Duration::from_millis(60));
    }
}

/// `count` distinct channels of exactly `length` bytes, dashboard style.
fn widget_channels(count: usize, length: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let name = format!("dashboard.widget-{i:03}.");
            format!("{name}{}", "s".repeat(length - name.len()))
        })
        .collect()
}

#[test]
fn the_largest_subscribe_the_defaults_allow_is_accepted() {
    // Every pattern a client may hold, each as long as allowed, in one
    // message: the other limits allow it, so max_message_size must too.
    let relay = TestRelay::start();
    let limits = tidings::Limits::default();
    let channels = widget_channels(limits.max_subscriptions, limits.max_channel_length);
    let mut client = connect(relay.addr);
    let reply = client.request(&json!({"type": "subscribe", "channels": channels}));
    assert_eq!(reply["type"], "subscribed", "{}", reply["data"]);
    let p = relay.publish(&channels[limits.max_subscriptions - 1], json!({"ok": 1}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn a_client_may_resubscribe_one_pattern_per_message_at_once() {
    // A reconnecting dashboard sends every subscribe right away, without
    // waiting for the replies, then a ping: nothing is rate limited.
    let relay = TestRelay::start();
    let limits = tidings::Limits::default();
    let channels = widget_channels(limits.max_subscriptions, 40);
    let mut client = connect(relay.addr);
    for channel in &channels {
        client.send_json(&json!({"type": "subscribe", "channels": [channel]}));
    }
    client.send_json(&json!({"type": "ping"}));
    for channel in &channels {
        assert_subscribed(&client.next_json(), &[channel.as_str()]);
    }
    assert_eq!(client.next_json()["type"], "pong");
}
