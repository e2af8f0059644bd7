//! The `tidings` binary: startup line, flags, config files, signals, `--demo`.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use common::process::*;
use common::*;
use serde_json::json;

/// Sends `signal` with a connected client; expects close 1001 and exit 0.
fn signal_closes_clients_and_exits_zero(signal: libc::c_int) {
    let (mut proc, addr) = Proc::start(&[]);
    let mut client = connect(addr);
    client.subscribe(&["job.*"]); // the socket is fully established
    proc.signal(signal);
    assert_eq!(client.expect_close(), Closed::Code(1001));
    let status = proc.wait_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "exit {status:?}; stderr:\n{}",
        proc.stderr_text()
    );
    // Exactly one stdout line: nothing more after the startup line.
    let extra = proc.rest_of_stdout();
    assert!(extra.is_empty(), "unexpected stdout lines: {extra:?}");
}

#[test]
fn startup_line_names_the_bound_address() {
    let (mut proc, addr) = Proc::start(&[]);
    assert_eq!(http_get(addr, "/healthz").status, 200);
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit().success());
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_zero() {
    signal_closes_clients_and_exits_zero(libc::SIGTERM);
}

#[test]
fn sigint_closes_clients_with_1001_and_exits_zero() {
    signal_closes_clients_and_exits_zero(libc::SIGINT);
}

#[test]
fn default_channel_flag_works_end_to_end() {
    let (_proc, addr) = Proc::start(&[
        "--default-channel",
        "job.*",
        "--default-channel",
        "cluster.*",
    ]);
    let mut client = connect(addr); // sends nothing, like the seed's client
    for (channel, data) in [
        ("other.x", json!(0)),
        ("cluster.updated", json!({"name": "prod-cluster"})),
    ] {
        let body = json!({"channel": channel, "data": data}).to_string();
        let response = http_publish(addr, &body, "");
        assert_eq!(response.status, 200, "{}", response.body_text());
    }
    let body = json!({"channel": "job.progress", "data": {"p": 1}}).to_string();
    let job_seq = http_publish(addr, &body, "").json()["seq"]
        .as_u64()
        .expect("seq");

    let event = client.next_json();
    assert_eq!(
        event["type"], "cluster.updated",
        "other.x leaked or cluster.* missing: {event}"
    );
    assert_eq!(event["data"], json!({"name": "prod-cluster"}));
    assert_eq!(event_seq(&client.next_json(), "job.progress"), job_seq);
}

#[test]
fn config_file_is_applied() {
    let config = TempFile::config(
        "good",
        "default_channels = [\"cluster.*\"]\n[limits]\nmax_message_size = 1024\n\
         max_subscriptions = 8\nmax_channel_length = 64\n",
    );
    let (_proc, addr) = Proc::start(&["--config", config.path()]);
    let mut client = connect(addr);
    let body = r#"{"channel":"cluster.added","data":{"name":"c1"}}"#;
    let seq = http_publish(addr, body, "").json()["seq"]
        .as_u64()
        .expect("seq");
    assert_eq!(event_seq(&client.next_json(), "cluster.added"), seq);
    // 1000 bytes pass and 1100 do not: the configured 1024 applies, not
    // the default (64 KiB).
    let text = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(980));
    client.send_text(&text);
    assert_eq!(client.next_json()["type"], "pong");
    let text = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(1080));
    client.send_text(&text);
    assert_eq!(client.expect_close(), Closed::Code(1009));
}

#[test]
fn bad_config_file_exits_nonzero_naming_the_key() {
    let cases = [
        (
            "zero",
            "[limits]\nmax_message_size = 0\n",
            "limits.max_message_size",
        ),
        ("unknown", "[limits]\nbogus_limit = 1\n", "bogus_limit"),
        (
            "pong",
            "[timeouts]\nping_interval = \"70s\"\n",
            "timeouts.pong_wait",
        ),
        (
            "pattern",
            "default_channels = [\"a..b\"]\n",
            "default_channels",
        ),
    ];
    for (name, text, key) in cases {
        let config = TempFile::config(name, text);
        let mut proc = Proc::spawn(&["--config", config.path()]);
        let status = proc.wait_exit();
        let stderr = proc.stderr_text();
        // README: "A bad configuration exits 1 with a message naming the key."
        assert_eq!(
            status.code(),
            Some(1),
            "{name}: exit {status:?}; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(key),
            "{name}: stderr should name {key}:\n{stderr}"
        );
        let stdout = proc.rest_of_stdout();
        assert!(
            stdout.is_empty(),
            "{name}: printed {stdout:?} despite the bad config"
        );
    }
}

#[test]
fn missing_config_file_exits_nonzero() {
    let path = std::env::temp_dir().join("tidings-it-does-not-exist.toml");
    let mut proc = Proc::spawn(&["--config", path.to_str().unwrap()]);
    let status = proc.wait_exit();
    let stderr = proc.stderr_text();
    assert!(!status.success(), "started without its config file");
    assert!(
        stderr.contains("tidings-it-does-not-exist.toml"),
        "stderr should name the file:\n{stderr}"
    );
}

#[test]
fn demo_publishes_sample_events() {
    // README: with --demo "a client sees metrics.system, job.*, alert.* ...
    // traffic at once". cluster.* comes only after a whole demo job, so it is
    // not required here.
    let (_proc, addr) = Proc::start(&["--demo"]);
    let mut client = connect(addr);
    // The demo's default channels may deliver before the reply comes.
    client.send_json(&serde_json::json!({"type": "subscribe", "channels": [">"]}));
    let deadline = Instant::now() + WAIT;
    let mut missing = vec!["metrics.system", "job.", "alert."];
    let mut last_seq = 0;
    while !missing.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "no {missing:?} events within {WAIT:?}"
        );
        let event = client.next_json_within(remaining);
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        if kind == "subscribed" {
            continue;
        }
        let seq = event_seq(&event, &kind);
        assert!(seq > last_seq, "seq {seq} after {last_seq}");
        last_seq = seq;
        if kind == "metrics.system" {
            assert!(event["data"].is_object(), "{event}");
        }
        missing.retain(|prefix| !kind.starts_with(prefix));
    }
}

#[test]
fn unknown_flag_is_rejected() {
    let mut proc = Proc::spawn(&["--no-such-flag"]);
    let status = proc.wait_exit();
    assert!(!status.success(), "unknown flag accepted");
    assert!(!proc.stderr_text().is_empty(), "no usage message on stderr");
}

#[test]
fn flags_override_the_config_file() {
    // docs/configuration.md: --listen and --default-channel win over the file.
    let config = TempFile::config(
        "override",
        "listen = \"127.0.0.1:1\"\ndefault_channels = [\"cluster.*\"]\n",
    );
    let (_proc, addr) = Proc::start(&["--config", config.path(), "--default-channel", "job.*"]);
    assert_ne!(addr.port(), 1, "--listen did not override the file");
    let mut client = connect(addr);
    let hidden = r#"{"channel":"cluster.updated","data":{}}"#;
    assert_eq!(http_publish(addr, hidden, "").status, 200);
    let body = r#"{"channel":"job.progress","data":{}}"#;
    let seq = http_publish(addr, body, "").json()["seq"]
        .as_u64()
        .expect("seq");
    // The file's cluster.* was replaced, so job.progress comes first.
    assert_eq!(event_seq(&client.next_json(), "job.progress"), seq);
}

#[test]
fn startup_line_says_wss_with_tls() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("generate a certificate");
    let cert = TempFile::new("tls-cert.pem", &certified.cert.pem());
    let key = TempFile::new("tls-key.pem", &certified.signing_key.serialize_pem());
    let config = TempFile::config(
        "tls",
        &format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert.path(), key.path()),
    );
    let mut proc = Proc::spawn(&["--config", config.path()]);
    let line = proc.startup_line();
    let addr = line
        .strip_prefix("tidings listening on wss://")
        .and_then(|rest| rest.strip_suffix("/ws"))
        .unwrap_or_else(|| panic!("startup line {line:?} should offer wss://ADDR/ws"));
    let addr: SocketAddr = addr.parse().expect("an address in the startup line");
    assert_ne!(addr.port(), 0, "{line}");
}

#[test]
fn listen_takes_a_host_name() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command.args(["--listen", "localhost:0"]);
    let mut proc = Proc::spawn_command(command);
    let addr = parse_any_startup_line(&proc.startup_line());
    // localhost may resolve to 127.0.0.1 or ::1 first, depending on the host.
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(http_get(addr, "/healthz").status, 200);
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit().success());
}

#[test]
fn config_file_listen_takes_a_host_name() {
    let config = TempFile::config("hostname", "listen = \"localhost:0\"\n");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command.args(["--config", config.path()]);
    let mut proc = Proc::spawn_command(command);
    let addr = parse_any_startup_line(&proc.startup_line());
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(http_get(addr, "/healthz").status, 200);
}

#[test]
fn listen_without_a_port_is_refused() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command.args(["--listen", "localhost"]);
    let mut proc = Proc::spawn_command(command);
    let status = proc.wait_exit();
    let stderr = proc.stderr_text();
    assert_eq!(status.code(), Some(2), "{status:?}; stderr:\n{stderr}");
    assert!(stderr.contains("host:port"), "{stderr}");
    assert!(proc.rest_of_stdout().is_empty());
}

#[test]
fn invalid_log_level_exits_2_listing_the_levels() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("TIDINGS_LOG", "verbose");
    let mut proc = Proc::spawn_command(command);
    let status = proc.wait_exit();
    let stderr = proc.stderr_text();
    assert_eq!(status.code(), Some(2), "{status:?}; stderr:\n{stderr}");
    assert!(stderr.contains("TIDINGS_LOG"), "{stderr}");
    assert!(stderr.contains("\"verbose\""), "{stderr}");
    for level in ["off", "error", "warn", "info", "debug", "trace"] {
        assert!(stderr.contains(level), "{level} not listed: {stderr}");
    }
    assert!(proc.rest_of_stdout().is_empty(), "started anyway");
}

#[test]
fn valid_log_level_is_accepted() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("TIDINGS_LOG", "warn");
    let mut proc = Proc::spawn_command(command);
    let addr = parse_startup_line(&proc.startup_line());
    assert_eq!(http_get(addr, "/healthz").status, 200);
}

#[test]
fn demo_feeds_a_client_that_sends_nothing() {
    let mut proc = Proc::spawn(&["--demo"]);
    let line = proc.startup_line();
    let addr = parse_startup_line(&line);
    assert!(
        line.ends_with(
            " (demo: a client that sends nothing receives metrics.system, job.*, alert.*, cluster.*)"
        ),
        "{line}"
    );
    // No subscribe: the demo's channels are the defaults. metrics.system
    // comes every second, job.* within one.
    let mut client = connect(addr);
    let mut missing = vec!["metrics.system", "job."];
    let deadline = Instant::now() + WAIT;
    while !missing.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "no {missing:?} events within {WAIT:?}"
        );
        let event = client.next_json_within(remaining);
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        missing.retain(|prefix| !kind.starts_with(prefix));
    }
}

#[test]
fn demo_keeps_configured_default_channels() {
    let mut proc = Proc::spawn(&["--demo", "--default-channel", "alert.*"]);
    let line = proc.startup_line();
    assert!(
        line.ends_with(" (demo: a client that sends nothing receives alert.*)"),
        "{line}"
    );
    let addr = parse_startup_line(&line);
    let mut client = connect(addr);
    // An event on a channel the demo also uses, but outside alert.*: it
    // must not arrive; the next event that does is ours.
    let hidden = r#"{"channel":"metrics.system","data":{}}"#;
    assert_eq!(http_publish(addr, hidden, "").status, 200);
    let body = r#"{"channel":"alert.test","data":{}}"#;
    let seq = http_publish(addr, body, "").json()["seq"]
        .as_u64()
        .expect("seq");
    loop {
        // The demo's own alerts may come first, never anything else.
        let event = client.next_json();
        let kind = event["type"].as_str().unwrap_or_default();
        assert!(kind.starts_with("alert."), "outside alert.*: {event}");
        if kind == "alert.test" {
            assert_eq!(event_seq(&event, "alert.test"), seq);
            break;
        }
    }
}
