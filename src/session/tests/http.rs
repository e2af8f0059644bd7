//! `HttpSession`: the upgrade and its refusals, the HTTP API, keep-alive,
//! pipelining, `Expect: 100-continue` and the deadlines.

use serde_json::json;

use super::*;
use crate::proto::handshake::tests::UPGRADE;
use crate::proto::http::Status;
use crate::session::{HttpOutput, HttpSession};

/// What the reactor did with one output, for comparing.
#[derive(Debug)]
enum Reply {
    /// `Send`: written, the socket stays on HTTP.
    Keep(String),
    /// `SendAndClose`.
    Final(String),
    Drop,
    Upgrade {
        response: String,
        session: WsSession,
        outputs: Vec<WsOutput>,
    },
    /// `Publish`, with each event's channel; answered with the next seqs.
    Published(Vec<String>),
    /// `Metrics`, answered with `METRICS`.
    Metrics,
}

const METRICS: &str = "tidings_connections 3\n";

/// One socket on HTTP, with the reactor's side played by the test.
struct Peer<'f> {
    fx: &'f Fixture,
    session: HttpSession,
    next_seq: u64,
    /// Leave `Publish` unanswered (as while intake is paused).
    hold_publishes: bool,
}

impl<'f> Peer<'f> {
    fn new(fx: &'f Fixture) -> Peer<'f> {
        Peer {
            fx,
            session: HttpSession::new(0, &fx.cx()),
            next_seq: 0,
            hold_publishes: false,
        }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>, millis: Millis) -> Vec<Reply> {
        let mut out = Vec::new();
        self.session
            .handle_bytes(bytes.as_ref(), at(millis), &self.fx.cx(), &mut out);
        self.play(out, millis)
    }

    fn timer(&mut self, millis: Millis) -> (Option<Millis>, Vec<Reply>) {
        let mut out = Vec::new();
        let next = self.session.handle_timeout(millis, &self.fx.cx(), &mut out);
        (next, self.play(out, millis))
    }

    /// Answers every publish the session hands out with the next seqs.
    fn release(&mut self, count: usize, millis: Millis) -> Vec<Reply> {
        let seqs: Vec<u64> = (0..count)
            .map(|_| {
                self.next_seq += 1;
                self.next_seq
            })
            .collect();
        let mut out = Vec::new();
        self.session
            .publish_done(&seqs, at(millis), &self.fx.cx(), &mut out);
        self.play(out, millis)
    }

    /// Plays the reactor until no answer is owed; checks nothing follows a
    /// final output.
    fn play(&mut self, out: Vec<HttpOutput>, millis: Millis) -> Vec<Reply> {
        let mut replies = Vec::new();
        for output in out {
            assert!(
                !matches!(
                    replies.last(),
                    Some(Reply::Final(_) | Reply::Drop | Reply::Upgrade { .. })
                ),
                "output after the last one"
            );
            match output {
                HttpOutput::Send(bytes) => replies.push(Reply::Keep(text(bytes))),
                HttpOutput::SendAndClose(bytes) => replies.push(Reply::Final(text(bytes))),
                HttpOutput::Drop => replies.push(Reply::Drop),
                HttpOutput::Upgrade {
                    response,
                    session,
                    outputs,
                } => replies.push(Reply::Upgrade {
                    response: text(response),
                    session,
                    outputs,
                }),
                HttpOutput::Publish(events) => {
                    let count = events.len();
                    let channels = events.iter().map(|e| e.channel.to_string()).collect();
                    replies.push(Reply::Published(channels));
                    if !self.hold_publishes {
                        replies.extend(self.release(count, millis));
                    }
                }
                HttpOutput::Metrics => {
                    replies.push(Reply::Metrics);
                    let mut out = Vec::new();
                    self.session
                        .metrics_done(METRICS, at(millis), &self.fx.cx(), &mut out);
                    replies.extend(self.play(out, millis));
                }
            }
        }
        replies
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("responses are text")
}

fn status(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {response:?}"))
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn body_json(response: &str) -> serde_json::Value {
    serde_json::from_str(body(response)).expect("a JSON body")
}

/// The statuses of the replies, with `K` for kept alive, `F` for final.
fn statuses(replies: &[Reply]) -> Vec<String> {
    replies
        .iter()
        .map(|reply| match reply {
            Reply::Keep(r) => format!("K{}", status(r)),
            Reply::Final(r) => format!("F{}", status(r)),
            Reply::Drop => "drop".into(),
            Reply::Upgrade { response, .. } => format!("U{}", status(response)),
            Reply::Published(channels) => format!("P{}", channels.join(",")),
            Reply::Metrics => "metrics".into(),
        })
        .collect()
}

fn publish(body: &str) -> String {
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn with_header(request: &str, header: &str) -> String {
    request.replacen("\r\n", &format!("\r\n{header}\r\n"), 1)
}

fn only(replies: Vec<Reply>) -> Reply {
    let [reply]: [Reply; 1] = replies.try_into().expect("exactly one reply");
    reply
}

#[test]
fn upgrade_is_accepted_with_the_rfc_accept_key() {
    let fx = Fixture::new(|c| c.default_channels = vec!["news.>".into()]);
    let mut peer = Peer::new(&fx);
    let Reply::Upgrade {
        response,
        session,
        outputs,
    } = only(peer.send(UPGRADE, 5))
    else {
        panic!("not upgraded")
    };
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_eq!(outputs, [WsOutput::Subscribe("news.>".into())]);
    assert_eq!(session.first_timeout(5, &fx.cx()), 5 + 54_000);
    assert_eq!(fx.stat(|s| &s.http_requests), 1);
    // Nothing more is read as HTTP.
    assert!(peer.send("GET /healthz HTTP/1.1\r\n\r\n", 6).is_empty());
    assert_eq!(peer.timer(1_000_000).0, None);
}

#[test]
fn upgrade_head_split_byte_by_byte_with_a_frame_behind_it() {
    let fx = Fixture::new(|_| {});
    let mut peer = Peer::new(&fx);
    let mut bytes = UPGRADE.as_bytes().to_vec();
    bytes.extend(command(r#"{"type":"subscribe","channels":["a.b"]}"#));
    let head_len = UPGRADE.len();
    for byte in &bytes[..head_len - 1] {
        assert!(peer.send([*byte], 1).is_empty());
    }
    let Reply::Upgrade {
        session, outputs, ..
    } = only(peer.send(&bytes[head_len - 1..], 2))
    else {
        panic!("not upgraded")
    };
    let [WsOutput::Subscribe(pattern), WsOutput::Send(reply)] = &outputs[..] else {
        panic!("{outputs:?}")
    };
    assert_eq!(&**pattern, "a.b");
    assert_eq!(
        decode_server_frame(reply),
        json(json!({"type":"subscribed","channels":["a.b"]}))
    );
    assert_eq!(session.patterns(), [Box::<str>::from("a.b")]);
}

/// A change to the default configuration.
type Tweak = fn(&mut Config);

#[test]
fn upgrade_refusals() {
    let bad_key = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
    let cases: Vec<(String, Tweak, u16)> = vec![
        (bad_key, |_| {}, 400),
        (UPGRADE.replace("Version: 13", "Version: 8"), |_| {}, 426),
        (UPGRADE.replace("GET", "PUT"), |_| {}, 405),
        (
            with_header(UPGRADE, "Origin: https://evil.example"),
            |c| c.allowed_origins = vec!["https://good.example".into()],
            403,
        ),
        (
            with_header(UPGRADE, "Sec-WebSocket-Protocol: Bearer, guess"),
            with_tokens,
            401,
        ),
    ];
    for (request, tweak, code) in cases {
        let fx = Fixture::new(tweak);
        let mut peer = Peer::new(&fx);
        let Reply::Final(response) = only(peer.send(&request, 1)) else {
            panic!("{request}: not refused")
        };
        assert_eq!(status(&response), code, "{request}");
        assert!(response.contains("Connection: close\r\n"));
        assert_eq!(fx.stat(|s| &s.http_requests), 1);
    }
}

#[test]
fn refusal_headers_and_auth_failures() {
    let fx = Fixture::new(with_tokens);
    let mut peer = Peer::new(&fx);
    let request = with_header(UPGRADE, "Sec-WebSocket-Protocol: Bearer, guess");
    let Reply::Final(response) = only(peer.send(request, 1)) else {
        panic!()
    };
    assert!(response.contains("WWW-Authenticate: Bearer\r\n"));
    assert_eq!(body(&response), "Unauthorized\n");
    assert_eq!(fx.stat(|s| &s.auth_failures), 1);

    let fx = Fixture::new(|_| {});
    let Reply::Final(response) = only(Peer::new(&fx).send(UPGRADE.replace("13", "8"), 1)) else {
        panic!()
    };
    assert!(response.contains("Sec-WebSocket-Version: 13\r\n"));
}

#[test]
fn origin_checks() {
    let fx = Fixture::new(|c| c.allowed_origins = vec!["https://Good.example".into()]);
    for (origin, upgraded) in [
        (Some("https://good.example"), true),
        (Some("https://evil.example"), false),
        // Non-browser clients send no Origin.
        (None, true),
    ] {
        let request = match origin {
            Some(origin) => with_header(UPGRADE, &format!("Origin: {origin}")),
            None => UPGRADE.to_string(),
        };
        let reply = only(Peer::new(&fx).send(request, 1));
        assert_eq!(
            matches!(reply, Reply::Upgrade { .. }),
            upgraded,
            "{origin:?}"
        );
    }
}

#[test]
fn auth_at_the_upgrade_bearer_or_pending() {
    let fx = Fixture::new(|c| {
        with_tokens(c);
        c.default_channels = vec!["public.chat".into(), "news.>".into()];
    });
    let request = with_header(UPGRADE, "Sec-WebSocket-Protocol: Bearer, scoped");
    let Reply::Upgrade {
        response, outputs, ..
    } = only(Peer::new(&fx).send(request, 1))
    else {
        panic!()
    };
    assert!(response.contains("Sec-WebSocket-Protocol: Bearer\r\n"));
    assert!(
        !response.contains("scoped"),
        "the token must not travel back"
    );
    assert_eq!(outputs, [WsOutput::Subscribe("public.chat".into())]);

    let Reply::Upgrade {
        session, outputs, ..
    } = only(Peer::new(&fx).send(UPGRADE, 100))
    else {
        panic!()
    };
    assert!(outputs.is_empty(), "no defaults before auth");
    let auth = ms(fx.config.timeouts.auth);
    assert_eq!(session.first_timeout(100, &fx.cx()), 100 + auth);
}

#[test]
fn conformance_echo_upgrades_on_any_path() {
    let fx = Fixture::new(|c| c.conformance_echo = true);
    let request = UPGRADE.replace("GET /ws ", "GET /anything ");
    assert!(matches!(
        only(Peer::new(&fx).send(request, 1)),
        Reply::Upgrade { .. }
    ));
}

#[test]
fn small_endpoints_keep_the_socket() {
    let fx = Fixture::new(|_| {});
    let mut peer = Peer::new(&fx);
    let requests = "GET /healthz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\nGET /api/publish HTTP/1.1\r\n\r\nDELETE /metrics HTTP/1.1\r\n\r\nHEAD /metrics HTTP/1.1\r\n\r\n";
    let replies = peer.send(requests, 1);
    assert_eq!(
        statuses(&replies),
        ["K200", "K404", "K405", "K405", "metrics", "K200"]
    );
    let texts: Vec<&str> = replies
        .iter()
        .filter_map(|r| match r {
            Reply::Keep(text) => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(body_json(texts[0]), json!({"status":"ok"}));
    assert_eq!(
        body_json(texts[1])["error"]["message"],
        "no such endpoint; the WebSocket is at /ws"
    );
    assert!(texts[2].contains("Allow: POST\r\n"));
    assert!(texts[3].contains("Allow: GET, HEAD\r\n"));
    assert_eq!(body(texts[3]), "Method Not Allowed\n");
    assert!(texts[4].contains("Content-Type: text/plain; version=0.0.4\r\n"));
    assert!(texts[4].contains("Connection: keep-alive\r\n"));
    assert_eq!(body(texts[4]), METRICS);
    assert_eq!(fx.stat(|s| &s.http_requests), 5);
}

#[test]
fn a_body_where_none_is_taken_or_connection_close_ends_the_socket() {
    let fx = Fixture::new(|_| {});
    for request in [
        "GET /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /healthz HTTP/1.0\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let replies = Peer::new(&fx).send(request, 1);
        let last = statuses(&replies).pop();
        assert_eq!(last.as_deref(), Some("F200"), "{request}");
    }
}

#[test]
fn head_errors_are_refused_uncounted() {
    let fx = Fixture::new(|c| c.limits.max_request_head = 256);
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
    for (request, code) in [
        (long.as_str(), 431),
        ("\x00\x01garbage\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    ] {
        let Reply::Final(response) = only(Peer::new(&fx).send(request, 1)) else {
            panic!("{request}")
        };
        assert_eq!(status(&response), code, "{request}");
    }
    assert_eq!(fx.stat(|s| &s.http_requests), 0);
}

#[test]
fn more_buffered_than_head_and_body_limits_is_413() {
    let fx = Fixture::new(|c| {
        c.limits.max_request_head = 100;
        c.limits.max_request_body = 100;
    });
    let mut peer = Peer::new(&fx);
    assert!(peer.send("GET /healthz HTTP/1.1\r\nX: ", 1).is_empty());
    let Reply::Final(response) = only(peer.send([b'a'; 180], 2)) else {
        panic!()
    };
    assert_eq!(status(&response), 413);
    assert_eq!(body(&response), "Payload Too Large\n");
}

#[test]
fn publish_refusals() {
    let fx = Fixture::new(|c| {
        c.publish.tokens = vec!["pub".into()];
        c.limits.max_request_body = 10;
    });
    let cases = [
        (publish("{}"), 401, "unauthorized"),
        (
            with_header(&publish("{}"), "Authorization: Bearer nope"),
            403,
            "forbidden",
        ),
        (
            "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer pub\r\n\r\n".to_string(),
            411,
            "length_required",
        ),
        (
            "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer pub\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}"
                .to_string(),
            411,
            "length_required",
        ),
        (
            with_header(&publish(&" ".repeat(11)), "Authorization: Bearer pub"),
            413,
            "too_large",
        ),
    ];
    for (request, code, error) in &cases {
        let Reply::Final(response) = only(Peer::new(&fx).send(request, 1)) else {
            panic!("{request}")
        };
        assert_eq!(status(&response), *code, "{request}");
        assert_eq!(body_json(&response)["error"]["code"], *error);
        assert!(response.contains("Connection: close\r\n"));
    }
    assert_eq!(fx.stat(|s| &s.auth_failures), 2);
    let Reply::Final(response) = only(Peer::new(&fx).send(&cases[0].0, 1)) else {
        panic!()
    };
    assert!(response.contains("WWW-Authenticate: Bearer\r\n"));
    let message = "the body is 11 bytes; limits.max_request_body is 10";
    let Reply::Final(response) = only(Peer::new(&fx).send(&cases[4].0, 1)) else {
        panic!()
    };
    assert_eq!(body_json(&response)["error"]["message"], message);
}

#[test]
fn publish_one_then_many_answers_seq_then_seqs() {
    let fx = Fixture::new(|_| {});
    let mut peer = Peer::new(&fx);
    let replies = peer.send(publish(r#" {"channel":"job.1","data":{"p":0.5}}"#), 1);
    assert_eq!(statuses(&replies), ["Pjob.1", "K200"]);
    let Reply::Keep(answer) = &replies[1] else {
        panic!()
    };
    assert_eq!(body_json(answer), json!({"seq":1}));
    let replies = peer.send(
        publish(r#"[{"channel":"a","data":1},{"channel":"b","type":"t","data":2}]"#),
        2,
    );
    assert_eq!(statuses(&replies), ["Pa,b", "K200"]);
    let Reply::Keep(answer) = &replies[1] else {
        panic!()
    };
    assert_eq!(body_json(answer), json!({"seqs":[2,3]}));
    // An array of one is still answered with `seqs`.
    let replies = peer.send(publish(r#"[{"channel":"a","data":1}]"#), 3);
    let Reply::Keep(answer) = &replies[1] else {
        panic!()
    };
    assert_eq!(body_json(answer), json!({"seqs":[4]}));
}

#[test]
fn publish_encodes_events_with_the_wall_clock_passed_in() {
    let fx = Fixture::new(|_| {});
    let mut peer = Peer::new(&fx);
    let mut out = Vec::new();
    let request = publish(r#"{"channel":"job.1","data":{"p":1}}"#);
    peer.session
        .handle_bytes(request.as_bytes(), at(7), &fx.cx(), &mut out);
    let [HttpOutput::Publish(events)] = &out[..] else {
        panic!()
    };
    let Got::Json(frame) = decode_server_frame(&events[0].frame(42)) else {
        panic!()
    };
    assert_eq!(
        frame,
        json!({"type":"job.1","timestamp":wall_text(at(7)),"seq":42,"data":{"p":1}})
    );
}

#[test]
fn bad_publish_bodies_are_400_and_keep_the_socket() {
    let fx = Fixture::new(|_| {});
    let mut peer = Peer::new(&fx);
    let cases = [
        ("nope", "bad_request", None),
        (
            r#"{"channel":"a..b","data":1}"#,
            "invalid_channel",
            Some(""),
        ),
        (
            r#"[{"channel":"a","data":1},{"channel":"a..b","data":1}]"#,
            "invalid_channel",
            Some("event 1: "),
        ),
        (
            r#"{"channel":"a","type":"","data":1}"#,
            "invalid_event",
            Some(""),
        ),
    ];
    for (body_text, code, prefix) in cases {
        let Reply::Keep(response) = only(peer.send(publish(body_text), 1)) else {
            panic!("{body_text}")
        };
        assert_eq!(status(&response), 400, "{body_text}");
        let error = &body_json(&response)["error"];
        assert_eq!(error["code"], code, "{body_text}");
        if let Some(prefix) = prefix {
            let message = error["message"].as_str().expect("a message");
            assert_eq!(
                message.starts_with("event "),
                !prefix.is_empty(),
                "{message}"
            );
        }
    }
    // The socket still answers.
    assert_eq!(
        statuses(&peer.send(publish(r#"{"channel":"a","data":1}"#), 2)),
        ["Pa", "K200"]
    );
}

#[test]
fn pipelined_publishes_in_one_read_are_answered_in_order() {
    let fx = Fixture::new(|_| {});
    let mut peer = Peer::new(&fx);
    let mut bytes = String::new();
    for channel in ["a", "b", "c"] {
        bytes += &publish(&format!(r#"{{"channel":"{channel}","data":1}}"#));
    }
    bytes += "GET /healthz HTTP/1.1\r\n\r\n";
    let replies = peer.send(&bytes, 1);
    assert_eq!(
        statuses(&replies),
        ["Pa", "K200", "Pb", "K200", "Pc", "K200", "K200"]
    );
    assert_eq!(fx.stat(|s| &s.http_requests), 4);
}

#[test]
fn input_waits_while_an_answer_is_owed() {
    let fx = Fixture::new(|_| {});
    let mut peer = Peer::new(&fx);
    peer.hold_publishes = true;
    let replies = peer.send(publish(r#"{"channel":"a","data":1}"#), 1);
    assert_eq!(statuses(&replies), ["Pa"]);
    // Pipelined requests arrive while the reactor holds the publish.
    assert!(peer
        .send(publish(r#"{"channel":"b","data":1}"#), 2)
        .is_empty());
    assert!(peer.send("GET /healthz HTTP/1.1\r\n\r\n", 3).is_empty());
    // No 408 for a request that is complete: the reactor owes the answer.
    assert_eq!(peer.timer(100_000).into_replies(), (None, vec![]));
    assert_eq!(fx.stat(|s| &s.http_requests), 0);
    let replies = peer.release(1, 4);
    assert_eq!(statuses(&replies), ["K200", "Pb"]);
    let replies = peer.release(1, 5);
    assert_eq!(statuses(&replies), ["K200", "K200"]);
    assert_eq!(fx.stat(|s| &s.http_requests), 3);
    // The deadline restarted with the last answer.
    assert_eq!(
        peer.session.deadline(),
        5 + ms(fx.config.timeouts.handshake)
    );
}

#[test]
fn a_refused_publish_keeps_the_socket_with_retry_after() {
    let fx = Fixture::new(|_| {});
    let mut peer = Peer::new(&fx);
    peer.hold_publishes = true;
    peer.send(publish(r#"{"channel":"a","data":1}"#), 1);
    let mut out = Vec::new();
    let (status_code, code, message) = (
        Status::ServiceUnavailable,
        "ingest_full",
        "the relay is saturated; retry shortly",
    );
    peer.session
        .publish_refused(status_code, code, message, at(2), &fx.cx(), &mut out);
    let Reply::Keep(response) = only(peer.play(out, 2)) else {
        panic!()
    };
    assert_eq!(status(&response), 503);
    assert!(response.contains("Retry-After: 1\r\n"));
    assert_eq!(
        body_json(&response),
        json!({"error":{"code":"ingest_full","message":message}})
    );
}

#[test]
fn publish_with_connection_close_ends_after_the_answer() {
    let fx = Fixture::new(|_| {});
    let request = with_header(&publish(r#"{"channel":"a","data":1}"#), "Connection: close");
    let mut peer = Peer::new(&fx);
    let replies = peer.send(request, 1);
    assert_eq!(statuses(&replies), ["Pa", "F200"]);
    let replies = Peer::new(&fx).send(with_header(&publish("x"), "Connection: close"), 1);
    assert_eq!(statuses(&replies), ["F400"]);
}

#[test]
fn body_split_across_reads_with_expect_continue_sent_once() {
    let fx = Fixture::new(|_| {});
    let body_text = r#"{"channel":"a","data":"0123456789"}"#;
    let request = with_header(&publish(body_text), "Expect: 100-continue");
    let head_len = request.len() - body_text.len();
    let mut peer = Peer::new(&fx);
    let replies = peer.send(&request[..head_len], 1);
    let [Reply::Keep(go_ahead)] = &replies[..] else {
        panic!("{replies:?}")
    };
    assert_eq!(go_ahead, "HTTP/1.1 100 Continue\r\n\r\n");
    for (i, byte) in body_text.as_bytes()[..body_text.len() - 1]
        .iter()
        .enumerate()
    {
        assert!(peer.send([*byte], 2 + i as Millis).is_empty());
    }
    let replies = peer.send(&body_text[body_text.len() - 1..], 100);
    assert_eq!(statuses(&replies), ["Pa", "K200"]);
    // The next request starts afresh: a new go-ahead for it.
    let replies = peer.send(&request[..head_len], 101);
    assert_eq!(statuses(&replies), ["K100"]);
}

#[test]
fn no_go_ahead_when_the_body_came_with_the_head() {
    let fx = Fixture::new(|_| {});
    let request = with_header(
        &publish(r#"{"channel":"a","data":1}"#),
        "Expect: 100-continue",
    );
    assert_eq!(statuses(&Peer::new(&fx).send(request, 1)), ["Pa", "K200"]);
}

#[test]
fn an_incomplete_request_gets_408_at_the_deadline() {
    let fx = Fixture::new(|_| {});
    let handshake = ms(fx.config.timeouts.handshake);
    let mut peer = Peer::new(&fx);
    assert_eq!(peer.session.deadline(), handshake);
    assert!(peer.send("GET /ws HTTP/1.1\r\nHost", 10).is_empty());
    let (next, replies) = peer.timer(handshake - 1);
    assert_eq!((next, replies.len()), (Some(handshake), 0));
    let (next, replies) = peer.timer(handshake);
    assert_eq!(next, None);
    assert_eq!(statuses(&replies), ["F408"]);
    // A body that never completes times out the same way.
    let mut peer = Peer::new(&fx);
    let request = publish("{}");
    peer.send(&request[..request.len() - 1], 1);
    assert_eq!(statuses(&peer.timer(handshake).1), ["F408"]);
}

#[test]
fn an_idle_socket_is_dropped_at_the_deadline() {
    let fx = Fixture::new(|_| {});
    let handshake = ms(fx.config.timeouts.handshake);
    // Never sent anything.
    assert_eq!(statuses(&Peer::new(&fx).timer(handshake).1), ["drop"]);
    // Kept alive after an answer: the deadline restarts with it.
    let mut peer = Peer::new(&fx);
    peer.send("GET /healthz HTTP/1.1\r\n\r\n", 3_000);
    assert_eq!(peer.session.deadline(), 3_000 + handshake);
    let (next, replies) = peer.timer(handshake);
    assert_eq!((next, replies.len()), (Some(3_000 + handshake), 0));
    let (next, replies) = peer.timer(3_000 + handshake);
    assert_eq!(next, None);
    assert_eq!(statuses(&replies), ["drop"]);
}

/// Lets a `(next, replies)` pair be compared in one `assert_eq!`.
trait IntoReplies {
    fn into_replies(self) -> (Option<Millis>, Vec<String>);
}

impl IntoReplies for (Option<Millis>, Vec<Reply>) {
    fn into_replies(self) -> (Option<Millis>, Vec<String>) {
        (self.0, statuses(&self.1))
    }
}
