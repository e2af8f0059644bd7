//! Many sockets on one reactor: 1,000 concurrent clients each get every event
//! in order. One test thread drives all clients sequentially; the relay's
//! frames wait in kernel buffers meanwhile, so no client thread is needed.

mod common;

use std::time::Instant;

use common::*;
use serde_json::json;

const CLIENTS: usize = 1000;
const EVENTS: usize = 20;

#[test]
fn thousand_clients_each_receive_every_event_in_order() {
    ensure_fd_limit((2 * CLIENTS + 256) as libc::rlim_t);
    let relay = TestRelay::start();
    let started = Instant::now();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| connect(relay.addr)).collect();

    // Pipeline the subscribes, then collect the replies.
    let subscribe = json!({"type": "subscribe", "channels": ["fanout.test"]});
    for client in &mut clients {
        client.send_json(&subscribe);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let reply = client.next_json();
        assert_eq!(reply["type"], "subscribed", "client {i}: {reply}");
    }
    let stats = relay.wait_stats("1000 open connections", |s| s.connections == CLIENTS as u64);
    eprintln!(
        "{CLIENTS} clients connected and subscribed in {:?}",
        started.elapsed()
    );

    for i in 0..EVENTS {
        relay.publish("fanout.test", json!({"i": i}));
    }
    // Every client: all events, in publish order, with the same seqs.
    let mut seqs: Vec<u64> = Vec::with_capacity(EVENTS);
    for (c, client) in clients.iter_mut().enumerate() {
        for i in 0..EVENTS {
            let event = client.next_json();
            let seq = event_seq(&event, "fanout.test");
            assert_eq!(event["data"]["i"], i, "client {c}: {event}");
            match seqs.get(i) {
                Some(&expected) => assert_eq!(seq, expected, "client {c}, event {i}"),
                None => {
                    assert!(i == 0 || seq > seqs[i - 1], "seqs not rising: {event}");
                    seqs.push(seq);
                }
            }
        }
    }
    let after = relay.wait_stats("all deliveries counted", |s| {
        s.deliveries >= stats.deliveries + (CLIENTS * EVENTS) as u64
    });
    assert_eq!(after.slow_consumer_closes, 0);
    eprintln!(
        "fan-out of {EVENTS} events verified after {:?}",
        started.elapsed()
    );
}

/// Events that arrive while a long flush pass is under way go to sockets
/// the pass already wrote; they must be written on the next pass without
/// waiting for any other wake-up (a timer, or more traffic).
#[test]
fn events_arriving_during_a_flush_pass_are_not_stranded() {
    const PACED_EVENTS: usize = 200;
    ensure_fd_limit((2 * CLIENTS + 256) as libc::rlim_t);
    let relay = TestRelay::start();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| connect(relay.addr)).collect();
    let subscribe = json!({"type": "subscribe", "channels": ["paced"]});
    for client in &mut clients {
        client.send_json(&subscribe);
    }
    for client in &mut clients {
        assert_eq!(client.next_json()["type"], "subscribed");
    }
    // Paced so that publishes land in the middle of flush passes.
    let publisher = relay.publisher.clone();
    let producer = std::thread::spawn(move || {
        for i in 0..PACED_EVENTS {
            let event = tidings::Event::new("paced", &json!({"i": i})).expect("event");
            publisher.publish(event).expect("publish");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    });
    producer.join().expect("producer");
    // Nothing else happens now: no timer is due for 54 s, no client sends.
    // A stranded frame would wait for the next unrelated wake-up, so each
    // read gets a short (but, on a loaded machine, generous) deadline.
    for (c, client) in clients.iter_mut().enumerate() {
        for i in 0..PACED_EVENTS {
            let event = client.next_json_within(std::time::Duration::from_secs(3));
            assert_eq!(event["data"]["i"], i, "client {c}: {event}");
        }
    }
}
