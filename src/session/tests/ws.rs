//! `WsSession`: commands, auth, limits, frames and keepalive.

use serde_json::json;
use std::time::SystemTime;

use super::*;
use crate::proto::frames::MAX_HEADER_LEN;

fn defaults(config: &mut Config) {
    config.default_channels = vec!["news.>".into(), "public.chat".into()];
}

fn subscribed(channels: &[&str]) -> Got {
    json(json!({ "type": "subscribed", "channels": channels }))
}

fn unsubscribed(channels: &[&str]) -> Got {
    json(json!({ "type": "unsubscribed", "channels": channels }))
}

fn authenticated() -> Got {
    json(json!({ "type": "authenticated" }))
}

fn close_code(got: &[Got]) -> Option<u16> {
    match got.last() {
        Some(Got::Close(reason)) => Some(reason.code()),
        _ => None,
    }
}

/// A close frame from the client with `code`.
fn close_frame(code: u16) -> Vec<u8> {
    client_frame(CLOSE, &code.to_be_bytes())
}

#[test]
fn stays_as_small_as_the_connection_state_it_replaces() {
    // `io::conn::WsConn` is 72 bytes on x86_64; idle density depends on
    // this, so allow at most 8 more.
    let size = std::mem::size_of::<WsSession>();
    assert!(size <= 72 + 8, "WsSession grew to {size} bytes");
}

#[test]
fn defaults_are_held_from_the_start_and_shared() {
    let fx = Fixture::new(defaults);
    let (client, got) = Client::open(&fx, Auth::NotRequired);
    assert!(got.is_empty());
    assert_eq!(client.patterns(), ["news.>", "public.chat"]);
    // No per-socket copy of the list.
    assert!(std::ptr::eq(
        client.session.patterns().as_ptr(),
        fx.defaults.as_ptr()
    ));
}

#[test]
fn subscribe_replaces_the_defaults_then_adds() {
    let fx = Fixture::new(defaults);
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let got = client.command(r#"{"type":"subscribe","channels":["job.*","job.*"]}"#, 1);
    assert_eq!(got, [subscribed(&["job.*", "job.*"])]);
    assert_eq!(client.patterns(), ["job.*"]);
    let got = client.command(r#"{"type":"subscribe","channels":["a","job.*"]}"#, 2);
    assert_eq!(got, [subscribed(&["a", "job.*"])]);
    assert_eq!(client.patterns(), ["job.*", "a"]);
    let got = client.command(r#"{"type":"unsubscribe","channels":["job.*","zzz"]}"#, 3);
    assert_eq!(got, [unsubscribed(&["job.*", "zzz"])]);
    assert_eq!(client.patterns(), ["a"]);
}

#[test]
fn unsubscribe_from_the_defaults_keeps_the_rest() {
    let fx = Fixture::new(defaults);
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let got = client.command(r#"{"type":"unsubscribe","channels":["news.>"]}"#, 1);
    assert_eq!(got, [unsubscribed(&["news.>"])]);
    assert_eq!(client.patterns(), ["public.chat"]);
}

#[test]
fn subscription_limit_is_all_or_nothing() {
    let fx = Fixture::new(|c| c.limits.max_subscriptions = 2);
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    client.command(r#"{"type":"subscribe","channels":["a"]}"#, 1);
    let got = client.command(r#"{"type":"subscribe","channels":["b","c"]}"#, 2);
    assert!(got.iter().all(error("too_many_subscriptions")), "{got:?}");
    assert_eq!(client.patterns(), ["a"]);
    // Patterns already held do not count twice.
    let got = client.command(r#"{"type":"subscribe","channels":["a","b"]}"#, 3);
    assert_eq!(got, [subscribed(&["a", "b"])]);
}

#[test]
fn invalid_channels_and_bad_commands_get_error_replies() {
    let fx = Fixture::new(|_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let cases = [
        (
            r#"{"type":"subscribe","channels":["a..b"]}"#,
            "invalid_channel",
        ),
        (
            r#"{"type":"subscribe","channels":["ok",">.x"]}"#,
            "invalid_channel",
        ),
        (
            r#"{"type":"unsubscribe","channels":[""]}"#,
            "invalid_channel",
        ),
        ("{nope", "bad_json"),
        (r#"{"type":"dance"}"#, "unknown_type"),
        (r#"{"type":"subscribe"}"#, "bad_request"),
    ];
    for (text, code) in cases {
        let got = client.command(text, 1);
        assert_eq!(got.len(), 1, "{text}");
        assert!(error(code)(&got[0]), "{text}: {got:?}");
    }
    assert!(client.patterns().is_empty());
}

#[test]
fn ping_command_answers_with_the_wall_clock_passed_in() {
    let fx = Fixture::new(|_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let got = client.command(r#"{"type":"ping"}"#, 250);
    assert_eq!(
        got,
        [json(
            json!({ "type": "pong", "timestamp": "2024-12-22T10:30:00.373Z" })
        )]
    );
    assert_eq!(wall_text(at(250)), "2024-12-22T10:30:00.373Z");
}

#[test]
fn pending_auth_then_auth_applies_the_defaults() {
    let fx = Fixture::new(|c| {
        with_tokens(c);
        defaults(c);
    });
    let (mut client, got) = Client::open(&fx, Auth::Pending { deadline: 10_000 });
    assert!(got.is_empty());
    assert!(client.patterns().is_empty(), "nothing before auth");
    let got = client.command(r#"{"type":"subscribe","channels":["a"]}"#, 1);
    assert!(got.iter().all(error("not_authenticated")), "{got:?}");
    let got = client.command(r#"{"type":"auth","token":"secret"}"#, 2);
    assert_eq!(got, [authenticated()]);
    assert_eq!(client.patterns(), ["news.>", "public.chat"]);
    // The deadline no longer applies.
    let (next, got) = client.timer(10_000);
    assert!(got.is_empty());
    assert!(next.is_some_and(|t| t > 10_000));
}

#[test]
fn a_scoped_token_gets_only_the_defaults_it_covers_and_may_not_subscribe_elsewhere() {
    let fx = Fixture::new(|c| {
        with_tokens(c);
        defaults(c);
    });
    let (mut client, _) = Client::open(&fx, Auth::Pending { deadline: 10_000 });
    client.command(r#"{"type":"auth","token":"scoped"}"#, 1);
    assert_eq!(client.patterns(), ["public.chat"]);
    let got = client.command(
        r#"{"type":"subscribe","channels":["public.x","news.a"]}"#,
        2,
    );
    assert!(got.iter().all(error("forbidden")), "{got:?}");
    assert_eq!(client.patterns(), ["public.chat"]);
    let got = client.command(r#"{"type":"subscribe","channels":["public.x"]}"#, 3);
    assert_eq!(got, [subscribed(&["public.x"])]);
}

#[test]
fn authenticated_at_the_upgrade_holds_its_defaults_at_once() {
    let fx = Fixture::new(|c| {
        with_tokens(c);
        defaults(c);
    });
    let (client, _) = Client::open(&fx, Auth::Authenticated(1));
    assert_eq!(client.patterns(), ["public.chat"]);
}

#[test]
fn a_wrong_token_closes_with_4001_and_nothing_after() {
    let fx = Fixture::new(with_tokens);
    let (mut client, _) = Client::open(&fx, Auth::Pending { deadline: 10_000 });
    let mut bytes = command(r#"{"type":"auth","token":"guess"}"#);
    bytes.extend(command(r#"{"type":"ping"}"#));
    let got = client.send(&bytes, 1);
    assert_eq!(got, [Got::Close(CloseReason::AuthFailed)]);
    assert_eq!(close_code(&got), Some(4001));
    assert_eq!(fx.stat(|s| &s.auth_failures), 1);
    assert!(client.session.is_closed());
    assert!(client.command(r#"{"type":"ping"}"#, 2).is_empty());
    assert_eq!(client.timer(3).0, None);
}

#[test]
fn auth_is_a_no_op_when_not_required() {
    let fx = Fixture::new(|_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    assert_eq!(
        client.command(r#"{"type":"auth","token":"x"}"#, 1),
        [authenticated()]
    );
}

#[test]
fn auth_timeout_closes_with_4008() {
    let fx = Fixture::new(with_tokens);
    let deadline = ms(fx.config.timeouts.auth);
    let (mut client, _) = Client::open(&fx, Auth::Pending { deadline });
    assert_eq!(client.session.first_timeout(0, &fx.cx()), deadline);
    let (next, got) = client.timer(deadline - 1);
    assert_eq!((next, got), (Some(deadline), vec![]));
    let (next, got) = client.timer(deadline);
    assert_eq!(next, None);
    assert_eq!(got, [Got::Close(CloseReason::AuthTimeout)]);
    assert_eq!(close_code(&got), Some(4008));
}

#[test]
fn rate_limit_warns_once_then_closes_with_1008() {
    let fx = Fixture::new(|c| {
        c.limits.messages_per_second = 10;
        c.limits.message_burst = 3;
    });
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let ping = command(r#"{"type":"ping"}"#);
    for _ in 0..3 {
        assert!(matches!(client.send(&ping, 0)[..], [Got::Json(_)]));
    }
    // Pongs answer our pings: never counted.
    assert!(client.send(&client_frame(PONG, b""), 0).is_empty());
    let got = client.send(&ping, 0);
    assert!(got.iter().all(error("rate_limited")), "{got:?}");
    let Got::Json(warning) = &got[0] else {
        unreachable!()
    };
    assert_eq!(
        warning["data"]["message"],
        "over 10 messages per second; this one was dropped"
    );
    let got = client.send(&ping, 50);
    assert_eq!(got, [Got::Close(CloseReason::RateLimited)]);
    assert_eq!(close_code(&got), Some(1008));
}

#[test]
fn rate_refills_in_virtual_time() {
    let fx = Fixture::new(|c| {
        c.limits.messages_per_second = 10;
        c.limits.message_burst = 1;
    });
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let ping = command(r#"{"type":"ping"}"#);
    assert!(matches!(client.send(&ping, 0)[..], [Got::Json(_)]));
    assert!(client.send(&ping, 0).iter().all(error("rate_limited")));
    // One token after 100 ms forgives the warning.
    let got = client.send(&ping, 200);
    assert_eq!(
        got[0],
        json(json!({"type":"pong","timestamp":wall_text(at(200))}))
    );
}

#[test]
fn unmasked_frames_are_a_protocol_error() {
    let fx = Fixture::new(|_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let got = client.send(b"\x81\x02hi", 1);
    assert_eq!(
        got,
        [Got::Close(CloseReason::Protocol("client frame not masked"))]
    );
    assert_eq!(close_code(&got), Some(1002));
}

#[test]
fn several_commands_in_one_read_and_a_frame_split_byte_by_byte() {
    let fx = Fixture::new(|_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let mut bytes = command(r#"{"type":"subscribe","channels":["a"]}"#);
    bytes.extend(command(r#"{"type":"subscribe","channels":["b"]}"#));
    let got = client.send(&bytes, 1);
    assert_eq!(got, [subscribed(&["a"]), subscribed(&["b"])]);
    let frame = command(r#"{"type":"unsubscribe","channels":["a"]}"#);
    let (last, first) = frame.split_last().expect("a frame");
    for byte in first {
        assert!(client.send(&[*byte], 2).is_empty());
    }
    assert_eq!(client.send(&[*last], 3), [unsubscribed(&["a"])]);
    assert_eq!(client.patterns(), ["b"]);
}

#[test]
fn fragmented_message_across_reads_with_a_ping_inside() {
    let fx = Fixture::new(|_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let text = br#"{"type":"subscribe","channels":["x"]}"#;
    let (head, tail) = text.split_at(10);
    // Text without FIN, a ping, then the final continuation.
    let first = client_frame(0x01, head);
    let ping = client_frame(PING, b"are you there");
    let last = client_frame(0x80, tail);
    assert!(client.send(&first, 1).is_empty());
    assert_eq!(
        client.send(&ping, 2),
        [Got::Pong(b"are you there".to_vec())]
    );
    assert!(client.session.holds_input(), "the open message is kept");
    assert_eq!(client.send(&last, 3), [subscribed(&["x"])]);
    assert!(!client.session.holds_input(), "nothing held once whole");
}

#[test]
fn binary_is_refused_with_1003_unless_echoing() {
    let fx = Fixture::new(|_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let got = client.send(&client_frame(BINARY, b"\x00\x01"), 1);
    assert_eq!(got, [Got::Close(CloseReason::BinaryMessage)]);
    assert_eq!(close_code(&got), Some(1003));

    let fx = Fixture::new(|c| c.conformance_echo = true);
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let mut bytes = client_frame(BINARY, b"\x00\x01");
    bytes.extend(client_frame(TEXT, b"hello"));
    assert_eq!(
        client.send(&bytes, 1),
        [Got::Binary(vec![0, 1]), Got::Text("hello".into())]
    );
}

#[test]
fn a_message_over_the_limit_is_refused_from_its_header() {
    let fx = Fixture::new(|c| c.limits.max_message_size = 64);
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let frame = client_frame(TEXT, &[b' '; 65]);
    let got = client.send(&frame[..MAX_HEADER_LEN - 4], 1);
    assert_eq!(
        got,
        [Got::Close(CloseReason::MessageTooBig { size: 65, max: 64 })]
    );
    assert_eq!(close_code(&got), Some(1009));
}

#[test]
fn close_frames_are_echoed() {
    for (frame, code) in [
        (close_frame(1000), 1000),
        (close_frame(3001), 3001),
        (client_frame(CLOSE, b""), 1000),
    ] {
        let fx = Fixture::new(defaults);
        let (mut client, _) = Client::open(&fx, Auth::NotRequired);
        let mut bytes = frame;
        bytes.extend(command(r#"{"type":"ping"}"#));
        let got = client.send(&bytes, 1);
        assert_eq!(got, [Got::Close(CloseReason::Echo(code))]);
        // Teardown still knows what the router holds.
        assert_eq!(client.patterns(), ["news.>", "public.chat"]);
    }
}

#[test]
fn invalid_close_and_bad_utf8_close_the_socket() {
    let fx = Fixture::new(|_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    assert_eq!(close_code(&client.send(&close_frame(1005), 1)), Some(1002));
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    assert_eq!(
        client.send(&client_frame(TEXT, b"\xff"), 1),
        [Got::Close(CloseReason::InvalidUtf8)]
    );
}

#[test]
fn ping_frames_get_pongs_with_the_same_payload() {
    let fx = Fixture::new(|_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    assert_eq!(
        client.send(&client_frame(PING, b"1234"), 1),
        [Got::Pong(b"1234".to_vec())]
    );
}

#[test]
fn keepalive_pings_then_closes_a_silent_peer() {
    let fx = Fixture::new(|_| {});
    let (ping_interval, pong_wait) = (
        ms(fx.config.timeouts.ping_interval),
        ms(fx.config.timeouts.pong_wait),
    );
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let first = client.session.first_timeout(0, &fx.cx());
    assert_eq!(first, ping_interval.min(pong_wait));
    let (next, got) = client.timer(first);
    assert_eq!(got, [Got::Ping(vec![])]);
    assert_eq!(next, Some(pong_wait));
    let (next, got) = client.timer(pong_wait);
    assert_eq!(next, None);
    assert_eq!(got, [Got::Close(CloseReason::IdleTimeout)]);
    assert_eq!(close_code(&got), Some(1001));
}

#[test]
fn first_ping_is_spread_over_the_second_half_of_the_interval() {
    let fx = Fixture::new(|_| {});
    let interval = ms(fx.config.timeouts.ping_interval);
    let mut firsts = std::collections::BTreeSet::new();
    for seed in [1u64, 7, 1_000, 12_345, 99_999, u64::MAX] {
        let (mut client, _) = Client::open_seeded(&fx, Auth::NotRequired, seed);
        let first = client.session.first_timeout(0, &fx.cx());
        assert!(
            (interval / 2..=interval).contains(&first),
            "seed {seed}: first ping at {first} ms"
        );
        let (next, got) = client.timer(first);
        assert_eq!(got, [Got::Ping(vec![])], "seed {seed}");
        // Later pings keep the full interval from the last one.
        assert!(client.send(&client_frame(PONG, b""), first + 5).is_empty());
        let (_, got) = client.timer(next.expect("open"));
        assert!(got.is_empty() || got == [Got::Ping(vec![])], "{got:?}");
        firsts.insert(first);
    }
    assert!(
        firsts.len() >= 5,
        "seeds gave the same first ping: {firsts:?}"
    );
}

#[test]
fn keepalive_keeps_a_peer_that_answers() {
    let fx = Fixture::new(|_| {});
    let ping_interval = ms(fx.config.timeouts.ping_interval);
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let mut now = client.session.first_timeout(0, &fx.cx());
    let mut pings = 0;
    while now < 3_600_000 {
        let (next, got) = client.timer(now);
        if got == [Got::Ping(vec![])] {
            pings += 1;
            assert!(client.send(&client_frame(PONG, b""), now + 20).is_empty());
        } else {
            assert!(got.is_empty(), "{got:?}");
        }
        now = next.expect("still open");
    }
    assert_eq!(pings, 3_600_000 / ping_interval);
}

#[test]
fn a_stalled_writer_is_closed_at_the_write_deadline() {
    let fx = Fixture::new(|_| {});
    let write_deadline = ms(fx.config.timeouts.write_deadline);
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    let (next, _) = client.timer_stalled(1_000, Some(500));
    assert_eq!(next, Some(500 + write_deadline));
    let (_, got) = client.timer_stalled(500 + write_deadline, Some(500));
    assert_eq!(got, [Got::Close(CloseReason::WriteStalled)]);
}

#[test]
fn every_reply_and_error_echoes_the_command_id() {
    let fx = Fixture::new(with_tokens);
    let deadline = ms(fx.config.timeouts.auth);
    let (mut client, _) = Client::open(&fx, Auth::Pending { deadline });
    // Before auth: the error names the command that was refused.
    let got = client.command(r#"{"type":"subscribe","channels":["a"],"id":1}"#, 1);
    assert_eq!(got.len(), 1);
    assert!(error("not_authenticated")(&got[0]), "{got:?}");
    assert_eq!(value(&got[0])["id"], 1);
    let got = client.command(r#"{"type":"auth","token":"scoped","id":"a"}"#, 2);
    assert_eq!(got, [json(json!({"type":"authenticated","id":"a"}))]);
    let got = client.command(
        r#"{"id":"s-1","type":"subscribe","channels":["public.x"]}"#,
        3,
    );
    assert_eq!(
        got,
        [json(
            json!({"type":"subscribed","id":"s-1","channels":["public.x"]})
        )]
    );
    let got = client.command(
        r#"{"type":"subscribe","channels":["private.x"],"id":-4}"#,
        4,
    );
    assert!(error("forbidden")(&got[0]), "{got:?}");
    assert_eq!(value(&got[0])["id"], -4);
    let got = client.command(
        r#"{"type":"unsubscribe","channels":["public.x"],"id":5}"#,
        5,
    );
    assert_eq!(
        got,
        [json(
            json!({"type":"unsubscribed","id":5,"channels":["public.x"]})
        )]
    );
    let got = client.command(r#"{"type":"ping","id":"p"}"#, 6);
    assert_eq!(
        got,
        [json(
            json!({"type":"pong","id":"p","timestamp":wall_text(at(6))})
        )]
    );
    // Without an id, replies carry none.
    let got = client.command(r#"{"type":"ping"}"#, 7);
    assert_eq!(
        got,
        [json(json!({"type":"pong","timestamp":wall_text(at(7))}))]
    );
    // An id over the limit is refused and the command not carried out.
    let long = "i".repeat(fx.config.limits.max_command_id + 1);
    let text = format!(r#"{{"type":"subscribe","channels":["public.y"],"id":"{long}"}}"#);
    let got = client.command(&text, 8);
    assert!(error("bad_request")(&got[0]), "{got:?}");
    assert!(value(&got[0])["data"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("limits.max_command_id")));
    assert!(client.patterns().is_empty());
}

fn value(got: &Got) -> &serde_json::Value {
    match got {
        Got::Json(value) => value,
        other => panic!("not JSON: {other:?}"),
    }
}

/// Reloads `client`'s session to the tokens of `after`, as the reactor
/// does; later commands see them too.
fn reload<'f>(client: &mut Client<'f>, after: &'f Fixture) -> Vec<Got> {
    let remap = client.fx.tokens.remap(&after.tokens);
    let mut out = Vec::new();
    client
        .session
        .tokens_reloaded(&remap, &after.cx(), &mut out);
    client.fx = after;
    client.apply(out)
}

fn revoked(how: &'static str) -> Got {
    Got::Close(CloseReason::AuthRevoked(how))
}

#[test]
fn a_token_reload_keeps_valid_tokens_and_closes_the_rest_with_4001() {
    use crate::error::{AUTH_NOW_REQUIRED, NARROWED_TOKEN, REVOKED_TOKEN};
    let before = Fixture::new(with_tokens);
    // "scoped" now only covers `public.a`; "secret" is gone; "new" first.
    let after = Fixture::new(|c| {
        c.auth.tokens = vec![
            TokenConfig {
                token: "new".into(),
                channels: None,
            },
            TokenConfig {
                token: "scoped".into(),
                channels: Some(vec!["public.a".into()]),
            },
        ];
    });
    let open = |token: &str| {
        let grant = before.tokens.check_client(token, SystemTime::UNIX_EPOCH, 0);
        let (mut client, _) = Client::open(&before, grant.expect("known").into());
        client.command(r#"{"type":"subscribe","channels":["public.a"]}"#, 1);
        client
    };
    let mut secret = open("secret");
    assert_eq!(reload(&mut secret, &after), [revoked(REVOKED_TOKEN)]);
    assert_eq!(close_code(&[revoked(REVOKED_TOKEN)]), Some(4001));
    // Still covered: kept, under its new id.
    let mut scoped = open("scoped");
    assert_eq!(reload(&mut scoped, &after), []);
    let got = scoped.command(r#"{"type":"subscribe","channels":["public.b"]}"#, 2);
    assert!(error("forbidden")(&got[0]), "{got:?}");
    // A held pattern the token no longer covers: closed, not silently cut.
    let mut wide = open("scoped");
    wide.command(r#"{"type":"subscribe","channels":["public.b"]}"#, 2);
    assert_eq!(reload(&mut wide, &after), [revoked(NARROWED_TOKEN)]);
    // Auth turned on: a socket that never authenticated goes.
    let open_relay = Fixture::new(|_| {});
    let (mut anonymous, _) = Client::open(&open_relay, Auth::NotRequired);
    assert_eq!(reload(&mut anonymous, &after), [revoked(AUTH_NOW_REQUIRED)]);
    // Auth turned off: one still waiting to authenticate gets its defaults.
    let deadline = ms(before.config.timeouts.auth);
    let (mut waiting, _) = Client::open(&before, Auth::Pending { deadline });
    let no_auth = Fixture::new(defaults);
    assert_eq!(reload(&mut waiting, &no_auth), []);
    assert_eq!(waiting.patterns(), ["news.>", "public.chat"]);
    let got = waiting.command(r#"{"type":"subscribe","channels":["x"]}"#, 3);
    assert_eq!(got, [subscribed(&["x"])]);
}

#[test]
fn with_hooks_a_subscribe_waits_for_the_answer_and_the_commands_behind_it_too() {
    let fx = Fixture::with_hook(&["admin."], |_| {});
    let (mut client, _) = Client::open(&fx, Auth::NotRequired);
    // Three commands in one read: the second waits for the first's answer,
    // the third for the second's, so replies keep the commands' order.
    let mut bytes = command(r#"{"type":"subscribe","channels":["job.*","a"],"id":1}"#);
    bytes.extend(command(
        r#"{"type":"subscribe","channels":["job.*","admin.users"],"id":2}"#,
    ));
    bytes.extend(command(r#"{"type":"ping","id":3}"#));
    let got = client.send(&bytes, 1);
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[0], Got::Asked(vec!["job.*".into(), "a".into()]));
    assert_eq!(
        got[1],
        json(json!({"type":"subscribed","id":1,"channels":["job.*","a"]}))
    );
    // Only the pattern not held yet is asked about; one refusal refuses all.
    assert_eq!(got[2], Got::Asked(vec!["admin.users".into()]));
    assert!(error("forbidden")(&got[3]), "{got:?}");
    assert_eq!(value(&got[3])["id"], 2);
    let message = value(&got[3])["data"]["message"].as_str().unwrap_or("");
    assert!(message.contains("\"admin.users\""), "{message}");
    assert!(message.contains("not on your plan"), "{message}");
    assert_eq!(value(&got[4])["type"], "pong");
    assert_eq!(client.patterns(), ["job.*", "a"]);
    assert!(!client.session.holds_input());
    // A subscribe of held patterns only asks nothing.
    let got = client.command(r#"{"type":"subscribe","channels":["a"]}"#, 2);
    assert_eq!(got, [subscribed(&["a"])]);
    // A command split across reads behind a held one.
    let mut bytes = command(r#"{"type":"subscribe","channels":["b"]}"#);
    let ping = command(r#"{"type":"ping"}"#);
    bytes.extend_from_slice(&ping[..3]);
    let got = client.send(&bytes, 3);
    assert_eq!(got[..2], [Got::Asked(vec!["b".into()]), subscribed(&["b"])]);
    assert!(client.session.holds_input());
    let got = client.send(&ping[3..], 4);
    assert_eq!(value(&got[0])["type"], "pong");
}
