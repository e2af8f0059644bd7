//! The members of a swarm, in this process (one thread) or in worker
//! processes of this binary, driven the same way.

use crate::control::{Cmd, Control, Msg};
use crate::stats::{ConnectReport, PhaseStats};
use crate::swarm::{self, SwarmCfg, WAKE};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

enum Member {
    Local {
        ctl: Arc<Control>,
        join: Option<JoinHandle<()>>,
    },
    Remote {
        child: Child,
        stdin: Option<ChildStdin>,
    },
}

pub struct Fleet {
    members: Vec<Member>,
    rx: Receiver<(usize, Msg)>,
}

impl Fleet {
    /// One member per config: a thread if there is one config and
    /// `processes` is false, worker processes otherwise.
    pub fn start(cfgs: Vec<SwarmCfg>, processes: bool) -> Result<Fleet, String> {
        let (tx, rx) = mpsc::channel();
        let mut members = Vec::new();
        if !processes && cfgs.len() == 1 {
            for (i, cfg) in cfgs.into_iter().enumerate() {
                members.push(start_local(i, cfg, tx.clone())?);
            }
        } else {
            let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
            for (i, cfg) in cfgs.into_iter().enumerate() {
                let json = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
                let mut child = Command::new(&exe)
                    .arg("worker")
                    .arg(json)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| format!("spawn worker: {e}"))?;
                let stdout = child.stdout.take().ok_or("worker stdout")?;
                let stdin = child.stdin.take();
                let tx = tx.clone();
                std::thread::spawn(move || read_worker(i, stdout, tx));
                members.push(Member::Remote { child, stdin });
            }
        }
        Ok(Fleet { members, rx })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn send(&mut self, cmd: &Cmd) {
        let line = serde_json::to_string(cmd).unwrap_or_default();
        for m in &mut self.members {
            match m {
                Member::Local { ctl, .. } => ctl.send(cmd.clone()),
                Member::Remote { stdin, .. } => {
                    if let Some(s) = stdin {
                        let _ = writeln!(s, "{line}").and_then(|()| s.flush());
                    }
                }
            }
        }
    }

    /// Waits for every member's connect report, showing progress.
    pub fn connected(
        &mut self,
        timeout: Duration,
        progress: &mut dyn FnMut(u64, u64, u64),
    ) -> Result<ConnectReport, String> {
        let n = self.members.len();
        let mut prog = vec![(0u64, 0u64, 0u64); n];
        let mut reports: Vec<Option<ConnectReport>> = vec![None; n];
        let deadline = Instant::now() + timeout;
        while reports.iter().any(Option::is_none) {
            match self.recv(deadline)? {
                (
                    i,
                    Msg::Progress {
                        started,
                        ready,
                        failed,
                    },
                ) => {
                    prog[i] = (started, ready, failed);
                    let sum = prog
                        .iter()
                        .fold((0, 0, 0), |a, p| (a.0 + p.0, a.1 + p.1, a.2 + p.2));
                    progress(sum.0, sum.1, sum.2);
                }
                (i, Msg::Ready(r)) => reports[i] = Some(r),
                (i, Msg::Fatal(e)) => return Err(format!("member {i}: {e}")),
                (i, Msg::Phase(_)) => return Err(format!("member {i}: phase before connect")),
            }
        }
        let mut total = ConnectReport::default();
        for r in reports.iter().flatten() {
            total.merge(r);
        }
        Ok(total)
    }

    /// Waits for every member's report of the current phase and merges them.
    pub fn phase(&mut self, timeout: Duration) -> Result<PhaseStats, String> {
        let mut got: Vec<Option<PhaseStats>> = vec![None; self.members.len()];
        let deadline = Instant::now() + timeout;
        while got.iter().any(Option::is_none) {
            match self.recv(deadline)? {
                (i, Msg::Phase(p)) => got[i] = Some(p),
                (i, Msg::Fatal(e)) => return Err(format!("member {i}: {e}")),
                _ => {}
            }
        }
        let mut total = PhaseStats::default();
        for p in got.iter().flatten() {
            total.merge(p)?;
        }
        Ok(total)
    }

    fn recv(&self, deadline: Instant) -> Result<(usize, Msg), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err("members did not answer in time".into()),
            Err(RecvTimeoutError::Disconnected) => Err("all members are gone".into()),
        }
    }

    /// Tells members to quit and waits for them (killing stragglers).
    pub fn stop(mut self) {
        self.send(&Cmd::Quit);
        let deadline = Instant::now() + Duration::from_secs(5);
        for m in &mut self.members {
            match m {
                Member::Local { join, .. } => {
                    if let Some(j) = join.take() {
                        // The thread checks its queue every 10 ms.
                        while !j.is_finished() && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        if j.is_finished() {
                            let _ = j.join();
                        }
                    }
                }
                Member::Remote { child, stdin } => {
                    drop(stdin.take());
                    loop {
                        match child.try_wait() {
                            Ok(Some(_)) => break,
                            Ok(None) if Instant::now() < deadline => {
                                std::thread::sleep(Duration::from_millis(10))
                            }
                            _ => {
                                let _ = child.kill();
                                let _ = child.wait();
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn start_local(i: usize, cfg: SwarmCfg, tx: Sender<(usize, Msg)>) -> Result<Member, String> {
    let poll = mio::Poll::new().map_err(|e| format!("poll: {e}"))?;
    let waker = mio::Waker::new(poll.registry(), WAKE).map_err(|e| format!("waker: {e}"))?;
    let ctl = Arc::new(Control::new(waker));
    let ctl2 = Arc::clone(&ctl);
    let join = std::thread::Builder::new()
        .name(format!("swarm-{i}"))
        .spawn(move || {
            swarm::run_member(poll, &ctl2, cfg, &mut |m| {
                let _ = tx.send((i, m));
            })
        })
        .map_err(|e| format!("thread: {e}"))?;
    Ok(Member::Local {
        ctl,
        join: Some(join),
    })
}

fn read_worker(i: usize, stdout: std::process::ChildStdout, tx: Sender<(usize, Msg)>) {
    let reader = BufReader::new(stdout);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Msg>(&line) {
            Ok(m) => {
                if tx.send((i, m)).is_err() {
                    return;
                }
            }
            Err(_) => eprintln!("worker {i}: {line}"),
        }
    }
    let _ = tx.send((i, Msg::Fatal("worker exited".into())));
}

/// The body of a worker process: reads commands from stdin, writes messages
/// to stdout, one JSON value per line.
pub fn worker_main(cfg_json: &str) -> Result<(), String> {
    let cfg: SwarmCfg =
        serde_json::from_str(cfg_json).map_err(|e| format!("worker config: {e}"))?;
    crate::sys::raise_nofile();
    let poll = mio::Poll::new().map_err(|e| format!("poll: {e}"))?;
    let waker = mio::Waker::new(poll.registry(), WAKE).map_err(|e| format!("waker: {e}"))?;
    let ctl = Arc::new(Control::new(waker));
    let ctl2 = Arc::clone(&ctl);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Cmd>(&line) {
                Ok(cmd) => ctl2.send(cmd),
                Err(e) => eprintln!("worker: bad command {line:?}: {e}"),
            }
        }
        ctl2.send(Cmd::Quit);
    });
    let stdout = std::io::stdout();
    swarm::run_member(poll, &ctl, cfg, &mut |m| {
        let mut out = stdout.lock();
        let _ = serde_json::to_string(&m)
            .map_err(std::io::Error::other)
            .and_then(|s| writeln!(out, "{s}"))
            .and_then(|()| out.flush());
    });
    Ok(())
}
