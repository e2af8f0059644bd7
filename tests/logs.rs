//! The binary's logs: no credential ever appears in them, at the debug
//! level too; `--log-format json`; one line per close, rate-limited; the
//! level from `RUST_LOG` when `TIDINGS_LOG` is unset.

mod common;

use std::process::Command;

use common::jwt::{hs256, pyjwt_available};
use common::proc::*;
use common::*;
use serde_json::{json, Value};

const CLIENT_TOKEN: &str = "static-client-tok-5b1e";
const PUBLISH_TOKEN: &str = "static-publish-tok-93d0";
const SECRET: &str = "log-test-hs256-secret-0123456789abcd";

/// Starts the binary at debug level with tokens, JWTs and `extra_toml`;
/// `name` keeps the config file apart from the other tests' (they run at
/// once, in one process).
fn start(name: &str, extra_toml: &str, args: &[&str]) -> (Proc, std::net::SocketAddr, TempFile) {
    let config = TempFile::config(
        name,
        &format!(
            "[[auth.tokens]]\ntoken = \"{CLIENT_TOKEN}\"\n[auth]\nallow_query_token = true\n\
             [auth.jwt]\nhs256_secret = \"{SECRET}\"\n[publish]\ntokens = [\"{PUBLISH_TOKEN}\"]\n\
             {extra_toml}"
        ),
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command
        .args(["--listen", "127.0.0.1:0", "--config", config.path()])
        .args(args)
        .env("TIDINGS_LOG", "debug");
    let mut proc = Proc::spawn_command(command);
    let addr = parse_startup_line(&proc.startup_line());
    (proc, addr, config)
}

/// Authenticates with `token` in every way a client can, well and badly.
fn use_everywhere(addr: std::net::SocketAddr, token: &str) {
    let (mut raw, response) = Raw::upgrade_with(
        addr,
        &format!("Sec-WebSocket-Protocol: Bearer, {token}\r\n"),
    );
    assert_eq!(response.status, 101, "{}", response.head);
    raw.send_text(&json!({"type": "subscribe", "channels": ["a"]}).to_string());
    raw.next_json();
    let (_raw, response) = Raw::upgrade_with(addr, &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(response.status, 101, "{}", response.head);
    let mut raw = Raw::connect(addr);
    let request = upgrade_request("").replacen("/ws", &format!("/ws?token={token}"), 1);
    raw.send(request.as_bytes());
    assert_eq!(raw.read_response().status, 101);
    let mut raw = Raw::upgrade(addr);
    raw.send_text(&json!({"type": "auth", "token": token}).to_string());
    assert_eq!(raw.next_json()["type"], "authenticated");
    raw.send_text(&json!({"type": "refresh", "token": token}).to_string());
    raw.next_json();
    // Refused, with the token one character off.
    let wrong = format!("{token}x");
    let (_raw, response) = Raw::upgrade_with(addr, &format!("Authorization: Bearer {wrong}\r\n"));
    assert_eq!(response.status, 401);
    let mut raw = Raw::upgrade(addr);
    raw.send_text(&json!({"type": "auth", "token": wrong}).to_string());
    raw.expect_close_reason();
    let body = r#"{"channel":"a","data":{}}"#;
    http_publish(addr, body, &format!("Authorization: Bearer {token}\r\n"));
    http_publish(addr, body, &format!("Authorization: Bearer {wrong}\r\n"));
    http_get_with(
        addr,
        "/api/channels/a",
        &format!("Authorization: Bearer {token}\r\n"),
    );
}

#[test]
fn no_token_or_jwt_appears_in_the_debug_log() {
    if !pyjwt_available() {
        return;
    }
    let (mut proc, addr, _config) = start("no-secrets", "", &[]);
    let jwt = hs256(
        SECRET,
        &json!({"exp_in": 600, "channels": [">"], "publish": [">"]}),
    );
    use_everywhere(addr, CLIENT_TOKEN);
    use_everywhere(addr, &jwt);
    let body = r#"{"channel":"a","data":{}}"#;
    let ok = http_publish(
        addr,
        body,
        &format!("Authorization: Bearer {PUBLISH_TOKEN}\r\n"),
    );
    assert_eq!(ok.status, 200);
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit().success());
    let log = proc.stderr_text();
    assert!(log.contains("DEBUG"), "the log ran at debug: {log}");
    assert!(log.contains("closing"), "closes are logged: {log}");
    let signature = jwt.rsplit('.').next().unwrap();
    for secret in [CLIENT_TOKEN, PUBLISH_TOKEN, SECRET, &jwt, signature] {
        assert!(
            !log.contains(secret),
            "{secret:?} leaked into the log:\n{log}"
        );
    }
}

#[test]
fn json_format_writes_one_object_per_line_with_the_close_reason() {
    let (mut proc, addr, _config) = start("json", "", &["--log-format", "json"]);
    let mut raw = Raw::upgrade(addr);
    raw.send_text(r#"{"type":"auth","token":"nope"}"#);
    raw.expect_close_reason();
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit().success());
    let log = proc.stderr_text();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["reason"] == "auth_failed" && l["code"] == 4001 && l["level"] == "INFO"),
        "{log}"
    );
}

#[test]
fn a_burst_of_closes_is_summed_up_past_the_limit() {
    let (mut proc, addr, _config) = start("burst", "[limits]\nclose_log_per_second = 2\n", &[]);
    let mut sockets: Vec<Raw> = (0..20).map(|_| Raw::upgrade(addr)).collect();
    for raw in &mut sockets {
        raw.send_text(r#"{"type":"auth","token":"nope"}"#);
    }
    for raw in &mut sockets {
        raw.expect_close_reason();
    }
    proc.signal(libc::SIGTERM);
    assert!(proc.wait_exit().success());
    let log = proc.stderr_text();
    let closes = log
        .lines()
        .filter(|l| l.contains("closing 127.0.0.1"))
        .count();
    // At most 2 a second per reactor; the run takes a few seconds at most.
    assert!(closes < 20, "{closes} close lines:\n{log}");
    assert!(log.contains("were not logged"), "{log}");
}

/// With `TIDINGS_LOG` unset, `RUST_LOG` sets the level: at `warn` a
/// connection's close line (info) is left out, at `info` it is written.
#[test]
fn rust_log_sets_the_level_when_tidings_log_is_unset() {
    let levels_at = |rust_log: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
        command
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .env_remove("TIDINGS_LOG")
            .env("RUST_LOG", rust_log);
        let mut proc = Proc::spawn_command(command);
        let addr = parse_startup_line(&proc.startup_line());
        let mut raw = Raw::upgrade(addr);
        raw.send_text(r#"{"type":"ping"}"#);
        assert_eq!(raw.next_json()["type"], "pong");
        drop(raw);
        proc.signal(libc::SIGTERM);
        assert!(proc.wait_exit().success());
        let log = proc.stderr_text();
        log.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .map(|l| l["level"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<String>>()
    };
    let at_warn = levels_at("warn");
    assert!(
        at_warn.iter().all(|l| l == "WARN" || l == "ERROR"),
        "{at_warn:?}"
    );
    let at_info = levels_at("info");
    assert!(at_info.iter().any(|l| l == "INFO"), "{at_info:?}");
}
