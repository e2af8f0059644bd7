//! The operating system: file limits, CPU time, a server's /proc figures,
//! clocks.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the unix epoch (the clock the publisher stamps with).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard).
pub fn raise_nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return (1024, 1024);
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    (r.rlim_cur, r.rlim_max)
}

#[derive(Clone, Copy)]
pub enum Who {
    Process,
    Children,
    Thread,
}

/// User + system CPU seconds.
pub fn cpu_seconds(who: Who) -> f64 {
    let w = match who {
        Who::Process => libc::RUSAGE_SELF,
        Who::Children => libc::RUSAGE_CHILDREN,
        Who::Thread => libc::RUSAGE_THREAD,
    };
    // SAFETY: rusage is plain data, written by getrusage.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    if unsafe { libc::getrusage(w, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU seconds (user + system) used so far by process `pid`.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat, clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime from a /proc/PID/stat line (fields 14 and 15).
pub fn parse_stat_cpu(stat: &str, ticks: f64) -> Option<f64> {
    // The command name may hold spaces and parentheses: start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: f64 = f.next()?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Resident set size of `pid` in KiB.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The summed VmRSS of `pids`; None without pids or if one cannot be read.
pub fn procs_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| proc_rss_kib(p)).sum()
}

pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Asks the kernel to timestamp received data (SO_TIMESTAMPNS); false if
/// it will not.
pub fn enable_rx_timestamps(fd: std::os::fd::RawFd) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: a c_int option value of the right size for a socket fd.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// `read` that also returns the kernel's receive timestamp (unix µs) of
/// the data, when the socket has SO_TIMESTAMPNS on.
pub fn recv_stamped(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; the fields we need are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, all alive
    // and writable for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // bounded by msg_controllen; the data is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        let mut seen = 0;
        while !c.is_null() && seen < 8 {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                if ts.tv_sec > 0 {
                    stamp = Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
            seen += 1;
        }
    }
    Ok((n as usize, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat =
            "1234 (tid ings) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_stat_cpu(stat, 100.0), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage", 100.0), None);
    }

    #[test]
    fn parses_vm_rss() {
        let s = "Name:\ttidings\nVmPeak:\t  10 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(parse_vm_rss(s), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn kernel_receive_timestamps() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let c = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let (mut s, _) = l.accept().unwrap_or_else(|e| panic!("{e}"));
        assert!(enable_rx_timestamps(c.as_raw_fd()));
        // The kernel turns timestamping on a moment later (a deferred static
        // key), so early segments may come without one.
        for _ in 0..40 {
            let before = unix_us();
            s.write_all(b"hello").unwrap_or_else(|e| panic!("{e}"));
            let mut buf = [0u8; 16];
            let (n, ts) = recv_stamped(c.as_raw_fd(), &mut buf).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&buf[..n], b"hello");
            if let Some(ts) = ts {
                assert!(
                    ts + 1000 >= before && ts <= unix_us() + 1000,
                    "{before} {ts}"
                );
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("no kernel receive timestamp within 2 s");
    }

    #[test]
    fn own_figures_are_readable() {
        assert!(proc_cpu_seconds(std::process::id()).is_some());
        assert!(proc_rss_kib(std::process::id()).unwrap_or(0) > 0);
        assert!(cpu_seconds(Who::Thread) >= 0.0);
        assert!(unix_us() > 1_600_000_000_000_000);
    }
}
