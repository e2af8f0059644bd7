//! `wss://`: a real TLS WebSocket client (rustls under tungstenite) against
//! a relay with a self-signed certificate made for the test.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::json;
use tidings::{Config, Relay, TlsConfig};
use tungstenite::Message;

type TlsSocket = tungstenite::WebSocket<StreamOwned<ClientConnection, TcpStream>>;

/// A certificate for `localhost` in a fresh directory, and its DER for the client.
struct TestCert {
    dir: PathBuf,
    der: Vec<u8>,
}

impl TestCert {
    fn new(name: &str) -> TestCert {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generate a certificate");
        let dir = std::env::temp_dir().join(format!("tidings-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("cert.pem"), certified.cert.pem()).expect("write cert");
        std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem())
            .expect("write key");
        TestCert {
            der: certified.cert.der().to_vec(),
            dir,
        }
    }

    fn tls_config(&self) -> TlsConfig {
        TlsConfig {
            cert: self.dir.join("cert.pem"),
            key: self.dir.join("key.pem"),
        }
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connect_wss(addr: std::net::SocketAddr, cert: &TestCert) -> TlsSocket {
    let mut roots = RootCertStore::empty();
    roots
        .add(cert.der.clone().into())
        .expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("server name");
    let session = ClientConnection::new(Arc::new(config), name).expect("client session");
    let tcp = TcpStream::connect(addr).expect("TCP connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let stream = StreamOwned::new(session, tcp);
    let (socket, response) =
        tungstenite::client(format!("ws://localhost:{}/ws", addr.port()), stream)
            .expect("WebSocket upgrade over TLS");
    assert_eq!(response.status(), 101);
    socket
}

fn next_json(socket: &mut TlsSocket) -> serde_json::Value {
    loop {
        match socket.read().expect("read over TLS") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[test]
fn wss_subscribe_and_receive_events() {
    let cert = TestCert::new("events");
    let relay = TestRelay::with(|c| {
        c.tls = Some(cert.tls_config());
        // The 200 events below (800 KB) may all be fanned out in one turn,
        // before the client reads any: room for all of them, so this test is
        // about TLS records and flushes, not the slow-consumer limit.
        c.limits.max_queue_bytes = 4 << 20;
    });
    let mut socket = connect_wss(relay.addr, &cert);
    socket
        .send(Message::text(
            json!({"type": "subscribe", "channels": ["job.*"]}).to_string(),
        ))
        .expect("send");
    assert_eq!(next_json(&mut socket)["type"], "subscribed");
    // Enough events, and large enough, to need many TLS records and flushes.
    let big = "x".repeat(4000);
    for i in 0..200 {
        relay
            .publisher
            .publish(tidings::Event::new("job.progress", &json!({"i": i, "pad": big})).unwrap())
            .expect("publish");
    }
    let mut last_seq = 0;
    for i in 0..200 {
        let event = next_json(&mut socket);
        assert_eq!(event["data"]["i"], i, "{event}");
        let seq = event["seq"].as_u64().expect("seq");
        assert!(seq > last_seq);
        last_seq = seq;
    }
    socket.close(None).expect("close");
}

#[test]
fn tls_handshake_times_out() {
    let cert = TestCert::new("timeout");
    let relay = TestRelay::with(|c| {
        c.tls = Some(cert.tls_config());
        c.timeouts.handshake = Duration::from_millis(300);
    });
    // A TCP client that never starts the TLS handshake.
    let mut tcp = TcpStream::connect(relay.addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tcp.read(&mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the relay to close, got {read:?}"
    );
    assert!(
        started.elapsed() < WAIT,
        "closed by the handshake timeout, not the read timeout"
    );
}

#[test]
fn plaintext_on_a_tls_port_is_dropped() {
    let cert = TestCert::new("plain");
    let relay = TestRelay::with(|c| c.tls = Some(cert.tls_config()));
    let (mut raw, _) = (Raw::connect(relay.addr), ());
    raw.send_lenient(upgrade_request("").as_bytes());
    assert!(
        raw.closed_within(WAIT),
        "a plaintext request must not be answered"
    );
    // The relay is unharmed.
    let mut socket = connect_wss(relay.addr, &cert);
    socket
        .send(Message::text(json!({"type": "ping"}).to_string()))
        .expect("send");
    assert_eq!(next_json(&mut socket)["type"], "pong");
}

#[test]
fn unreadable_certificate_names_the_key() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsConfig {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        }),
        ..Config::default()
    };
    let error = Relay::new(config).err().expect("must fail").to_string();
    assert!(error.contains("tls.cert"), "{error}");
}
