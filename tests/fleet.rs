//! Fleet mode against a real nats-server: two relays on one NATS, interest,
//! and NATS going away and coming back.
//!
//! Each test starts its own nats-server on free ports and kills it itself.
//! Without a `nats-server` binary (`NATS_SERVER`, `PATH`, or
//! /usr/sbin/nats-server, where the Debian package puts it) the tests say
//! so loudly and pass; `.ci/run` installs it.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tidings::{Event, PublishError, UpstreamConfig};

struct NatsServer {
    binary: PathBuf,
    port: u16,
    monitor: u16,
    child: Option<Child>,
}

fn nats_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Some(path.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/nats-server");
        debian.is_file().then_some(debian)
    })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl NatsServer {
    /// A stopped server on free ports; None (after a loud message) when
    /// there is no nats-server to run.
    fn new() -> Option<NatsServer> {
        let Some(binary) = nats_binary() else {
            eprintln!(
                "\n*** SKIPPING fleet test: no nats-server (install the Debian package \
                 nats-server, or set NATS_SERVER) ***\n"
            );
            return None;
        };
        Some(NatsServer {
            binary,
            port: free_port(),
            monitor: free_port(),
            child: None,
        })
    }

    fn started() -> Option<NatsServer> {
        let mut server = NatsServer::new()?;
        server.start();
        Some(server)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every subscription subject NATS holds, from its monitoring endpoint.
    fn subjects(&self) -> Vec<String> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.monitor).into();
        let connz = http_get(addr, "/connz?subs=1").json();
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn fleet_relay(nats: &NatsServer, tweak: impl FnOnce(&mut UpstreamConfig)) -> TestRelay {
    let mut upstream = UpstreamConfig {
        nats: vec![nats.url()],
        interest_debounce: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        ..UpstreamConfig::default()
    };
    tweak(&mut upstream);
    TestRelay::with(|c| c.upstream = Some(upstream))
}

fn health(relay: &TestRelay) -> (u16, Value) {
    let response = http_get(relay.addr, "/healthz");
    (response.status, response.json())
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_up(relay: &TestRelay) {
    wait_until("the upstream to be up", || {
        health(relay).1["upstream"] == "up"
    });
}

/// A value of the relay's `/metrics`.
fn metric(relay: &TestRelay, name: &str) -> u64 {
    let text = http_get(relay.addr, "/metrics").body_text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Waits until the relay holds `count` NATS subscriptions (its interest
/// reached NATS, after the debounce).
fn wait_subscriptions(relay: &TestRelay, count: u64) {
    wait_until("the relay's NATS subscriptions", || {
        metric(relay, "tidings_upstream_subscriptions") == count
    });
}

fn http_publish(relay: &TestRelay, channel: &str, data: Value) -> HttpResponse {
    let body = json!({ "channel": channel, "data": data }).to_string();
    http(relay.addr, &publish_request(&body, ""))
}

/// Reads events until one with `data.last`, returning every `data.n`.
fn read_through_last(client: &mut Client) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let event = client.next_json();
        if event["data"]["last"] == true {
            return seen;
        }
        seen.push(event["data"]["n"].as_u64().expect("n"));
    }
}

#[test]
fn an_http_publish_on_a_reaches_a_subscriber_on_b_once_in_order() {
    let Some(nats) = NatsServer::started() else {
        return;
    };
    let a = fleet_relay(&nats, |_| {});
    let b = fleet_relay(&nats, |_| {});
    wait_up(&a);
    wait_up(&b);
    let mut client = connect(b.addr);
    // Two overlapping patterns: NATS sends each message twice; once arrives.
    client.subscribe(&["job.*", "job.>"]);
    wait_subscriptions(&b, 2);
    for n in 0..20 {
        let answer = http_publish(&a, "job.1", json!({ "n": n }));
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        assert_eq!(answer.json(), json!({ "published": 1 }));
    }
    http_publish(&a, "job.1", json!({ "last": true }));
    assert_eq!(read_through_last(&mut client), (0..20).collect::<Vec<_>>());
    assert!(metric(&b, "tidings_upstream_duplicates_total") >= 20);
    assert_eq!(metric(&a, "tidings_upstream_published_total"), 21);
}

#[test]
fn an_embedded_publisher_on_b_reaches_a_and_b() {
    let Some(nats) = NatsServer::started() else {
        return;
    };
    let a = fleet_relay(&nats, |_| {});
    let b = fleet_relay(&nats, |_| {});
    wait_up(&a);
    wait_up(&b);
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
    let a = fleet_relay(&nats, |_| {});
    let b = fleet_relay(&nats, |_| {});
    wait_up(&a);
    wait_up(&b);
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
        let answer = http_publish(&b, channel, json!({ "on": channel }));
        assert_eq!(answer.status, 200);
    }
    assert_eq!(first.next_json()["data"]["on"], "y.1");
    assert_eq!(second.next_json()["data"]["on"], "y.1");
    assert_eq!(
        metric(&a, "tidings_upstream_received_total"),
        1,
        "NATS sent A nothing on x.*"
    );
    // The last client leaving takes the subscription away.
    first.unsubscribe(&["y.*"]);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(metric(&a, "tidings_upstream_subscriptions"), 1, "one left");
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
    assert_eq!(metric(&relay, "tidings_upstream_up"), 0);
    let refused = http_publish(&relay, "news", json!({}));
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
    assert_eq!(metric(&relay, "tidings_upstream_up"), 1);
    wait_subscriptions(&relay, 1);
    wait_until("NATS to hold the relay's interest", || {
        nats.subjects().contains(&"tidings.news".to_string())
    });
    let answer = http_publish(&optional, "news", json!({ "n": 1 }));
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    assert_eq!(client.next_json()["data"]["n"], 1);
}

#[test]
fn both_relays_recover_when_nats_restarts_mid_stream() {
    let Some(mut nats) = NatsServer::started() else {
        return;
    };
    let a = fleet_relay(&nats, |_| {});
    let b = fleet_relay(&nats, |_| {});
    wait_up(&a);
    wait_up(&b);
    let mut on_a = connect(a.addr);
    on_a.subscribe(&["feed"]);
    let mut on_b = connect(b.addr);
    on_b.subscribe(&["feed"]);
    wait_subscriptions(&a, 1);
    wait_subscriptions(&b, 1);

    let publishing = thread::spawn({
        let addr = a.addr;
        move || {
            let (mut confirmed, mut refused) = (Vec::new(), 0);
            for n in 0..150u64 {
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
    thread::sleep(Duration::from_millis(300));
    nats.start();
    let (confirmed, refused) = publishing.join().expect("publisher");
    wait_up(&a);
    wait_up(&b);
    wait_until("interest re-established", || {
        nats.subjects()
            .iter()
            .filter(|s| *s == "tidings.feed")
            .count()
            == 2
    });
    // Once both are back, every event arrives again.
    for n in 1000..1010 {
        assert_eq!(http_publish(&a, "feed", json!({ "n": n })).status, 200);
    }
    http_publish(&a, "feed", json!({ "last": true }));
    let after: Vec<u64> = (1000..1010).collect();
    for (name, relay, client) in [("A", &a, &mut on_a), ("B", &b, &mut on_b)] {
        let seen = read_through_last(client);
        // In order, never twice, and nothing that was not published.
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{name}: {seen:?}");
        assert!(seen.iter().all(|n| *n < 150 || after.contains(n)), "{name}");
        assert!(seen.ends_with(&after), "{name}: {seen:?}");
        assert!(
            metric(relay, "tidings_upstream_disconnects_total") >= 1,
            "{name}"
        );
    }
    assert!(!confirmed.is_empty());
    assert!(
        refused > 0,
        "publishes while NATS was down are refused, not dropped"
    );
    assert_eq!(
        metric(&a, "tidings_upstream_refused_total"),
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
    assert_eq!(metric(&relay, "tidings_upstream_subscriptions"), 0);
    let mut client = connect(relay.addr);
    wait_subscriptions(&relay, 1);
    let subjects = nats.subjects();
    assert!(
        subjects.contains(&"tidings.alerts.>".to_string()),
        "{subjects:?}"
    );
    assert_eq!(http_publish(&relay, "alerts.disk", json!(1)).status, 200);
    assert_eq!(client.next_json()["type"], "alerts.disk");
}
