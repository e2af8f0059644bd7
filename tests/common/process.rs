//! A `tidings` binary run by a test: its startup line, signals, exit.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::WAIT;

pub const STARTUP_PREFIX: &str = "tidings listening on ws://";

/// A running `tidings` process; killed on drop if still alive.
pub struct Proc {
    pub child: Child,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
}

impl Proc {
    /// Starts the binary with `--listen 127.0.0.1:0` plus `args`.
    pub fn spawn(args: &[&str]) -> Proc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        Proc::spawn_command(command)
    }

    /// Starts the binary as `command` says, with stdout and stderr captured.
    pub fn spawn_command(mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tidings");
        // Readers on threads so that reads can be bounded with recv_timeout.
        let (out_tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    /// Starts the binary and waits for its startup line; returns the address.
    pub fn start(args: &[&str]) -> (Proc, SocketAddr) {
        let mut proc = Proc::spawn(args);
        let line = proc.startup_line();
        (proc, parse_startup_line(&line))
    }

    /// The first stdout line; panics with stderr if none comes.
    pub fn startup_line(&mut self) -> String {
        match self.stdout.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => {
                let status = self.wait_exit();
                panic!(
                    "no startup line ({e}); exit {status:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
        }
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
    }

    /// Waits up to WAIT for the process to exit; kills it and panics otherwise.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "tidings did not exit within {WAIT:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The stdout lines after the startup line, once the process has exited.
    pub fn rest_of_stdout(&self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match self.stdout.recv_timeout(WAIT) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => return lines,
                Err(RecvTimeoutError::Timeout) => panic!("stdout not closed after exit"),
            }
        }
    }

    /// All of stderr; only complete once the process has exited.
    pub fn stderr_text(&self) -> String {
        self.stderr.recv_timeout(WAIT).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test shows what the relay logged.
        if thread::panicking() {
            if let Ok(text) = self.stderr.recv_timeout(Duration::from_secs(2)) {
                eprintln!("--- tidings stderr ---\n{text}--- end ---");
            }
        }
    }
}

/// The address in `tidings listening on ws://ADDR/ws`, which is the whole
/// line without `--demo`. With it, a note follows after a space.
pub fn parse_startup_line(line: &str) -> SocketAddr {
    let addr = parse_any_startup_line(line);
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
    addr
}

/// Like `parse_startup_line`, for any bound address.
pub fn parse_any_startup_line(line: &str) -> SocketAddr {
    let rest = line
        .strip_prefix(STARTUP_PREFIX)
        .unwrap_or_else(|| panic!("startup line {line:?} does not start with {STARTUP_PREFIX}"));
    let (url, note) = rest.split_once(' ').unwrap_or((rest, ""));
    assert!(
        note.is_empty() || note.starts_with("(demo: "),
        "unexpected text after the URL: {line:?}"
    );
    let addr = url
        .strip_suffix("/ws")
        .unwrap_or_else(|| panic!("startup line {line:?} is not `{STARTUP_PREFIX}ADDR/ws`"));
    let addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
    assert_ne!(addr.port(), 0, "the line must show the bound port: {line}");
    addr
}
