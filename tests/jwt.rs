//! JWT auth (`[auth.jwt]`) over real sockets, with tokens minted by PyJWT:
//! HS256 and RS256 (a PEM key, and a JWKS picked by `kid`), every delivery
//! path, expired / wrong key / wrong audience refusals, channel and publish
//! scopes, and refresh while connected.

mod common;

use std::time::Duration;

use common::jwt::{hs256, pyjwt_available, rs256, Keys};
use common::*;
use serde_json::{json, Value};
use tidings::Config;

const SECRET: &str = "hs256-test-secret-0123456789abcdef";

/// A relay taking HS256 tokens for audience `dashboards`, and `?token=`.
fn hs_relay(tweak: impl FnOnce(&mut Config)) -> TestRelay {
    let toml = format!(
        "allow_query_token = true\n[jwt]\nhs256_secret = \"{SECRET}\"\naudience = \"dashboards\"\n\
         leeway = \"0s\"\n"
    );
    let auth = toml::from_str(&toml).expect("auth parses");
    TestRelay::with(|c| {
        c.auth = auth;
        tweak(c);
    })
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({"exp_in": 600, "aud": "dashboards", "sub": "ann"});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    claims
}

/// Subscribing to `allowed` works, to `denied` is forbidden.
fn assert_scope(raw: &mut Raw, allowed: &str, denied: &str) {
    raw.send_text(&json!({"type": "subscribe", "channels": [allowed]}).to_string());
    assert_subscribed(&raw.next_json(), &[allowed]);
    raw.send_text(&json!({"type": "subscribe", "channels": [denied]}).to_string());
    error_message(&raw.next_json(), "forbidden");
}

#[test]
fn hs256_in_every_client_path_grants_its_channels() {
    if !pyjwt_available() {
        return;
    }
    let relay = hs_relay(|_| {});
    let token = hs256(SECRET, &claims(json!({"channels": ["job.>"]})));
    let paths = [
        format!("Sec-WebSocket-Protocol: Bearer, {token}\r\n"),
        format!("Authorization: Bearer {token}\r\n"),
    ];
    for extra in &paths {
        let (mut raw, response) = Raw::upgrade_with(relay.addr, extra);
        assert_eq!(response.status, 101, "{extra}: {}", response.head);
        assert!(!response.head.contains(&token), "{}", response.head);
        assert_scope(&mut raw, "job.a", "alert.a");
    }
    // ?token=
    let mut raw = Raw::connect(relay.addr);
    let request = upgrade_request("").replacen("/ws", &format!("/ws?token={token}"), 1);
    raw.send(request.as_bytes());
    assert_eq!(raw.read_response().status, 101);
    assert_scope(&mut raw, "job.b", "alert.b");
    // The auth message.
    let mut raw = Raw::upgrade(relay.addr);
    raw.send_text(&json!({"type": "auth", "token": token}).to_string());
    assert_eq!(raw.next_json(), json!({"type": "authenticated"}));
    assert_scope(&mut raw, "job.c", "alert.c");
    // Events flow to the JWT holder.
    let mut client = connect(relay.addr);
    let reply = client.request(&json!({"type": "auth", "token": token}));
    assert_eq!(reply, json!({"type": "authenticated"}));
    client.subscribe(&["job.>"]);
    let p = relay.publish("job.done", json!({"ok": true}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn a_token_without_channels_gets_none_unless_configured() {
    if !pyjwt_available() {
        return;
    }
    let token = hs256(SECRET, &claims(json!({})));
    let relay = hs_relay(|_| {});
    let (mut raw, response) =
        Raw::upgrade_with(relay.addr, &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(response.status, 101);
    raw.send_text(r#"{"type":"subscribe","channels":["a"]}"#);
    error_message(&raw.next_json(), "forbidden");
    let relay = hs_relay(|c| {
        c.auth.jwt.as_mut().unwrap().channels_when_absent = vec!["public.>".into()];
    });
    let (mut raw, _) = Raw::upgrade_with(relay.addr, &format!("Authorization: Bearer {token}\r\n"));
    assert_scope(&mut raw, "public.news", "private.x");
}

#[test]
fn expired_wrong_key_and_wrong_audience_are_401_before_the_upgrade() {
    if !pyjwt_available() {
        return;
    }
    let relay = hs_relay(|_| {});
    let refused = [
        ("expired", hs256(SECRET, &claims(json!({"exp_in": -60})))),
        (
            "wrong key",
            hs256("another-secret-0123456789abcdef!!", &claims(json!({}))),
        ),
        (
            "wrong audience",
            hs256(SECRET, &claims(json!({"aud": "billing"}))),
        ),
        ("no exp", hs256(SECRET, &json!({"aud": "dashboards"}))),
    ];
    for (what, token) in &refused {
        let (_raw, response) = Raw::upgrade_with(
            relay.addr,
            &format!("Sec-WebSocket-Protocol: Bearer, {token}\r\n"),
        );
        assert_eq!(response.status, 401, "{what}: {}", response.head);
    }
    for (what, token) in &refused {
        let mut raw = Raw::upgrade(relay.addr);
        raw.send_text(&json!({"type": "auth", "token": token}).to_string());
        let (closed, _) = raw.expect_close_reason();
        assert_eq!(closed, Closed::Code(4001), "{what}");
    }
}

#[test]
fn rs256_with_a_pem_key_and_with_a_jwks_kid() {
    if !pyjwt_available() {
        return;
    }
    let keys = Keys::new("rs256");
    let toml = format!(
        "[jwt]\npublic_keys = [{:?}]\njwks = {:?}\n",
        keys.path("rsa_public.pem"),
        keys.path("jwks.json")
    );
    let auth = toml::from_str(&toml).expect("auth parses");
    let relay = TestRelay::with(|c| c.auth = auth);
    let scope = json!({"exp_in": 600, "channels": ["job.>"]});
    let by_pem = rs256(&keys.path("rsa_private.pem"), &scope, None);
    let by_kid = rs256(&keys.path("k2_private.pem"), &scope, Some("k2"));
    for token in [&by_pem, &by_kid] {
        let (mut raw, response) =
            Raw::upgrade_with(relay.addr, &format!("Authorization: Bearer {token}\r\n"));
        assert_eq!(response.status, 101, "{}", response.head);
        assert_scope(&mut raw, "job.x", "alert.x");
    }
    // The JWKS key under another kid, and an HS256 token when no secret is
    // configured, are refused.
    let wrong_kid = rs256(&keys.path("k2_private.pem"), &scope, Some("k9"));
    let hs = hs256(SECRET, &scope);
    for token in [&wrong_kid, &hs] {
        let (_raw, response) =
            Raw::upgrade_with(relay.addr, &format!("Authorization: Bearer {token}\r\n"));
        assert_eq!(response.status, 401, "{}", response.head);
    }
}

#[test]
fn publish_with_a_jwt_stays_in_its_publish_scope() {
    if !pyjwt_available() {
        return;
    }
    let relay = hs_relay(|_| {});
    let publisher = hs256(SECRET, &claims(json!({"publish": ["job.>"]})));
    let reader = hs256(SECRET, &claims(json!({"channels": [">"]})));
    let auth = format!("Authorization: Bearer {publisher}\r\n");
    let ok = http_publish(relay.addr, r#"{"channel":"job.a","data":{}}"#, &auth);
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    let outside = http_publish(relay.addr, r#"{"channel":"alert.a","data":{}}"#, &auth);
    assert_eq!(outside.status, 403, "{}", outside.body_text());
    // A token with no `publish` claim publishes nowhere; none at all is 401.
    let no_scope = format!("Authorization: Bearer {reader}\r\n");
    let refused = http_publish(relay.addr, r#"{"channel":"job.a","data":{}}"#, &no_scope);
    assert_eq!(refused.status, 403);
    assert_eq!(
        http_publish(relay.addr, r#"{"channel":"job.a","data":{}}"#, "").status,
        401
    );
    let expired = hs256(SECRET, &claims(json!({"exp_in": -60, "publish": [">"]})));
    let stale = format!("Authorization: Bearer {expired}\r\n");
    assert_eq!(
        http_publish(relay.addr, r#"{"channel":"job.a","data":{}}"#, &stale).status,
        403
    );
}

#[test]
fn an_expiring_token_is_refreshed_and_the_scope_narrowed() {
    if !pyjwt_available() {
        return;
    }
    // The leeway lets the one-second token through however long minting
    // took on a loaded machine; it then expires at once or within a second.
    let relay = hs_relay(|c| {
        let jwt = c.auth.jwt.as_mut().unwrap();
        jwt.refresh_grace = Duration::from_secs(30);
        jwt.leeway = Duration::from_secs(60);
    });
    let short = hs256(SECRET, &claims(json!({"exp_in": 1, "channels": [">"]})));
    let mut client = connect(relay.addr);
    let reply = client.request(&json!({"type": "auth", "token": short}));
    assert_eq!(reply, json!({"type": "authenticated"}));
    client.subscribe(&["job.a"]);
    client.subscribe(&["alert.a"]);
    // Within a few seconds (exp has a one-second resolution; three seconds
    // leave room for a loaded machine between minting and subscribing).
    let notice = client.next_json_within(WAIT);
    assert_eq!(notice, json!({"type": "refresh_required"}));
    let narrow = hs256(
        SECRET,
        &claims(json!({"exp_in": 600, "channels": ["job.>"]})),
    );
    let reply = client.request(&json!({"type": "refresh", "token": narrow}));
    assert_eq!(
        reply,
        json!({"type": "refreshed", "unsubscribed": ["alert.a"]})
    );
    // Only the channel still in scope delivers.
    relay.publish("alert.a", json!({}));
    let p = relay.publish("job.a", json!({}));
    assert_event(&client.next_json(), &p);
}

#[test]
fn no_refresh_within_the_grace_closes_4003_token_expired() {
    if !pyjwt_available() {
        return;
    }
    let relay = hs_relay(|c| {
        let jwt = c.auth.jwt.as_mut().unwrap();
        jwt.refresh_grace = Duration::from_millis(200);
        jwt.leeway = Duration::from_secs(60);
    });
    let short = hs256(SECRET, &claims(json!({"exp_in": 1})));
    let (mut raw, response) = Raw::upgrade_with(
        relay.addr,
        &format!("Sec-WebSocket-Protocol: Bearer, {short}\r\n"),
    );
    assert_eq!(response.status, 101);
    assert_eq!(raw.next_json(), json!({"type": "refresh_required"}));
    let (closed, reason) = raw.expect_close_reason();
    assert_eq!(closed, Closed::Code(4003));
    assert_eq!(reason, "token expired");
}
