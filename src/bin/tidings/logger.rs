//! Logs to stderr through `tracing`: the level from `TIDINGS_LOG` (or
//! `RUST_LOG` when that is unset), `--log-format text|json`. A level the
//! relay does not know stops it at startup. The config file's `log_level`,
//! when set, takes over, at startup and on SIGHUP.

use std::sync::OnceLock;

use clap::ValueEnum;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL target: message fields`, for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The level names a log setting may use: those of the config file's
/// `log_level`.
use tidings::config::LOG_LEVELS as LEVELS;

/// Changes the level of the running logger, e.g. on a configuration reload.
static LEVEL_HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter a log setting asks for: `info` when unset or empty. A setting
/// is a level (`debug`) or comma-separated directives as `RUST_LOG` takes
/// them (`warn,tidings::io=debug`). `EnvFilter` alone would read a typo
/// such as `verbose` as a module name and log nothing, so every level named
/// must be one of `LEVELS`.
fn filter(name: &str, value: Option<&str>) -> Result<EnvFilter, String> {
    let text = value.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Ok(EnvFilter::new("info"));
    }
    let complaint = || {
        format!(
            "{name}={text:?} is not a log level; use one of {} (or target=level directives)",
            LEVELS.join(", ")
        )
    };
    for directive in text.split(',') {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !LEVELS.iter().any(|l| level.trim().eq_ignore_ascii_case(l)) {
            return Err(complaint());
        }
    }
    EnvFilter::try_new(text.to_ascii_lowercase()).map_err(|_| complaint())
}

/// Installs the logger at the level `TIDINGS_LOG` (else `RUST_LOG`) asks for.
pub fn init(format: LogFormat) -> Result<(), String> {
    let (name, value) = from_environment();
    let (level, handle) = reload::Layer::new(filter(name, value.as_deref())?);
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let registry = tracing_subscriber::registry().with(level);
    let installed = match format {
        LogFormat::Text => registry.with(lines).try_init(),
        LogFormat::Json => registry.with(lines.json().flatten_event(true)).try_init(),
    };
    installed.map_err(|e| format!("cannot install the logger: {e}"))?;
    let _ = LEVEL_HANDLE.set(handle);
    Ok(())
}

/// The environment's log setting and its name: `TIDINGS_LOG`, else
/// `RUST_LOG`.
fn from_environment() -> (&'static str, Option<String>) {
    match std::env::var("TIDINGS_LOG") {
        Ok(v) => ("TIDINGS_LOG", Some(v)),
        Err(_) => ("RUST_LOG", std::env::var("RUST_LOG").ok()),
    }
}

/// Switches the running logger to the config file's `log_level`, or back
/// to what the environment asks for when the file has none; returns the
/// setting now in force. An invalid setting leaves the level as it was and
/// says why.
pub fn set_level(from_file: Option<&str>) -> Result<String, String> {
    let (name, value) = match from_file {
        Some(level) => ("log_level", Some(level.to_string())),
        None => from_environment(),
    };
    let filter = filter(name, value.as_deref())?;
    let shown = filter.to_string();
    let handle = LEVEL_HANDLE
        .get()
        .ok_or("the logger is not installed yet")?;
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the log level: {e}"))?;
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(value: Option<&str>) -> Result<String, String> {
        filter("TIDINGS_LOG", value).map(|f| f.to_string())
    }

    #[test]
    fn levels_from_the_environment_value() {
        assert_eq!(shown(None).as_deref(), Ok("info"));
        assert_eq!(shown(Some("")).as_deref(), Ok("info"));
        assert_eq!(shown(Some("warn")).as_deref(), Ok("warn"));
        assert_eq!(shown(Some("DEBUG")).as_deref(), Ok("debug"));
        assert_eq!(shown(Some("off")).as_deref(), Ok("off"));
        assert!(shown(Some("warn,tidings::io=debug")).is_ok());
        let err = shown(Some("verbose")).expect_err("not a level");
        assert!(err.contains("TIDINGS_LOG=\"verbose\""), "{err}");
        assert!(
            err.contains("off, error, warn, info, debug, trace"),
            "{err}"
        );
        assert!(shown(Some("tidings=loud")).is_err());
    }
}
