//! The only I/O: the reactor and the socket state it drives.

mod admin;
pub(crate) mod admission;
mod close_log;
mod conn;
pub(crate) mod gather;
mod hooks;
mod outputs;
pub(crate) mod reactor;
pub(crate) mod reload;
pub(crate) mod timer;
pub(crate) mod tls;
