//! Embedder hooks: the service's own rules decide who may connect and what
//! each client may subscribe to, on top of the relay's tokens.
//!
//! Here each client token belongs to a team, and a team sees only its own
//! channels (`team-a.>`). `on_subscribe` denies any other pattern, with a
//! reason the client reads in its error; `on_connect` turns away clients
//! that identify as scrapers. The hooks run on the reactor threads: they
//! look at data in memory and answer at once, never blocking.
//!
//! `cargo run --example team_permissions` prints what two clients get, and
//! stops.

use std::collections::HashMap;
use std::net::TcpStream;

use serde_json::json;
use tidings::{Config, ConnectRequest, Hooks, Relay, Subscriber, Verdict};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;

/// Which team each client token belongs to.
struct TeamChannels {
    team_of_token: HashMap<String, String>,
}

impl Hooks for TeamChannels {
    fn on_connect(&self, request: &ConnectRequest<'_>) -> Verdict {
        let agent = request.header("User-Agent").unwrap_or_default();
        if agent.contains("scraper") {
            return Verdict::deny("scrapers are not welcome");
        }
        Verdict::Allow
    }

    fn on_subscribe(&self, subscriber: &Subscriber<'_>, pattern: &str) -> Verdict {
        let team = subscriber
            .token
            .and_then(|token| self.team_of_token.get(token));
        match team {
            Some(team)
                if pattern
                    .strip_prefix(team.as_str())
                    .is_some_and(|rest| rest.starts_with('.')) =>
            {
                Verdict::Allow
            }
            Some(team) => Verdict::deny(format!("your team sees only {team}.*")),
            None => Verdict::deny("no team for this token"),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8091".into());
    let mut config = Config::from_toml_str(
        r#"
        [[auth.tokens]]
        token = "alice-7f2c"
        [[auth.tokens]]
        token = "bruno-91d0"
        "#,
    )?;
    config.listen = listen.parse()?;
    let hooks = TeamChannels {
        team_of_token: HashMap::from([
            ("alice-7f2c".to_string(), "team-a".to_string()),
            ("bruno-91d0".to_string(), "team-b".to_string()),
        ]),
    };
    let relay = Relay::new(config)?.hooks(hooks);
    let addr = relay.local_addr();
    let handle = relay.spawn()?;
    println!("relay on ws://{addr}/ws");

    // Alice may subscribe to her team's channels, not to team-b's: the
    // whole subscribe is refused, with the hook's reason.
    let mut alice = connect(addr, "alice-7f2c", "dashboard/1.0")?;
    for channels in [
        json!(["team-a.deploys", "team-a.alerts.>"]),
        json!(["team-a.x", "team-b.deploys"]),
    ] {
        let command = json!({"type": "subscribe", "channels": channels, "id": "sub"});
        alice.send(tungstenite::Message::text(command.to_string()))?;
        println!("client: {}", alice.read()?);
    }

    // A scraper is refused before the upgrade, with 403.
    match connect(addr, "bruno-91d0", "scraper/0.1") {
        Err(tungstenite::Error::Http(response)) => {
            println!("scraper: refused with {}", response.status().as_u16())
        }
        Ok(_) => println!("scraper: accepted"),
        Err(e) => return Err(e.into()),
    }
    handle.shutdown()?;
    Ok(())
}

/// A WebSocket client presenting `token` as the Bearer subprotocol.
fn connect(
    addr: std::net::SocketAddr,
    token: &str,
    agent: &str,
) -> Result<tungstenite::WebSocket<TcpStream>, tungstenite::Error> {
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("Bearer, {token}"))?,
    );
    headers.insert("User-Agent", HeaderValue::from_str(agent)?);
    match tungstenite::client(request, TcpStream::connect(addr)?) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        // A blocking stream never interrupts the handshake.
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            Err(tungstenite::Error::ConnectionClosed)
        }
    }
}
