//! Fleet mode with JetStream against a real nats-server (`-js`, a store
//! directory of its own): one order and one history for the whole fleet,
//! resume on any relay, and nothing lost when NATS restarts. The server
//! and the helpers are in `common::nats`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::nats::*;
use common::proc::Proc;
use common::*;
use serde_json::{json, Value};
use tidings::{Event, UpstreamConfig};

/// A relay in JetStream mode on `nats`.
fn js_relay(nats: &NatsServer, tweak: impl FnOnce(&mut UpstreamConfig)) -> TestRelay {
    js_relay_with(nats, tweak, |_| {})
}

fn js_relay_with(
    nats: &NatsServer,
    tweak: impl FnOnce(&mut UpstreamConfig),
    tweak_config: impl FnOnce(&mut tidings::Config),
) -> TestRelay {
    fleet_relay_with(
        nats,
        |u| {
            u.jetstream = true;
            tweak(u);
        },
        tweak_config,
    )
}

/// The epoch the relay's reactors answer with (`/api/stats`).
fn epoch_of(relay: &TestRelay) -> String {
    epoch_at(relay.addr)
}

fn epoch_at(addr: SocketAddr) -> String {
    let stats = http_get(addr, "/api/stats").json();
    stats["epoch"].as_str().expect("epoch").to_string()
}

/// Waits until every relay has read the stream's identity: they all answer
/// with one epoch (each starts with one of its own). Returns it.
fn wait_one_epoch(relays: &[&TestRelay]) -> String {
    let mut epoch = String::new();
    wait_until("the relays to share the stream's epoch", || {
        let epochs: BTreeSet<String> = relays.iter().map(|r| epoch_of(r)).collect();
        epoch = epochs.iter().next().cloned().unwrap_or_default();
        epochs.len() == 1
            && relays
                .iter()
                .all(|r| relay_metric(r, "tidings_upstream_consumers_created_total") > 0)
    });
    epoch
}

/// Publishes `{"n": n}` on `channel` over HTTP; the stream sequence.
fn publish_n(relay: &TestRelay, channel: &str, n: u64) -> u64 {
    let answer = publish_on(relay, channel, json!({ "n": n }));
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    let body = answer.json();
    assert_eq!(body["published"], 1, "{body}");
    body["seq"]
        .as_u64()
        .expect("a JetStream publish answers its seq")
}

/// Reads events until one with `data.last`, as `(seq, n)`.
fn read_seqs_through_last(client: &mut Client) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    loop {
        let event = client.next_json();
        assert!(event["type"] != "resync", "unexpected {event}");
        let seq = event["seq"].as_u64().unwrap_or_else(|| panic!("{event}"));
        if event["data"]["last"] == true {
            return seen;
        }
        seen.push((seq, event["data"]["n"].as_u64().expect("n")));
    }
}

fn subscribe_since(client: &mut Client, channels: &[&str], epoch: &str, seq: u64) -> Value {
    client.request(&json!({
        "type": "subscribe",
        "channels": channels,
        "since": { "epoch": epoch, "seq": seq },
    }))
}

#[test]
fn a_publish_on_a_reaches_b_with_the_stream_sequence() {
    let Some(nats) = NatsServer::started_jetstream() else {
        return;
    };
    let a = js_relay(&nats, |_| {});
    let b = js_relay(&nats, |_| {});
    let epoch = wait_one_epoch(&[&a, &b]);
    let mut on_a = connect(a.addr);
    on_a.subscribe(&["job.*"]);
    let mut on_b = connect(b.addr);
    let reply = on_b.request(&json!({"type": "subscribe", "channels": ["job.*", "job.>"]}));
    assert_eq!(reply["epoch"], epoch.as_str(), "{reply}");

    let acked: Vec<(u64, u64)> = (0..20).map(|n| (publish_n(&a, "job.1", n), n)).collect();
    assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "{acked:?}");
    publish_n(&a, "job.1", 99);
    let last = publish_on(&a, "job.1", json!({ "last": true }));
    assert_eq!(last.status, 200);
    let mut expected = acked.clone();
    expected.push((acked.last().unwrap().0 + 1, 99));
    // Every relay gives each event the stream's sequence: once, in order.
    assert_eq!(read_seqs_through_last(&mut on_b), expected, "on B");
    assert_eq!(read_seqs_through_last(&mut on_a), expected, "on A");
    assert_eq!(relay_metric(&b, "tidings_upstream_duplicates_total"), 0);

    // A batch answers the last sequence; an embedded publish on B reaches A.
    let body = json!([
        { "channel": "job.2", "data": { "n": 1 } },
        { "channel": "job.2", "data": { "n": 2 } },
    ])
    .to_string();
    let answer = http(a.addr, &publish_request(&body, ""));
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    let batch_seq = answer.json()["seq"].as_u64().expect("seq");
    assert_eq!(answer.json()["published"], 2);
    let event = Event::new("job.3", &json!({ "n": 3 })).expect("event");
    assert_eq!(b.publisher.publish(event), Ok(0));
    let seen: Vec<(u64, u64)> = (0..3)
        .map(|_| {
            let e = on_a.next_json();
            (
                e["seq"].as_u64().expect("seq"),
                e["data"]["n"].as_u64().expect("n"),
            )
        })
        .collect();
    assert_eq!(seen[..2], [(batch_seq - 1, 1), (batch_seq, 2)]);
    assert_eq!(seen[2], (batch_seq + 1, 3));
}

#[test]
fn a_client_resumes_on_another_relay_with_nothing_missed() {
    let Some(nats) = NatsServer::started_jetstream() else {
        return;
    };
    let a = js_relay(&nats, |_| {});
    let b = js_relay(&nats, |_| {});
    let epoch = wait_one_epoch(&[&a, &b]);
    let mut on_a = connect(a.addr);
    on_a.subscribe(&["feed.*"]);
    for n in 0..5 {
        publish_n(&a, "feed.x", n);
    }
    publish_on(&a, "feed.x", json!({ "last": true }));
    let seen = read_seqs_through_last(&mut on_a);
    assert_eq!(seen.len(), 5);
    // The client's position: the last event it processed (the `last` marker
    // one follows the five).
    let position = seen.last().unwrap().0 + 1;
    on_a.close(1000);
    drop(on_a);

    // Events flow while it is away, some on channels it does not hold.
    let mut missed = Vec::new();
    for n in 5..15 {
        missed.push((publish_n(&b, "feed.x", n), n));
        publish_n(&a, "other.y", n);
    }
    // It comes back through the load balancer, on B.
    let mut on_b = connect(b.addr);
    let seq_b = missed.last().unwrap().0;
    wait_until("B to have read the stream", || {
        relay_metric(&b, "tidings_upstream_received_total") >= seq_b - 1
    });
    let reply = subscribe_since(&mut on_b, &["feed.*"], &epoch, position);
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], epoch.as_str());
    publish_on(&a, "feed.x", json!({ "last": true }));
    assert_eq!(
        read_seqs_through_last(&mut on_b),
        missed,
        "zero missed, zero twice"
    );

    // A relay that starts now serves the same resume from what it read back.
    let c = js_relay(&nats, |_| {});
    wait_one_epoch(&[&a, &c]);
    let mut on_c = connect(c.addr);
    let reply = subscribe_since(&mut on_c, &["feed.*"], &epoch, position);
    assert_eq!(reply["recovered"], true, "{reply}");
    let replayed: Vec<(u64, u64)> = (0..missed.len())
        .map(|_| {
            let e = on_c.next_json();
            (
                e["seq"].as_u64().expect("seq"),
                e["data"]["n"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut expected = missed.clone();
    expected.retain(|_| true);
    assert_eq!(replayed, expected);
    assert!(relay_metric(&c, "tidings_upstream_backfilled_total") > 0);
}

/// A relay killed outright (SIGKILL: no close frame, nothing more written):
/// its client comes back through another relay and resumes there, and gets
/// what the stream acknowledged to the dead relay just before it died as
/// well as what the other relay took in meanwhile.
#[test]
fn a_client_of_a_killed_relay_resumes_on_another_with_nothing_missed() {
    let Some(nats) = NatsServer::started_jetstream() else {
        return;
    };
    let config = TempFile::new(
        "killed-relay.toml",
        &format!(
            "[upstream]\nnats = [\"{}\"]\njetstream = true\n",
            nats.url()
        ),
    );
    let (mut a, a_addr) = Proc::start(&["--config", config.path()]);
    let b = js_relay(&nats, |_| {});
    let epoch = wait_one_epoch(&[&b]);
    wait_until("A to read the stream", || {
        epoch_at(a_addr) == epoch
            && metric(a_addr, "tidings_upstream_consumers_created_total").unwrap_or(0.0) > 0.0
    });

    let mut on_a = connect(a_addr);
    on_a.subscribe(&["feed.*"]);
    let publish_at_a = |n: u64| {
        let body = json!({ "channel": "feed.x", "data": { "n": n } }).to_string();
        let answer = http(a_addr, &publish_request(&body, ""));
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        answer.json()["seq"].as_u64().expect("seq")
    };
    let mut seen = Vec::new();
    for n in 0..5 {
        publish_at_a(n);
        let event = on_a.next_json();
        seen.push((
            event["seq"].as_u64().expect("seq"),
            event["data"]["n"].as_u64().expect("n"),
        ));
    }
    assert_eq!(
        seen.iter().map(|e| e.1).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    let position = seen.last().unwrap().0;

    // Acknowledged by the stream (the answer carries its seq), then A dies
    // before its client has read them.
    let mut missed: Vec<(u64, u64)> = (5..8).map(|n| (publish_at_a(n), n)).collect();
    a.child.kill().expect("SIGKILL relay A");
    a.child.wait().expect("reap relay A");
    drop(on_a);
    missed.extend((8..13).map(|n| (publish_n(&b, "feed.x", n), n)));

    // Back through the load balancer, on B.
    let last = missed.last().unwrap().0;
    wait_until("B to have read the stream", || {
        relay_metric(&b, "tidings_upstream_received_total") >= last
    });
    let mut on_b = connect(b.addr);
    let reply = subscribe_since(&mut on_b, &["feed.*"], &epoch, position);
    assert_eq!(reply["recovered"], true, "{reply}");
    publish_on(&b, "feed.x", json!({ "last": true }));
    assert_eq!(
        read_seqs_through_last(&mut on_b),
        missed,
        "zero missed, zero twice"
    );
}

#[test]
fn a_resume_the_stream_no_longer_holds_is_gone() {
    let Some(nats) = NatsServer::started_jetstream() else {
        return;
    };
    let small = |u: &mut UpstreamConfig| u.stream_max_messages = 5;
    let a = js_relay(&nats, small);
    let epoch = wait_one_epoch(&[&a]);
    let mut on_a = connect(a.addr);
    on_a.subscribe(&["feed"]);
    let first = publish_n(&a, "feed", 0);
    assert_eq!(on_a.next_json()["seq"], first);
    drop(on_a);
    for n in 1..20 {
        publish_n(&a, "feed", n);
    }
    wait_until("the stream to drop old messages", || {
        nats.stream_state("TIDINGS")["messages"] == 5
    });
    // A relay that starts now reads back only what the stream holds.
    let b = js_relay(&nats, small);
    wait_one_epoch(&[&a, &b]);
    let mut on_b = connect(b.addr);
    // Neither B's history nor the stream reaches back to `first`.
    let reply = subscribe_since(&mut on_b, &["feed"], &epoch, first);
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["reason"], "gone", "{reply}");
    // A position the stream still covers resumes.
    let mut again = connect(b.addr);
    let reply = subscribe_since(&mut again, &["feed"], &epoch, first + 16);
    assert_eq!(reply["recovered"], true, "{reply}");
    let replayed: Vec<u64> = (0..3)
        .map(|_| again.next_json()["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(replayed, [first + 17, first + 18, first + 19]);
}

#[test]
fn nothing_acknowledged_is_lost_when_nats_restarts() {
    let Some(mut nats) = NatsServer::started_jetstream() else {
        return;
    };
    let a = js_relay(&nats, |_| {});
    let b = js_relay(&nats, |_| {});
    wait_one_epoch(&[&a, &b]);
    let mut on_a = connect(a.addr);
    on_a.subscribe(&["feed"]);
    let mut on_b = connect(b.addr);
    on_b.subscribe(&["feed"]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = thread::spawn({
        let addr = a.addr;
        let stop = std::sync::Arc::clone(&stop);
        move || {
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({ "channel": "feed", "data": { "n": n } }).to_string();
                let answer = http(addr, &publish_request(&body, ""));
                match answer.status {
                    200 => acked.push((answer.json()["seq"].as_u64().expect("seq"), n)),
                    503 => refused.push(n),
                    other => panic!("publish answered {other}"),
                }
                n += 1;
                thread::sleep(Duration::from_millis(5));
            }
            (acked, refused)
        }
    });
    let published = |at_least: u64| {
        wait_until("publishes to be acknowledged", || {
            relay_metric(&a, "tidings_upstream_published_total") >= at_least
        });
    };
    published(20);
    nats.kill();
    wait_until("publishes to be refused while NATS is down", || {
        relay_metric(&a, "tidings_upstream_refused_total") >= 3
    });
    nats.start();
    let before = relay_metric(&a, "tidings_upstream_published_total");
    published(before + 20);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, refused) = publishing.join().expect("publisher");
    wait_up(&a);
    wait_up(&b);
    let last = publish_on(&a, "feed", json!({ "last": true }));
    assert_eq!(last.status, 200, "{}", last.body_text());
    assert!(!acked.is_empty());
    assert!(
        !refused.is_empty(),
        "publishes while NATS was down are refused"
    );
    let acked_n: BTreeSet<u64> = acked.iter().map(|(_, n)| *n).collect();
    for (name, relay, client) in [("A", &a, &mut on_a), ("B", &b, &mut on_b)] {
        let seen = read_seqs_through_last(client);
        // In stream order, each once; every acknowledged event is there with
        // the sequence its publish answered (a refused publish may be there
        // too: NATS may have stored it before the connection broke).
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{name}: {seen:?}");
        for pair in &acked {
            assert!(seen.contains(pair), "{name} lost {pair:?}: {seen:?}");
        }
        let extra: Vec<u64> = seen
            .iter()
            .map(|(_, n)| *n)
            .filter(|n| !acked_n.contains(n))
            .collect();
        assert!(
            extra.iter().all(|n| refused.contains(n)),
            "{name}: {extra:?}"
        );
        assert!(
            relay_metric(relay, "tidings_upstream_disconnects_total") >= 1,
            "{name}"
        );
        assert_eq!(
            relay_metric(relay, "tidings_upstream_cuts_total"),
            0,
            "{name}"
        );
    }
}

#[test]
fn a_relay_started_with_nats_down_reads_the_stream_once_it_is_up() {
    let Some(mut nats) = NatsServer::new_jetstream() else {
        return;
    };
    let relay = js_relay(&nats, |_| {});
    let mut client = connect(relay.addr);
    client.subscribe(&["news"]);
    let (status, body) = health(&relay);
    assert_eq!((status, &body["upstream"]), (200, &json!("down")), "{body}");
    let refused = publish_on(&relay, "news", json!({}));
    assert_eq!(refused.status, 503);
    assert!(refused.header("Retry-After").is_some());

    nats.start();
    wait_up(&relay);
    let epoch = wait_one_epoch(&[&relay]);
    // The subscriber learns that the order changed (it subscribed under
    // the relay's own epoch).
    let notice = client.next_json();
    assert_eq!(notice["type"], "resync", "{notice}");
    assert_eq!(notice["data"]["reason"], "upstream");
    assert_eq!(notice["data"]["epoch"], epoch.as_str());
    let deadline = Instant::now() + WAIT;
    let seq = loop {
        let answer = publish_on(&relay, "news", json!({ "n": 1 }));
        if answer.status == 200 {
            break answer.json()["seq"].as_u64().expect("seq");
        }
        assert!(Instant::now() < deadline, "{}", answer.body_text());
        thread::sleep(Duration::from_millis(50));
    };
    let event = client.next_json();
    assert_eq!(
        (event["seq"].as_u64(), &event["data"]["n"]),
        (Some(seq), &json!(1))
    );
}

#[test]
fn a_fresh_relay_answers_snapshots_from_the_stream() {
    let Some(nats) = NatsServer::started_jetstream() else {
        return;
    };
    let last_values = |c: &mut tidings::Config| {
        c.history.last_value = vec!["cluster.*".into()];
        // A history too short to hold them: they come from JetStream's
        // last message per subject.
        c.history.max_events = 2;
    };
    let a = js_relay_with(&nats, |_| {}, last_values);
    wait_one_epoch(&[&a]);
    let prod = publish_n(&a, "cluster.prod", 1);
    publish_n(&a, "cluster.prod", 2);
    let staging = publish_n(&a, "cluster.staging", 3);
    for n in 0..10 {
        publish_n(&a, "noise", n);
    }
    let b = js_relay_with(&nats, |_| {}, last_values);
    wait_one_epoch(&[&a, &b]);
    wait_until("B to read the last values", || {
        relay_metric(&b, "tidings_upstream_last_values_read_total") >= 2
    });
    let mut client = connect(b.addr);
    let reply =
        client.request(&json!({"type": "subscribe", "channels": ["cluster.*"], "snapshot": true}));
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let first = client.next_json();
    let second = client.next_json();
    assert_eq!(
        [first["seq"].as_u64(), second["seq"].as_u64()],
        [Some(prod + 1), Some(staging)]
    );
    assert_eq!(first["data"]["n"], 2);
    let rest = http_get(b.addr, "/api/channels/cluster.staging");
    assert_eq!(rest.status, 200, "{}", rest.body_text());
    assert_eq!(rest.json()["data"]["n"], 3);
}

#[test]
fn a_nats_without_jetstream_counts_as_down() {
    // A server without `-js`: connected, but there is no stream to read.
    let Some(nats) = NatsServer::started() else {
        return;
    };
    let relay = js_relay(&nats, |_| {});
    let monitor: std::net::SocketAddr = ([127, 0, 0, 1], nats.monitor).into();
    wait_until("the relay to connect", || {
        http_get(monitor, "/connz").json()["num_connections"] == 1
    });
    let (status, body) = health(&relay);
    assert_eq!((status, &body["upstream"]), (200, &json!("down")), "{body}");
    assert_eq!(relay_metric(&relay, "tidings_upstream_up"), 0);
    let refused = publish_on(&relay, "news", json!({}));
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "upstream_down");
}

#[test]
fn a_resume_older_than_the_history_is_read_from_the_stream() {
    let Some(nats) = NatsServer::started_jetstream() else {
        return;
    };
    let a = js_relay(&nats, |_| {});
    // B keeps only the last 3 events: older gaps are read from JetStream.
    let b = js_relay_with(&nats, |_| {}, |c| c.history.max_events = 3);
    let epoch = wait_one_epoch(&[&a, &b]);
    let mut on_a = connect(a.addr);
    on_a.subscribe(&["feed.*", "alert"]);
    let first = publish_n(&a, "feed.x", 0);
    assert_eq!(on_a.next_json()["seq"], first);
    drop(on_a);
    let mut missed = Vec::new();
    for n in 1..=12 {
        missed.push((publish_n(&b, "feed.x", n), n));
        publish_n(&b, "other", n);
        if n % 4 == 0 {
            missed.push((publish_n(&a, "alert", 100 + n), 100 + n));
        }
    }
    let head = missed.last().unwrap().0;
    wait_until("B to have read the stream", || {
        relay_metric(&b, "tidings_upstream_received_total") >= head - 1
    });
    for channels in [&["feed.*", "alert"][..], &["feed.*"][..]] {
        let mut on_b = connect(b.addr);
        let reply = subscribe_since(&mut on_b, channels, &epoch, first);
        assert_eq!(reply["recovered"], true, "{channels:?}: {reply}");
        publish_on(&a, "feed.x", json!({ "last": true }));
        let mut expected = missed.clone();
        if channels.len() == 1 {
            expected.retain(|(_, n)| *n < 100);
        }
        let seen = read_seqs_through_last(&mut on_b);
        assert_eq!(seen[..expected.len()], expected[..], "{channels:?}");
    }
    assert_eq!(relay_metric(&b, "tidings_upstream_fetches_total"), 2);
    // From the very start: the stream still holds everything.
    let mut late = connect(b.addr);
    let reply = subscribe_since(&mut late, &["feed.*"], &epoch, 0);
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(late.next_json()["seq"], first);
}
