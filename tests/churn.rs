//! Connection churn must leave no file descriptor and no memory behind. The
//! relay runs in this process, so its descriptors and heap are this
//! process's; this file holds one test so nothing else moves them.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Counts the bytes live on this process's heap. RSS moves with the
/// allocator's arenas and page reuse by a megabyte either way; this count
/// comes back to where it was unless something is kept.
struct CountingAllocator;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// SAFETY: every call is passed on to the system allocator unchanged; the
// count is a side effect only.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

fn live_heap_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Upgrades, subscribes, and leaves: half politely, half by vanishing.
fn churn_once(addr: std::net::SocketAddr, polite: bool) {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp.write_all(upgrade_request("").as_bytes())
        .expect("upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).expect("response"), 1, "closed early");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let subscribe = json!({"type": "subscribe", "channels": ["churn.*", "churn.>"]}).to_string();
    tcp.write_all(&client_frame(OP_TEXT, subscribe.as_bytes()))
        .expect("subscribe");
    if polite {
        let _ = tcp.write_all(&client_frame(OP_CLOSE, &close_payload(1000, "bye")));
    }
}

#[test]
fn ten_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    // Short timeouts: every timer a churned socket leaves on the wheel comes
    // due within the test, as it would within a minute in production, so
    // memory must return to where it was.
    let relay = TestRelay::with(|c| {
        c.timeouts.handshake = Duration::from_millis(500);
        c.timeouts.ping_interval = Duration::from_millis(500);
        // Long enough that the watcher, which reads only now and then, stays
        // through the 10,000 cycles, even when a loaded machine makes them
        // take over 30 s.
        c.timeouts.pong_wait = Duration::from_secs(300);
        c.timeouts.close_linger = Duration::from_millis(200);
    });
    let mut watcher = connect(relay.addr);
    watcher.subscribe(&["churn.x"]);
    // Warm up allocator pools, the slab and the timer wheel first.
    for i in 0..3_000 {
        churn_once(relay.addr, i % 2 == 0);
    }
    relay.wait_stats("warm-up sockets to close", |s| s.connections == 1);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        watcher.assert_alive();
    }
    let (fds_before, heap_before) = (open_fds(), live_heap_bytes());
    let started = Instant::now();
    for i in 0..10_000 {
        churn_once(relay.addr, i % 2 == 0);
        if i % 1000 == 999 {
            // Keep the number of sockets in TIME_WAIT and unclosed bounded.
            relay.wait_stats("churned sockets to close", |s| s.connections <= 200);
        }
    }
    relay.wait_stats("every churned socket to close", |s| s.connections == 1);
    // Let the last timers come due.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        watcher.assert_alive();
    }
    let stats = relay.stats();
    assert!(stats.accepted >= 10_501, "{stats:?}");
    assert_eq!(stats.websockets, 1, "{stats:?}");
    // The relay still routes, and to the watcher only.
    relay.publish(
        "churn.x",
        json!({"after": started.elapsed().as_millis() as u64}),
    );
    assert_eq!(watcher.next_json()["type"], "churn.x");
    let (fds_after, heap_after) = (open_fds(), live_heap_bytes());
    eprintln!("live heap: {heap_before} bytes before the cycles, {heap_after} after");
    assert!(
        fds_after <= fds_before,
        "descriptors leaked: {fds_before} before, {fds_after} after"
    );
    // The one published event stays in the history, and buffers may have
    // grown by a few kilobytes; a leak of 10 bytes a cycle would be 100 kB.
    assert!(
        heap_after <= heap_before + 64 * 1024,
        "the live heap grew from {heap_before} to {heap_after} bytes"
    );
}
