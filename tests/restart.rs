//! Restarts without a thundering herd: clients sent away with their own
//! `retry_after_ms`, a new process taking over the port while the old one
//! stops, and accepts paced by `limits.accept_rate`.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::proc::*;
use common::*;

/// The `retry_after_ms` in a shutdown close reason.
fn retry_after(reason: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(reason).unwrap_or_else(|e| panic!("reason {reason:?}: {e}"));
    assert_eq!(v["reason"], "server shutting down", "{reason}");
    v["retry_after_ms"].as_u64().expect("retry_after_ms")
}

#[test]
fn sigterm_sends_each_client_away_with_its_own_retry_after() {
    let config = TempFile::config("spread", "[shutdown]\nreconnect_spread = \"3s\"\n");
    let (mut proc, addr) = Proc::start(&["--config", config.path()]);
    let mut clients: Vec<Raw> = (0..24).map(|_| Raw::upgrade(addr)).collect();
    proc.signal(libc::SIGTERM);
    let mut delays = BTreeSet::new();
    for raw in &mut clients {
        let (closed, reason) = raw.expect_close_reason();
        assert_eq!(closed, Closed::Code(1001));
        let delay = retry_after(&reason);
        assert!(delay <= 3000, "retry_after_ms {delay} past the 3 s spread");
        delays.insert(delay);
    }
    // 24 draws from 3,001 values: a few collisions at most.
    assert!(
        delays.len() >= 20,
        "clients were told the same delays: {delays:?}"
    );
    assert!(proc.wait_exit().success());
}

/// One attempt of a client that connects in a loop: the upgrade answered
/// 101, or why not.
fn attempt(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(upgrade_request("").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err(format!("closed after {} bytes", head.len())),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if head.starts_with(b"HTTP/1.1 101") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&head).into_owned())
    }
}

#[test]
fn a_new_process_takes_over_the_port_and_no_connection_is_refused() {
    // One reactor: a listener that must still join a SO_REUSEPORT group.
    let (mut old, addr) = Proc::start(&["--reactors", "1"]);
    // On the old process: the new one does not share the port yet.
    let mut subscribed = Raw::upgrade(addr);
    let port = addr.to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
    command.args(["--listen", &port, "--reactors", "2"]);
    let mut new = Proc::spawn_command(command);
    assert_eq!(parse_startup_line(&new.startup_line()), addr);

    // A client connecting in a loop, through the whole hand-over.
    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let (mut ok, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Acquire) {
                match attempt(addr) {
                    Ok(()) => ok += 1,
                    Err(e) => failures.push(e),
                }
            }
            (ok, failures)
        })
    };
    thread::sleep(Duration::from_millis(300)); // let the loop run on both
    old.signal(libc::SIGTERM);
    let (closed, reason) = subscribed.expect_close_reason();
    assert_eq!(closed, Closed::Code(1001));
    retry_after(&reason);
    assert!(old.wait_exit().success());
    // The port is the new process's alone now: the loop keeps connecting.
    let after = Instant::now() + Duration::from_millis(300);
    while Instant::now() < after {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    let (ok, failures) = looping.join().expect("loop thread");
    assert!(
        failures.is_empty(),
        "refused during the hand-over: {failures:?}"
    );
    assert!(ok >= 10, "only {ok} attempts: the loop did not run");
    // And the new process serves on its own.
    Raw::upgrade(addr);
    new.signal(libc::SIGTERM);
    assert!(new.wait_exit().success());
}

#[test]
fn accept_rate_paces_connections_without_refusing_any() {
    // 20 a second over two reactors, a burst of one each: ten connections
    // arriving at once take at least 8 / 20 s to be accepted, all of them.
    let relay = TestRelay::with(|c| {
        c.reactors = tidings::Reactors::Count(2);
        c.limits.accept_rate = 20;
    });
    let start = Instant::now();
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let addr = relay.addr;
            thread::spawn(move || attempt(addr))
        })
        .collect();
    for client in clients {
        client.join().expect("client thread").expect("upgrade");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(350),
        "10 connections accepted in {took:?}, faster than accept_rate allows"
    );
    assert_eq!(relay.stats().rejected_connections, 0);
}
