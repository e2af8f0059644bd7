//! Hooks an embedder sets on the [`Relay`](crate::Relay) to apply its own
//! rules: who may open a WebSocket, and who may subscribe to what.
//!
//! The hooks run on the reactor threads, between socket reads: **they must
//! not block** (no network, no disk, no lock held by slow code). Every
//! socket on that reactor waits while a hook runs. Check against data the
//! service keeps in memory (refreshed by a thread of its own), and decide.

use std::net::SocketAddr;

/// A hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refuse, with a reason the client is shown: in the `403` body for a
    /// connection, in the `forbidden` error for a subscribe. Keep it short
    /// and free of secrets.
    Deny(String),
}

impl Verdict {
    pub fn deny(reason: impl Into<String>) -> Verdict {
        Verdict::Deny(reason.into())
    }
}

/// A WebSocket upgrade that passed the relay's own checks (handshake,
/// origin, token), before the `101` is sent.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    pub peer: SocketAddr,
    /// The request path (`/ws`) and query string, if any, as sent.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Every header of the upgrade request, in order, names as sent.
    pub headers: &'a [(String, String)],
    /// The client token the client presented, if client tokens are
    /// configured and it presented one in the upgrade (a client may also
    /// authenticate later with the `auth` message).
    pub token: Option<&'a str>,
}

impl ConnectRequest<'_> {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The connection a subscribe comes from.
#[derive(Debug)]
pub struct Subscriber<'a> {
    pub peer: SocketAddr,
    /// The client token the connection authenticated with; `None` while
    /// client tokens are off, or when it authenticated with a JWT.
    pub token: Option<&'a str>,
    /// The `sub` claim of the JWT the connection authenticated with, if it
    /// did and the JWT has one.
    pub subject: Option<&'a str>,
}

/// Rules of the embedding service, called on the reactor threads (see the
/// module documentation: never block). Both default to allowing.
pub trait Hooks: Send + Sync + 'static {
    /// A WebSocket upgrade is about to be accepted. `Deny` answers `403`
    /// with the reason in the JSON error body, and closes the connection.
    fn on_connect(&self, request: &ConnectRequest<'_>) -> Verdict {
        let _ = request;
        Verdict::Allow
    }

    /// A client asks to subscribe to `pattern` (once for each new pattern
    /// of a `subscribe`, after the relay's own checks: valid, allowed by
    /// the token, within `limits.max_subscriptions`). A subscribe is all or
    /// nothing: one `Deny` refuses the whole command with the error
    /// `forbidden` naming the pattern and the reason, and the connection's
    /// subscriptions stay as they were. The configured `default_channels`
    /// are not asked about: the operator chose them.
    fn on_subscribe(&self, subscriber: &Subscriber<'_>, pattern: &str) -> Verdict {
        let _ = (subscriber, pattern);
        Verdict::Allow
    }
}
