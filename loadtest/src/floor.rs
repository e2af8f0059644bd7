//! `floor`: what the kernel alone charges for the relay's writes.
//!
//! No relay and no WebSocket parsing: a writer thread on one CPU sends the
//! same pre-built frames to N loopback sockets, k frames per `writev`, as
//! fast as the kernel takes them, and a reader thread on the other CPU
//! drains them into a large buffer. The writer's CPU per delivered frame is
//! the floor under any relay that writes k frames per syscall on this
//! machine; the reader's is the floor under any client swarm.

use crate::cli::FloorArgs;
use crate::sys::{self, Who};
use mio::{Events, Interest, Poll, Token};
use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// One measured step: k frames per write.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FloorRow {
    pub frames_per_write: usize,
    pub frames_per_second: f64,
    pub writes_per_second: f64,
    pub writer_ns_per_frame: f64,
    pub reader_ns_per_frame: f64,
    pub writer_cores: f64,
    pub reader_cores: f64,
}

pub fn run(a: FloorArgs) -> Result<(), String> {
    sys::raise_nofile();
    if !(2..=65_539).contains(&a.frame_bytes) || a.connections == 0 {
        return Err(
            "--frame-bytes must be 2 to 65539 (16-bit lengths) and --connections at least 1".into(),
        );
    }
    let mut rows = Vec::new();
    for &k in &a.frames_per_write {
        if k == 0 {
            return Err("--frames-per-write values must be at least 1".into());
        }
        let row = measure(&a, k)?;
        eprintln!(
            "k={:<4} {:>12.0} frames/s  writer {:>7.1} ns/frame ({:.2} cores)  reader {:>7.1} ns/frame ({:.2} cores)",
            row.frames_per_write,
            row.frames_per_second,
            row.writer_ns_per_frame,
            row.writer_cores,
            row.reader_ns_per_frame,
            row.reader_cores
        );
        rows.push(row);
    }
    print_table(&a, &rows);
    let json = serde_json::json!({
        "mode": "floor",
        "connections": a.connections,
        "frame_bytes": a.frame_bytes,
        "rows": rows,
    });
    println!("{json}");
    Ok(())
}

fn print_table(a: &FloorArgs, rows: &[FloorRow]) {
    println!(
        "\nkernel floor: {} loopback sockets, {}-byte frames, writer CPU {}, reader CPU {}",
        a.connections, a.frame_bytes, a.writer_cpu, a.reader_cpu
    );
    println!(
        "{:>8} {:>14} {:>12} {:>16} {:>16}",
        "k/write", "frames/s", "writes/s", "writer ns/frame", "reader ns/frame"
    );
    for r in rows {
        println!(
            "{:>8} {:>14.0} {:>12.0} {:>16.1} {:>16.1}",
            r.frames_per_write,
            r.frames_per_second,
            r.writes_per_second,
            r.writer_ns_per_frame,
            r.reader_ns_per_frame
        );
    }
}

/// Builds N connected pairs, runs the writer and reader for warmup +
/// duration, and reports the measured window.
fn measure(a: &FloorArgs, k: usize) -> Result<FloorRow, String> {
    let (writers, readers) = pairs(a.connections)?;
    let frames = build_frames(k, a.frame_bytes);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));

    let reader = {
        let (stop, measuring, received) = (stop.clone(), measuring.clone(), received.clone());
        let cpu = a.reader_cpu;
        thread::spawn(move || read_all(readers, cpu, &stop, &measuring, &received))
    };
    let writer = {
        let (stop, measuring) = (stop.clone(), measuring.clone());
        let cpu = a.writer_cpu;
        thread::spawn(move || write_all(writers, frames, cpu, &stop, &measuring))
    };

    thread::sleep(Duration::from_secs_f64(a.warmup));
    let start_bytes = received.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Release);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs_f64(a.duration));
    measuring.store(false, Ordering::Release);
    let elapsed = t0.elapsed().as_secs_f64();
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    stop.store(true, Ordering::Release);

    let (writer_cpu, writes) = writer.join().map_err(|_| "writer thread panicked")??;
    let reader_cpu = reader.join().map_err(|_| "reader thread panicked")??;
    let delivered = bytes as f64 / a.frame_bytes as f64;
    let per_frame = |cpu: f64| {
        if delivered > 0.0 {
            cpu * 1e9 / delivered
        } else {
            f64::NAN
        }
    };
    Ok(FloorRow {
        frames_per_write: k,
        frames_per_second: delivered / elapsed,
        writes_per_second: writes as f64 / elapsed,
        writer_ns_per_frame: per_frame(writer_cpu),
        reader_ns_per_frame: per_frame(reader_cpu),
        writer_cores: writer_cpu / elapsed,
        reader_cores: reader_cpu / elapsed,
    })
}

/// k distinct frames of `size` bytes each, shaped like server text frames
/// (FIN + opcode, 7- or 16-bit length), as k different events would be.
/// The reader only counts bytes, so 128 and 129, which have no minimal
/// encoding of exactly that size, get a 16-bit length anyway.
fn build_frames(k: usize, size: usize) -> Vec<Vec<u8>> {
    let long = size > 127;
    (0..k)
        .map(|i| {
            let mut f = Vec::with_capacity(size);
            f.push(0x81);
            if long {
                f.push(126);
                f.extend_from_slice(&((size - 4) as u16).to_be_bytes());
            } else {
                f.push((size - 2) as u8);
            }
            f.resize(size, b'a' + (i % 26) as u8);
            f
        })
        .collect()
}

/// N connected loopback pairs: (server side, blocking, NODELAY as the relay
/// sets it; client side, non-blocking for the reader's poll).
fn pairs(n: usize) -> Result<(Vec<TcpStream>, Vec<TcpStream>), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut writers = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let (s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        c.set_nonblocking(true).map_err(|e| e.to_string())?;
        writers.push(s);
        readers.push(c);
    }
    Ok((writers, readers))
}

/// The calling thread's CPU seconds while the shared `measuring` flag is up.
#[derive(Default)]
struct CpuWindow {
    open: bool,
    start: f64,
    spent: f64,
}

impl CpuWindow {
    /// Opens or closes the window as the flag says; called once per loop.
    fn follow(&mut self, measuring: &AtomicBool) {
        let now_measuring = measuring.load(Ordering::Acquire);
        if now_measuring != self.open {
            let now = sys::cpu_seconds(Who::Thread);
            if now_measuring {
                self.start = now;
            } else {
                self.spent = now - self.start;
            }
            self.open = now_measuring;
        }
    }

    /// The window's CPU seconds, closing it if still open.
    fn finish(self) -> f64 {
        if self.open {
            sys::cpu_seconds(Who::Thread) - self.start
        } else {
            self.spent
        }
    }
}

/// Pins the calling thread to one CPU (best effort: the numbers are still
/// valid unpinned, only noisier).
fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0, ..) affects
    // only the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Round-robin over the sockets, one `writev` of all k frames each. Blocking
/// sockets: when the reader falls behind, the writer sleeps instead of
/// spinning, so its CPU stays the cost of the writes themselves.
fn write_all(
    mut socks: Vec<TcpStream>,
    frames: Vec<Vec<u8>>,
    cpu: usize,
    stop: &AtomicBool,
    measuring: &AtomicBool,
) -> Result<(f64, u64), String> {
    pin(cpu);
    let mut window = CpuWindow::default();
    let mut writes_in_window = 0u64;
    let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len());
    while !stop.load(Ordering::Acquire) {
        window.follow(measuring);
        for s in socks.iter_mut() {
            iov.clear();
            iov.extend(frames.iter().map(|f| IoSlice::new(f)));
            let mut bufs: &mut [IoSlice<'_>] = &mut iov;
            while !bufs.is_empty() {
                match s.write_vectored(bufs) {
                    Ok(0) => return Err("writer: socket closed".into()),
                    Ok(n) => {
                        if window.open {
                            writes_in_window += 1;
                        }
                        IoSlice::advance_slices(&mut bufs, n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The reader closes its ends when told to stop.
                    Err(_) if stop.load(Ordering::Acquire) => break,
                    Err(e) => return Err(format!("writer: {e}")),
                }
            }
        }
    }
    Ok((window.finish(), writes_in_window))
}

/// Drains every readable socket into one 64 KiB buffer, counting bytes.
fn read_all(
    socks: Vec<TcpStream>,
    cpu: usize,
    stop: &AtomicBool,
    measuring: &AtomicBool,
    received: &AtomicU64,
) -> Result<f64, String> {
    pin(cpu);
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut socks: Vec<mio::net::TcpStream> = socks
        .into_iter()
        .map(mio::net::TcpStream::from_std)
        .collect();
    for (i, s) in socks.iter_mut().enumerate() {
        poll.registry()
            .register(s, Token(i), Interest::READABLE)
            .map_err(|e| e.to_string())?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut window = CpuWindow::default();
    let mut total = 0u64;
    while !stop.load(Ordering::Acquire) {
        window.follow(measuring);
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let s = &mut socks[ev.token().0];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("reader: {e}")),
                }
            }
        }
        received.store(total, Ordering::Relaxed);
    }
    let cpu_in_window = window.finish();
    // Unblock a writer stuck in a full socket: dropping the read ends
    // resets its connections.
    drop(socks);
    Ok(cpu_in_window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_size_and_a_valid_header() {
        for size in [2usize, 100, 127, 128, 220, 1000] {
            let frames = build_frames(3, size);
            assert_eq!(frames.len(), 3);
            for f in &frames {
                assert_eq!(f.len(), size);
                assert_eq!(f[0], 0x81);
                let (len, header) = match f[1] {
                    126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
                    n => (n as usize, 2),
                };
                assert_eq!(len + header, size, "size {size}");
            }
        }
    }

    #[test]
    fn a_short_run_delivers_and_measures() {
        let a = FloorArgs {
            connections: 20,
            frames_per_write: vec![4],
            frame_bytes: 220,
            warmup: 0.1,
            duration: 0.3,
            writer_cpu: 0,
            reader_cpu: 0,
        };
        let row = measure(&a, 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(row.frames_per_write, 4);
        assert!(row.frames_per_second > 0.0, "{row:?}");
        assert!(row.writes_per_second > 0.0, "{row:?}");
        assert!(row.writer_ns_per_frame.is_finite(), "{row:?}");
    }
}
