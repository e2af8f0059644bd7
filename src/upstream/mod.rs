//! Fleet mode: relays share events through NATS (`[upstream]`).
//!
//! The upstream is a producer into the sequencer (what NATS delivers) and a
//! consumer of local publishes (HTTP and `Publisher`, which go to NATS
//! instead of the sequencer). It runs async-nats on its own thread; the
//! reactors only touch its non-blocking [`link`]. See docs/fleet.md.

mod client;
mod config;
mod jetstream;
pub(crate) mod link;
mod wire;

use std::sync::Arc;
use std::thread::JoinHandle;

pub use config::UpstreamConfig;
pub use link::Refused;

use crate::config::HistoryConfig;
use crate::error::Error;
use crate::fanout::sequencer::Sequencer;
use crate::route::SubjectLimits;
use crate::stats::PatternCounts;
use link::UpstreamLink;

/// The running upstream: its link and its thread.
pub(crate) struct Upstream {
    pub link: Arc<UpstreamLink>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    pub fn start(
        config: &UpstreamConfig,
        reactors: usize,
        sequencer: &Arc<Sequencer>,
        patterns: &Arc<PatternCounts>,
        limits: SubjectLimits,
        history: &HistoryConfig,
    ) -> Result<Upstream, Error> {
        config.check_files().map_err(Error::Config)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let link = Arc::new(UpstreamLink::new(
            tx,
            config.publish_capacity,
            config.publish_timeout,
            reactors,
            Arc::clone(sequencer),
            config.jetstream,
        ));
        let parts = client::Parts {
            config: config.clone(),
            link: Arc::clone(&link),
            outgoing: rx,
            sequencer: Arc::clone(sequencer),
            patterns: Arc::clone(patterns),
            limits,
            relay_id: crate::fanout::history::new_epoch(),
            history: history.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tidings-upstream".into())
            .spawn(move || client::run(parts))?;
        Ok(Upstream {
            link,
            thread: Some(thread),
        })
    }

    /// Sends what is queued, then stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.link.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}
