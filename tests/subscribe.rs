//! Subscriptions, pattern matching, default channels and event delivery
//! (docs/protocol.md, "Messages from the client", "Channels and patterns", "Events").
//!
//! Negative checks ("X is not delivered") publish X first and then a marker
//! the client does receive: events leave in seq order, so if X were delivered
//! it would arrive before the marker. No test waits for silence.

mod common;

use std::collections::HashSet;
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
    let seq = relay.publish("job.progress", json!({"jobId": "a"}));
    let event = client.next_json();
    assert_eq!(event_seq(&event, "job.progress"), seq, "job.a.b or job leaked: {event}");
    assert_eq!(event["data"], json!({"jobId": "a"}));
}

#[test]
fn gt_matches_one_or_more_trailing_segments() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["index.>"]);
    relay.publish("index", json!({"bare": true})); // `>` needs at least one segment
    relay.publish("indexes.x", json!({})); // prefix match must be per segment
    let deep = relay.publish("index.production-vectors.shard_transition", json!({"shard": 3}));
    let one = relay.publish("index.created", json!({}));
    assert_eq!(
        event_seq(&client.next_json(), "index.production-vectors.shard_transition"),
        deep
    );
    assert_eq!(event_seq(&client.next_json(), "index.created"), one);
}

#[test]
fn exact_channel_matches_only_itself() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["metrics.system"]);
    relay.publish("metrics.system.extra", json!({}));
    relay.publish("metrics.index", json!({}));
    let seq = relay.publish("metrics.system", json!({"qps": 1250}));
    assert_eq!(event_seq(&client.next_json(), "metrics.system"), seq);
}

#[test]
fn overlapping_patterns_deliver_each_event_once() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*", "job.>", ">", "job.progress"]);
    let seqs: Vec<u64> = (0..3).map(|i| relay.publish("job.progress", json!({"i": i}))).collect();
    let marker = relay.publish("zzz.marker", json!({}));
    for (i, seq) in seqs.iter().enumerate() {
        let event = client.next_json();
        assert_eq!(event_seq(&event, "job.progress"), *seq, "duplicate or missing: {event}");
        assert_eq!(event["data"]["i"], i);
    }
    assert_eq!(event_seq(&client.next_json(), "zzz.marker"), marker);
}

#[test]
fn unsubscribe_stops_delivery() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*", "alert.*"]);
    let before = relay.publish("job.progress", json!({}));
    assert_eq!(event_seq(&client.next_json(), "job.progress"), before);
    client.unsubscribe(&["job.*"]);
    relay.publish("job.progress", json!({}));
    let alert = relay.publish("alert.warning", json!({}));
    assert_eq!(event_seq(&client.next_json(), "alert.warning"), alert);
}

#[test]
fn unsubscribing_one_of_two_overlapping_patterns_keeps_the_other() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*", "job.progress"]);
    client.unsubscribe(&["job.*"]);
    relay.publish("job.started", json!({}));
    let seq = relay.publish("job.progress", json!({}));
    assert_eq!(event_seq(&client.next_json(), "job.progress"), seq);
}

#[test]
fn default_channels_reach_a_silent_client() {
    let relay = TestRelay::with(|c| c.default_channels = vec!["cluster.*".into()]);
    // The seed's notification-only client: connects and never sends anything.
    let mut client = connect(relay.addr);
    relay.publish("other.thing", json!({}));
    let seq = relay.publish("cluster.updated", json!({"name": "prod-cluster"}));
    let event = client.next_json();
    assert_eq!(event_seq(&event, "cluster.updated"), seq);
    assert_eq!(event["data"], json!({"name": "prod-cluster"}));
}

#[test]
fn no_default_channels_means_no_events_before_subscribe() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    relay.publish("cluster.updated", json!({}));
    // Subscribing afterwards must not replay the earlier event.
    client.subscribe(&["cluster.*"]);
    let seq = relay.publish("cluster.added", json!({}));
    assert_eq!(event_seq(&client.next_json(), "cluster.added"), seq);
}

#[test]
fn first_subscribe_replaces_default_channels() {
    let relay = TestRelay::with(|c| c.default_channels = vec!["cluster.*".into()]);
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    relay.publish("cluster.updated", json!({"name": "x"}));
    let seq = relay.publish("job.progress", json!({}));
    assert_eq!(event_seq(&client.next_json(), "job.progress"), seq);
}

#[test]
fn ping_gets_pong_with_millisecond_utc_timestamp() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    let reply = client.request(&json!({"type": "ping"}));
    assert_eq!(reply["type"], "pong", "{reply}");
    let ts = reply["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {reply}"));
    assert!(is_rfc3339_millis_utc(ts), "timestamp {ts:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ");
    assert!(ts.as_bytes()[..4] >= *b"2024", "timestamp {ts:?} is not the current time");
}

#[test]
fn event_wire_format_matches_the_seed() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.progress"]);
    let data = json!({"jobId": "import-abc123", "progress": 0.45});
    let seq = relay.publish("job.progress", data.clone());
    let text = client.next_text();
    assert!(text.starts_with(r#"{"type":"job.progress","timestamp":""#), "{text}");
    let event: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(event_seq(&event, "job.progress"), seq);
    assert_eq!(event["data"], data);
    let keys: Vec<&str> = event.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["data", "seq", "timestamp", "type"], "{text}");
}

#[test]
fn custom_type_carries_channel_after_type() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    let event = Event::from_json("job.progress", r#"{"x":1}"#)
        .expect("Event::from_json")
        .with_type("custom.type");
    let seq = relay.publisher.publish(event).expect("publish");
    let text = client.next_text();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "custom.type", "{text}");
    assert_eq!(v["channel"], "job.progress", "{text}");
    assert_eq!(v["seq"], seq, "{text}");
    assert_eq!(v["data"], json!({"x": 1}), "{text}");
    let ts = v["timestamp"].as_str().unwrap_or_default();
    assert!(is_rfc3339_millis_utc(ts), "{text}");
    let (t, c) = (text.find(r#""type""#).unwrap(), text.find(r#""channel""#).unwrap());
    assert!(t < c, "\"channel\" must come after \"type\": {text}");
}

#[test]
fn custom_type_is_routed_by_channel_not_type() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["custom.*"]);
    let disguised = Event::from_json("job.progress", "{}").unwrap().with_type("custom.type");
    relay.publisher.publish(disguised).expect("publish");
    let seq = relay.publish("custom.real", json!({}));
    assert_eq!(event_seq(&client.next_json(), "custom.real"), seq);
}

#[test]
fn seq_strictly_increases_across_channels_and_matches_publish() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&[">"]);
    let channels = ["job.progress", "alert.warning", "metrics.system", "index.a.b"];
    let published: Vec<(&str, u64)> = (0..60)
        .map(|i| {
            let channel = channels[i % channels.len()];
            (channel, relay.publish(channel, json!({"i": i})))
        })
        .collect();
    let mut last = 0;
    for (i, (channel, seq)) in published.iter().enumerate() {
        let event = client.next_json();
        let got = event_seq(&event, channel);
        assert_eq!(got, *seq, "event {i} out of order: {event}");
        assert!(i == 0 || got > last, "seq not increasing at {i}: {event}");
        last = got;
    }
}

#[test]
fn two_clients_get_the_same_seqs() {
    let relay = TestRelay::start();
    let mut a = connect(relay.addr);
    let mut b = connect(relay.addr);
    a.subscribe(&["job.*"]);
    b.subscribe(&["job.>"]);
    let seqs: Vec<u64> = (0..10).map(|i| relay.publish("job.progress", json!({"i": i}))).collect();
    for seq in seqs {
        assert_eq!(event_seq(&a.next_json(), "job.progress"), seq);
        assert_eq!(event_seq(&b.next_json(), "job.progress"), seq);
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
                (0..EACH)
                    .map(|n| {
                        let event = Event::new(&format!("load.t{t}"), &json!({"t": t, "n": n})).unwrap();
                        publisher.publish(event).expect("publish")
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut expected = HashSet::new();
    for worker in workers {
        let seqs = worker.join().expect("publisher thread");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one thread's seqs must rise");
        expected.extend(seqs);
    }
    assert_eq!(expected.len(), THREADS * EACH, "publish returned duplicate seqs");

    let mut next_n = [0usize; THREADS];
    let mut last_seq = 0;
    for i in 0..THREADS * EACH {
        let event = client.next_json();
        let seq = event["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {event}"));
        assert!(i == 0 || seq > last_seq, "seq not increasing: {event}");
        assert!(expected.remove(&seq), "unexpected seq {seq}: {event}");
        last_seq = seq;
        let t = event["data"]["t"].as_u64().unwrap() as usize;
        assert_eq!(event["type"], format!("load.t{t}"));
        assert_eq!(event["data"]["n"], next_n[t], "thread {t}'s events out of order");
        next_n[t] += 1;
    }
    assert!(expected.is_empty(), "missing seqs: {expected:?}");
}
