//! The sans-I/O protocol core: no sockets, no clock. Bytes in, decisions out.

pub mod chunked;
pub mod command;
pub mod deflate;
pub mod frames;
pub mod handshake;
pub mod http;
pub mod keepalive;
