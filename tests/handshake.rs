//! The HTTP side of opening a socket: upgrade answers and status codes
//! (docs/protocol.md, "Opening the socket"), plus the small HTTP endpoints.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Case-insensitive check that a comma-separated header holds `token`.
fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[test]
fn upgrade_answers_101_with_rfc_accept_key() {
    let relay = TestRelay::start();
    let (_raw, response) = Raw::upgrade_with(relay.addr, "");
    assert_eq!(response.status, 101, "{}", response.head);
    // RFC 6455 section 1.3 gives this exact key/accept pair.
    assert_eq!(response.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
    assert!(
        has_token(response.header("Upgrade"), "websocket"),
        "{}",
        response.head
    );
    assert!(
        has_token(response.header("Connection"), "upgrade"),
        "{}",
        response.head
    );
    // No subprotocol was requested, so none may be chosen (RFC 6455 4.2.2).
    assert_eq!(response.header("Sec-WebSocket-Protocol"), None);
}

#[test]
fn upgrade_is_usable_after_101() {
    let relay = TestRelay::start();
    let mut raw = Raw::upgrade(relay.addr);
    raw.send_text(r#"{"type":"ping"}"#);
    assert_eq!(raw.next_json()["type"], "pong");
}

#[test]
fn header_names_and_tokens_are_case_insensitive() {
    let relay = TestRelay::start();
    // Mixed-case tokens, lower-case names, and Firefox's "keep-alive, Upgrade".
    let request = format!(
        "GET /ws HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: WebSocket\r\n\
         connection: keep-alive, Upgrade\r\nsec-websocket-key: {SAMPLE_KEY}\r\n\
         SEC-WEBSOCKET-VERSION: 13\r\n\r\n"
    );
    let mut raw = Raw::connect(relay.addr);
    raw.send(request.as_bytes());
    let response = raw.read_response();
    assert_eq!(response.status, 101, "{}", response.head);
    assert_eq!(response.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
}

#[test]
fn tungstenite_client_connects() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.assert_alive();
}

#[test]
fn wrong_version_gets_426_naming_13() {
    let relay = TestRelay::start();
    let request =
        upgrade_request("").replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 12");
    let response = http(relay.addr, &request);
    assert_eq!(response.status, 426, "{}", response.head);
    assert_eq!(
        response.header("Sec-WebSocket-Version"),
        Some("13"),
        "{}",
        response.head
    );
}

#[test]
fn plain_get_on_ws_is_400() {
    let relay = TestRelay::start();
    let response = http_get(relay.addr, "/ws");
    assert_eq!(response.status, 400, "{}", response.head);
}

#[test]
fn missing_key_is_400() {
    let relay = TestRelay::start();
    let request = upgrade_request("").replace(&format!("Sec-WebSocket-Key: {SAMPLE_KEY}\r\n"), "");
    assert!(!request.contains("Key"), "test bug: key still present");
    let response = http(relay.addr, &request);
    assert_eq!(response.status, 400, "{}", response.head);
}

#[test]
fn invalid_key_is_400() {
    let relay = TestRelay::start();
    // The key must be base64 of 16 bytes (RFC 6455 4.2.1 item 5).
    let request = upgrade_request("").replace(SAMPLE_KEY, "not-a-key");
    let response = http(relay.addr, &request);
    assert_eq!(response.status, 400, "{}", response.head);
}

#[test]
fn missing_upgrade_header_is_400() {
    let relay = TestRelay::start();
    let request = upgrade_request("").replace("Upgrade: websocket\r\n", "");
    let response = http(relay.addr, &request);
    assert_eq!(response.status, 400, "{}", response.head);
}

#[test]
fn post_on_ws_is_405_with_allow_get() {
    let relay = TestRelay::start();
    let response = http(
        relay.addr,
        "POST /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(response.status, 405, "{}", response.head);
    assert_eq!(response.header("Allow"), Some("GET"), "{}", response.head);
}

#[test]
fn get_on_publish_is_405_in_json_with_allow_post() {
    let relay = TestRelay::start();
    let response = http_get(relay.addr, "/api/publish");
    assert_eq!(response.status, 405, "{}", response.head);
    assert_eq!(response.header("Allow"), Some("POST"), "{}", response.head);
    let body = response.json();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[test]
fn unknown_path_is_404() {
    let relay = TestRelay::start();
    assert_eq!(http_get(relay.addr, "/nope").status, 404);
    // An upgrade aimed elsewhere is not the WebSocket endpoint either.
    let request = upgrade_request("").replace("GET /ws ", "GET /socket ");
    assert_eq!(http(relay.addr, &request).status, 404);
}

#[test]
fn healthz_is_200_ok_json() {
    let relay = TestRelay::start();
    let response = http_get(relay.addr, "/healthz");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(response.json(), serde_json::json!({"status": "ok"}));
}

#[test]
fn oversized_head_is_431() {
    let relay = TestRelay::with(|c| c.limits.max_request_head = 1024);
    let padding = "a".repeat(1500);
    let request = upgrade_request(&format!("X-Padding: {padding}\r\n"));
    let response = http(relay.addr, &request);
    assert_eq!(response.status, 431, "{}", response.head);
}

#[test]
fn head_just_under_the_limit_is_accepted() {
    // The limit must not be off by a lot: a 1 KiB-limit relay takes a ~900-byte head.
    let relay = TestRelay::with(|c| c.limits.max_request_head = 1024);
    let base = upgrade_request("").len();
    let padding = "a".repeat(900 - base);
    let (_raw, response) = Raw::upgrade_with(relay.addr, &format!("X-Padding: {padding}\r\n"));
    assert_eq!(response.status, 101, "{}", response.head);
}

#[test]
fn incomplete_head_times_out_with_408_then_close() {
    let relay = TestRelay::with(|c| c.timeouts.handshake = Duration::from_millis(300));
    let mut raw = Raw::connect(relay.addr);
    raw.send(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    // The relay must answer 408 on its own, then close.
    let response = raw.read_response();
    assert_eq!(response.status, 408, "{}", response.head);
    assert!(
        raw.closed_within(WAIT),
        "socket left open after the handshake timeout"
    );
}

#[test]
fn slow_but_complete_head_is_accepted() {
    // Arriving in pieces is fine as long as the whole head makes the deadline.
    let relay = TestRelay::start();
    let mut raw = Raw::connect(relay.addr);
    for line in upgrade_request("").split_inclusive("\r\n") {
        raw.send(line.as_bytes());
        thread::sleep(Duration::from_millis(20)); // only to split TCP segments
    }
    let response = raw.read_response();
    assert_eq!(response.status, 101, "{}", response.head);
}

#[test]
fn handshake_fed_one_byte_at_a_time() {
    let relay = TestRelay::start();
    let mut raw = Raw::connect(relay.addr);
    for byte in upgrade_request("").as_bytes() {
        raw.send(&[*byte]);
        thread::sleep(Duration::from_millis(1)); // only to split TCP segments
    }
    let response = raw.read_response();
    assert_eq!(response.status, 101, "{}", response.head);
    assert_eq!(response.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
}

#[test]
fn max_connections_exceeded_is_503() {
    let relay = TestRelay::with(|c| c.limits.max_connections = 2);
    let mut first = connect(relay.addr);
    let _second = connect(relay.addr);
    let (mut raw, response) = Raw::upgrade_with(relay.addr, "");
    assert_eq!(response.status, 503, "{}", response.head);
    // "one more gets 503 and is closed" (docs/configuration.md).
    assert!(raw.closed_within(WAIT), "rejected socket left open");
    // The limit holds open sockets, not ever-seen ones: closing one frees a slot.
    first.close(1000);
    let _ = first.expect_close();
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_raw, response) = Raw::upgrade_with(relay.addr, "");
        if response.status == 101 {
            break;
        }
        assert_eq!(response.status, 503, "{}", response.head);
        assert!(Instant::now() < deadline, "slot never freed after a close");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn garbage_bytes_are_400() {
    let relay = TestRelay::start();
    let response = http(relay.addr, "\x01\x02\x03 garbage \x7f\r\n\r\n");
    assert_eq!(response.status, 400, "{}", response.head);
}

#[test]
fn connections_gauge_counts_open_sockets() {
    let relay = TestRelay::start();
    let mut a = connect(relay.addr);
    let b = connect(relay.addr);
    relay.wait_stats("2 connections", |s| s.connections == 2);
    a.close(1000);
    assert_eq!(a.expect_close(), Closed::Code(1000));
    relay.wait_stats("1 connection", |s| s.connections == 1);
    // A client that just vanishes (no close frame) is noticed too.
    drop(b);
    relay.wait_stats("0 connections", |s| s.connections == 0);
}

#[test]
fn upgrade_and_first_frame_in_one_write() {
    // Bytes after the request head belong to the WebSocket; none may be lost.
    let relay = TestRelay::start();
    let mut raw = Raw::connect(relay.addr);
    let mut bytes = upgrade_request("").into_bytes();
    bytes.extend(client_frame(OP_TEXT, br#"{"type":"ping"}"#));
    raw.send(&bytes);
    assert_eq!(raw.read_response().status, 101);
    assert_eq!(raw.next_json()["type"], "pong");
}

#[test]
fn permessage_deflate_is_not_negotiated() {
    // The relay sends plain frames (RSV1 clear, checked by read_frame), so it
    // must not accept a compression extension.
    let relay = TestRelay::start();
    let extra = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let (mut raw, response) = Raw::upgrade_with(relay.addr, extra);
    assert_eq!(response.status, 101, "{}", response.head);
    assert_eq!(response.header("Sec-WebSocket-Extensions"), None);
    raw.send_text(r#"{"type":"ping"}"#);
    assert_eq!(raw.next_json()["type"], "pong");
}

#[test]
fn missing_version_is_rejected() {
    let relay = TestRelay::start();
    let request = upgrade_request("").replace("Sec-WebSocket-Version: 13\r\n", "");
    let response = http(relay.addr, &request);
    // "a missing/invalid ... header" is 400; 426 naming 13 is also fair.
    assert!(matches!(response.status, 400 | 426), "{}", response.head);
}

#[test]
fn missing_connection_upgrade_is_400() {
    let relay = TestRelay::start();
    let request = upgrade_request("").replace("Connection: Upgrade", "Connection: keep-alive");
    let response = http(relay.addr, &request);
    assert_eq!(response.status, 400, "{}", response.head);
}

#[test]
fn too_many_headers_are_rejected() {
    let relay = TestRelay::with(|c| c.limits.max_headers = 8);
    let extra: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = http(relay.addr, &upgrade_request(&extra));
    // docs/configuration.md: "headers in one request; over it 431".
    assert_eq!(response.status, 431, "{}", response.head);
}

#[test]
fn max_connections_counts_plain_http_sockets() {
    // "Open sockets (WebSocket and HTTP)": idle TCP connections take slots too.
    let relay = TestRelay::with(|c| c.limits.max_connections = 2);
    let _a = Raw::connect(relay.addr);
    let _b = Raw::connect(relay.addr);
    relay.wait_stats("2 sockets", |s| s.connections >= 2);
    let (_raw, response) = Raw::upgrade_with(relay.addr, "");
    assert_eq!(response.status, 503, "{}", response.head);
}

#[test]
fn silent_tcp_connection_is_dropped_after_handshake_timeout() {
    let relay = TestRelay::with(|c| c.timeouts.handshake = Duration::from_millis(300));
    let mut raw = Raw::connect(relay.addr);
    // Nothing sent at all: a 408 or a plain close are both fine here.
    if let Ok(response) = raw.try_read_response() {
        assert_eq!(response.status, 408, "{}", response.head);
    }
    assert!(raw.closed_within(WAIT), "idle connection never closed");
}

#[test]
fn trickled_head_does_not_extend_the_handshake_deadline() {
    // Slowloris: a byte every 100 ms must not keep resetting a 500 ms deadline.
    let relay = TestRelay::with(|c| c.timeouts.handshake = Duration::from_millis(500));
    let mut raw = Raw::connect(relay.addr);
    let head = upgrade_request("");
    let deadline = Instant::now() + WAIT;
    for byte in head.as_bytes().iter().take(head.len() - 2) {
        raw.send_lenient(&[*byte]);
        if raw.closed_within(Duration::from_millis(100)) {
            return; // closed while still incomplete: the deadline held
        }
        assert!(
            Instant::now() < deadline,
            "still open after {WAIT:?} of trickling"
        );
    }
    panic!("the whole head but the final CRLF trickled in without a timeout");
}

#[test]
fn idle_keep_alive_http_connection_is_closed_after_handshake_timeout() {
    // docs/configuration.md: timeouts.handshake is also how long an idle
    // kept-alive HTTP connection stays open.
    let relay = TestRelay::with(|c| c.timeouts.handshake = Duration::from_millis(300));
    let mut raw = Raw::connect(relay.addr);
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(raw.read_response().status, 200);
    assert!(
        raw.closed_within(WAIT),
        "idle keep-alive connection never closed"
    );
}

#[test]
fn rejected_connections_are_counted_in_metrics() {
    // docs/security.md: 503s are counted in tidings_rejected_connections_total.
    let relay = TestRelay::with(|c| c.limits.max_connections = 2);
    let mut a = connect(relay.addr);
    let _b = connect(relay.addr);
    let (_raw, response) = Raw::upgrade_with(relay.addr, "");
    assert_eq!(response.status, 503, "{}", response.head);
    // Free a slot for the /metrics request itself.
    a.close(1000);
    let _ = a.expect_close();
    relay.wait_stats("a slot free", |s| s.connections <= 1);
    let rejected = metric(relay.addr, "tidings_rejected_connections_total");
    assert!(
        rejected >= Some(1.0),
        "tidings_rejected_connections_total = {rejected:?}"
    );
}

#[test]
fn relay_new_binds_before_spawn() {
    // The contract: Relay::new binds, so a client may connect before the
    // reactor runs; its request is answered once it does.
    let relay = tidings::Relay::new(config()).expect("Relay::new");
    let addr = relay.local_addr();
    let mut raw = Raw::connect(addr);
    raw.send(upgrade_request("").as_bytes());
    let handle = relay.spawn().expect("spawn");
    let response = raw.read_response();
    assert_eq!(response.status, 101, "{}", response.head);
    assert!(shutdown_bounded(handle), "shutdown failed or hung");
}

#[test]
fn repeated_websocket_key_is_400() {
    // RFC 6455 11.3.1: the header "MUST NOT appear more than once".
    let relay = TestRelay::start();
    let (mut raw, response) = Raw::upgrade_with(
        relay.addr,
        "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n",
    );
    assert_eq!(response.status, 400, "{}", response.head);
    assert!(
        raw.closed_within(WAIT),
        "the socket stays open after the 400"
    );
}
