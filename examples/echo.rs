//! An echo server built from the relay itself — its reactor, handshake,
//! frame reader, UTF-8 checks, fragmentation and close handshake — for the
//! Autobahn|Testsuite fuzzing client (`scripts/autobahn.sh`).
//!
//! `cargo run --release --example echo -- 127.0.0.1:9001`
//!
//! It echoes text and binary messages on `/ws`, the path the relay
//! upgrades; the Autobahn configuration points there. Limits are generous
//! because the suite sends messages of up to 16 MiB.

use std::time::Duration;

use tidings::config::CompressionMode;
use tidings::{Config, Relay};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into());
    let mut config = Config {
        listen: listen.parse()?,
        conformance_echo: true,
        ..Config::default()
    };
    config.limits.max_message_size = 16 * 1024 * 1024;
    config.limits.max_queue_bytes = 64 * 1024 * 1024;
    config.limits.max_queue_messages = 100_000;
    config.limits.messages_per_second = 1_000_000;
    config.limits.message_burst = 1_000_000;
    config.timeouts.write_deadline = Duration::from_secs(60);
    // permessage-deflate for Autobahn sections 12 and 13: client messages
    // inflate under the same limit; echoes go back plain, as RFC 7692
    // allows (the sender chooses per message).
    config.compression = CompressionMode::On;
    let relay = Relay::new(config)?;
    println!("echo server on ws://{}/ws", relay.local_addr());
    relay.run()?;
    Ok(())
}
