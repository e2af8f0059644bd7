//! Commands from the driver to a swarm member and messages back. A member
//! runs in a thread (one process) or in a worker process (JSON lines over
//! stdin/stdout); both speak these types.

use crate::stats::{ConnectReport, PhaseStats, Window};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Cmd {
    /// Measure a phase in this window.
    Go(Window),
    /// The publisher is done and `published` events were accepted.
    End {
        published: u64,
    },
    Quit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Msg {
    Progress {
        started: u64,
        ready: u64,
        failed: u64,
    },
    Ready(ConnectReport),
    Phase(PhaseStats),
    Fatal(String),
}

/// A command queue that wakes the member's poll loop.
pub struct Control {
    queue: Mutex<VecDeque<Cmd>>,
    waker: mio::Waker,
}

impl Control {
    pub fn new(waker: mio::Waker) -> Self {
        Control {
            queue: Mutex::new(VecDeque::new()),
            waker,
        }
    }

    pub fn send(&self, cmd: Cmd) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(cmd);
        let _ = self.waker.wake();
    }

    pub fn take(&self) -> Vec<Cmd> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }
}
