//! Python `websockets` (tests/python/deflate_client.py) against a relay with
//! compression on: a second, independent permessage-deflate implementation.
//! `.ci/run` installs the library; without it the test says so and skips.

mod common;

use std::process::Command;

use common::*;
use tidings::config::CompressionMode;

fn python_websockets() -> bool {
    Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn python_websockets_negotiates_compression_and_reads_events() {
    if !python_websockets() {
        common::skipping("python3 with the `websockets` package (pip install websockets)");
        return;
    }
    let relay = TestRelay::with(|c| {
        c.compression = CompressionMode::On;
        c.compression_min_size = 64;
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/deflate_client.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg(relay.addr.to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: permessage-deflate agreed"), "{stdout}");
    assert_eq!(relay.stats().protocol_closes, 0);
}
