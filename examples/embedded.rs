//! Embedding tidings: producer threads in this process publish job events,
//! and a WebSocket client (here, in the same process) receives them.
//!
//! Run with `cargo run --example embedded`, then also try
//! `websocat ws://127.0.0.1:8090/ws` and send
//! `{"type":"subscribe","channels":["job.>"]}`.

use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use serde_json::json;
use tidings::{Config, Event, PublishError, Relay};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        listen: "127.0.0.1:8090".parse()?,
        ..Config::default()
    };
    let relay = Relay::new(config)?;
    let addr = relay.local_addr();
    let publisher = relay.publisher();
    let handle = relay.spawn()?;
    println!("relay on ws://{addr}/ws");

    // A client of our own, so the example shows the round trip.
    let (mut socket, _) =
        tungstenite::client(format!("ws://{addr}/ws"), TcpStream::connect(addr)?)?;
    socket.send(tungstenite::Message::text(
        json!({"type": "subscribe", "channels": ["job.>"]}).to_string(),
    ))?;
    println!("client: {}", socket.read()?);

    // Producer threads: `publish` waits while the ingest queue is full;
    // `try_publish` would return `PublishError::Full` instead.
    let producers: Vec<_> = (0..3)
        .map(|worker| {
            let publisher = publisher.clone();
            thread::spawn(move || -> Result<(), PublishError> {
                for step in 1..=3 {
                    let data =
                        json!({"jobId": format!("import-{worker}"), "progress": step as f64 / 3.0});
                    publisher.publish(Event::new("job.progress", &data)?)?;
                    thread::sleep(Duration::from_millis(50));
                }
                Ok(())
            })
        })
        .collect();
    for producer in producers {
        producer.join().expect("producer thread panicked")?;
    }
    for _ in 0..9 {
        println!("client: {}", socket.read()?);
    }
    let stats = handle.stats();
    println!(
        "{} events, {} deliveries",
        stats.events_published, stats.deliveries
    );
    handle.shutdown()?;
    Ok(())
}
