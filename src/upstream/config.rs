//! `[upstream]`: the NATS servers a fleet of relays shares.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::duration_text;
use crate::error::ConfigError;

/// Fleet mode: publishes go to NATS, and every relay delivers what NATS
/// hands it. Absent (the default), the relay stands alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Server URLs, `nats://host:4222` or `tls://host:4222`; the client
    /// picks one and fails over to the others.
    pub nats: Vec<String>,
    /// Prepended to every channel to make its NATS subject, so several
    /// applications can share one NATS account.
    pub subject_prefix: String,
    /// JetStream mode: events go into a stream, every relay reads it, and
    /// the stream sequence is every relay's `seq` (docs/fleet.md).
    pub jetstream: bool,
    /// JetStream mode: the stream's name. It is created if missing, with
    /// the subjects `{subject_prefix}>` and the limits below; an existing
    /// stream is used as it is.
    pub stream: String,
    /// Limits of a stream the relay creates: most messages, bytes, and the
    /// longest a message is kept (`0` / `"0s"`: no limit of that kind).
    pub stream_max_messages: i64,
    pub stream_max_bytes: i64,
    #[serde(with = "duration_text")]
    pub stream_max_age: Duration,
    /// Replicas of a stream the relay creates (in a JetStream cluster).
    pub stream_replicas: usize,
    /// Keep a stream the relay creates in memory rather than on disk.
    pub stream_memory: bool,
    /// With a NATS server of 2.10 or later, read only the subjects clients
    /// hold (and `history.last_value`) from the stream; before 2.10, or
    /// when false, every relay reads the whole stream.
    pub filter_subjects: bool,
    /// When true, `/healthz` answers 503 while NATS is unreachable, so a
    /// load balancer takes the relay out of rotation.
    pub required: bool,
    /// Credentials: at most one of `token`, `user` with `password`, `creds_file`.
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// A NATS `.creds` file (a user JWT and its NKey seed).
    pub creds_file: Option<PathBuf>,
    /// Refuse to talk to a server without TLS.
    pub tls_required: bool,
    /// PEM file of the CAs that sign the servers' certificates (else the
    /// platform's web roots).
    pub tls_ca_file: Option<PathBuf>,
    /// How long subscription changes gather before they go to NATS, so that
    /// a reconnect storm costs one subscribe per pattern, not one per client.
    #[serde(with = "duration_text")]
    pub interest_debounce: Duration,
    /// Events waiting to go to NATS (HTTP requests count their events);
    /// past it publishes get 503 (HTTP) or `Full` (`try_publish`).
    pub publish_capacity: usize,
    /// Messages per NATS subscription the client buffers while the relay is
    /// busy; past it NATS drops them and they are counted as lost.
    pub subscription_capacity: usize,
    /// Longest wait for NATS to confirm a publish before it is answered 503.
    #[serde(with = "duration_text")]
    pub publish_timeout: Duration,
    /// The longest wait between two attempts to reach NATS; the wait starts
    /// at 1 ms and doubles up to it.
    #[serde(with = "duration_text")]
    pub reconnect_max_delay: Duration,
    /// Most recent message ids remembered to drop the copies NATS sends
    /// when one message matches several of the relay's patterns.
    pub dedup_window: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            nats: Vec::new(),
            subject_prefix: "tidings.".to_string(),
            jetstream: false,
            stream: "TIDINGS".to_string(),
            stream_max_messages: 1_000_000,
            stream_max_bytes: 1 << 30,
            stream_max_age: Duration::from_secs(24 * 3600),
            stream_replicas: 1,
            stream_memory: false,
            filter_subjects: true,
            required: false,
            token: None,
            user: None,
            password: None,
            creds_file: None,
            tls_required: false,
            tls_ca_file: None,
            interest_debounce: Duration::from_millis(100),
            publish_capacity: 65_536,
            subscription_capacity: 65_536,
            publish_timeout: Duration::from_secs(2),
            reconnect_max_delay: Duration::from_secs(4),
            dedup_window: 65_536,
        }
    }
}

impl UpstreamConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nats.is_empty() {
            return Err(ConfigError::invalid(
                "upstream.nats",
                "give at least one server, e.g. [\"nats://127.0.0.1:4222\"], or remove [upstream]",
            ));
        }
        for url in &self.nats {
            if url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(ConfigError::invalid(
                    "upstream.nats",
                    format!("{url:?} is not a NATS server URL (nats://host:4222)"),
                ));
            }
        }
        if self.jetstream {
            self.validate_stream()?;
        }
        self.validate_prefix()?;
        let credentials = [
            self.token.is_some(),
            self.user.is_some() || self.password.is_some(),
            self.creds_file.is_some(),
        ];
        if credentials.iter().filter(|&&given| given).count() > 1 {
            return Err(ConfigError::invalid(
                "upstream",
                "give one kind of credentials: token, user and password, or creds_file",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(ConfigError::invalid(
                "upstream.user",
                "user and password go together",
            ));
        }
        let positive = [
            ("upstream.publish_capacity", self.publish_capacity),
            ("upstream.subscription_capacity", self.subscription_capacity),
            ("upstream.dedup_window", self.dedup_window),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.reconnect_max_delay.is_zero() {
            return Err(ConfigError::invalid(
                "upstream.reconnect_max_delay",
                "must be greater than 0",
            ));
        }
        if self.publish_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "upstream.publish_timeout",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// Checks that the files it names can be read, at startup rather than
    /// at the first connection attempt (`validate` checks no files, so a
    /// configuration can be checked on another host).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let files = [
            ("upstream.creds_file", &self.creds_file),
            ("upstream.tls_ca_file", &self.tls_ca_file),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                std::fs::metadata(path)
                    .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    fn validate_stream(&self) -> Result<(), ConfigError> {
        let name_ok = !self.stream.is_empty()
            && self.stream.len() <= 255
            && !self
                .stream
                .bytes()
                .any(|b| b.is_ascii_whitespace() || matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'));
        if !name_ok {
            return Err(ConfigError::invalid(
                "upstream.stream",
                format!(
                    "{:?}: a stream name is 1 to 255 characters without whitespace, \
                     '.', '*', '>', '/' or '\\'",
                    self.stream
                ),
            ));
        }
        if self.subject_prefix.is_empty() {
            return Err(ConfigError::invalid(
                "upstream.subject_prefix",
                "JetStream mode needs a prefix: the stream's subjects are {subject_prefix}>",
            ));
        }
        let limits = [
            ("upstream.stream_max_messages", self.stream_max_messages),
            ("upstream.stream_max_bytes", self.stream_max_bytes),
        ];
        for (key, value) in limits {
            if value < 0 {
                return Err(ConfigError::invalid(key, "must be 0 (no limit) or more"));
            }
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(ConfigError::invalid(
                "upstream.stream_replicas",
                "must be 1 to 5",
            ));
        }
        Ok(())
    }

    /// The prefix is empty or ends with `.` and holds only characters a
    /// NATS subject token may (no wildcards, no whitespace).
    fn validate_prefix(&self) -> Result<(), ConfigError> {
        let prefix = &self.subject_prefix;
        if prefix.is_empty() {
            return Ok(());
        }
        let tokens_ok = prefix
            .strip_suffix('.')
            .is_some_and(|body| body.split('.').all(is_literal_token));
        if !tokens_ok {
            return Err(ConfigError::invalid(
                "upstream.subject_prefix",
                format!(
                    "{prefix:?}: must be empty or end with \".\" (e.g. \"tidings.\"), \
                     with no empty segment, wildcard or whitespace"
                ),
            ));
        }
        Ok(())
    }
}

fn is_literal_token(token: &str) -> bool {
    !token.is_empty()
        && token != "*"
        && token != ">"
        && !token.bytes().any(|b| b.is_ascii_whitespace() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: impl FnOnce(&mut UpstreamConfig)) -> Result<(), String> {
        let mut config = UpstreamConfig {
            nats: vec!["nats://127.0.0.1:4222".into()],
            ..UpstreamConfig::default()
        };
        edit(&mut config);
        config.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_with_a_server_are_valid() {
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(with(|c| c.subject_prefix = String::new()), Ok(()));
        assert_eq!(with(|c| c.subject_prefix = "app.events.".into()), Ok(()));
        assert_eq!(with(|c| c.jetstream = true), Ok(()));
    }

    #[test]
    fn bad_values_name_their_key() {
        type Edit = fn(&mut UpstreamConfig);
        let cases: [(Edit, &str); 11] = [
            (|c| c.nats.clear(), "upstream.nats"),
            (|c| c.nats = vec!["http://x:1 y".into()], "upstream.nats"),
            (
                |c| {
                    c.jetstream = true;
                    c.stream = "a.b".into();
                },
                "upstream.stream",
            ),
            (
                |c| {
                    c.jetstream = true;
                    c.subject_prefix = String::new();
                },
                "needs a prefix",
            ),
            (
                |c| {
                    c.jetstream = true;
                    c.stream_max_bytes = -1;
                },
                "stream_max_bytes",
            ),
            (
                |c| {
                    c.jetstream = true;
                    c.stream_replicas = 0;
                },
                "stream_replicas",
            ),
            (|c| c.subject_prefix = "tidings".into(), "subject_prefix"),
            (|c| c.subject_prefix = "a.*.".into(), "subject_prefix"),
            (|c| c.subject_prefix = "a..".into(), "subject_prefix"),
            (
                |c| {
                    c.token = Some("t".into());
                    c.creds_file = Some("x.creds".into());
                },
                "one kind of credentials",
            ),
            (|c| c.user = Some("u".into()), "user and password"),
        ];
        for (edit, expected) in cases {
            let error = with(edit).expect_err(expected);
            assert!(error.contains(expected), "{error}");
        }
    }
}
