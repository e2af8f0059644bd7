//! `GET /metrics` under load: labelled closes and per-reactor series, the
//! histograms filled, and the whole text accepted by `promtool check
//! metrics` (Prometheus's own linter; `.ci/run` installs it).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .expect("numeric sample")
}

/// Sum of a labelled family's samples whose line starts with `prefix`.
fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A relay that delivered events, wrote, and closed sockets for reasons.
fn loaded_relay() -> (TestRelay, String) {
    let relay = TestRelay::with(|c| c.metrics.latency_sample = 1);
    let mut clients: Vec<Client> = (0..8).map(|_| connect(relay.addr)).collect();
    for client in &mut clients {
        client.subscribe(&["load.>"]);
    }
    for i in 0..200 {
        relay.publish("load.tick", json!({ "i": i }));
    }
    for client in &mut clients {
        while client.next_json()["data"]["i"] != 199 {}
    }
    // A binary message is closed with 1003; a vanished peer is counted too.
    let mut raw = Raw::upgrade(relay.addr);
    raw.send_frame(true, 0, OP_BINARY, b"\x01", Some(MASK));
    raw.expect_close();
    drop(Raw::upgrade(relay.addr));
    relay.wait_stats("closes counted", |s| s.websockets == clients.len() as u64);
    let response = http_get(relay.addr, "/metrics");
    assert_eq!(response.status, 200, "{}", response.head);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    (relay, response.body_text())
}

#[test]
fn a_loaded_relay_shows_closes_by_reason_and_filled_histograms() {
    let (_relay, text) = loaded_relay();
    assert!(sample(&text, "tidings_deliveries_total") >= 1600.0);
    assert_eq!(
        sum(
            &text,
            "tidings_closes_total{reactor=\"0\",reason=\"binary_message\"}"
        ) + sum(
            &text,
            "tidings_closes_total{reactor=\"1\",reason=\"binary_message\"}"
        ),
        1.0
    );
    assert!(sum(&text, "tidings_reactor_deliveries_total{") >= 1600.0);
    for family in [
        "tidings_reactor_turn_seconds_count{",
        "tidings_fanout_event_seconds_count{",
        "tidings_flush_pass_seconds_count{",
        "tidings_flush_queue_depth_count{",
        "tidings_publish_to_write_seconds_count{",
    ] {
        assert!(sum(&text, family) > 0.0, "{family} is empty:\n{text}");
    }
}

#[test]
fn promtool_accepts_the_exposition() {
    let (_relay, text) = loaded_relay();
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut promtool) = promtool else {
        common::skipping("promtool (Debian package `prometheus`)");
        return;
    };
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = promtool.wait_with_output().expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
