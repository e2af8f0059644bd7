//! `POST /api/publish`: refusals, answers, pipelining and bodies in pieces.

use super::*;

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
        // Two framings: how requests are smuggled (RFC 9112 6.3).
        (
            "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer pub\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}"
                .to_string(),
            400,
            "ambiguous_length",
        ),
        (
            "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer pub\r\nTransfer-Encoding: gzip\r\n\r\n"
                .to_string(),
            400,
            "bad_transfer_encoding",
        ),
        (
            "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer pub\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_string(),
            501,
            "unsupported_transfer_encoding",
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
    let Reply::Final(response) = only(Peer::new(&fx).send(&cases[6].0, 1)) else {
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

/// A chunked publish of `chunks`, then `behind` (a pipelined request).
fn chunked_publish(chunks: &[&str], trailer: &str, behind: &str) -> String {
    let mut request =
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n".to_string();
    for chunk in chunks {
        request.push_str(&format!("{:X};ext=1\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str(&format!("0\r\n{trailer}\r\n{behind}"));
    request
}

#[test]
fn chunked_bodies_split_at_every_position() {
    let fx = Fixture::new(|_| {});
    let request = chunked_publish(
        &[r#"{"chan"#, r#"nel":"job.1","#, r#""data":{"p":1}}"#],
        "X-Checksum: abc\r\n",
        "GET /healthz HTTP/1.1\r\n\r\n",
    );
    let bytes = request.as_bytes();
    for split in 0..=bytes.len() {
        let mut peer = Peer::new(&fx);
        let mut replies = peer.send(&bytes[..split], 1);
        replies.extend(peer.send(&bytes[split..], 2));
        assert_eq!(
            statuses(&replies),
            ["Pjob.1", "K200", "K200"],
            "split at {split}"
        );
        let Reply::Keep(answer) = &replies[1] else {
            panic!()
        };
        assert_eq!(body_json(answer), json!({"seq":1}), "split at {split}");
    }
    // And byte by byte.
    let mut peer = Peer::new(&fx);
    let replies: Vec<Reply> = bytes.iter().flat_map(|b| peer.send([*b], 1)).collect();
    assert_eq!(statuses(&replies), ["Pjob.1", "K200", "K200"]);
}

#[test]
fn chunked_bodies_are_bounded_and_checked() {
    let fx = Fixture::new(|c| c.limits.max_request_body = 40);
    // Over the limit: 413 at the chunk size that passes it, before its data.
    let request = chunked_publish(&[&"a".repeat(30)], "", "");
    let head_and_first = request.find("\r\n0\r\n").expect("a last chunk");
    let mut peer = Peer::new(&fx);
    assert!(peer.send(&request[..head_and_first], 1).is_empty());
    let Reply::Final(response) = only(peer.send("\r\n1E\r\n", 2)) else {
        panic!()
    };
    assert_eq!(status(&response), 413);
    assert_eq!(
        body_json(&response)["error"]["message"],
        "the body is at least 60 bytes; limits.max_request_body is 40"
    );
    // Chunk framing does not count against the limit, only data.
    let small: Vec<String> =
        r#"{"channel":"a","data":[1,2,3,4,5,6,7]}"#.chars().map(String::from).collect();
    let small: Vec<&str> = small.iter().map(String::as_str).collect();
    let request = chunked_publish(&small, "", "");
    assert!(request.len() > 40 + 100);
    assert_eq!(statuses(&Peer::new(&fx).send(&request, 1)), ["Pa", "K200"]);
    // Broken framing is a final 400.
    let broken = [
        "POST /api/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "POST /api/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX",
        "POST /api/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\n{}\r\n0\r\n\r\n",
    ];
    for request in broken {
        let Reply::Final(response) = only(Peer::new(&fx).send(request, 1)) else {
            panic!("{request:?}")
        };
        assert_eq!(status(&response), 400, "{request:?}");
        assert_eq!(body_json(&response)["error"]["code"], "bad_chunk");
    }
}
