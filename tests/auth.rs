//! WebSocket client auth (config.auth.tokens non-empty): the `Bearer`
//! subprotocol from the seed, the `auth` message, and per-token channel limits.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tidings::Config;

const ALL: &str = "tok-all-9f3c";
const JOB_ONLY: &str = "tok-job-77ab";

/// A relay with two tokens: one for every channel, one limited to `job.*`.
fn auth_relay(tweak: impl FnOnce(&mut Config)) -> TestRelay {
    let toml = format!(
        "[[auth.tokens]]\ntoken = \"{ALL}\"\n\n[[auth.tokens]]\ntoken = \"{JOB_ONLY}\"\nchannels = [\"job.*\"]\n"
    );
    let parsed = Config::from_toml_str(&toml).expect("auth config parses");
    TestRelay::with(|c| {
        c.auth = parsed.auth;
        tweak(c);
    })
}

fn authenticate(client: &mut Client, token: &str) {
    let reply = client.request(&json!({"type": "auth", "token": token}));
    assert_eq!(reply, json!({"type": "authenticated"}));
}

/// Upgrades with `Sec-WebSocket-Protocol: value` and checks the 101 reply.
fn assert_subprotocol_accepted(value: &str) {
    let relay = auth_relay(|_| {});
    let (mut raw, response) =
        Raw::upgrade_with(relay.addr, &format!("Sec-WebSocket-Protocol: {value}\r\n"));
    assert_eq!(response.status, 101, "{value:?}: {}", response.head);
    assert_eq!(
        response.header("Sec-WebSocket-Protocol"),
        Some("Bearer"),
        "{}",
        response.head
    );
    assert!(
        !response.head.contains(ALL),
        "the token must not be echoed: {}",
        response.head
    );
    // Authenticated by the handshake: subscribe works without an auth message.
    raw.send_text(r#"{"type":"subscribe","channels":["alert.*"]}"#);
    assert_subscribed(&raw.next_json(), &["alert.*"]);
}

#[test]
fn bearer_subprotocol_with_space_is_accepted() {
    // What a browser sends for `new WebSocket(url, ['Bearer', token])`.
    assert_subprotocol_accepted(&format!("Bearer, {ALL}"));
}

#[test]
fn bearer_subprotocol_without_space_is_accepted() {
    assert_subprotocol_accepted(&format!("Bearer,{ALL}"));
}

#[test]
fn tungstenite_accepts_the_chosen_subprotocol() {
    // tungstenite, like browsers, fails the connection if the server picks a
    // subprotocol that was not offered.
    let relay = auth_relay(|_| {});
    let mut client =
        try_connect(relay.addr, Some(&format!("Bearer, {ALL}"))).expect("upgrade with Bearer");
    client.subscribe(&["job.*"]);
    let p = relay.publish("job.started", json!({}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn bad_subprotocol_token_is_401_before_upgrade() {
    let relay = auth_relay(|_| {});
    let (_raw, response) = Raw::upgrade_with(
        relay.addr,
        "Sec-WebSocket-Protocol: Bearer, wrong-token\r\n",
    );
    assert_eq!(response.status, 401, "{}", response.head);
    assert!(!response.head.contains("wrong-token"), "{}", response.head);
}

#[test]
fn auth_message_authenticates() {
    let relay = auth_relay(|_| {});
    let mut client = connect(relay.addr);
    authenticate(&mut client, ALL);
    client.subscribe(&["alert.*"]);
    let p = relay.publish("alert.error", json!({"severity": "error"}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn bad_auth_message_token_closes_4001() {
    let relay = auth_relay(|_| {});
    let mut client = connect(relay.addr);
    client.send_json(&json!({"type": "auth", "token": "nope"}));
    assert_eq!(client.expect_close(), Closed::Code(4001));
}

#[test]
fn subscribe_before_auth_is_not_authenticated() {
    let relay = auth_relay(|_| {});
    let mut client = connect(relay.addr);
    let reply = client.request(&json!({"type": "subscribe", "channels": ["job.*"]}));
    error_message(&reply, "not_authenticated");
    // The socket stays open and can still authenticate.
    authenticate(&mut client, ALL);
    client.subscribe(&["job.*"]);
}

#[test]
fn unauthenticated_socket_gets_no_events() {
    // Not stated outright in the protocol, but implied by not_authenticated:
    // default channels must not leak events to a socket without a token.
    // One reactor: the observer's copy must prove that the client's reactor
    // fanned the event out too. With two, the client's reactor may reach it
    // only after the client authenticated, when it may rightly have it.
    let relay = auth_relay(|c| {
        c.default_channels = vec!["job.*".into()];
        c.reactors = tidings::Reactors::Count(1);
    });
    let mut client = connect(relay.addr);
    let mut observer = connect(relay.addr);
    authenticate(&mut observer, ALL);
    observer.subscribe(&["job.*"]);
    let secret = relay.publish("job.secret", json!({"leak": true}));
    // Once the observer has it, the reactor has fanned it out: the client
    // was still unauthenticated at that point.
    assert_event(&observer.next_json(), &secret);
    authenticate(&mut client, ALL);
    client.subscribe(&["marker.x"]);
    let p = relay.publish("marker.x", json!({}));
    // An event leaked before auth would arrive before the marker.
    assert_event(&client.next_json(), &p);
}

#[test]
fn no_auth_within_timeout_closes_4008() {
    let relay = auth_relay(|c| c.timeouts.auth = Duration::from_millis(300));
    let mut client = connect(relay.addr);
    assert_eq!(client.expect_close(), Closed::Code(4008));
}

#[test]
fn authenticated_socket_outlives_the_auth_timeout() {
    let relay = auth_relay(|c| c.timeouts.auth = Duration::from_millis(300));
    let mut client = connect(relay.addr);
    authenticate(&mut client, ALL);
    // Read for well past timeouts.auth; a 4008 close would surface here.
    let until = Instant::now() + Duration::from_millis(1500);
    match client.read_until(until) {
        Ok(None) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    client.assert_alive();
}

#[test]
fn restricted_token_limits_patterns() {
    let relay = auth_relay(|_| {});
    let mut client = connect(relay.addr);
    authenticate(&mut client, JOB_ONLY);
    client.subscribe(&["job.progress"]);
    client.subscribe(&["job.*"]);
    // job.* covers job.progress and job.*, not job.> (docs/configuration.md).
    for pattern in ["alert.*", ">", "alert.warning", "job.>", "job.a.b"] {
        let reply = client.request(&json!({"type": "subscribe", "channels": [pattern]}));
        error_message(&reply, "forbidden");
    }
}

#[test]
fn forbidden_pattern_rejects_the_whole_subscribe() {
    let relay = auth_relay(|_| {});
    let mut client = connect(relay.addr);
    authenticate(&mut client, JOB_ONLY);
    client.subscribe(&["job.marker"]);
    let reply =
        client.request(&json!({"type": "subscribe", "channels": ["job.started", "alert.*"]}));
    let message = error_message(&reply, "forbidden");
    assert!(
        message.contains("alert.*"),
        "message should name alert.*: {message}"
    );
    relay.publish("job.started", json!({}));
    let p = relay.publish("job.marker", json!({}));
    // Had job.started been added, it would arrive first.
    assert_event(&client.next_json(), &p);
}

#[test]
fn restricted_token_via_subprotocol_is_restricted_too() {
    let relay = auth_relay(|_| {});
    let mut client =
        try_connect(relay.addr, Some(&format!("Bearer, {JOB_ONLY}"))).expect("upgrade");
    client.subscribe(&["job.*"]);
    let reply = client.request(&json!({"type": "subscribe", "channels": ["alert.*"]}));
    error_message(&reply, "forbidden");
}

#[test]
fn default_channels_are_filtered_by_the_token() {
    // docs/configuration.md: with auth on, only the defaults the client's
    // token allows, once it has authenticated.
    let relay = auth_relay(|c| c.default_channels = vec!["alert.*".into(), "job.*".into()]);
    let mut client = connect(relay.addr);
    authenticate(&mut client, JOB_ONLY);
    relay.publish("alert.error", json!({"hidden": true}));
    let p = relay.publish("job.progress", json!({"visible": true}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn bearer_subprotocol_with_auth_off_still_selects_bearer() {
    // Not in the protocol doc: the seed shows clients always offering
    // ['Bearer', token]; Chrome fails the connection if the server then
    // selects no subprotocol, so a relay with auth off should still pick Bearer.
    let relay = TestRelay::start();
    let (_raw, response) =
        Raw::upgrade_with(relay.addr, "Sec-WebSocket-Protocol: Bearer, anything\r\n");
    assert_eq!(response.status, 101, "{}", response.head);
    assert_eq!(
        response.header("Sec-WebSocket-Protocol"),
        Some("Bearer"),
        "{}",
        response.head
    );
}

#[test]
fn the_subprotocol_is_selected_exactly_as_offered() {
    // Python `websockets` fails the connection when the selected protocol
    // differs, even in case, from the one it offered.
    let relay = auth_relay(|_| {});
    let (_raw, response) = Raw::upgrade_with(
        relay.addr,
        &format!("Sec-WebSocket-Protocol: bearer, {ALL}\r\n"),
    );
    assert_eq!(response.status, 101, "{}", response.head);
    assert_eq!(response.header("Sec-WebSocket-Protocol"), Some("bearer"));
}

#[test]
fn a_bearer_token_in_the_authorization_header_authenticates_the_upgrade() {
    let relay = auth_relay(|_| {});
    let (mut raw, response) =
        Raw::upgrade_with(relay.addr, &format!("Authorization: Bearer {JOB_ONLY}\r\n"));
    assert_eq!(response.status, 101, "{}", response.head);
    assert_eq!(response.header("Sec-WebSocket-Protocol"), None);
    // Authenticated with the job-only token: its scope applies.
    raw.send_text(r#"{"type":"subscribe","channels":["job.*"]}"#);
    assert_subscribed(&raw.next_json(), &["job.*"]);
    raw.send_text(r#"{"type":"subscribe","channels":["alert.*"]}"#);
    assert!(!error_message(&raw.next_json(), "forbidden").is_empty());
    // A wrong one is refused before the upgrade.
    let (_raw, refused) = Raw::upgrade_with(relay.addr, "Authorization: Bearer nope\r\n");
    assert_eq!(refused.status, 401, "{}", refused.head);
}

#[test]
fn a_query_token_counts_only_when_allowed() {
    let path = format!("GET /ws?token={ALL} ");
    let off = auth_relay(|_| {});
    let mut raw = Raw::connect(off.addr);
    raw.send(upgrade_request("").replace("GET /ws ", &path).as_bytes());
    let response = raw.read_response();
    assert_eq!(response.status, 101);
    // Off by default: the socket still has to authenticate.
    raw.send_text(r#"{"type":"subscribe","channels":["job.*"]}"#);
    assert!(!error_message(&raw.next_json(), "not_authenticated").is_empty());

    let on = auth_relay(|c| c.auth.allow_query_token = true);
    let mut raw = Raw::connect(on.addr);
    raw.send(upgrade_request("").replace("GET /ws ", &path).as_bytes());
    assert_eq!(raw.read_response().status, 101);
    raw.send_text(r#"{"type":"subscribe","channels":["alert.*"]}"#);
    assert_subscribed(&raw.next_json(), &["alert.*"]);
    let mut raw = Raw::connect(on.addr);
    raw.send(
        upgrade_request("")
            .replace("GET /ws ", "GET /ws?token=nope ")
            .as_bytes(),
    );
    assert_eq!(raw.read_response().status, 401);
}

/// Connects clients with `token` until every reactor holds at least one;
/// each is subscribed to `job.*`.
fn clients_on_every_reactor(relay: &TestRelay, token: &str) -> Vec<Client> {
    let reactors = relay.reactor_stats().len();
    let before: Vec<u64> = relay.reactor_stats().iter().map(|s| s.websockets).collect();
    let mut clients = Vec::new();
    for _ in 0..64 {
        let mut client = try_connect(relay.addr, Some(&format!("Bearer, {token}"))).expect("valid");
        client.subscribe(&["job.*"]);
        clients.push(client);
        let now = relay.reactor_stats();
        if clients.len() >= reactors && (0..reactors).all(|i| now[i].websockets > before[i]) {
            return clients;
        }
    }
    panic!("64 connections did not reach all {reactors} reactors");
}

#[test]
fn reload_auth_closes_revoked_and_narrowed_tokens_on_every_reactor() {
    let relay = TestRelay::with(|c| {
        c.reactors = tidings::Reactors::Count(2);
        c.auth = Config::from_toml_str(
            "[[auth.tokens]]\ntoken = \"old\"\n[[auth.tokens]]\ntoken = \"stay\"\n\
             [[auth.tokens]]\ntoken = \"scoped\"\nchannels = [\"job.*\"]\n",
        )
        .expect("valid")
        .auth;
    });
    let mut old = clients_on_every_reactor(&relay, "old");
    let mut stay = clients_on_every_reactor(&relay, "stay");
    let mut scoped = try_connect(relay.addr, Some("Bearer, scoped")).expect("valid");
    scoped.subscribe(&["job.*"]);
    // `old` goes, `scoped` narrows to `alert.*`, `stay` moves to the end.
    let new = Config::from_toml_str(
        "[[auth.tokens]]\ntoken = \"scoped\"\nchannels = [\"alert.*\"]\n\
         [[auth.tokens]]\ntoken = \"stay\"\n",
    )
    .expect("valid");
    relay.handle().reload_auth(&new).expect("reload");
    for client in &mut old {
        assert_eq!(client.expect_close(), Closed::Code(4001));
    }
    assert_eq!(scoped.expect_close(), Closed::Code(4001));
    let p = relay.publish("job.done", json!({"n": 1}));
    for client in &mut stay {
        assert_event(&client.next_json(), &p);
    }
    // New sockets are checked against the new set.
    assert!(try_connect(relay.addr, Some("Bearer, old")).is_err());
    let mut scoped = try_connect(relay.addr, Some("Bearer, scoped")).expect("still valid");
    let reply = scoped.request(&json!({"type":"subscribe","channels":["job.*"]}));
    error_message(&reply, "forbidden");
    // A config that would not start a relay changes nothing.
    let mut bad = new.clone();
    bad.limits.max_subscriptions = 0;
    assert!(relay.handle().reload_auth(&bad).is_err());
    stay[0].assert_alive();
}
