//! Publishing: `POST /api/publish` (docs/protocol.md, "Publishing over HTTP"),
//! `GET /metrics`, and the `Publisher` API's error cases.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tidings::{Event, PublishError, Relay};

/// Asserts a 400 with the documented `{"error":{"code","message"}}` body.
fn assert_400_json_error(response: &HttpResponse) {
    assert_eq!(
        response.status,
        400,
        "{}\n{}",
        response.head,
        response.body_text()
    );
    let body = response.json();
    assert!(body["error"]["code"].is_string(), "no error.code: {body}");
    assert!(
        body["error"]["message"].is_string(),
        "no error.message: {body}"
    );
}

#[test]
fn single_event_returns_seq_and_is_delivered() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    let body = r#"{"channel":"job.progress","data":{"jobId":"import-abc123","progress":0.45}}"#;
    let response = http_publish(relay.addr, body, "");
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.head,
        response.body_text()
    );
    let content_type = response.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{}",
        response.head
    );
    let reply = response.json();
    let seq = reply["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq: {reply}"));
    assert_eq!(reply.as_object().unwrap().len(), 1, "{reply}");
    let event = client.next_json();
    assert_eq!(event_seq(&event, "job.progress"), seq);
    assert_eq!(
        event["data"],
        json!({"jobId": "import-abc123", "progress": 0.45})
    );
}

#[test]
fn array_returns_seqs_and_is_delivered_in_order() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&[">"]);
    let body = json!([
        {"channel": "job.started", "data": {"i": 0}},
        {"channel": "alert.warning", "data": {"i": 1}},
        {"channel": "job.completed", "data": {"i": 2}},
    ]);
    let response = http_publish(relay.addr, &body.to_string(), "");
    assert_eq!(response.status, 200, "{}", response.body_text());
    let seqs: Vec<u64> = response.json()["seqs"]
        .as_array()
        .unwrap_or_else(|| panic!("no seqs array: {}", response.body_text()))
        .iter()
        .map(|s| s.as_u64().expect("numeric seq"))
        .collect();
    assert_eq!(seqs.len(), 3);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs not rising: {seqs:?}"
    );
    for (i, channel) in ["job.started", "alert.warning", "job.completed"]
        .iter()
        .enumerate()
    {
        let event = client.next_json();
        assert_eq!(event_seq(&event, channel), seqs[i]);
        assert_eq!(event["data"]["i"], i);
    }
}

#[test]
fn http_publish_with_type_carries_channel() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    let body = r#"{"channel":"job.progress","type":"custom.type","data":{"x":1}}"#;
    let response = http_publish(relay.addr, body, "");
    assert_eq!(response.status, 200, "{}", response.body_text());
    let event = client.next_json();
    assert_eq!(event["type"], "custom.type");
    assert_eq!(event["channel"], "job.progress");
    assert_eq!(event["seq"], response.json()["seq"]);
}

#[test]
fn bad_json_is_400_with_json_error() {
    let relay = TestRelay::start();
    assert_400_json_error(&http_publish(relay.addr, "{\"channel\":", ""));
    assert_400_json_error(&http_publish(relay.addr, "42", ""));
}

#[test]
fn missing_or_mistyped_channel_is_400() {
    let relay = TestRelay::start();
    assert_400_json_error(&http_publish(relay.addr, r#"{"data":{}}"#, ""));
    assert_400_json_error(&http_publish(relay.addr, r#"{"channel":7,"data":{}}"#, ""));
}

#[test]
fn invalid_channel_is_400() {
    let relay = TestRelay::start();
    // Wildcards are for patterns; events go to concrete channels.
    for channel in ["a..b", "job.*", "job.>", "", "job progress"] {
        let body = json!({"channel": channel, "data": {}}).to_string();
        let response = http_publish(relay.addr, &body, "");
        assert_400_json_error(&response);
        assert_eq!(
            response.json()["error"]["code"],
            "invalid_channel",
            "for {channel:?}"
        );
    }
}

#[test]
fn array_with_one_bad_item_is_400_and_delivers_nothing() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*", "marker.x"]);
    let body = json!([
        {"channel": "job.started", "data": {}},
        {"channel": "a..b", "data": {}},
        {"channel": "job.completed", "data": {}},
    ]);
    assert_400_json_error(&http_publish(relay.addr, &body.to_string(), ""));
    let marker = relay.publish("marker.x", json!({}));
    let event = client.next_json();
    assert_event(&event, &marker); // part of the rejected array would come first
}

#[test]
fn keep_alive_allows_two_publishes_on_one_connection() {
    let relay = TestRelay::start();
    let mut raw = Raw::connect(relay.addr);
    let mut seqs = Vec::new();
    for i in 0..2 {
        let body = json!({"channel": "job.progress", "data": {"i": i}}).to_string();
        raw.send(publish_request(&body, "").as_bytes());
        let response = raw.read_response();
        assert_eq!(
            response.status,
            200,
            "request {i}: {}",
            response.body_text()
        );
        seqs.push(response.json()["seq"].as_u64().expect("seq"));
    }
    assert!(seqs[0] < seqs[1], "{seqs:?}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let relay = TestRelay::start();
    let mut raw = Raw::connect(relay.addr);
    let mut both = publish_request(r#"{"channel":"a.b","data":1}"#, "");
    both.push_str("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    raw.send(both.as_bytes());
    let first = raw.read_response();
    assert_eq!(first.status, 200, "{}", first.body_text());
    assert!(first.json()["seq"].is_u64());
    let second = raw.read_response();
    assert_eq!(second.status, 200);
    assert_eq!(second.json(), json!({"status": "ok"}));
}

#[test]
fn http_10_keep_alive_is_honoured() {
    let relay = TestRelay::start();
    let mut raw = Raw::connect(relay.addr);
    for _ in 0..2 {
        let request = publish_request(
            r#"{"channel":"a.b","data":{}}"#,
            "Connection: keep-alive\r\n",
        )
        .replace("HTTP/1.1", "HTTP/1.0");
        raw.send(request.as_bytes());
        assert_eq!(raw.read_response().status, 200);
    }
}

#[test]
fn http_10_without_keep_alive_closes() {
    let relay = TestRelay::start();
    let mut raw = Raw::connect(relay.addr);
    let request =
        publish_request(r#"{"channel":"a.b","data":{}}"#, "").replace("HTTP/1.1", "HTTP/1.0");
    raw.send(request.as_bytes());
    assert_eq!(raw.read_response().status, 200);
    assert!(raw.closed_within(WAIT), "HTTP/1.0 connection kept open");
}

#[test]
fn connection_close_is_honoured() {
    let relay = TestRelay::start();
    let mut raw = Raw::connect(relay.addr);
    raw.send(publish_request(r#"{"channel":"a.b","data":{}}"#, "Connection: close\r\n").as_bytes());
    assert_eq!(raw.read_response().status, 200);
    assert!(raw.closed_within(WAIT), "Connection: close ignored");
}

#[test]
fn missing_content_length_is_411() {
    let relay = TestRelay::start();
    let response = http(
        relay.addr,
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n",
    );
    assert_eq!(response.status, 411, "{}", response.head);
}

#[test]
fn body_over_limit_is_413() {
    let relay = TestRelay::with(|c| c.limits.max_request_body = 1024);
    let body = json!({"channel": "a.b", "data": "x".repeat(2000)}).to_string();
    let response = http_publish(relay.addr, &body, "");
    assert_eq!(response.status, 413, "{}", response.head);
    // Just under the limit is fine.
    let body = json!({"channel": "a.b", "data": "x".repeat(900)}).to_string();
    assert_eq!(http_publish(relay.addr, &body, "").status, 200);
}

#[test]
fn publish_tokens_are_enforced() {
    let relay = TestRelay::with(|c| c.publish.tokens = vec!["pub-secret".into()]);
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    let body = r#"{"channel":"job.progress","data":{"n":1}}"#;

    let missing = http_publish(relay.addr, body, "");
    assert_eq!(missing.status, 401, "{}", missing.head);
    let challenge = missing.header("WWW-Authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "WWW-Authenticate: {challenge:?}"
    );

    let wrong = http_publish(relay.addr, body, "Authorization: Bearer nope\r\n");
    // docs/configuration.md: "a wrong one 403".
    assert_eq!(wrong.status, 403, "{}", wrong.head);

    let right = http_publish(relay.addr, body, "Authorization: Bearer pub-secret\r\n");
    assert_eq!(right.status, 200, "{}", right.head);
    let seq = right.json()["seq"].as_u64().expect("seq");
    // Only the authorised publish was delivered.
    assert_eq!(event_seq(&client.next_json(), "job.progress"), seq);
}

#[test]
fn metrics_endpoint_is_prometheus_text() {
    let relay = TestRelay::start();
    let _client = connect(relay.addr);
    let response = http_get(relay.addr, "/metrics");
    assert_eq!(response.status, 200, "{}", response.head);
    let text = response.body_text();
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!samples.is_empty(), "no samples: {text}");
    for line in samples {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
}

// ---------------------------------------------------------------------------
// Publisher API

#[test]
fn try_publish_reports_full_ingest_queue() {
    let mut config = config();
    config.limits.ingest_capacity = 4;
    // Not spawned: nothing drains the ingest queue.
    let relay = Relay::new(config).expect("Relay::new");
    let publisher = relay.publisher();
    for i in 0..4 {
        let event = Event::new("job.progress", &json!({"i": i})).unwrap();
        publisher.try_publish(event).expect("room in the queue");
    }
    let event = Event::new("job.progress", &json!({"i": 4})).unwrap();
    let result = publisher.try_publish(event);
    assert!(matches!(result, Err(PublishError::Full)), "{result:?}");
}

#[test]
fn publish_and_try_publish_keep_order_and_rising_seqs() {
    // `publish` and `try_publish` return `()`: the reactor assigns each seq
    // as the event leaves, so a producer learns it from the wire.
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    relay
        .publisher
        .publish(Event::new("job.a", &1).unwrap())
        .expect("publish");
    relay
        .publisher
        .try_publish(Event::new("job.b", &2).unwrap())
        .expect("try_publish");
    let first = event_seq(&client.next_json(), "job.a");
    let second = event_seq(&client.next_json(), "job.b");
    assert!(second > first, "seq must rise: {first} then {second}");
}

#[test]
fn publisher_rejects_invalid_channels() {
    let relay = TestRelay::start();
    for channel in ["a..b", "job.*", "job.>", ""] {
        let result = Event::new(channel, &json!({})).and_then(|e| relay.publisher.try_publish(e));
        assert!(
            matches!(result, Err(PublishError::InvalidChannel(..))),
            "{channel:?}: {result:?}"
        );
        let result = Event::new(channel, &json!({})).and_then(|e| relay.publisher.publish(e));
        assert!(
            matches!(result, Err(PublishError::InvalidChannel(..))),
            "{channel:?}: {result:?}"
        );
    }
}

#[test]
fn event_from_json_rejects_invalid_json() {
    let result = Event::from_json("job.progress", "{not json");
    assert!(result.is_err(), "invalid JSON data accepted");
}

#[test]
fn publish_after_shutdown_is_closed() {
    let relay = TestRelay::start();
    let publisher = relay.publisher.clone();
    relay.shutdown();
    // On a thread: a publish that blocks forever must fail the test, not hang it.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let blocking = publisher.publish(Event::new("job.progress", &Value::Null).unwrap());
        let non_blocking = publisher.try_publish(Event::new("job.progress", &Value::Null).unwrap());
        let _ = tx.send((blocking, non_blocking));
    });
    let (blocking, non_blocking) = rx
        .recv_timeout(WAIT)
        .expect("publish after shutdown blocked");
    assert!(
        matches!(blocking, Err(PublishError::Closed)),
        "{blocking:?}"
    );
    assert!(
        matches!(non_blocking, Err(PublishError::Closed)),
        "{non_blocking:?}"
    );
}

#[test]
fn stats_count_published_events_and_deliveries() {
    let relay = TestRelay::start();
    let mut a = connect(relay.addr);
    let mut b = connect(relay.addr);
    a.subscribe(&["s.*"]);
    b.subscribe(&["s.*"]);
    let before = relay.stats();
    for i in 0..5 {
        relay.publish("s.x", json!(i));
    }
    for _ in 0..5 {
        a.next_json();
        b.next_json();
    }
    relay.wait_stats("5 more events, 10 more deliveries", |s| {
        s.events_published >= before.events_published + 5 && s.deliveries >= before.deliveries + 10
    });
}

/// Python's `http.client` sends a generator body with
/// `Transfer-Encoding: chunked`, one chunk per item, on one kept-alive
/// connection: a publish in three chunks, then one over the body limit.
const CHUNKED_CLIENT: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=20)
def chunks(parts):
    for part in parts:
        yield part.encode()
for parts in (['{"chan', 'nel":"job.chunked",', '"data":{"n":1}}'], ['[' + ','.join(['{"channel":"a","data":0}'] * 40) + ']']):
    conn.request("POST", "/api/publish", body=chunks(parts), encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    print(response.status, response.read().decode().strip())
"#;

#[test]
fn chunked_publish_from_a_real_http_client() {
    let relay = TestRelay::with(|c| c.limits.max_request_body = 512);
    let mut client = connect(relay.addr);
    client.subscribe(&["job.*"]);
    let output = match std::process::Command::new("python3")
        .args(["-c", CHUNKED_CLIENT, &relay.addr.port().to_string()])
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            common::skipping("python3");
            return;
        }
        Err(e) => panic!("run python3: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with(r#"200 {"seq":"#), "{stdout}");
    // 40 events of 24 bytes pass 512 in the first chunk's size line.
    assert!(lines[1].starts_with("413 "), "{stdout}");
    assert!(
        lines[1].contains("limits.max_request_body is 512"),
        "{stdout}"
    );
    let event = client.next_json();
    assert_eq!(event["type"], "job.chunked", "{event}");
    assert_eq!(event["data"], json!({"n": 1}), "{event}");
}

#[test]
fn chunked_publish_with_a_content_length_too_is_refused() {
    let relay = TestRelay::start();
    let body = r#"{"channel":"a.b","data":{}}"#;
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len(),
        body.len()
    );
    let response = http(relay.addr, &request);
    assert_eq!(response.status, 400, "{}", response.head);
    assert_eq!(response.json()["error"]["code"], "ambiguous_length");
    assert_eq!(response.header("Connection"), Some("close"));
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    // RFC 9110 11.1: the auth scheme is case-insensitive.
    let relay = TestRelay::with(|c| c.publish.tokens = vec!["pub-secret".into()]);
    let body = r#"{"channel":"a.b","data":{}}"#;
    let response = http_publish(relay.addr, body, "Authorization: bearer pub-secret\r\n");
    assert_eq!(response.status, 200, "{}", response.head);
}

#[test]
fn publish_tokens_do_not_guard_other_endpoints() {
    let relay = TestRelay::with(|c| c.publish.tokens = vec!["pub-secret".into()]);
    assert_eq!(http_get(relay.addr, "/healthz").status, 200);
    let mut client = connect(relay.addr);
    client.assert_alive();
}

#[test]
fn http_and_api_publishes_share_one_seq_order() {
    let relay = TestRelay::start();
    let mut client = connect(relay.addr);
    client.subscribe(&["mix.*"]);
    let first = relay.publish("mix.api", json!(1));
    let response = http_publish(relay.addr, r#"{"channel":"mix.http","data":2}"#, "");
    let http_seq = response.json()["seq"].as_u64().expect("seq");
    let third = relay.publish("mix.api", json!(3));
    let a = assert_event(&client.next_json(), &first);
    let b = event_seq(&client.next_json(), "mix.http");
    let c = assert_event(&client.next_json(), &third);
    assert_eq!(b, http_seq);
    assert!(a < b && b < c, "seqs {a}, {b}, {c} not rising");
}

#[test]
fn relay_new_rejects_invalid_config_naming_the_key() {
    let mut config = config();
    config.limits.max_message_size = 0;
    let err = Relay::new(config).err().expect("invalid config accepted");
    assert!(
        err.to_string().contains("limits.max_message_size"),
        "error should name the key: {err}"
    );
}

#[test]
fn relay_new_fails_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config();
    config.listen = taken.local_addr().unwrap();
    assert!(Relay::new(config).is_err(), "bound a port already in use");
}

#[test]
fn non_numeric_content_length_is_400() {
    let relay = TestRelay::start();
    let response = http(
        relay.addr,
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ten\r\n\r\n",
    );
    assert_eq!(response.status, 400, "{}", response.head);
}

#[test]
fn expect_100_continue_is_answered() {
    // curl sends `Expect: 100-continue` for bodies over 1 KiB and stalls a
    // second unless the server answers; RFC 9110 10.1.1 says it should.
    // A short handshake timeout so a relay that just waits fails fast (408).
    let relay = TestRelay::with(|c| c.timeouts.handshake = Duration::from_secs(3));
    let body = json!({"channel": "a.b", "data": "x".repeat(1500)}).to_string();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    let mut raw = Raw::connect(relay.addr);
    raw.send(head.as_bytes());
    let interim = raw.read_response_head_only();
    assert_eq!(interim.status, 100, "{}", interim.head);
    raw.send(body.as_bytes());
    let response = raw.read_response();
    assert_eq!(response.status, 200, "{}", response.head);
}

#[test]
fn full_ingest_queue_is_503_with_retry_after() {
    // A producer thread keeps a tiny log full (the reactors take one event
    // per turn), so HTTP publishes find the relay saturated, wait
    // `timeouts.publish_wait`, and are answered 503.
    let relay = TestRelay::with(|c| {
        c.limits.ingest_capacity = 2;
        c.limits.ingest_batch = 1;
        c.timeouts.publish_wait = std::time::Duration::from_millis(1);
    });
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, publisher) = (Arc::clone(&stop), relay.publisher.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = publisher.try_publish(Event::new("busy.x", &0).unwrap());
            }
        })
    };
    let deadline = std::time::Instant::now() + WAIT;
    let mut raw = Raw::connect(relay.addr);
    let saturated = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "never saw 503 with a full ingest queue"
        );
        raw.send(publish_request(r#"{"channel":"a.b","data":{}}"#, "").as_bytes());
        let response = raw.read_response();
        if response.status == 503 {
            break response;
        }
        assert_eq!(response.status, 200, "{}", response.head);
    };
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer thread");
    assert_eq!(
        saturated.header("Retry-After"),
        Some("1"),
        "{}",
        saturated.head
    );
    assert!(saturated.json()["error"]["code"].is_string());
}

#[test]
fn body_exactly_at_the_limit_is_accepted() {
    let relay = TestRelay::with(|c| c.limits.max_request_body = 1024);
    let frame = json!({"channel": "a.b", "data": ""}).to_string();
    let body = json!({"channel": "a.b", "data": "x".repeat(1024 - frame.len())}).to_string();
    assert_eq!(body.len(), 1024);
    assert_eq!(http_publish(relay.addr, &body, "").status, 200);
    let body = json!({"channel": "a.b", "data": "x".repeat(1025 - frame.len())}).to_string();
    assert_eq!(http_publish(relay.addr, &body, "").status, 413);
}

#[test]
fn incomplete_body_times_out_with_408() {
    let relay = TestRelay::with(|c| c.timeouts.handshake = Duration::from_millis(300));
    let mut raw = Raw::connect(relay.addr);
    raw.send(b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"channel\":");
    let response = raw.read_response();
    assert_eq!(response.status, 408, "{}", response.head);
}

#[test]
fn too_many_segments_is_400() {
    let relay = TestRelay::start();
    let channel = vec!["s"; 17].join(".");
    let body = json!({"channel": channel, "data": {}}).to_string();
    assert_400_json_error(&http_publish(relay.addr, &body, ""));
    let channel = vec!["s"; 16].join(".");
    let body = json!({"channel": channel, "data": {}}).to_string();
    assert_eq!(http_publish(relay.addr, &body, "").status, 200);
}

#[test]
fn an_event_cannot_wear_a_reply_type() {
    // A channel named `error` would deliver {"type":"error",...}, which a
    // client reads as the relay's own error reply.
    let relay = TestRelay::start();
    for body in [
        r#"{"channel":"error","data":{}}"#,
        r#"{"channel":"a.b","type":"subscribed","data":{}}"#,
        r#"[{"channel":"a.b","data":1},{"channel":"pong","data":2}]"#,
    ] {
        let response = http_publish(relay.addr, body, "");
        assert_eq!(response.status, 400, "{body}: {}", response.body_text());
        let error = &response.json()["error"];
        assert_eq!(error["code"], "reserved_type", "{body}: {error}");
        assert!(error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("reserved"));
    }
    let event = tidings::Event::new("resync", &1).expect("event");
    assert!(matches!(
        relay.publisher.publish(event),
        Err(tidings::PublishError::ReservedType(_))
    ));
    assert_eq!(relay.stats().events_published, 0, "none was published");
}
