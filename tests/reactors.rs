//! Several reactors behind one port: connections spread over them, and
//! every connection gets every matching event once, in the one seq order,
//! whichever reactor holds it and whichever reactor took the publish.

mod common;

use std::thread;

use common::*;
use serde_json::json;

const CLIENTS: usize = 24;

/// Connects until both reactors hold subscribers (the kernel spreads
/// connections by a hash of their ports: 24 all on one reactor would happen
/// once in eight million runs).
fn spread_subscribers(relay: &TestRelay, pattern: &str) -> Vec<Client> {
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let mut c = connect(relay.addr);
            c.subscribe(&[pattern]);
            c
        })
        .collect();
    let per_reactor: Vec<u64> = relay.reactor_stats().iter().map(|s| s.websockets).collect();
    assert_eq!(per_reactor.len(), 2);
    assert_eq!(per_reactor.iter().sum::<u64>(), CLIENTS as u64);
    assert!(
        per_reactor.iter().all(|&n| n > 0),
        "connections did not spread over both reactors: {per_reactor:?}"
    );
    clients
}

/// Which reactor holds the newest socket: the one whose count of open
/// sockets went up.
fn reactor_of_new_socket(before: &[tidings::StatsSnapshot], relay: &TestRelay) -> usize {
    let after = relay.reactor_stats();
    let grew: Vec<usize> = (0..after.len())
        .filter(|&i| after[i].connections > before[i].connections)
        .collect();
    assert_eq!(grew.len(), 1, "one new socket: {before:?} -> {after:?}");
    grew[0]
}

#[test]
fn an_http_publish_on_one_reactor_reaches_subscribers_on_every_reactor() {
    let relay = TestRelay::with(|c| c.reactors = tidings::Reactors::Count(2));
    let mut clients = spread_subscribers(&relay, "job.*");
    // Publish from a kept-alive HTTP connection, and learn its reactor.
    let before = relay.reactor_stats();
    let mut raw = Raw::connect(relay.addr);
    raw.send(publish_request(r#"{"channel":"job.first","data":{"n":0}}"#, "").as_bytes());
    let first = raw.read_response();
    assert_eq!(first.status, 200, "{}", first.body_text());
    let publisher_reactor = reactor_of_new_socket(&before, &relay);
    let held_elsewhere = relay.reactor_stats()[1 - publisher_reactor].websockets;
    assert!(held_elsewhere > 0, "no subscriber on the other reactor");
    let seq = first.json()["seq"].as_u64().expect("seq");
    for client in &mut clients {
        let event = client.next_json();
        assert_eq!(event["type"], "job.first");
        assert_eq!(event["seq"], seq);
    }
}

#[test]
fn every_subscriber_sees_one_order_from_concurrent_producers() {
    // Two embedded producer threads and one HTTP producer publish at once;
    // each subscriber, on either reactor, must see all of their events, once,
    // in rising seq order, and the very same sequence as every other.
    const PER_PRODUCER: u64 = 300;
    let relay = TestRelay::with(|c| c.reactors = tidings::Reactors::Count(2));
    let mut clients = spread_subscribers(&relay, "mix.>");
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let publisher = relay.publisher.clone();
            thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    let event = tidings::Event::new(format!("mix.thread{p}"), &json!({"i": i}))
                        .expect("event");
                    publisher.publish(event).expect("publish");
                }
            })
        })
        .collect();
    let addr = relay.addr;
    let http = thread::spawn(move || {
        let mut raw = Raw::connect(addr);
        for i in 0..PER_PRODUCER / 10 {
            let batch: Vec<_> = (0..10)
                .map(|k| json!({"channel": "mix.http", "data": {"i": i * 10 + k}}))
                .collect();
            raw.send(publish_request(&json!(batch).to_string(), "").as_bytes());
            assert_eq!(raw.read_response().status, 200);
        }
    });
    for producer in producers {
        producer.join().expect("producer");
    }
    http.join().expect("http producer");
    let total = 3 * PER_PRODUCER;
    let mut reference: Option<Vec<(u64, String)>> = None;
    for client in &mut clients {
        let mut seen = Vec::with_capacity(total as usize);
        let mut next_per_source = std::collections::HashMap::new();
        for _ in 0..total {
            let event = client.next_json();
            let seq = event["seq"].as_u64().expect("seq");
            let channel = event["type"].as_str().expect("type").to_string();
            if let Some(&(last, _)) = seen.last() {
                assert!(seq > last, "seq went from {last} to {seq}");
            }
            // Each producer's own events arrive in the order it sent them.
            let expected = next_per_source.entry(channel.clone()).or_insert(0u64);
            assert_eq!(event["data"]["i"], *expected, "{channel} out of order");
            *expected += 1;
            seen.push((seq, channel));
        }
        match &reference {
            None => reference = Some(seen),
            Some(first) => assert_eq!(&seen, first, "two subscribers saw different orders"),
        }
    }
    assert_eq!(relay.stats().events_published, total);
}

#[test]
fn limits_per_process_hold_across_reactors() {
    // Per-address limit 5: the sixth socket is refused whichever reactor
    // the kernel gives it to.
    let relay = TestRelay::with(|c| {
        c.reactors = tidings::Reactors::Count(2);
        c.limits.max_connections_per_ip = 5;
    });
    let _held: Vec<Client> = (0..5).map(|_| connect(relay.addr)).collect();
    for _ in 0..6 {
        let refused = http_get(relay.addr, "/healthz");
        assert_eq!(refused.status, 503, "{}", refused.head);
    }
    assert_eq!(relay.stats().rejected_connections, 6);
}

#[test]
fn shutdown_closes_clients_on_every_reactor_with_1001() {
    let relay = TestRelay::with(|c| c.reactors = tidings::Reactors::Count(2));
    let mut clients = spread_subscribers(&relay, "x");
    relay.shutdown();
    for client in &mut clients {
        assert_eq!(client.expect_close(), Closed::Code(1001));
    }
}
