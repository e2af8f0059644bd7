//! The examples that finish on their own, run as a newcomer would run them,
//! with their output checked: an example that no longer works is a broken doc.
//!
//! Each example is built with the cargo that runs this test (so it is never a
//! stale binary left in `target/`), then run with stdin not a terminal, which
//! is how `examples/embedded.rs` knows to stop after its round trip.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long an example may run. Generous: the machine may be busy; a hung
/// example fails the test instead of hanging it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Builds `examples/<name>.rs` and returns the path of its executable.
fn build_example(name: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--message-format=json",
            "--example",
            name,
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build --example {name} failed"
    );
    let stdout = String::from_utf8(output.stdout).expect("cargo prints UTF-8 JSON");
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == name
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for example {name}"))
}

/// Runs an example to completion (bounded by RUN_LIMIT) with stdin closed.
fn run_example(name: &str, args: &[&str]) -> Output {
    let mut child = Command::new(build_example(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start example {name}: {e}"));
    // Read both pipes on threads so a chatty example cannot block on a full pipe.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let stdout = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out.read_to_end(&mut bytes);
        bytes
    });
    let stderr = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = err.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("example {name} did not finish within {RUN_LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// The lines an example printed, after checking it exited 0.
fn successful_lines(name: &str, output: &Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "example {name}: exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// The JSON after `client: ` on the lines that have it.
fn client_messages(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("client: "))
        .map(|text| {
            serde_json::from_str(text).unwrap_or_else(|e| panic!("client line {text:?}: {e}"))
        })
        .collect()
}

/// The example's output lines, which start with the relay's address.
fn relay_lines(name: &str, output: &Output) -> Vec<String> {
    let lines = successful_lines(name, output);
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("relay on ws://127.0.0.1:")),
        "{lines:?}"
    );
    lines
}

#[test]
fn embedded_shows_a_round_trip_and_stops_by_itself() {
    // Port 0: the documented 8090 may be taken on a shared machine.
    let output = run_example("embedded", &["127.0.0.1:0"]);
    let lines = relay_lines("embedded", &output);
    let messages = client_messages(&lines);
    assert_eq!(messages.len(), 10, "{lines:?}");
    assert_eq!(messages[0]["type"], "subscribed", "{lines:?}");
    assert_eq!(messages[0]["channels"], serde_json::json!(["job.>"]));
    let mut last_seq = 0;
    for event in &messages[1..] {
        assert_eq!(event["type"], "job.progress", "{event}");
        let seq = event["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "seq {seq} after {last_seq}");
        last_seq = seq;
    }
    // Three producers, three events each, one subscriber.
    assert!(
        lines.iter().any(|l| l == "9 events, 9 deliveries"),
        "{lines:?}"
    );
    // Not from a terminal: no invitation to keep a client connected.
    assert!(!lines.iter().any(|l| l.contains("Ctrl-C")), "{lines:?}");
}

#[test]
fn tokio_producer_publishes_from_both_tasks_and_stops() {
    let output = run_example("tokio_producer", &["127.0.0.1:0"]);
    let lines = relay_lines("tokio_producer", &output);
    let messages = client_messages(&lines);
    assert_eq!(messages.len(), 11, "{lines:?}");
    assert_eq!(messages[0]["type"], "subscribed", "{lines:?}");
    // Each task's five steps arrive, in that task's order: try_publish
    // (import-a) and publish on the blocking pool (import-b).
    for job in ["import-a", "import-b"] {
        let steps: Vec<u64> = messages[1..]
            .iter()
            .filter(|event| event["data"]["jobId"] == job)
            .map(|event| event["data"]["step"].as_u64().expect("step"))
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5], "{job}: {lines:?}");
    }
    assert!(
        lines.iter().any(|l| l == "10 events, 10 deliveries"),
        "{lines:?}"
    );
}

#[test]
fn team_permissions_denies_by_pattern_and_refuses_a_scraper() {
    let output = run_example("team_permissions", &["127.0.0.1:0"]);
    let lines = relay_lines("team_permissions", &output);
    let messages = client_messages(&lines);
    assert_eq!(messages.len(), 2, "{lines:?}");
    assert_eq!(
        messages[0],
        serde_json::json!({"type":"subscribed","id":"sub","channels":["team-a.deploys","team-a.alerts.>"],
            "epoch":messages[0]["epoch"],"seq":0})
    );
    assert_eq!(messages[1]["type"], "error", "{lines:?}");
    assert_eq!(messages[1]["id"], "sub", "{lines:?}");
    assert_eq!(messages[1]["data"]["code"], "forbidden", "{lines:?}");
    let message = messages[1]["data"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"team-b.deploys\""), "{message}");
    assert!(
        message.contains("your team sees only team-a.*"),
        "{message}"
    );
    assert!(
        lines.iter().any(|l| l == "scraper: refused with 403"),
        "{lines:?}"
    );
}
