//! A small stderr logger: `TIDINGS_LOG=off|error|warn|info|debug|trace`
//! (default info). Any other value stops the relay at startup. The config
//! file's `log_level`, when set, takes over, at startup and on SIGHUP.

use std::io::Write;
use std::time::SystemTime;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let at = tidings::time::rfc3339_millis_string(SystemTime::now());
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let _ = writeln!(std::io::stderr().lock(), "{at} {level} {}", record.args());
    }

    fn flush(&self) {}
}

/// The `TIDINGS_LOG` values, in the order of the levels.
const LEVELS: [(&str, LevelFilter); 6] = [
    ("off", LevelFilter::Off),
    ("error", LevelFilter::Error),
    ("warn", LevelFilter::Warn),
    ("info", LevelFilter::Info),
    ("debug", LevelFilter::Debug),
    ("trace", LevelFilter::Trace),
];

/// The level `TIDINGS_LOG` asks for: info when unset or empty.
fn level(value: Option<&std::ffi::OsStr>) -> Result<LevelFilter, String> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(LevelFilter::Info);
    };
    let text = value.to_string_lossy();
    LEVELS
        .iter()
        .find(|(name, _)| text.trim().eq_ignore_ascii_case(name))
        .map(|(_, level)| *level)
        .ok_or_else(|| {
            let names: Vec<&str> = LEVELS.iter().map(|(name, _)| *name).collect();
            format!(
                "TIDINGS_LOG={text:?} is not a log level; use one of {}",
                names.join(", ")
            )
        })
}

/// Sets the level to the config file's `log_level` (already validated
/// against `tidings::config::LOG_LEVELS`), or back to what `TIDINGS_LOG`
/// asks for when the file has none.
pub fn set_level(from_file: Option<&str>) -> Result<LevelFilter, String> {
    let level = match from_file {
        Some(name) => level(Some(name.as_ref()))?,
        None => level(std::env::var_os("TIDINGS_LOG").as_deref())?,
    };
    log::set_max_level(level);
    Ok(level)
}

/// Installs the logger at the level `TIDINGS_LOG` asks for.
pub fn init() -> Result<(), String> {
    let level = level(std::env::var_os("TIDINGS_LOG").as_deref())?;
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_from_the_environment_value() {
        assert_eq!(level(None), Ok(LevelFilter::Info));
        assert_eq!(level(Some("".as_ref())), Ok(LevelFilter::Info));
        assert_eq!(level(Some("warn".as_ref())), Ok(LevelFilter::Warn));
        assert_eq!(level(Some("DEBUG".as_ref())), Ok(LevelFilter::Debug));
        assert_eq!(level(Some("off".as_ref())), Ok(LevelFilter::Off));
        let err = level(Some("verbose".as_ref())).expect_err("not a level");
        assert!(err.contains("\"verbose\""), "{err}");
        assert!(
            err.contains("off, error, warn, info, debug, trace"),
            "{err}"
        );
    }

    #[test]
    fn the_config_file_names_the_same_levels() {
        let names: Vec<&str> = LEVELS.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, tidings::config::LOG_LEVELS);
    }
}
