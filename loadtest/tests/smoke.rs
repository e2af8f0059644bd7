//! End-to-end smoke test: a real relay, a small swarm, full completeness.
//!
//! The relay binary comes from `TIDINGS_BIN`, else `tidings` next to this
//! crate's own binary (the same target directory), else
//! `<workspace>/target/{debug,release}/tidings`. If none exists the test
//! fails and says to build the relay first: it must not pass silently.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn relay_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDINGS_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = PathBuf::from(env!("CARGO_BIN_EXE_tidings-swarm")).parent() {
        candidates.push(dir.join("tidings"));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["debug", "release"] {
        candidates.push(root.join("target").join(profile).join("tidings"));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
            "no relay binary found (looked at {candidates:?}); run `cargo build --bin tidings` \
             in the workspace first, or set TIDINGS_BIN"
        )
        })
}

/// Starts the relay on an ephemeral port and returns it with its ws:// URL.
fn start_relay() -> (KillOnDrop, String) {
    start_relay_with(&[])
}

/// A relay configured by `config` (TOML), on an ephemeral port.
fn start_configured_relay(name: &str, config: &str) -> (KillOnDrop, String, PathBuf) {
    let path = std::env::temp_dir().join(format!("swarm-smoke-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, config).expect("write the relay's config");
    let (relay, url) = start_relay_with(&["--config", &path.to_string_lossy()]);
    (relay, url, path)
}

/// Starts the relay with `extra` arguments on an ephemeral port.
fn start_relay_with(extra: &[&str]) -> (KillOnDrop, String) {
    let bin = relay_binary();
    let mut child = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin:?}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the relay printed no `tidings listening on ...` line within 20 s");
    let url = line
        .strip_prefix("tidings listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the relay: {line:?}"))
        .trim()
        .to_string();
    (child, url)
}

/// Runs a fanout of `connections` sockets split over `processes` worker
/// processes (0: one process), with `extra` flags, checks that every event
/// arrived, and returns the RESULT.
fn fanout_is_complete(connections: u32, processes: u32, extra: &[&str]) -> serde_json::Value {
    let (_relay, url) = start_relay();
    fanout_against(&url, connections, processes, extra)
}

/// `fanout_is_complete` against a relay already running at `url`.
fn fanout_against(
    url: &str,
    connections: u32,
    processes: u32,
    extra: &[&str],
) -> serde_json::Value {
    let connections = connections.to_string();
    let processes = processes.to_string();
    let mut args = vec![
        "fanout",
        "--url",
        url,
        "--connections",
        &connections,
        "--rate",
        "200",
        "--warmup",
        "500ms",
        "--duration",
        "3s",
        "--drain",
        "5s",
        "--processes",
        &processes,
    ];
    args.extend_from_slice(extra);
    let v = swarm_result(&args);
    let phase = &v["phase"];
    assert_eq!(v["connect"]["ready"].to_string(), connections, "{v}");
    let received = phase["received"].as_u64().unwrap_or(0);
    assert!(received > 0, "no deliveries: {v}");
    assert_eq!(phase["expected"].as_u64(), Some(received), "{v}");
    assert_eq!(phase["completeness"].as_f64(), Some(1.0), "{v}");
    assert_eq!(phase["seq_gaps"], 0, "{v}");
    assert!(
        phase["deliveries_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{v}"
    );
    v
}

#[test]
fn fanout_200_subscribers_gets_everything() {
    let v = fanout_is_complete(200, 0, &[]);
    assert_eq!(v["publisher"], "batch", "{v}");
    assert_eq!(v["phase"]["publish"]["mode"], "batch", "{v}");
}

#[test]
fn fanout_over_two_worker_processes_gets_everything() {
    fanout_is_complete(300, 2, &[]);
}

#[test]
fn fanout_one_event_per_post_over_two_connections_gets_everything() {
    let v = fanout_is_complete(
        200,
        0,
        &["--publish-mode", "single", "--publish-conns", "2"],
    );
    let p = &v["phase"]["publish"];
    assert_eq!(v["publisher"], "single:2", "{v}");
    assert_eq!(p["mode"], "single", "{v}");
    assert_eq!(p["connections"], 2, "{v}");
    assert_eq!(p["largest_batch"], 1, "{v}");
    assert_eq!(p["requests"], v["phase"]["events_published"], "{v}");
    assert_eq!(p["offered_per_s"].as_f64(), Some(200.0), "{v}");
}

/// A relay with `compression = "on"`.
fn start_compressing_relay() -> (KillOnDrop, String, PathBuf) {
    start_configured_relay("deflate", "compression = \"on\"\n")
}

#[test]
fn deflate_fanout_inflates_every_event_and_reads_fewer_bytes() {
    let (relay, url, config) = start_compressing_relay();
    // Over two worker processes: each has its own inflater.
    let deflated = fanout_against(&url, 200, 2, &["--deflate"]);
    let plain = fanout_against(&url, 200, 0, &[]);
    drop(relay);
    let _ = std::fs::remove_file(config);
    let v = &deflated;
    assert_eq!(v["connect"]["deflate"], 200, "every socket agreed: {v}");
    assert_eq!(v["phase"]["closes"], serde_json::json!({}), "{v}");
    // The 150-byte events are over compression_min_size: all compressed.
    assert_eq!(v["phase"]["deflated"], v["phase"]["received"], "{v}");
    assert!(
        v["phase"]["latency"]["count"].as_u64().unwrap_or(0) > 0,
        "the publisher's `t` was found in inflated events: {v}"
    );
    // Without the offer the same relay sends plain frames, larger ones.
    assert_eq!(
        plain["connect"]["deflate"],
        serde_json::Value::Null,
        "{plain}"
    );
    assert_eq!(plain["phase"]["deflated"], 0, "{plain}");
    let bytes = |v: &serde_json::Value| v["phase"]["wire_bytes_per_event"].as_f64().unwrap_or(0.0);
    assert!(bytes(&plain) > 150.0, "{plain}");
    assert!(bytes(v) > 0.0 && bytes(v) < bytes(&plain), "{v} {plain}");
}

#[test]
fn deflate_offer_declined_runs_plain() {
    // compression is off by default: the relay answers with no extension.
    let v = fanout_is_complete(100, 0, &["--deflate"]);
    assert_eq!(v["connect"]["deflate"], 0, "{v}");
    assert_eq!(v["phase"]["deflated"], 0, "{v}");
}

/// Runs the swarm with `args` and returns its RESULT JSON.
fn swarm_result(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-swarm"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tidings-swarm");
    assert!(out.status.success(), "swarm failed: {:?}", out.status);
    parse_result(&out)
}

fn parse_result(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout:?}"));
    serde_json::from_str(json).expect("RESULT is JSON")
}

#[test]
fn storm_of_200_all_come_back_and_get_the_marker() {
    let (_relay, url) = start_relay();
    let v = swarm_result(&[
        "storm",
        "--url",
        &url,
        "--connections",
        "200",
        "--base",
        "20ms",
        "--cap",
        "500ms",
        "--deadline",
        "20s",
        "--rate",
        "50",
        "--seed",
        "7",
    ]);
    let s = &v["storm"];
    assert_eq!(v["connect"]["ready"], 200, "{v}");
    assert_eq!(s["clients"], 200, "{v}");
    assert_eq!(s["back"], 200, "{v}");
    assert_eq!(s["left_out"], 0, "{v}");
    assert_eq!(s["all_back"], true, "{v}");
    let full = s["full_resubscription_s"].as_f64().unwrap_or(f64::MAX);
    assert!(full < 20.0, "{v}");
    assert!(s["back_p50_s"].as_f64().unwrap_or(f64::MAX) <= full, "{v}");
    assert!(s["attempts"].as_u64().unwrap_or(0) >= 200, "{v}");
    let accepts: u64 = s["accepts_per_100ms"]
        .as_array()
        .map_or(0, |a| a.iter().filter_map(|x| x.as_u64()).sum());
    assert!(accepts >= 200, "{v}");
    assert!(s["peak_accepts_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
    assert_eq!(v["marker"]["received"], 200, "{v}");
    assert_eq!(v["marker"]["missing"], 0, "{v}");
    // Resume is on: a relay with history recovers every client and none
    // misses an event; one without answers plain subscribes. Either way no
    // duplicates, every reply understood, and everyone caught up.
    let r = &v["resume"];
    let replies = &r["replies"];
    assert_eq!(r["resume"], true, "{v}");
    assert_eq!(r["duplicates"], 0, "{v}");
    assert_eq!(replies["unparsed"], 0, "{v}");
    assert_eq!(r["caught_up"], 200, "{v}");
    let answered =
        replies["recovered"].as_u64().unwrap_or(0) + replies["fresh"].as_u64().unwrap_or(0);
    assert!(answered >= 200, "{v}");
    if replies["recovered"] == 200 {
        assert_eq!(r["missed"], 0, "{v}");
    }
}

#[test]
fn fanout_plot_writes_an_svg() {
    let (_relay, url) = start_relay();
    let path = std::env::temp_dir().join(format!("swarm-smoke-{}.svg", std::process::id()));
    let p = path.to_string_lossy().to_string();
    let v = swarm_result(&[
        "fanout",
        "--url",
        &url,
        "--connections",
        "50",
        "--rate",
        "100",
        "--warmup",
        "200ms",
        "--duration",
        "1s",
        "--plot",
        &p,
    ]);
    assert!(
        v["phase"]["latency"]["count"].as_u64().unwrap_or(0) > 0,
        "{v}"
    );
    let svg = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    assert!(
        svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert!(svg.contains("<polyline"), "no curve in the plot");
}

#[test]
fn restart_storm_waits_for_the_relay_and_honours_its_retry_hints() {
    // Both relays spread their clients' returns over 1.5 s.
    let (old, url, config) =
        start_configured_relay("restart", "[shutdown]\nreconnect_spread = \"1500ms\"\n");
    let listen = url
        .strip_prefix("ws://")
        .and_then(|r| r.strip_suffix("/ws"))
        .unwrap_or_else(|| panic!("unexpected URL {url}"));
    let successor = format!(
        "{} --listen {listen} --config {}",
        relay_binary().display(),
        config.display()
    );
    let plot = std::env::temp_dir().join(format!("swarm-smoke-{}-restart.svg", std::process::id()));
    let old_pid = old.0.id().to_string();
    let v = swarm_result(&[
        "storm",
        "--url",
        &url,
        "--connections",
        "200",
        "--drop",
        "server",
        "--server-pid",
        &old_pid,
        "--successor",
        &successor,
        "--deadline",
        "20s",
        "--plot",
        &plot.to_string_lossy(),
    ]);
    let svg = std::fs::read_to_string(&plot).unwrap_or_default();
    let _ = std::fs::remove_file(&plot);
    let _ = std::fs::remove_file(&config);
    let s = &v["storm"];
    assert_eq!(s["drop"], "server", "{v}");
    assert_eq!(s["clients"], 200, "{v}");
    assert_eq!(s["closed_by_server"], 200, "{v}");
    assert_eq!(s["never_closed"], 0, "{v}");
    assert_eq!(s["all_back"], true, "{v}");
    assert_eq!(s["lost_after_back"], serde_json::json!({}), "{v}");
    // Every close carried a hint and every client waited it.
    assert_eq!(s["retry_hints_honoured"], 200, "{v}");
    let max_hint = s["retry_after_max_s"].as_f64().unwrap_or(0.0);
    assert!(max_hint > 0.5 && max_hint <= 1.5, "{v}");
    // The hand-over never leaves the port without a listener.
    assert_eq!(s["failed_attempts"], 0, "{v}");
    // 200 hints drawn uniformly from [0, 1.5 s): all below 0.5 s has
    // probability 3^-200, so the last return comes later than that.
    let full = s["full_resubscription_s"].as_f64().unwrap_or(0.0);
    assert!(full > 0.5, "{v}");
    assert_ne!(v["successor_pid"], serde_json::Value::Null, "{v}");
    assert_eq!(v["marker"]["received"], 200, "{v}");
    assert!(svg.contains("<polyline") && svg.contains("upgrades per 100 ms"));
}

#[test]
fn the_token_goes_with_every_upgrade() {
    let (_relay, url, config) =
        start_configured_relay("token", "[[auth.tokens]]\ntoken = \"swarm-smoke-token\"\n");
    let token_file = config.with_extension("token");
    std::fs::write(&token_file, "swarm-smoke-token\n").expect("write the token");
    let hold = |token: &[&str]| {
        let mut args = vec![
            "idle",
            "--url",
            &url,
            "--connections",
            "20",
            "--duration",
            "0s",
        ];
        args.extend_from_slice(token);
        Command::new(env!("CARGO_BIN_EXE_tidings-swarm"))
            .args(&args)
            .output()
            .expect("run tidings-swarm")
    };
    let with_flag = hold(&["--token", "swarm-smoke-token"]);
    let with_file = hold(&["--token-file", &token_file.to_string_lossy()]);
    let without = hold(&[]);
    let wrong = hold(&["--token", "another-token"]);
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&token_file);
    for out in [&with_flag, &with_file] {
        assert!(out.status.success(), "{:?}", out.status);
        let v = parse_result(out);
        assert_eq!(v["connect"]["ready"], 20, "{v}");
    }
    // A wrong token is refused before the upgrade; none at all may still
    // upgrade (an `auth` message could follow) but may not subscribe.
    // Either way no connection subscribes and the swarm fails.
    for (out, why) in [(&wrong, "http_401"), (&without, "subscribe_error")] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(why), "{why}: {err}");
    }
}
