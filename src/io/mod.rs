//! The only I/O: the reactor and the socket state it drives.

pub(crate) mod admission;
mod conn;
mod http_conn;
pub(crate) mod reactor;
mod session;
pub(crate) mod timer;
pub(crate) mod tls;
