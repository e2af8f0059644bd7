//! Embedding tidings: producer threads in this process publish job events,
//! and a WebSocket client (here, in the same process) receives them.
//!
//! `cargo run --example embedded` listens on 127.0.0.1:8090 (another address
//! may be given as the first argument), shows one round trip, and then,
//! when run from a terminal, keeps publishing a `job.progress` event every
//! second until Ctrl-C, so you can connect a client of your own:
//! `websocat ws://127.0.0.1:8090/ws` and send
//! `{"type":"subscribe","channels":["job.>"]}`.
//!
//! With stdin not a terminal (a script, CI) it stops after the round trip.

use std::io::IsTerminal;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tidings::{Config, Event, PublishError, Publisher, Relay};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let config = Config {
        listen: listen.parse()?,
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
    drop(socket);

    // Someone at a terminal may want to connect a client of their own; a
    // script or CI run wants the example to end by itself.
    if std::io::stdin().is_terminal() {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        thread::spawn(move || keep_publishing(&publisher));
        println!("publishing job.progress every second on ws://{addr}/ws; Ctrl-C to stop");
        signals.forever().next();
    }
    handle.shutdown()?;
    Ok(())
}

/// One `job.progress` a second, until the relay stops.
fn keep_publishing(publisher: &Publisher) {
    for step in 1u64.. {
        let data = json!({"jobId": "import-live", "step": step});
        let sent = Event::new("job.progress", &data).and_then(|event| publisher.publish(event));
        // `Closed` once the relay has stopped; this event is always valid.
        if sent.is_err() {
            return;
        }
        thread::sleep(Duration::from_secs(1));
    }
}
