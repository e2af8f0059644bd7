//! Fleet mode (core NATS) against a real nats-server: two relays on one
//! NATS, interest, and NATS going away and coming back. The server and the
//! helpers are in `common::nats`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::nats::*;
use common::*;
use serde_json::json;
use tidings::{Event, PublishError, UpstreamConfig};

/// Two relays on `nats`, both connected.
fn two_relays_up(nats: &NatsServer) -> (TestRelay, TestRelay) {
    let a = fleet_relay(nats, |_| {});
    let b = fleet_relay(nats, |_| {});
    wait_up(&a);
    wait_up(&b);
    (a, b)
}

#[test]
fn an_http_publish_on_a_reaches_a_subscriber_on_b_once_in_order() {
    let Some(nats) = NatsServer::started() else {
        return;
    };
    let (a, b) = two_relays_up(&nats);
    let mut client = connect(b.addr);
    // Two overlapping patterns: NATS sends each message twice; once arrives.
    client.subscribe(&["job.*", "job.>"]);
    wait_subscriptions(&b, 2);
    for n in 0..20 {
        let answer = publish_on(&a, "job.1", json!({ "n": n }));
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        assert_eq!(answer.json(), json!({ "published": 1 }));
    }
    publish_on(&a, "job.1", json!({ "last": true }));
    assert_eq!(read_through_last(&mut client), (0..20).collect::<Vec<_>>());
    assert!(relay_metric(&b, "tidings_upstream_duplicates_total") >= 20);
    assert_eq!(relay_metric(&a, "tidings_upstream_published_total"), 21);
}

#[test]
fn an_embedded_publisher_on_b_reaches_a_and_b() {
    let Some(nats) = NatsServer::started() else {
        return;
    };
    let (a, b) = two_relays_up(&nats);
    let mut on_a = connect(a.addr);
    on_a.subscribe(&["prices.>"]);
    let mut on_b = connect(b.addr);
    on_b.subscribe(&["prices.>"]);
    wait_subscriptions(&a, 1);
    wait_subscriptions(&b, 1);
    for n in 0..10 {
        let event = Event::new("prices.eur", &json!({ "n": n })).expect("event");
        assert_eq!(
            b.publisher.publish(event),
            Ok(0),
            "fleet mode has no seq here"
        );
    }
    let last = Event::new("prices.eur", &json!({ "last": true })).expect("event");
    b.publisher.publish(last).expect("publish");
    let expected: Vec<u64> = (0..10).collect();
    assert_eq!(read_through_last(&mut on_a), expected);
    assert_eq!(read_through_last(&mut on_b), expected, "B delivers its own");
}

#[test]
fn a_relay_subscribes_upstream_only_to_what_its_clients_hold() {
    let Some(nats) = NatsServer::started() else {
        return;
    };
    let (a, b) = two_relays_up(&nats);
    // Two clients on A hold y.*: one NATS subscription, counted twice.
    let mut first = connect(a.addr);
    first.subscribe(&["y.*"]);
    let mut second = connect(a.addr);
    second.subscribe(&["y.*"]);
    wait_subscriptions(&a, 1);
    let subjects = nats.subjects();
    assert!(
        subjects.contains(&"tidings.y.*".to_string()),
        "{subjects:?}"
    );
    assert!(!subjects.iter().any(|s| s.starts_with("tidings.x")));
    for channel in ["x.1", "x.2", "y.1"] {
        let answer = publish_on(&b, channel, json!({ "on": channel }));
        assert_eq!(answer.status, 200);
    }
    assert_eq!(first.next_json()["data"]["on"], "y.1");
    assert_eq!(second.next_json()["data"]["on"], "y.1");
    assert_eq!(
        relay_metric(&a, "tidings_upstream_received_total"),
        1,
        "NATS sent A nothing on x.*"
    );
    // The last client leaving takes the subscription away.
    first.unsubscribe(&["y.*"]);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        relay_metric(&a, "tidings_upstream_subscriptions"),
        1,
        "one left"
    );
    second.close(1000);
    wait_subscriptions(&a, 0);
    wait_until("NATS to drop y.*", || {
        !nats.subjects().contains(&"tidings.y.*".to_string())
    });
}

#[test]
fn a_relay_started_with_nats_down_serves_and_connects_later() {
    let Some(mut nats) = NatsServer::new() else {
        return;
    };
    let relay = fleet_relay(&nats, |u| u.required = true);
    let optional = fleet_relay(&nats, |_| {});
    // Serving clients without NATS.
    let mut client = connect(relay.addr);
    client.subscribe(&["news"]);
    let (status, body) = health(&relay);
    assert_eq!((status, &body["upstream"]), (503, &json!("down")), "{body}");
    let (status, body) = health(&optional);
    assert_eq!((status, &body["upstream"]), (200, &json!("down")), "{body}");
    assert_eq!(relay_metric(&relay, "tidings_upstream_up"), 0);
    let refused = publish_on(&relay, "news", json!({}));
    assert_eq!(refused.status, 503);
    assert!(refused.header("Retry-After").is_some());
    assert_eq!(refused.json()["error"]["code"], "upstream_down");
    let event = Event::new("news", &json!({})).expect("event");
    assert_eq!(
        relay.publisher.publish(event),
        Err(PublishError::Unavailable)
    );

    nats.start();
    wait_up(&relay);
    assert_eq!(health(&relay).0, 200);
    assert_eq!(relay_metric(&relay, "tidings_upstream_up"), 1);
    wait_subscriptions(&relay, 1);
    wait_until("NATS to hold the relay's interest", || {
        nats.subjects().contains(&"tidings.news".to_string())
    });
    let answer = publish_on(&optional, "news", json!({ "n": 1 }));
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert_eq!(client.next_json()["data"]["n"], 1);
}

#[test]
fn both_relays_recover_when_nats_restarts_mid_stream() {
    let Some(mut nats) = NatsServer::started() else {
        return;
    };
    let (a, b) = two_relays_up(&nats);
    let mut on_a = connect(a.addr);
    on_a.subscribe(&["feed"]);
    let mut on_b = connect(b.addr);
    on_b.subscribe(&["feed"]);
    wait_subscriptions(&a, 1);
    wait_subscriptions(&b, 1);

    // Publishes go on, one every 10 ms, until NATS is back (at most
    // PUBLISHES of them).
    const PUBLISHES: u64 = 3000;
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = thread::spawn({
        let addr = a.addr;
        let stop = Arc::clone(&stop);
        move || {
            let (mut confirmed, mut refused) = (Vec::new(), 0);
            for n in 0..PUBLISHES {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = json!({ "channel": "feed", "data": { "n": n } }).to_string();
                let answer = http(addr, &publish_request(&body, ""));
                match answer.status {
                    200 => confirmed.push(n),
                    503 => refused += 1,
                    other => panic!("publish answered {other}"),
                }
                thread::sleep(Duration::from_millis(10));
            }
            (confirmed, refused)
        }
    });
    thread::sleep(Duration::from_millis(300));
    nats.kill();
    // Down long enough for the relay to see it: a publish is refused.
    wait_until("a publish refused while NATS is down", || {
        relay_metric(&a, "tidings_upstream_refused_total") >= 1
    });
    nats.start();
    wait_up(&a);
    wait_up(&b);
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (confirmed, refused) = publishing.join().expect("publisher");
    wait_until("interest re-established", || {
        nats.subjects()
            .iter()
            .filter(|s| *s == "tidings.feed")
            .count()
            == 2
    });
    // Once both are back, every event arrives again.
    for n in 10_000..10_010 {
        assert_eq!(publish_on(&a, "feed", json!({ "n": n })).status, 200);
    }
    publish_on(&a, "feed", json!({ "last": true }));
    let after: Vec<u64> = (10_000..10_010).collect();
    for (name, relay, client) in [("A", &a, &mut on_a), ("B", &b, &mut on_b)] {
        let (seen, notices) = read_through_last_with_notices(client);
        // Core NATS keeps nothing for a relay cut off: its subscribers are
        // told (and a resume across the cut is refused, see
        // `a_resume_across_a_nats_outage_is_gone`).
        assert!(!notices.is_empty(), "{name}: no resync");
        for notice in &notices {
            assert_eq!(notice["data"]["reason"], "upstream", "{name}: {notice}");
        }
        assert!(
            relay_metric(relay, "tidings_upstream_cuts_total") >= 1,
            "{name}"
        );
        // In order, never twice, and nothing that was not published.
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{name}: {seen:?}");
        assert!(
            seen.iter().all(|n| *n < PUBLISHES || after.contains(n)),
            "{name}"
        );
        assert!(seen.ends_with(&after), "{name}: {seen:?}");
        assert!(
            relay_metric(relay, "tidings_upstream_disconnects_total") >= 1,
            "{name}"
        );
    }
    assert!(!confirmed.is_empty());
    assert!(
        refused > 0,
        "publishes while NATS was down are refused, not dropped"
    );
    assert_eq!(
        relay_metric(&a, "tidings_upstream_refused_total"),
        refused,
        "every refusal is counted"
    );
}

#[test]
fn default_channels_are_interest_too() {
    let Some(nats) = NatsServer::started() else {
        return;
    };
    let upstream = UpstreamConfig {
        nats: vec![nats.url()],
        interest_debounce: Duration::from_millis(20),
        ..UpstreamConfig::default()
    };
    let relay = TestRelay::with(|c| {
        c.default_channels = vec!["alerts.>".into()];
        c.upstream = Some(upstream);
    });
    wait_up(&relay);
    assert_eq!(relay_metric(&relay, "tidings_upstream_subscriptions"), 0);
    let mut client = connect(relay.addr);
    wait_subscriptions(&relay, 1);
    let subjects = nats.subjects();
    assert!(
        subjects.contains(&"tidings.alerts.>".to_string()),
        "{subjects:?}"
    );
    assert_eq!(publish_on(&relay, "alerts.disk", json!(1)).status, 200);
    assert_eq!(client.next_json()["type"], "alerts.disk");
}

#[test]
fn a_resume_across_a_nats_outage_is_gone() {
    let Some(mut nats) = NatsServer::started() else {
        return;
    };
    let relay = fleet_relay(&nats, |_| {});
    wait_up(&relay);
    let mut client = connect(relay.addr);
    let reply = client.request(&json!({"type": "subscribe", "channels": ["feed"]}));
    let epoch = reply["epoch"].as_str().expect("epoch").to_string();
    wait_subscriptions(&relay, 1);
    let mut last = 0;
    for n in 0..3 {
        assert_eq!(publish_on(&relay, "feed", json!({ "n": n })).status, 200);
        last = client.next_json()["seq"].as_u64().expect("seq");
    }

    nats.kill();
    // Subscribers are told at once: what NATS carries meanwhile is lost.
    let notice = client.next_json();
    assert_eq!(notice["type"], "resync", "{notice}");
    assert_eq!(notice["data"]["reason"], "upstream", "{notice}");
    assert_eq!(notice["data"]["seq"], last, "{notice}");
    // Resuming from before the cut is refused: the history is not complete.
    let since = json!({ "epoch": epoch, "seq": last });
    let reply = client.request(&json!({"type": "subscribe", "channels": ["feed"], "since": since}));
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["reason"], "gone", "{reply}");
    assert!(relay_metric(&relay, "tidings_upstream_cuts_total") >= 1);

    nats.start();
    wait_up(&relay);
    wait_until("NATS to hold the relay's interest", || {
        nats.subjects().contains(&"tidings.feed".to_string())
    });
    assert_eq!(publish_on(&relay, "feed", json!({ "n": 3 })).status, 200);
    // Another notice when the connection is back, then the new event.
    let event = loop {
        let message = client.next_json();
        if message["type"] == "resync" {
            assert_eq!(message["data"]["reason"], "upstream", "{message}");
            continue;
        }
        break message;
    };
    assert_eq!(event["data"]["n"], 3, "{event}");
    let after = event["seq"].as_u64().expect("seq");
    // From a position after the cut, a resume recovers.
    let mut again = connect(relay.addr);
    let since = json!({ "epoch": epoch, "seq": after });
    let reply = again.request(&json!({"type": "subscribe", "channels": ["feed"], "since": since}));
    assert_eq!(reply["recovered"], true, "{reply}");
}

/// In core NATS mode each relay numbers events itself: a position from one
/// relay means nothing on another, which says so (`reason: "epoch"`) and
/// delivers live from there.
#[test]
fn in_core_mode_a_resume_on_another_relay_is_refused_as_another_epoch() {
    let Some(nats) = NatsServer::started() else {
        return;
    };
    let (a, b) = two_relays_up(&nats);
    let mut on_a = connect(a.addr);
    let reply = on_a.request(&json!({"type": "subscribe", "channels": ["feed.*"]}));
    let epoch_a = reply["epoch"].as_str().expect("epoch").to_string();
    wait_subscriptions(&a, 1);
    assert_eq!(publish_on(&a, "feed.x", json!({ "n": 0 })).status, 200);
    let seq = on_a.next_json()["seq"].as_u64().expect("seq");

    let mut on_b = connect(b.addr);
    let since = json!({ "epoch": epoch_a, "seq": seq });
    let reply = on_b.request(&json!({"type": "subscribe", "channels": ["feed.*"], "since": since}));
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["reason"], "epoch", "{reply}");
    assert_ne!(reply["epoch"], epoch_a.as_str(), "{reply}");
    // Live delivery starts as for a plain subscribe.
    wait_subscriptions(&b, 1);
    assert_eq!(publish_on(&a, "feed.x", json!({ "n": 1 })).status, 200);
    let event = on_b.next_json();
    assert_eq!(event["data"]["n"], 1, "{event}");
}
