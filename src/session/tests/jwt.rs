//! JWT sessions in virtual time: expiry, `refresh_required`, refresh within
//! the grace (which may narrow the scope), and the 4003 close after it.

use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::config::JwtConfig;

const SECRET: &str = "test-secret";
/// `at(0)` in seconds since the epoch (rounded down).
const T0: u64 = 1_734_863_400;

fn with_jwt(config: &mut Config) {
    config.auth.jwt = Some(JwtConfig {
        hs256_secret: Some(SECRET.into()),
        leeway: Duration::ZERO,
        refresh_grace: Duration::from_secs(10),
        ..JwtConfig::default()
    });
}

fn mint(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encodes")
}

fn auth(token: &str) -> String {
    json!({"type": "auth", "token": token}).to_string()
}

fn refresh(token: &str) -> String {
    json!({"type": "refresh", "token": token}).to_string()
}

fn pending(fx: &Fixture) -> Client<'_> {
    Client::open(fx, Auth::Pending { deadline: 10_000 }).0
}

#[test]
fn a_jwt_in_the_auth_message_authenticates_and_asks_to_be_woken_at_exp() {
    let fx = Fixture::new(with_jwt);
    let mut client = pending(&fx);
    let token = mint(json!({"exp": T0 + 60, "channels": ["a.>"]}));
    let got = client.command(&auth(&token), 0);
    // `at(0)` is 123 ms past T0: exp comes 59,877 ms later.
    assert_eq!(
        got,
        [Got::WakeAt(59_877), json(json!({"type": "authenticated"}))]
    );
    let got = client.command(r#"{"type":"subscribe","channels":["a.b"]}"#, 10);
    assert_eq!(got, [json(json!({"type":"subscribed","channels":["a.b"]}))]);
    let got = client.command(r#"{"type":"subscribe","channels":["b.c"]}"#, 20);
    assert!(error("forbidden")(&got[0]), "{got:?}");
}

#[test]
fn expired_wrong_key_and_unknown_tokens_close_with_4001() {
    let fx = Fixture::new(with_jwt);
    let expired = mint(json!({"exp": T0 - 1}));
    let wrong_key = encode(
        &Header::default(),
        &json!({"exp": T0 + 60}),
        &EncodingKey::from_secret(b"other"),
    )
    .expect("encodes");
    let no_exp = mint(json!({"sub": "u"}));
    for token in [expired.as_str(), &wrong_key, &no_exp, "not-a-jwt"] {
        let mut client = pending(&fx);
        let got = client.command(&auth(token), 0);
        assert_eq!(got, [Got::Close(CloseReason::AuthFailed)], "{token}");
    }
}

#[test]
fn expiry_asks_for_a_refresh_then_closes_with_4003_after_the_grace() {
    let fx = Fixture::new(with_jwt);
    let mut client = pending(&fx);
    client.command(&auth(&mint(json!({"exp": T0 + 5}))), 0);
    let expires_at = 4_877;
    let (next, got) = client.timer(expires_at);
    assert_eq!(got, [json(json!({"type": "refresh_required"}))]);
    assert_eq!(next, Some(expires_at + 10_000));
    let (_, got) = client.timer(expires_at + 9_000);
    assert_eq!(got, []);
    let (next, got) = client.timer(expires_at + 10_000);
    assert_eq!(got, [Got::Close(CloseReason::TokenExpired)]);
    assert_eq!(next, None);
    assert_eq!(CloseReason::TokenExpired.code(), 4003);
    assert_eq!(CloseReason::TokenExpired.to_string(), "token expired");
}

#[test]
fn a_refresh_in_the_grace_keeps_the_socket_and_narrows_its_subscriptions() {
    let fx = Fixture::new(with_jwt);
    let mut client = pending(&fx);
    let wide = mint(json!({"exp": T0 + 5, "sub": "ann", "channels": [">"]}));
    client.command(&auth(&wide), 0);
    client.command(r#"{"type":"subscribe","channels":["a.x","b.y"]}"#, 1);
    let (_, got) = client.timer(4_877);
    assert_eq!(got, [json(json!({"type": "refresh_required"}))]);
    // While expired, the socket may not change its subscriptions.
    let got = client.command(r#"{"type":"subscribe","channels":["c"]}"#, 5_000);
    assert!(error("not_authenticated")(&got[0]), "{got:?}");
    let narrow = mint(json!({"exp": T0 + 3600, "sub": "ann", "channels": ["a.>"]}));
    let got = client.command(&refresh(&narrow), 6_000);
    assert_eq!(
        got,
        [json(json!({"type": "refreshed", "unsubscribed": ["b.y"]}))]
    );
    assert_eq!(client.patterns(), ["a.x"]);
    // The old grace is over; the new token holds.
    let (next, got) = client.timer(20_000);
    assert_eq!(got, []);
    assert!(next.is_some());
    // Same scope again: nothing removed.
    let got = client.command(&refresh(&narrow), 21_000);
    assert_eq!(got, [json(json!({"type": "refreshed"}))]);
}

#[test]
fn a_refresh_for_another_subject_is_refused_and_a_bad_one_closes() {
    let fx = Fixture::new(with_jwt);
    let mut client = pending(&fx);
    client.command(&auth(&mint(json!({"exp": T0 + 60, "sub": "ann"}))), 0);
    let got = client.command(&refresh(&mint(json!({"exp": T0 + 99, "sub": "bob"}))), 1);
    assert!(error("forbidden")(&got[0]), "{got:?}");
    let got = client.command(&refresh(&mint(json!({"exp": T0 - 9, "sub": "ann"}))), 2);
    assert_eq!(got, [Got::Close(CloseReason::AuthFailed)]);
}

#[test]
fn refresh_needs_a_jwt_connection() {
    let fx = Fixture::new(|c| {
        with_tokens(c);
        with_jwt(c);
    });
    let mut client = pending(&fx);
    client.command(&auth("secret"), 0);
    let got = client.command(&refresh(&mint(json!({"exp": T0 + 60}))), 1);
    assert!(error("bad_request")(&got[0]), "{got:?}");
}
