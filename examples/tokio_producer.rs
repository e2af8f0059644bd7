//! Publishing from async code (tokio).
//!
//! `Publisher::publish` blocks while the relay's ingest queue is full, and a
//! blocked tokio worker thread stalls every task scheduled on it. So, from
//! async code, either:
//!
//! - call `try_publish`, which never blocks, and decide what to do with
//!   `PublishError::Full` (wait a little and retry, as here, or drop the
//!   event if a newer one will replace it); or
//! - move `publish` to tokio's blocking pool with
//!   `tokio::task::spawn_blocking`.
//!
//! Both serialize the event on the calling thread, so big payloads cost the
//! caller, not the reactor.
//!
//! `cargo run --example tokio_producer [ADDR]` starts a relay (on
//! 127.0.0.1:8091 unless ADDR is given), publishes ten events from two async
//! tasks, shows what a subscribed client received, and stops.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;
use tidings::{Config, Event, PublishError, Publisher, Relay};
use tokio::task::spawn_blocking;
use tungstenite::{Message, WebSocket};

const EVENTS_PER_TASK: u32 = 5;

type Client = WebSocket<TcpStream>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8091".into());
    let config = Config {
        listen: listen.parse()?,
        ..Config::default()
    };
    let relay = Relay::new(config)?;
    let addr = relay.local_addr();
    let publisher = relay.publisher();
    let handle = relay.spawn()?;
    println!("relay on ws://{addr}/ws");

    // The client is blocking code too (tungstenite over a std socket), so it
    // runs on the blocking pool; it is subscribed before anything is published.
    let mut client = spawn_blocking(move || subscribed_client(addr)).await??;
    let reader = spawn_blocking(move || -> Result<Vec<String>, tungstenite::Error> {
        let mut received = Vec::new();
        while received.len() < 2 * EVENTS_PER_TASK as usize {
            if let Message::Text(text) = client.read()? {
                received.push(text.to_string());
            }
        }
        Ok(received)
    });

    let polite = tokio::spawn(with_try_publish(publisher.clone()));
    let blocking = tokio::spawn(with_spawn_blocking(publisher));
    polite.await??;
    blocking.await??;

    for text in reader.await?? {
        println!("client: {text}");
    }
    let stats = handle.stats();
    println!(
        "{} events, {} deliveries",
        stats.events_published, stats.deliveries
    );
    // `shutdown` joins the reactor thread: blocking as well.
    spawn_blocking(move || handle.shutdown()).await??;
    Ok(())
}

/// `try_publish` never blocks: on `Full`, wait without holding the thread.
async fn with_try_publish(publisher: Publisher) -> Result<(), PublishError> {
    for step in 1..=EVENTS_PER_TASK {
        let event = Event::new("job.progress", &json!({"jobId": "import-a", "step": step}))?;
        loop {
            // `try_publish` takes the event even when it refuses it; a
            // clone (the channel and the JSON text) is kept for the retry.
            match publisher.try_publish(event.clone()) {
                Ok(_seq) => break,
                Err(PublishError::Full) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return Err(e),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `publish` may block, so it runs where blocking is allowed.
async fn with_spawn_blocking(publisher: Publisher) -> Result<(), PublishError> {
    for step in 1..=EVENTS_PER_TASK {
        let event = Event::new("job.progress", &json!({"jobId": "import-b", "step": step}))?;
        let publisher = publisher.clone();
        spawn_blocking(move || publisher.publish(event))
            .await
            .expect("publish does not panic")?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn subscribed_client(addr: SocketAddr) -> Result<Client, tungstenite::Error> {
    let (mut socket, _) = tungstenite::client(format!("ws://{addr}/ws"), TcpStream::connect(addr)?)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                unreachable!("a blocking socket does not interrupt the handshake")
            }
        })?;
    socket.send(Message::text(
        json!({"type": "subscribe", "channels": ["job.*"]}).to_string(),
    ))?;
    // The `subscribed` reply: from here on, every event reaches this client.
    let reply = socket.read()?;
    println!("client: {reply}");
    Ok(socket)
}
