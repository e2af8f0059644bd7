//! The only I/O: the reactor and the socket state it drives.

pub(crate) mod admission;
mod close_log;
mod conn;
mod hooks;
mod outputs;
pub(crate) mod reactor;
pub(crate) mod reload;
pub(crate) mod timer;
pub(crate) mod tls;
