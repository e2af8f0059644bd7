//! The admin views: `/api/admin/connections` gathered over every reactor,
//! `/api/admin/subscriptions`, and who may see them.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tidings::Config;

const TOKEN: &str = "ops-secret-1";
const BEARER: &str = "Authorization: Bearer ops-secret-1\r\n";

fn with_admin(c: &mut Config) {
    c.admin.tokens = vec![TOKEN.into()];
}

fn admin_get(relay: &TestRelay, path: &str) -> Value {
    let response = http_get_with(relay.addr, path, BEARER);
    assert_eq!(response.status, 200, "{path}: {}", response.body_text());
    response.json()
}

#[test]
fn the_views_are_404_without_admin_tokens_and_401_without_the_right_one() {
    let off = TestRelay::start();
    for path in ["/api/admin/connections", "/api/admin/subscriptions"] {
        let response = http_get_with(off.addr, path, BEARER);
        assert_eq!(response.status, 404, "{path} exists without admin.tokens");
    }
    let relay = TestRelay::with(|c| {
        with_admin(c);
        // A client token is not an admin token.
        c.auth.tokens = vec![tidings::config::TokenConfig {
            token: "client-token".into(),
            channels: None,
        }];
    });
    for path in ["/api/admin/connections", "/api/admin/subscriptions"] {
        for extra in [
            "",
            "Authorization: Bearer ops-secret-2\r\n",
            "Authorization: Bearer client-token\r\n",
        ] {
            let response = http_get_with(relay.addr, path, extra);
            assert_eq!(response.status, 401, "{path} with {extra:?}");
            assert_eq!(response.header("www-authenticate"), Some("Bearer"));
            assert!(!response.body_text().contains("ops-secret"));
        }
        let response = http_get_with(relay.addr, path, BEARER);
        assert_eq!(response.status, 200, "{path}: {}", response.body_text());
    }
}

#[test]
fn bad_queries_are_400_naming_the_bound() {
    let relay = TestRelay::with(|c| {
        with_admin(c);
        c.admin.max_rows = 50;
    });
    for query in ["limit=0", "limit=51", "limit=ten", "sort=fastest"] {
        let path = format!("/api/admin/connections?{query}");
        let response = http_get_with(relay.addr, &path, BEARER);
        assert_eq!(response.status, 400, "{query}");
        let message = response.json()["error"]["message"].to_string();
        assert!(
            message.contains("admin.max_rows (50)") || message.contains("queue, resyncs or age"),
            "{query}: {message}"
        );
    }
    admin_get(&relay, "/api/admin/connections?sort=age&limit=50");
}

/// Clients until each reactor has at least one (the kernel spreads them by
/// a hash of their addresses).
fn clients_on_every_reactor(relay: &TestRelay) -> Vec<Client> {
    let reactors = relay.reactor_stats().len();
    let mut clients = Vec::new();
    let deadline = Instant::now() + WAIT;
    while relay.reactor_stats().iter().any(|r| r.websockets == 0) || clients.len() < 4 {
        assert!(Instant::now() < deadline, "a reactor got no client");
        let mut client = connect(relay.addr);
        let n = clients.len();
        client.subscribe(&[&format!("room.{n}"), "alert.>"]);
        clients.push(client);
        relay.wait_stats("the client counted", |s| s.websockets as usize == n + 1);
        assert!(
            clients.len() < 64 * reactors,
            "clients never reached every reactor"
        );
    }
    clients
}

#[test]
fn connections_come_from_every_reactor_slowest_first() {
    let relay = TestRelay::with(|c| {
        with_admin(c);
        // The reader that stops reading keeps a queue instead of being cut.
        c.limits.max_queue_bytes = 8 << 20;
        c.limits.max_queue_messages = 100_000;
        c.limits.socket_send_buffer = 4096;
    });
    let clients = clients_on_every_reactor(&relay);
    let mut stuck = Raw::upgrade(relay.addr);
    stuck.send_text(r#"{"type":"subscribe","channels":["bulk.data"]}"#);
    assert_eq!(stuck.next_json()["type"], "subscribed");
    let total = clients.len() + 1;

    let everyone = admin_get(&relay, "/api/admin/connections?limit=1000");
    let rows = everyone["connections"].as_array().expect("rows");
    assert_eq!(rows.len(), total, "{everyone}");
    assert_eq!(everyone["websockets"], total);
    let reactors: BTreeSet<u64> = rows
        .iter()
        .map(|r| r["reactor"].as_u64().unwrap())
        .collect();
    assert_eq!(reactors.len(), relay.reactor_stats().len(), "{everyone}");
    let patterns: Vec<&Value> = rows.iter().map(|r| &r["patterns"]).collect();
    assert!(
        patterns.contains(&&json!(["room.0", "alert.>"])),
        "{everyone}"
    );
    for row in rows {
        assert!(
            row["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{row}"
        );
        assert!(row["age_s"].is_u64() && row["resyncs"] == 0, "{row}");
    }

    // Events nobody but the stuck socket reads, far more than the kernel
    // buffers between it and the relay hold.
    let data = json!({ "blob": "x".repeat(4000) });
    let deadline = Instant::now() + WAIT;
    let first = loop {
        assert!(Instant::now() < deadline, "the stuck socket never queued");
        for _ in 0..100 {
            relay.publish("bulk.data", data.clone());
        }
        let top = admin_get(&relay, "/api/admin/connections?sort=queue&limit=1");
        let first = top["connections"][0].clone();
        if first["queue_bytes"].as_u64().unwrap_or(0) > 0 {
            break first;
        }
        std::thread::sleep(Duration::from_millis(20)); // let the relay write
    };
    assert_eq!(first["patterns"], json!(["bulk.data"]), "{first}");
    assert!(first["queue_messages"].as_u64().unwrap() > 0, "{first}");
    drop(stuck);
}

#[test]
fn subscriptions_count_channels_and_patterns_over_every_reactor() {
    let relay = TestRelay::with(with_admin);
    let clients = clients_on_every_reactor(&relay);
    let view = admin_get(&relay, "/api/admin/subscriptions");
    assert_eq!(view["total_patterns"], 1, "{view}");
    assert_eq!(
        view["patterns"],
        json!([{"pattern": "alert.>", "subscribers": clients.len()}])
    );
    assert_eq!(view["total_channels"], clients.len(), "{view}");
    assert_eq!(view["channels"][0]["subscribers"], 1, "{view}");
    let limited = admin_get(&relay, "/api/admin/subscriptions?limit=2");
    assert_eq!(limited["channels"].as_array().unwrap().len(), 2);
    assert_eq!(limited["total_channels"], clients.len());
}
