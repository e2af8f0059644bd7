//! Per-socket protocol state as sans-I/O state machines: bytes and time go
//! in through `handle_*`, decisions come out as outputs pushed to a caller's
//! `Vec`. No socket, no clock: the reactor reads both and passes them in, so
//! every rule here is tested byte for byte in virtual time.
//!
//! [`http::HttpSession`] reads requests until it answers, upgrades, or gives
//! up; an upgrade hands over a [`ws::WsSession`], which turns frames into
//! commands until it closes.

use std::rc::Rc;
use std::time::{Duration, SystemTime};

use crate::auth::Tokens;
use crate::config::Config;
use crate::fanout::delivery::Shaping;
use crate::route::SubjectLimits;
use crate::stats::Stats;

pub mod http;
pub mod ws;

#[cfg(test)]
mod tests;

pub use http::{ConnectionSort, HttpOutput, HttpSession, Query, UpgradeRequest};
pub use ws::{Auth, SubscribeAsk, Subscribed, WsOutput, WsSession};

/// Milliseconds since the reactor started (the same clock as `io::timer`).
pub type Millis = u64;

/// A moment, passed in: sessions never read a clock.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// For deadlines, rates and timers.
    pub millis: Millis,
    /// For timestamps clients see (`pong`, published events).
    pub wall: SystemTime,
}

/// What sessions read and never change; one per reactor.
pub struct SessionContext<'a> {
    pub config: &'a Config,
    pub tokens: &'a Tokens,
    /// `config.default_channels`, shared by every socket that holds them.
    pub defaults: &'a Rc<[Box<str>]>,
    pub subject_limits: &'a SubjectLimits,
    /// Atomic counters; sessions count what they decide (auth failures,
    /// answered HTTP requests), the reactor counts the rest.
    pub stats: &'a Stats,
    /// The embedder set hooks (`crate::hooks`): upgrades carry the
    /// request's details, and subscribes are asked about
    /// (`WsOutput::AskSubscribe`) before they take effect.
    pub hooks_set: bool,
    /// Delivery rules and compression, applied to events published here.
    pub shaping: &'a Shaping,
    /// Fleet mode's NATS connection, for `/healthz`.
    pub upstream: UpstreamHealth,
    /// JetStream mode: a resume may be read from the stream, so subscribes
    /// with `since` are asked about (`WsOutput::AskSubscribe`) and may wait.
    pub fetch_resumes: bool,
}

/// The state of the NATS upstream as `/healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamHealth {
    /// No `[upstream]`: a relay on its own.
    #[default]
    Standalone,
    Up,
    Down,
}

/// A configured timeout on the reactor's clock.
fn millis(duration: Duration) -> Millis {
    duration.as_millis() as Millis
}
