//! The small endpoints, head errors, buffer limits and the deadlines.

use super::*;

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
    assert_eq!(body_json(texts[3])["error"]["code"], "method_not_allowed");
    assert!(texts[4].contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
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

#[test]
fn state_reads_are_handed_to_the_reactor_and_the_pages_are_served() {
    let fx = Fixture::new(|_| {});
    let mut peer = Peer::new(&fx);
    let requests = "GET /api/stats HTTP/1.1\r\n\r\n\
                    GET /api/channels/metrics.cpu HTTP/1.1\r\n\r\n\
                    GET /api/channels?pattern=metrics.%3E HTTP/1.1\r\n\r\n\
                    GET /api/channels HTTP/1.1\r\n\r\n\
                    GET /api/channels/a..b HTTP/1.1\r\n\r\n\
                    GET /tidings.js HTTP/1.1\r\n\r\n\
                    GET / HTTP/1.1\r\n\r\n";
    let replies = peer.send(requests, 1);
    assert_eq!(
        statuses(&replies),
        [
            "QStats",
            "K200",
            "QChannel(\"metrics.cpu\")",
            "K200",
            "QChannels { pattern: \"metrics.>\", token: None }",
            "K200",
            "K400",
            "K400",
            "K200",
            "K200",
        ]
    );
    let Reply::Keep(script) = &replies[8] else {
        panic!("{replies:?}")
    };
    assert!(script.contains("Content-Type: text/javascript"), "{script}");
    assert!(script.contains("TidingsClient"), "the client is served");
    let Reply::Keep(page) = &replies[9] else {
        panic!("{replies:?}")
    };
    assert!(page.contains("Content-Type: text/html"), "{page}");
}

#[test]
fn state_reads_need_a_client_token_and_stay_in_its_scope() {
    let fx = Fixture::new(with_tokens);
    let mut peer = Peer::new(&fx);
    let replies = peer.send("GET /api/stats HTTP/1.1\r\n\r\n", 1);
    assert_eq!(statuses(&replies), ["K401"]);
    let scoped =
        |path: &str| format!("GET {path} HTTP/1.1\r\nAuthorization: Bearer scoped\r\n\r\n");
    let replies = peer.send(
        scoped("/api/channels/public.a")
            + &scoped("/api/channels/private.a")
            + &scoped("/api/channels?pattern=%3E")
            + &scoped("/api/channels?pattern=public.*"),
        2,
    );
    assert_eq!(
        statuses(&replies)[..],
        [
            "QChannel(\"public.a\")",
            "K200",
            "K403",
            "K403",
            "QChannels { pattern: \"public.*\", token: Some(Token(1)) }",
            "K200",
        ]
    );
    assert_eq!(fx.stat(|s| &s.auth_failures), 1);
}
