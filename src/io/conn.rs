//! One socket's state. Kept small: an idle, subscribed WebSocket holds no
//! read buffer, no queue allocation and no timer object (invariant 7).

use mio::net::TcpStream;

use super::timer::Millis;
use crate::fanout::queue::OutQueue;
use crate::session::{HttpSession, WsSession};

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
    /// When it was accepted, in seconds of the reactor's clock (for the
    /// admin view; 4 bytes fit in the padding after `dirty`).
    pub opened_s: u32,
    /// Times frames were dropped for it with a `resync` notice (saturating).
    pub resyncs: u16,
    /// The client agreed to permessage-deflate: events with a deflated
    /// frame go to it deflated, and its messages may be compressed.
    pub deflate: bool,
}

pub(crate) const NOT_STALLED: Millis = Millis::MAX;

pub(crate) enum Phase {
    /// Reading HTTP requests: the upgrade, or the HTTP API (kept alive).
    Http(Box<HttpSession>),
    WebSocket(WsSession),
    /// A close frame or final response is queued; the socket lingers until the
    /// peer closes or `timeouts.close_linger` passes.
    Closing(Closing),
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
            opened_s: (now / 1000) as u32,
            resyncs: 0,
            deflate: false,
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
        // mio keeps a selector id in each socket when debug assertions are
        // on (12 more bytes, and the padding that then no longer holds
        // `opened_s` and `resyncs`).
        let limit = if cfg!(debug_assertions) { 184 } else { 168 };
        assert!(entry <= limit, "Conn grew to {entry} bytes (slab {size})");
    }
}
