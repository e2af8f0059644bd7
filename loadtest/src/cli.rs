//! Command-line flags and the small parsers they need.

use crate::publisher::PublishMode;
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};

#[derive(Parser, Debug)]
#[command(
    name = "tidings-swarm",
    version,
    about = "Load-test client swarm for the tidings WebSocket relay (loopback targets only)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Subcommand, Debug)]
pub enum Mode {
    /// Subscribe N sockets, publish at a rate, measure deliveries and latency.
    Fanout(FanoutArgs),
    /// Hold N subscribed sockets and measure the server's memory per socket.
    Idle(IdleArgs),
    /// Fanout phases at rising rates until completeness or p99 fails.
    Sweep(SweepArgs),
    /// Drop every connection at once (or restart the relay) and time the
    /// reconnect storm.
    Storm(StormArgs),
    /// No server: what the kernel charges for k frames per write on loopback.
    Floor(FloorArgs),
    /// Internal: one worker process of a large swarm.
    #[command(hide = true)]
    Worker { cfg: String },
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// WebSocket endpoint (ws://, 127.0.0.0/8 or localhost only). Repeat it
    /// to spread the connections over several relays, round-robin.
    #[arg(long = "url", default_value = "ws://127.0.0.1:8080/ws")]
    pub urls: Vec<String>,
    /// Subscribed connections to hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Channel the publisher publishes to.
    #[arg(long, default_value = "metrics.system")]
    pub channel: String,
    /// Pattern the sockets subscribe to (default: the channel).
    #[arg(long)]
    pub pattern: Option<String>,
    /// New connections per second.
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Connections per source address (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = 25_000)]
    pub per_source: usize,
    /// Give up on a connection not subscribed within this time.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub connect_timeout: f64,
    /// Connections being opened at once, at most.
    #[arg(long, default_value_t = 1000)]
    pub max_inflight: usize,
    /// Worker processes (0: all in this process; default: as the file limit requires).
    #[arg(long)]
    pub processes: Option<usize>,
    /// The relay's pid, to report its CPU and memory from /proc. Repeat it
    /// for a fleet (relays, NATS): the sum is reported, and each pid's CPU.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// After publishing, wait at most this long for the last deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    pub drain: f64,
    /// Offer permessage-deflate (no context takeover either way) and inflate
    /// compressed events; the report says how many connections got it.
    #[arg(long)]
    pub deflate: bool,
    /// Token sent with every upgrade as the `Bearer` subprotocol (a static
    /// token or a JWT; the relay checks it on every handshake).
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the token from this file (its first line), e.g. a minted JWT.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

impl Common {
    /// The token of `--token` or `--token-file`, checked.
    pub fn token(&self) -> Result<Option<String>, String> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
            (None, None) => return Ok(None),
        };
        crate::handshake::check_token(&token)?;
        Ok(Some(token))
    }
}

#[derive(Args, Debug, Clone)]
pub struct Publish {
    /// Publish endpoint (default: /api/publish on the first --url host).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Bytes of each event's `data` object (timestamp plus padding).
    #[arg(long, default_value_t = 150)]
    pub payload: usize,
    /// Most events in one POST (batch mode).
    #[arg(long, default_value_t = 1000)]
    pub batch_max: usize,
    /// How the events go out; neither mode pipelines (one request in flight
    /// per connection).
    #[arg(long, value_enum, default_value_t = PublishMode::Batch)]
    pub publish_mode: PublishMode,
    /// Keep-alive connections of --publish-mode single; the rate is paced
    /// over all of them (batch mode uses one).
    #[arg(long, default_value_t = 1)]
    pub publish_conns: usize,
    /// Publishing before the measured window.
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    pub warmup: f64,
    /// The measured window (publishing goes on for warmup + duration).
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub duration: f64,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: Publish,
    /// Events per second, or `max` (back-to-back POSTs: of --batch-max events,
    /// or of one event on each of --publish-conns connections).
    #[arg(long, default_value = "10", value_parser = parse_rate)]
    pub rate: Rate,
    /// Write the latency CDF (from the merged histogram) to this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Loopback socket pairs to write to, round-robin.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Frames per writev to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 4, 16, 64, 256])]
    pub frames_per_write: Vec<usize>,
    /// Bytes of each frame, header included (150 bytes of data in the
    /// relay's envelope come to about 220).
    #[arg(long, default_value_t = 220)]
    pub frame_bytes: usize,
    /// Writing before each measured window.
    #[arg(long, default_value = "1s", value_parser = parse_secs)]
    pub warmup: f64,
    /// Each measured window.
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    pub duration: f64,
    /// CPU the writer (the relay's role) is pinned to.
    #[arg(long, default_value_t = 0)]
    pub writer_cpu: usize,
    /// CPU the reader (the swarm's role) is pinned to.
    #[arg(long, default_value_t = 1)]
    pub reader_cpu: usize,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// How clients drop: mixed (half TCP close, half close frame), tcp,
    /// frame, reset; or server: the swarm sends SIGTERM to --server-pid
    /// (after starting --successor) and the relay closes them.
    #[arg(long = "drop", value_enum, default_value_t = crate::storm::DropHow::Mixed)]
    pub drop_how: crate::storm::DropHow,
    /// With --drop server: the command of the relay that takes the port
    /// over (run by `sh -c`), started before the SIGTERM; the swarm waits
    /// for its `tidings listening on` line, reports its CPU as the server's,
    /// and stops it at the end.
    #[arg(long)]
    pub successor: Option<String>,
    /// Reconnect after the backoff even when the close reason carries
    /// `retry_after_ms` (a client that ignores the hint).
    #[arg(long)]
    pub ignore_retry_after: bool,
    /// Write the reconnect curve (upgrades per 100 ms after the drop) to
    /// this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Backoff base: the first reconnect waits uniformly in [0, base).
    #[arg(long, default_value = "1s", value_parser = parse_secs)]
    pub base: f64,
    /// Backoff cap: attempt k waits uniformly in [0, min(cap, base·2^k)).
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    pub cap: f64,
    /// Clients not back this long after the drop are left out.
    #[arg(long, default_value = "60s", value_parser = parse_secs)]
    pub deadline: f64,
    /// Seed of the backoff jitter (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Events/s published to --channel during the storm (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Bytes of each event's `data` object during the storm.
    #[arg(long, default_value_t = 150)]
    pub payload: usize,
    /// Publish endpoint (default: /api/publish on the first --url host).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Do not publish the final marker event (nor check it arrives).
    #[arg(long)]
    pub no_marker: bool,
    /// Reconnect with a plain subscribe, not one with `since` (to compare).
    #[arg(long)]
    pub no_resume: bool,
    /// Publish at --rate this long before the drop too, so events are
    /// flowing when the clients go (0: the publisher starts at the drop).
    #[arg(long, default_value = "0s", value_parser = parse_secs)]
    pub lead: f64,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// How long to hold the connections.
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    pub duration: f64,
}

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: Publish,
    /// Events per second of the first step.
    #[arg(long, default_value_t = 10.0)]
    pub start_rate: f64,
    /// Each step's rate is the previous one times this.
    #[arg(long, default_value_t = 2.0)]
    pub step: f64,
    #[arg(long, default_value_t = 12)]
    pub max_steps: usize,
    /// A step fails when p99 latency exceeds this (ms).
    #[arg(long, default_value_t = 250.0)]
    pub max_p99_ms: f64,
    /// A step fails when received/expected is below this.
    #[arg(long, default_value_t = 0.999)]
    pub min_completeness: f64,
    /// Write the last step's latency CDF to this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    Max,
}

impl Rate {
    pub fn per_second(self) -> Option<f64> {
        match self {
            Rate::PerSecond(r) => Some(r),
            Rate::Max => None,
        }
    }
}

pub fn parse_rate(s: &str) -> Result<Rate, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(Rate::PerSecond(r)),
        _ => Err(format!("{s:?} is not a positive rate or `max`")),
    }
}

/// Seconds from `10`, `10s`, `250ms` or `2m`.
pub fn parse_secs(s: &str) -> Result<f64, String> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v * scale),
        _ => Err(format!("{s:?} is not a duration like 10s, 250ms or 2m")),
    }
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub path: String,
}

/// Parses `scheme://host[:port][/path]`; the host must be in 127.0.0.0/8
/// (or `localhost`): the swarm never loads anything but this machine.
pub fn parse_url(url: &str, scheme: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("{url:?} does not start with {scheme}://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in {url:?}"))?,
        ),
        None => (authority, 80),
    };
    let ip: Ipv4Addr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse()
            .map_err(|_| format!("{host:?} is not an IPv4 address"))?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "{ip} is not a loopback address: only 127.0.0.0/8 may be targeted"
        ));
    }
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("bad path in {url:?}"));
    }
    Ok(Target {
        addr: SocketAddr::new(ip.into(), port),
        host: authority.to_string(),
        path: path.to_string(),
    })
}

/// The `--url` endpoints, in order: connection k goes to `targets[k % len]`.
pub fn parse_ws_urls(urls: &[String]) -> Result<Vec<Target>, String> {
    if urls.is_empty() {
        return Err("no --url given".into());
    }
    let targets = urls
        .iter()
        .map(|u| parse_url(u, "ws"))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.addr == t.addr) {
            return Err(format!(
                "--url {} is given twice: each endpoint once",
                t.addr
            ));
        }
    }
    Ok(targets)
}

/// A channel or pattern that can go into JSON without escaping, and whose
/// events the swarm does not take for replies (see `scan::reply_kind`).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        return Err(format!("{name:?} is not a usable channel or pattern"));
    }
    if crate::scan::reply_kind(format!(r#"{{"type":"{name}""#).as_bytes()).is_some() {
        return Err(format!(
            "{name:?} is the name of a relay reply: the swarm would not see its events"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:18080/ws", "ws").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t.addr,
            "127.0.0.1:18080".parse().unwrap_or_else(|_| unreachable!())
        );
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:18080", "/ws")
        );
        let t = parse_url("http://localhost", "http").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        assert!(parse_url("ws://10.0.0.1:80/ws", "ws").is_err());
        assert!(parse_url("ws://example.com/ws", "ws").is_err());
        assert!(parse_url("http://127.0.0.1/ws", "ws").is_err());
        assert!(parse_url("ws://127.0.0.1:x/ws", "ws").is_err());
    }

    #[test]
    fn repeated_urls() {
        let urls = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = parse_ws_urls(&urls(&["ws://127.0.0.1:9001/ws", "ws://127.0.0.2:9002/a"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].addr.port(), t[0].path.as_str()), (9001, "/ws"));
        assert_eq!(
            (t[1].host.as_str(), t[1].path.as_str()),
            ("127.0.0.2:9002", "/a")
        );
        let one =
            parse_ws_urls(&urls(&["ws://localhost:9001/ws"])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.len(), 1);
        assert!(parse_ws_urls(&[]).is_err());
        // One bad endpoint spoils the list, and says which it is.
        let e = parse_ws_urls(&urls(&["ws://127.0.0.1:9001/ws", "ws://10.1.1.1:9002/ws"]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("10.1.1.1"), "{e}");
        // The same endpoint twice is a typo, not twice the share.
        assert!(
            parse_ws_urls(&urls(&["ws://127.0.0.1:9001/ws", "ws://127.0.0.1:9001/x"])).is_err()
        );
    }

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_secs("10"), Ok(10.0));
        assert_eq!(parse_secs("250ms"), Ok(0.25));
        assert_eq!(parse_secs("2m"), Ok(120.0));
        assert!(parse_secs("-1").is_err());
        assert_eq!(parse_rate("MAX"), Ok(Rate::Max));
        assert_eq!(parse_rate("12.5"), Ok(Rate::PerSecond(12.5)));
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("job.*").is_ok());
        assert!(check_name("a\"b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("resync").is_err());
        assert!(check_name("resync.x").is_ok());
    }
}
