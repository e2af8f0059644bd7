//! A real nats-server for the fleet tests, and helpers for relays on it.
//!
//! Each test starts its own nats-server on free ports (with JetStream and a
//! store directory of its own when asked) and kills it itself. Without a
//! `nats-server` binary (`NATS_SERVER`, `PATH`, or /usr/sbin/nats-server,
//! where the Debian package puts it) the tests say so loudly and pass;
//! `.ci/run` installs it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tidings::UpstreamConfig;

use super::{http, http_get, publish_request, Client, HttpResponse, TestRelay, WAIT};

pub struct NatsServer {
    binary: PathBuf,
    pub port: u16,
    pub monitor: u16,
    /// JetStream's store directory (`-js -sd`), kept across restarts and
    /// removed on drop.
    store: Option<PathBuf>,
    child: Option<Child>,
}

fn nats_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Some(path.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/nats-server");
        debian.is_file().then_some(debian)
    })
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl NatsServer {
    /// A stopped server on free ports; None (after a loud message) when
    /// there is no nats-server to run.
    pub fn new() -> Option<NatsServer> {
        let Some(binary) = nats_binary() else {
            super::skipping("nats-server (the Debian package nats-server, or set NATS_SERVER)");
            return None;
        };
        Some(NatsServer {
            binary,
            port: free_port(),
            monitor: free_port(),
            store: None,
            child: None,
        })
    }

    /// A stopped server with JetStream, its store in a new temporary directory.
    pub fn new_jetstream() -> Option<NatsServer> {
        let mut server = NatsServer::new()?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tidings-js-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the JetStream store directory");
        server.store = Some(dir);
        Some(server)
    }

    pub fn started() -> Option<NatsServer> {
        let mut server = NatsServer::new()?;
        server.start();
        Some(server)
    }

    pub fn started_jetstream() -> Option<NatsServer> {
        let mut server = NatsServer::new_jetstream()?;
        server.start();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        let mut command = Command::new(&self.binary);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()]);
        if let Some(store) = &self.store {
            command.arg("-js").arg("-sd").arg(store);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            thread::sleep(Duration::from_millis(20));
        }
        if self.store.is_some() {
            // JetStream is ready once the monitoring endpoint says so.
            let monitor: SocketAddr = ([127, 0, 0, 1], self.monitor).into();
            wait_until("JetStream to be ready", || {
                TcpStream::connect(monitor).is_ok() && http_get(monitor, "/jsz").status == 200
            });
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every subscription subject NATS holds, from its monitoring endpoint.
    pub fn subjects(&self) -> Vec<String> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.monitor).into();
        let connz = http_get(addr, "/connz?subs=1").json();
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    }

    /// A stream's state from the monitoring endpoint (`/jsz?streams=1`).
    pub fn stream_state(&self, name: &str) -> Value {
        let addr: SocketAddr = ([127, 0, 0, 1], self.monitor).into();
        let jsz = http_get(addr, "/jsz?streams=true").json();
        jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .find(|s| s["name"] == name)
            .map(|s| s["state"].clone())
            .unwrap_or(Value::Null)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(store) = self.store.take() {
            let _ = std::fs::remove_dir_all(store);
        }
    }
}

/// A relay on `nats` (core NATS mode) after `tweak`.
pub fn fleet_relay(nats: &NatsServer, tweak: impl FnOnce(&mut UpstreamConfig)) -> TestRelay {
    fleet_relay_with(nats, tweak, |_| {})
}

/// A relay on `nats`, its upstream and its whole config tweaked.
pub fn fleet_relay_with(
    nats: &NatsServer,
    tweak: impl FnOnce(&mut UpstreamConfig),
    tweak_config: impl FnOnce(&mut tidings::Config),
) -> TestRelay {
    let mut upstream = UpstreamConfig {
        nats: vec![nats.url()],
        interest_debounce: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        ..UpstreamConfig::default()
    };
    tweak(&mut upstream);
    TestRelay::with(|c| {
        c.upstream = Some(upstream);
        tweak_config(c);
    })
}

pub fn health(relay: &TestRelay) -> (u16, Value) {
    let response = http_get(relay.addr, "/healthz");
    (response.status, response.json())
}

/// Waits for `check` to hold, polling; fails the test after [`WAIT`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_up(relay: &TestRelay) {
    wait_until("the upstream to be up", || {
        health(relay).1["upstream"] == "up"
    });
}

/// A value of the relay's `/metrics`.
pub fn relay_metric(relay: &TestRelay, name: &str) -> u64 {
    let text = http_get(relay.addr, "/metrics").body_text();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Waits until the relay holds `count` NATS subscriptions (its interest
/// reached NATS, after the debounce).
pub fn wait_subscriptions(relay: &TestRelay, count: u64) {
    wait_until("the relay's NATS subscriptions", || {
        relay_metric(relay, "tidings_upstream_subscriptions") == count
    });
}

/// `POST /api/publish` of one event on `relay`.
pub fn publish_on(relay: &TestRelay, channel: &str, data: Value) -> HttpResponse {
    let body = json!({ "channel": channel, "data": data }).to_string();
    http(relay.addr, &publish_request(&body, ""))
}

/// Reads events until one with `data.last`, returning every `data.n`.
pub fn read_through_last(client: &mut Client) -> Vec<u64> {
    let (seen, notices) = read_through_last_with_notices(client);
    assert!(notices.is_empty(), "unexpected {notices:?}");
    seen
}

/// Reads events until one with `data.last`, returning every `data.n` and,
/// apart, the `resync` notices met on the way.
pub fn read_through_last_with_notices(client: &mut Client) -> (Vec<u64>, Vec<Value>) {
    let (mut seen, mut notices) = (Vec::new(), Vec::new());
    loop {
        let event = client.next_json();
        if event["type"] == "resync" {
            notices.push(event);
            continue;
        }
        if event["data"]["last"] == true {
            return (seen, notices);
        }
        seen.push(
            event["data"]["n"]
                .as_u64()
                .unwrap_or_else(|| panic!("{event}")),
        );
    }
}
