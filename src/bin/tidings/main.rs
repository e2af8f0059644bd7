//! The `tidings` server: the relay on a port, configured by flags and TOML.

mod demo;
mod logger;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use tidings::config::resolve_listen;
use tidings::{Config, Relay, RelayHandle};

/// A high-density WebSocket event relay.
///
/// Clients connect to ws://ADDR/ws (wss:// with [tls] in the config file)
/// and subscribe to channels; producers publish with POST /api/publish. See
/// docs/protocol.md.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (WebSocket and HTTP API), host:port; a host name
    /// is resolved to its first address [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR", value_parser = resolve_listen)]
    listen: Option<SocketAddr>,
    /// TOML configuration file (see docs/configuration.md)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Reactor threads: a number, or "auto" for one per core [default: auto]
    #[arg(long, value_name = "N|auto")]
    reactors: Option<tidings::Reactors>,
    /// Pattern a client receives until its first subscribe (repeatable;
    /// replaces `default_channels` from the config file)
    #[arg(long = "default-channel", value_name = "PATTERN")]
    default_channels: Vec<String>,
    /// Publish realistic sample events (metrics, jobs, alerts, clusters);
    /// without default channels, a client that sends nothing receives them
    #[arg(long)]
    demo: bool,
    /// How log lines are written to stderr; the level comes from
    /// TIDINGS_LOG (or RUST_LOG): off, error, warn, info, debug, trace
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = logger::LogFormat::Text)]
    log_format: logger::LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Exit 2, as for a bad flag: a typo in TIDINGS_LOG must not silently
    // log at another level than asked.
    if let Err(message) = logger::init(args.log_format) {
        eprintln!("tidings: {message}");
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tidings: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(reactors) = args.reactors {
        config.reactors = reactors;
    }
    if !args.default_channels.is_empty() {
        config.default_channels = args.default_channels.clone();
    }
    // A first look with a client that sends nothing should show traffic.
    if args.demo && config.default_channels.is_empty() {
        config.default_channels = demo::CHANNELS.iter().map(|c| c.to_string()).collect();
    }
    let silent_client_note = args.demo.then(|| {
        format!(
            " (demo: a client that sends nothing receives {})",
            config.default_channels.join(", ")
        )
    });
    // With `[tls]` the port speaks only TLS: a client given ws:// would fail.
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    logger::set_level(config.log_level.as_deref())?;
    let relay = Relay::new(config).map_err(|e| e.to_string())?;
    let publisher = relay.publisher();
    let addr = relay.local_addr();
    // Register before announcing, so a signal sent right after the startup
    // line is never missed.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    let handle = relay.spawn().map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout();
    // The URL stays the first word after "on", for scripts that read it.
    let note = silent_client_note.unwrap_or_default();
    let _ = writeln!(stdout, "tidings listening on {scheme}://{addr}/ws{note}");
    let _ = stdout.flush();
    if args.demo {
        demo::start(publisher);
        tracing::info!(
            "demo producers publishing {} events",
            demo::CHANNELS.join(", ")
        );
    }
    for signal in signals.forever() {
        if signal == SIGHUP {
            reload(args.config.as_deref(), &handle);
            continue;
        }
        tracing::info!("received signal {signal}; closing every client with 1001");
        break;
    }
    handle.shutdown().map_err(|e| e.to_string())
}

/// SIGHUP: re-reads the config file and applies its tokens and log level,
/// keeping every connection whose token still stands. A file that does not
/// load changes nothing.
fn reload(path: Option<&Path>, handle: &RelayHandle) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: started without --config, so there is nothing to reload");
        return;
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("SIGHUP: keeping the configuration in force: {e}");
            return;
        }
    };
    if let Err(e) = handle.reload_auth(&config) {
        tracing::error!("SIGHUP: keeping the configuration in force: {e}");
        return;
    }
    match logger::set_level(config.log_level.as_deref()) {
        Ok(level) => tracing::info!(
            "SIGHUP: reloaded {}: tokens, and log level {level}; other settings apply at restart",
            path.display()
        ),
        Err(e) => tracing::error!("SIGHUP: tokens reloaded, log level unchanged: {e}"),
    }
}
