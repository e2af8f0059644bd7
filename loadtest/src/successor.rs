//! `storm --drop server`: the relays of a hand-over. The swarm starts the
//! successor (which joins the port's SO_REUSEPORT group), waits until it
//! listens, then tells the old relay to stop (docs/operations.md,
//! "Restarting").

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The line a relay prints once it listens.
const LISTENING: &str = "tidings listening on ";

/// A relay the swarm started; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Successor {
    child: Child,
}

impl Successor {
    /// Runs `command` with `sh -c exec …` (so the pid is the relay's own)
    /// and waits up to `wait` for its `tidings listening on` line.
    pub fn start(command: &str, wait: Duration) -> Result<Successor, String> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("--successor: cannot run sh: {e}"))?;
        let stdout = child.stdout.take().ok_or("--successor: no stdout")?;
        let successor = Successor { child };
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end, so the relay never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(LISTENING) => return Ok(successor),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "--successor printed no `{}...` line within {} s",
                        LISTENING.trim_end(),
                        wait.as_secs()
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("--successor exited before it listened".into())
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and SIGKILL if it has not exited within `wait`; true if
    /// the SIGTERM was enough.
    pub fn stop(mut self, wait: Duration) -> bool {
        let _ = terminate(self.child.id());
        let t0 = Instant::now();
        // Bounded by `wait`.
        while t0.elapsed() < wait {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false // drop kills it
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM to `pid` (the relay's signal to close every WebSocket with
/// 1001 and its `retry_after_ms`, and exit).
pub fn terminate(pid: u32) -> Result<(), String> {
    let p = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    if p <= 0 {
        return Err(format!("pid {pid} is not a process"));
    }
    // SAFETY: kill(2) with a positive pid signals that one process only.
    if unsafe { libc::kill(p, libc::SIGTERM) } != 0 {
        return Err(format!(
            "SIGTERM to {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_listening_line() {
        let s = Successor::start(
            "sh -c 'echo starting; echo \"tidings listening on ws://127.0.0.1:1/ws\"; exec sleep 30'",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.pid() > 0);
        assert!(s.stop(Duration::from_secs(10)), "SIGTERM ends it");
    }

    #[test]
    fn a_command_that_never_listens_is_an_error() {
        let e = Successor::start("echo hello", Duration::from_secs(10)).err();
        assert!(e.is_some_and(|e| e.contains("exited before it listened")));
        let e = Successor::start("sleep 5", Duration::from_millis(200)).err();
        assert!(e.is_some_and(|e| e.contains("no `tidings listening on...` line")));
    }

    #[test]
    fn no_signal_for_pid_zero() {
        assert!(terminate(0).is_err());
    }
}
