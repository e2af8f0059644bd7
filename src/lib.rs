//! tidings: a high-density WebSocket event relay.
//!
//! Producers publish [`Event`]s through a [`Publisher`]; one reactor thread
//! fans each out, serialized once, to every WebSocket subscribed to its
//! channel. See `docs/protocol.md` for the wire protocol.

pub mod auth;
pub mod config;
pub mod error;
pub mod fanout;
pub mod hooks;
mod io;
pub mod proto;
pub mod rate;
mod relay;
pub mod route;
pub mod session;
pub mod stats;
pub mod time;
mod upstream;

pub use config::{
    AuthConfig, Config, Limits, PublishConfig, Reactors, SlowConsumerPolicy, Timeouts, TlsConfig,
    TokenConfig, UpstreamConfig,
};
pub use error::{CloseReason, ConfigError, Error};
pub use fanout::event::Event;
pub use fanout::publisher::{PublishError, Publisher};
pub use hooks::{ConnectRequest, Hooks, Subscriber, Verdict};
pub use relay::{Relay, RelayHandle};
pub use stats::StatsSnapshot;

// The README's Rust examples are compiled by `cargo test` (doctests), so the
// embedding guide cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
