//! permessage-deflate (RFC 7692) on real sockets: what is agreed, events
//! arriving deflated and inflating to the same JSON, compressed client
//! messages, and a deflate bomb closed with 1009. docs/protocol.md,
//! "Compression"; docs/configuration.md, `compression`.

mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use tidings::config::CompressionMode;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn compressing_relay() -> TestRelay {
    TestRelay::with(|c| {
        c.compression = CompressionMode::On;
        c.compression_min_size = 200;
    })
}

/// Upgrades offering permessage-deflate; asserts what was agreed.
fn deflate_client(relay: &TestRelay) -> Raw {
    let (mut raw, response) = Raw::upgrade_with(relay.addr, OFFER);
    assert_eq!(response.status, 101, "{}", response.head);
    assert_eq!(response.header("sec-websocket-extensions"), Some(AGREED));
    raw.deflate = true;
    raw
}

/// A client's compressed message payload: deflated, sync-flush tail removed.
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    compressor
        .compress_vec(text, &mut out, FlushCompress::Sync)
        .expect("deflate");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "sync flush tail");
    out.truncate(out.len() - 4);
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(64 * 1024);
    Decompress::new(false)
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("the relay's deflated frame inflates");
    out
}

/// The next data frame as (compressed?, JSON).
fn next_message(raw: &mut Raw) -> (bool, Value) {
    loop {
        let frame = raw.read_frame().expect("a frame");
        if frame.opcode == OP_PING {
            continue;
        }
        assert_eq!(frame.opcode, OP_TEXT, "{frame:?}");
        let text = if frame.rsv1 {
            inflate(&frame.payload)
        } else {
            frame.payload
        };
        return (
            frame.rsv1,
            serde_json::from_slice(&text).expect("JSON after inflating"),
        );
    }
}

fn metrics_sample() -> Value {
    json!({"cpu": 42.5, "memory": 68.2, "disk": 45.8, "load": [1.2, 1.5, 1.8],
           "network": {"rx_bytes_per_sec": 1_250_000, "tx_bytes_per_sec": 890_000},
           "node": "worker-node-03", "cluster": "production-us-east-1"})
}

#[test]
fn events_arrive_deflated_and_inflate_to_the_same_event() {
    let relay = compressing_relay();
    let mut raw = deflate_client(&relay);
    raw.send_text(r#"{"type":"subscribe","channels":["metrics.system"]}"#);
    let (compressed, reply) = next_message(&mut raw);
    assert!(!compressed, "replies stay plain");
    assert_eq!(reply["type"], "subscribed");
    let mut plain = Raw::upgrade(relay.addr);
    plain.send_text(r#"{"type":"subscribe","channels":["metrics.system"]}"#);
    assert_eq!(plain.next_json()["type"], "subscribed");

    for _ in 0..3 {
        let published = relay.publish("metrics.system", metrics_sample());
        let (compressed, event) = next_message(&mut raw);
        assert!(compressed, "a {}-byte event is over the minimum", 300);
        let seq = assert_event(&event, &published);
        let same = plain.next_json();
        assert_eq!(same, event, "plain and deflated carry the same message");
        assert_eq!(event_seq(&same, "metrics.system"), seq);
    }
    let small = relay.publish("metrics.system", json!({"cpu": 1}));
    let (compressed, event) = next_message(&mut raw);
    assert!(!compressed, "under compression_min_size: plain");
    assert_event(&event, &small);
}

#[test]
fn compressed_client_messages_are_read() {
    let relay = compressing_relay();
    let mut raw = deflate_client(&relay);
    let subscribe = br#"{"type":"subscribe","channels":["job.*","alert.>"]}"#;
    raw.send_frame(true, 0b100, OP_TEXT, &deflate(subscribe), Some(MASK));
    let (_, reply) = next_message(&mut raw);
    assert_subscribed(&reply, &["job.*", "alert.>"]);
    // Fragmented: RSV1 on the first frame only (RFC 7692 6.1).
    let ping = deflate(br#"{"type":"ping"}"#);
    let (first, rest) = ping.split_at(ping.len() / 2);
    raw.send_frame(false, 0b100, OP_TEXT, first, Some(MASK));
    raw.send_frame(true, 0, 0x0, rest, Some(MASK));
    let (_, pong) = next_message(&mut raw);
    assert_eq!(pong["type"], "pong");
    // RSV1 on a continuation frame is a protocol error.
    raw.send_frame(false, 0b100, OP_TEXT, first, Some(MASK));
    raw.send_frame(true, 0b100, 0x0, rest, Some(MASK));
    assert_eq!(raw.expect_close(), Closed::Code(1002));
}

#[test]
fn a_deflate_bomb_is_closed_with_1009() {
    let relay = compressing_relay();
    let mut raw = deflate_client(&relay);
    // 16 MiB of spaces in a JSON string: a few KiB deflated, far past the
    // 64 KiB message limit once inflated.
    let mut bomb = br#"{"type":"ping","x":""#.to_vec();
    bomb.resize(16 << 20, b' ');
    let payload = deflate(&bomb);
    assert!(payload.len() < 64 * 1024, "{} bytes", payload.len());
    raw.send_frame(true, 0b100, OP_TEXT, &payload, Some(MASK));
    assert_eq!(raw.expect_close(), Closed::Code(1009));
    let stats = relay.wait_stats("the protocol close", |s| s.protocol_closes >= 1);
    assert_eq!(stats.protocol_closes, 1);
    // Garbage that is not deflate data: 1002.
    let mut raw = deflate_client(&relay);
    raw.send_frame(true, 0b100, OP_TEXT, &[0xff; 16], Some(MASK));
    assert_eq!(raw.expect_close(), Closed::Code(1002));
}

#[test]
fn compression_is_agreed_only_when_on_and_offered_acceptably() {
    let off = TestRelay::start();
    let (mut raw, response) = Raw::upgrade_with(off.addr, OFFER);
    assert_eq!(response.status, 101);
    assert_eq!(response.header("sec-websocket-extensions"), None);
    // Without the extension, RSV1 is a protocol error (RFC 6455 5.2).
    raw.send_frame(true, 0b100, OP_TEXT, &deflate(b"{}"), Some(MASK));
    assert_eq!(raw.expect_close(), Closed::Code(1002));

    let on = compressing_relay();
    let small_window =
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n";
    let (_, response) = Raw::upgrade_with(on.addr, small_window);
    assert_eq!(response.status, 101, "declined, not refused");
    assert_eq!(response.header("sec-websocket-extensions"), None);
    let two_offers = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10, permessage-deflate\r\n";
    let (_, response) = Raw::upgrade_with(on.addr, two_offers);
    assert_eq!(response.header("sec-websocket-extensions"), Some(AGREED));
}
