//! One socket's state. Kept small: an idle, subscribed WebSocket holds no
//! read buffer, no queue allocation and no timer object (invariant 7).

use std::rc::Rc;

use mio::net::TcpStream;

use super::timer::Millis;
use crate::auth::TokenId;
use crate::fanout::queue::OutQueue;
use crate::proto::frames::MessageReader;
use crate::rate::TokenBucket;

pub(crate) struct Conn {
    pub socket: TcpStream,
    /// The TLS session, on a `wss://` listener.
    pub tls: Option<Box<rustls::ServerConnection>>,
    /// Unique per accepted socket, unlike the slab key, which is reused.
    pub id: u32,
    pub phase: Phase,
    pub out: OutQueue,
    /// Last time any byte arrived.
    pub last_rx: Millis,
    /// Since when output has waited without a byte leaving; `NOT_STALLED`
    /// when it is not (a sentinel rather than `Option` saves 8 bytes a socket).
    pub stalled_since: Millis,
    /// When the timer wheel should next look at this socket.
    pub timer_at: Millis,
    /// On the reactor's list of sockets to flush this turn.
    pub dirty: bool,
}

pub(crate) const NOT_STALLED: Millis = Millis::MAX;

pub(crate) enum Phase {
    /// Reading HTTP requests: the upgrade, or the HTTP API (kept alive).
    Http(Box<HttpConn>),
    WebSocket(WsConn),
    /// A close frame or final response is queued; the socket lingers until the
    /// peer closes or `timeouts.close_linger` passes.
    Closing(Closing),
}

pub(crate) struct HttpConn {
    pub buf: Vec<u8>,
    /// The current request must be complete by then (slowloris guard).
    pub deadline: Millis,
    /// `100 Continue` went out for the current request.
    pub continue_sent: bool,
}

pub(crate) struct WsConn {
    pub auth: Auth,
    pub subs: Subs,
    /// Partial frame bytes and a fragmented message, only while there are any.
    pub inbound: Option<Box<Inbound>>,
    pub next_ping: Millis,
    pub rate: TokenBucket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    NotRequired,
    /// Auth is on and the client has until `deadline` to send `auth`.
    Pending {
        deadline: Millis,
    },
    Authenticated(TokenId),
}

impl Auth {
    pub fn token(self) -> Option<TokenId> {
        match self {
            Auth::Authenticated(id) => Some(id),
            _ => None,
        }
    }
}

/// The patterns a socket holds in the router.
pub(crate) enum Subs {
    None,
    /// The configured defaults (shared), until the first `subscribe`.
    Defaults(Rc<[Box<str>]>),
    Own(Vec<Box<str>>),
}

impl Subs {
    pub fn patterns(&self) -> &[Box<str>] {
        match self {
            Subs::None => &[],
            Subs::Defaults(list) => list,
            Subs::Own(list) => list,
        }
    }
}

#[derive(Default)]
pub(crate) struct Inbound {
    pub reader: MessageReader,
    pub leftover: Vec<u8>,
}

pub(crate) struct Closing {
    pub until: Millis,
    /// The peer has closed (or will read nothing more): drop once flushed.
    pub drop_when_flushed: bool,
    /// Our side of the TCP stream is shut after the last byte.
    pub write_shut: bool,
}

impl Conn {
    pub fn new(socket: TcpStream, id: u32, phase: Phase, now: Millis) -> Conn {
        Conn {
            socket,
            tls: None,
            id,
            phase,
            out: OutQueue::default(),
            last_rx: now,
            stalled_since: NOT_STALLED,
            timer_at: Millis::MAX,
            dirty: false,
        }
    }

    pub fn ws_mut(&mut self) -> Option<&mut WsConn> {
        match &mut self.phase {
            Phase::WebSocket(ws) => Some(ws),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle density depends on this: at 512 bytes of RSS per idle socket
    /// all told, the slab entry must stay a small part of it.
    #[test]
    fn conn_stays_small() {
        let size = std::mem::size_of::<slab::Slab<Conn>>();
        let entry = std::mem::size_of::<Conn>();
        // mio keeps a selector id in each socket when debug assertions are on.
        let limit = if cfg!(debug_assertions) { 176 } else { 168 };
        assert!(entry <= limit, "Conn grew to {entry} bytes (slab {size})");
    }
}
