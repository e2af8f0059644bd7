//! Subscriptions, pattern matching, default channels and event delivery
//! (docs/protocol.md, "Messages from the client", "Channels and patterns", "Events").
//!
//! Negative checks ("X is not delivered") publish X first and then a marker
//! the client does receive: events leave in seq order, so if X were delivered
//! it would arrive before the marker. No test waits for silence.

mod common;

use std::thread;

use common::*;
use serde_json::json;
use tidings::Event;

#[test]
fn subscribe_and_unsubscribe_replies_echo_channels() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["metrics.system", "job.*", "alert.>"]);
    client.unsubscribe(&["metrics.system"]);
    // Re-subscribing a held pattern, or dropping one not held, is not an error.
    client.subscribe(&["job.*"]);
    client.unsubscribe(&["never.held"]);
}

#[test]
fn star_matches_exactly_one_segment() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    relay.publish("job.a.b", json!({"n": 1}));
    relay.publish("job", json!({"n": 2}));
    let p = relay.publish("job.progress", json!({"jobId": "a"}));
    // If job.a.b or job had leaked, it would arrive first.
    assert_event(&client.next_json(), &p);
}

#[test]
fn gt_matches_one_or_more_trailing_segments() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["index.>"]);
    relay.publish("index", json!({"bare": true})); // `>` needs at least one segment
    relay.publish("indexes.x", json!({})); // prefix match must be per segment
    let deep = relay.publish(
        "index.production-vectors.shard_transition",
        json!({"shard": 3}),
    );
    let one = relay.publish("index.created", json!({}));
    assert_event(&client.next_json(), &deep);
    assert_event(&client.next_json(), &one);
}

#[test]
fn exact_channel_matches_only_itself() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["metrics.system"]);
    relay.publish("metrics.system.extra", json!({}));
    relay.publish("metrics.index", json!({}));
    let p = relay.publish("metrics.system", json!({"qps": 1250}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn overlapping_patterns_deliver_each_event_once() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*", "job.>", ">", "job.progress"]);
    let sent: Vec<Published> = (0..3)
        .map(|i| relay.publish("job.progress", json!({"i": i})))
        .collect();
    let marker = relay.publish("zzz.marker", json!({}));
    // A duplicate would show up as a repeated "i" or before the marker.
    for p in &sent {
        assert_event(&client.next_json(), p);
    }
    assert_event(&client.next_json(), &marker);
}

#[test]
fn unsubscribe_stops_delivery() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*", "alert.*"]);
    let before = relay.publish("job.progress", json!({"n": 1}));
    assert_event(&client.next_json(), &before);
    client.unsubscribe(&["job.*"]);
    relay.publish("job.progress", json!({"n": 2}));
    let alert = relay.publish("alert.warning", json!({}));
    assert_event(&client.next_json(), &alert);
}

#[test]
fn unsubscribing_one_of_two_overlapping_patterns_keeps_the_other() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*", "job.progress"]);
    client.unsubscribe(&["job.*"]);
    relay.publish("job.started", json!({}));
    let p = relay.publish("job.progress", json!({}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn default_channels_reach_a_silent_client() {
    let relay = TestRelay::with(|c| c.default_channels = vec!["cluster.*".into()]);
    // The seed's notification-only client: connects and never sends anything.
    let mut client = connect(relay.addr);
    relay.publish("other.thing", json!({}));
    let p = relay.publish("cluster.updated", json!({"name": "prod-cluster"}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn no_default_channels_means_no_events_before_subscribe() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    let mut observer = connect(relay.addr);
    observer.subscribe(&["cluster.*"]);
    let early = relay.publish("cluster.updated", json!({}));
    // publish() only queues; once the observer has the event, the reactor has
    // fanned it out, so the client's later subscribe cannot race it.
    assert_event(&observer.next_json(), &early);
    let position = client.subscribe(&["cluster.*"]);
    let p = relay.publish("cluster.added", json!({}));
    // Subscribing must not replay the earlier event. With several reactors
    // the client's may not have reached it yet when the subscribe comes
    // (the reply's position then says so), and then delivers it live.
    let mut event = client.next_json();
    if event["type"] == "cluster.updated" {
        let seq = event["seq"].as_u64().expect("seq");
        assert!(
            seq > position,
            "event {seq} replayed past position {position}"
        );
        event = client.next_json();
    }
    assert_event(&event, &p);
}

#[test]
fn first_subscribe_replaces_default_channels() {
    let relay = TestRelay::with(|c| c.default_channels = vec!["cluster.*".into()]);
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    relay.publish("cluster.updated", json!({"name": "x"}));
    let p = relay.publish("job.progress", json!({}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn ping_gets_pong_with_millisecond_utc_timestamp() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    let reply = client.request(&json!({"type": "ping"}));
    assert_eq!(reply["type"], "pong", "{reply}");
    let ts = reply["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("no timestamp: {reply}"));
    assert!(
        is_rfc3339_millis_utc(ts),
        "timestamp {ts:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    assert!(
        &ts[..4] >= "2024",
        "timestamp {ts:?} is not the current time"
    );
}

#[test]
fn event_wire_format_matches_the_seed() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.progress"]);
    let p = relay.publish(
        "job.progress",
        json!({"jobId": "import-abc123", "progress": 0.45}),
    );
    let text = client.next_text();
    assert!(
        text.starts_with(r#"{"type":"job.progress","timestamp":""#),
        "{text}"
    );
    let event: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_event(&event, &p);
    let mut keys: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "seq", "timestamp", "type"], "{text}");
}

#[test]
fn custom_type_carries_channel_after_type() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    let event = Event::from_json("job.progress", r#"{"x":1}"#)
        .expect("Event::from_json")
        .with_type("custom.type");
    relay.publisher.publish(event).expect("publish");
    let text = client.next_text();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "custom.type", "{text}");
    assert_eq!(v["channel"], "job.progress", "{text}");
    assert!(v["seq"].is_u64(), "{text}");
    assert_eq!(v["data"], json!({"x": 1}), "{text}");
    let ts = v["timestamp"].as_str().unwrap_or_default();
    assert!(is_rfc3339_millis_utc(ts), "{text}");
    let (t, c) = (
        text.find(r#""type""#).unwrap(),
        text.find(r#""channel""#).unwrap(),
    );
    assert!(t < c, "\"channel\" must come after \"type\": {text}");
}

#[test]
fn custom_type_is_routed_by_channel_not_type() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["custom.*"]);
    let disguised = Event::from_json("job.progress", "{}")
        .unwrap()
        .with_type("custom.type");
    relay.publisher.publish(disguised).expect("publish");
    let p = relay.publish("custom.real", json!({}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn seq_strictly_increases_across_channels() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&[">"]);
    let channels = [
        "job.progress",
        "alert.warning",
        "metrics.system",
        "index.a.b",
    ];
    let sent: Vec<Published> = (0..60)
        .map(|i| relay.publish(channels[i % channels.len()], json!({"i": i})))
        .collect();
    let mut last = 0;
    for (i, p) in sent.iter().enumerate() {
        let seq = assert_event(&client.next_json(), p);
        assert!(i == 0 || seq > last, "seq {seq} after {last} at event {i}");
        last = seq;
    }
}

#[test]
fn two_clients_see_the_same_seqs() {
    let relay = TestRelay::start();
    let mut a = connect(relay.addr);
    let mut b = connect(relay.addr);
    a.subscribe(&["job.*"]);
    b.subscribe(&["job.>"]);
    let sent: Vec<Published> = (0..10)
        .map(|i| relay.publish("job.progress", json!({"i": i})))
        .collect();
    for p in &sent {
        let seq_a = assert_event(&a.next_json(), p);
        let seq_b = assert_event(&b.next_json(), p);
        assert_eq!(seq_a, seq_b, "one event, one seq for everyone");
    }
}

#[test]
fn events_from_several_publisher_threads_all_arrive() {
    const THREADS: usize = 4;
    const EACH: usize = 250;
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["load.>"]);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let publisher = relay.publisher.clone();
            thread::spawn(move || {
                for n in 0..EACH {
                    let channel = format!("load.t{t}");
                    let event = Event::new(channel.as_str(), &json!({"t": t, "n": n})).unwrap();
                    publisher.publish(event).expect("publish");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("publisher thread");
    }
    // Every event exactly once, seqs rising, each thread's events in its order.
    let mut next_n = [0usize; THREADS];
    let mut last_seq = 0;
    for i in 0..THREADS * EACH {
        let event = client.next_json();
        let t = event["data"]["t"]
            .as_u64()
            .unwrap_or_else(|| panic!("unexpected event {event}")) as usize;
        let seq = event_seq(&event, &format!("load.t{t}"));
        assert!(i == 0 || seq > last_seq, "seq not increasing: {event}");
        last_seq = seq;
        assert_eq!(
            event["data"]["n"], next_n[t],
            "thread {t}'s events duplicated, lost or reordered"
        );
        next_n[t] += 1;
    }
    assert_eq!(next_n, [EACH; THREADS]);
}

#[test]
fn lone_star_matches_single_segment_channels() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["*"]);
    relay.publish("job.progress", json!({}));
    let p = relay.publish("heartbeat", json!({}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn wildcards_in_the_middle_and_seed_patterns() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    // From the seed: `index.production-vectors.*`; plus a middle `*`.
    client.subscribe(&["index.production-vectors.*", "*.progress"]);
    relay.publish("index.staging.shard_transition", json!({}));
    relay.publish("job.a.progress", json!({}));
    let a = relay.publish("index.production-vectors.shard_transition", json!({}));
    let b = relay.publish("job.progress", json!({}));
    assert_event(&client.next_json(), &a);
    assert_event(&client.next_json(), &b);
}

#[test]
fn unsubscribe_removes_exact_patterns_only() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    // Not a held pattern, though job.* covers it: nothing changes.
    client.unsubscribe(&["job.progress"]);
    let p = relay.publish("job.progress", json!({}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn data_round_trips_exactly() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["t.x"]);
    let data = json!({
        "text": "é ü 漢字 🎉 \"quoted\" back\\slash </script> \u{2028}",
        "control": "\u{0001}\t\n",
        "numbers": [0, -1, 1.5, 1e300, 18446744073709551615u64],
        "nested": {"null": null, "bool": false, "empty": {}, "list": []},
    });
    let p = relay.publish("t.x", data);
    assert_event(&client.next_json(), &p);
    // Any JSON value is valid data, not only objects.
    for data in [json!("a string"), json!(42), json!(null), json!([1, 2])] {
        let p = relay.publish("t.x", data);
        assert_event(&client.next_json(), &p);
    }
}

#[test]
fn large_event_is_delivered_intact() {
    // 200 KB needs the 64-bit length form and many socket writes.
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["big.x"]);
    let blob: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let p = relay.publish("big.x", json!({"blob": blob}));
    assert_event(&client.next_json(), &p);
    let small = relay.publish("big.x", json!({"after": true}));
    assert_event(&client.next_json(), &small);
}

#[test]
fn routing_follows_subscription_changes_and_disconnects() {
    // The relay caches channel -> subscribers; every change must show.
    let relay = TestRelay::start();
    let mut a = connect(relay.addr);
    let mut b = connect(relay.addr);
    a.subscribe(&["job.*"]);
    let p1 = relay.publish("job.progress", json!(1));
    assert_event(&a.next_json(), &p1);
    b.subscribe(&["job.progress"]); // after the cache saw job.progress
    let p2 = relay.publish("job.progress", json!(2));
    assert_event(&a.next_json(), &p2);
    assert_event(&b.next_json(), &p2);
    a.unsubscribe(&["job.*"]);
    a.subscribe(&["marker.a"]);
    let p3 = relay.publish("job.progress", json!(3));
    let m = relay.publish("marker.a", json!(0));
    assert_event(&b.next_json(), &p3);
    assert_event(&a.next_json(), &m); // p3 would come first had a kept job.*
    drop(a);
    relay.wait_stats("a gone", |s| s.connections == 1);
    let p4 = relay.publish("job.progress", json!(4));
    assert_event(&b.next_json(), &p4);
    let mut c = connect(relay.addr);
    c.subscribe(&["job.>"]);
    let p5 = relay.publish("job.progress", json!(5));
    assert_event(&b.next_json(), &p5);
    assert_event(&c.next_json(), &p5);
}

#[test]
fn timestamps_are_the_publish_time_in_utc() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["time.x"]);
    // The fixed-width format sorts like the instant it names.
    let before = utc_now_rfc3339();
    relay.publish("time.x", json!({}));
    let after = utc_now_rfc3339();
    let event = client.next_json();
    let ts = event["timestamp"].as_str().unwrap_or_default().to_string();
    assert!(
        before <= ts && ts <= after,
        "{ts} not within [{before}, {after}]"
    );
    let reply = client.request(&json!({"type": "ping"}));
    let pong = reply["timestamp"].as_str().unwrap_or_default();
    let now = utc_now_rfc3339();
    assert!(
        after.as_str() <= pong && pong <= now.as_str(),
        "pong {pong} not within [{after}, {now}]"
    );
}

#[test]
fn handle_publisher_delivers_too() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["via.handle"]);
    let event = Event::new("via.handle", &json!({"n": 1})).unwrap();
    relay.handle_publisher().publish(event).expect("publish");
    let event = client.next_json();
    event_seq(&event, "via.handle");
    assert_eq!(event["data"], json!({"n": 1}));
}

#[test]
fn command_ids_come_back_in_replies_and_errors() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    let reply = client.request(&json!({"type":"subscribe","channels":["job.*"],"id":"sub-1"}));
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["id"], "sub-1", "{reply}");
    let reply = client.request(&json!({"type":"subscribe","channels":["bad..name"],"id":42}));
    assert!(error_message(&reply, "invalid_channel").contains("bad..name"));
    assert_eq!(reply["id"], 42, "{reply}");
    let reply = client.request(&json!({"type":"ping","id":u64::MAX}));
    assert_eq!(reply["type"], "pong", "{reply}");
    assert_eq!(reply["id"], u64::MAX, "{reply}");
    let reply = client.request(&json!({"type":"unsubscribe","channels":["job.*"],"id":-1}));
    assert_eq!(
        reply,
        json!({"type":"unsubscribed","id":-1,"channels":["job.*"]})
    );
    // An id the relay would not echo faithfully is an error naming the limit.
    let reply = client.request(&json!({"type":"ping","id":"x".repeat(65)}));
    let message = error_message(&reply, "bad_request");
    assert!(message.contains("limits.max_command_id"), "{message}");
    assert!(reply.get("id").is_none(), "{reply}");
}
