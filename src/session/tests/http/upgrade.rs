//! The upgrade: accepted, refused, and how auth and origins decide.

use super::*;

#[test]
fn upgrade_is_accepted_with_the_rfc_accept_key() {
    let fx = Fixture::new(|c| c.default_channels = vec!["news.>".into()]);
    let mut peer = Peer::new(&fx);
    let Reply::Upgrade {
        response,
        session,
        outputs,
        request,
    } = only(peer.send(UPGRADE, 5))
    else {
        panic!("not upgraded")
    };
    // Without hooks, no details are gathered for them.
    assert_eq!(request, None);
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_eq!(outputs, [WsOutput::Subscribe("news.>".into())]);
    // The first ping falls in the second half of the interval, where the
    // client's key puts it.
    let first = session.first_timeout(5, &fx.cx());
    assert!(
        (5 + 27_000..=5 + 54_000).contains(&first),
        "first ping at {first}"
    );
    assert_ne!(first, 5 + 54_000, "the key did not move the first ping");
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
    // The subscribe the frame carried: accepted (the reactor answers it
    // with its position), then the router change.
    let [WsOutput::Subscribed(subscribed), WsOutput::Subscribe(pattern)] = &outputs[..] else {
        panic!("{outputs:?}")
    };
    assert_eq!(subscribed.channels, ["a.b"]);
    assert_eq!(&**pattern, "a.b");
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
fn with_hooks_the_upgrade_carries_the_request_for_on_connect() {
    let fx = Fixture::with_hook(&[], with_tokens);
    let mut peer = Peer::new(&fx);
    let request = with_header(UPGRADE, "Authorization: Bearer scoped");
    let request = request.replacen("/ws", "/ws?room=7", 1);
    let Reply::Upgrade { request, .. } = only(peer.send(&request, 5)) else {
        panic!("not upgraded")
    };
    let request = request.expect("details for the hook");
    assert_eq!(request.path, "/ws");
    assert_eq!(request.query.as_deref(), Some("room=7"));
    assert_eq!(request.token.as_deref(), Some("scoped"));
    assert!(request
        .headers
        .contains(&("Authorization".to_string(), "Bearer scoped".to_string())));
    assert!(request
        .headers
        .iter()
        .any(|(name, value)| name == "Sec-WebSocket-Version" && value == "13"));
}
