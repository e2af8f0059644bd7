//! Errors the relay reports, and why it closes a socket.

use std::fmt;
use std::io;

/// Starting or running the relay failed.
#[derive(Debug)]
pub enum Error {
    /// The configuration is unusable.
    Config(ConfigError),
    /// The listen address could not be bound.
    Bind {
        addr: std::net::SocketAddr,
        error: io::Error,
    },
    /// Creating the poller or the reactor thread failed.
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "configuration: {e}"),
            Error::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Bind { error, .. } | Error::Io(error) => Some(error),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

/// A configuration problem; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Read {
        path: String,
        error: String,
    },
    /// TOML syntax or type errors; the text from the parser names the key.
    Parse(String),
    Invalid {
        key: String,
        message: String,
    },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => write!(f, "cannot read {path}: {error}"),
            ConfigError::Parse(text) => write!(f, "{}", text.trim_end()),
            ConfigError::Invalid { key, message } => write!(f, "`{key}` {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why the relay closes a WebSocket; each maps to one RFC 6455 close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame; we echo its code (RFC 6455 5.5.1).
    Echo(u16),
    /// The relay is stopping; the client should wait `retry_after_ms`
    /// before reconnecting (`shutdown.reconnect_spread`).
    Shutdown {
        retry_after_ms: u64,
    },
    /// Nothing arrived within `timeouts.pong_wait`.
    IdleTimeout,
    /// A frame broke RFC 6455; the text says which rule.
    Protocol(&'static str),
    BinaryMessage,
    InvalidUtf8,
    MessageTooBig {
        size: u64,
        max: usize,
    },
    /// The outbound queue overflowed (messages or bytes).
    QueueOverflow,
    /// Output was pending and no byte left for `timeouts.write_deadline`.
    WriteStalled,
    /// The client kept sending over `limits.messages_per_second` after a warning.
    RateLimited,
    AuthFailed,
    AuthTimeout,
    /// The relay's tokens were reloaded and this socket's no longer stands
    /// as it did; the text says how.
    AuthRevoked(&'static str),
    /// The client's JWT expired and no refresh came within
    /// `auth.jwt.refresh_grace`.
    TokenExpired,
}

/// [`CloseReason::AuthRevoked`]: the socket's token was removed.
pub const REVOKED_TOKEN: &str = "token revoked: it is no longer configured";
/// [`CloseReason::AuthRevoked`]: the token's `channels` no longer cover a
/// pattern the socket holds.
pub const NARROWED_TOKEN: &str = "token no longer allows a held subscription";
/// [`CloseReason::AuthRevoked`]: client tokens were configured where there
/// were none, and this socket never authenticated.
pub const AUTH_NOW_REQUIRED: &str = "authentication is now required";

/// Why WebSockets go, as the `reason` label of `tidings_closes_total`: one
/// per kind of [`CloseReason`], then the two ways a socket goes without one.
pub const CLOSE_KINDS: [&str; 16] = [
    "client",
    "shutdown",
    "idle_timeout",
    "protocol",
    "binary_message",
    "invalid_utf8",
    "message_too_big",
    "queue_overflow",
    "write_stalled",
    "rate_limited",
    "auth_failed",
    "auth_timeout",
    "token_expired",
    "auth_revoked",
    "peer_gone",
    "io_error",
];

/// [`CLOSE_KINDS`] index of a socket that went without a close frame.
pub const CLOSE_PEER_GONE: usize = 14;
/// [`CLOSE_KINDS`] index of a socket dropped on a read or write error.
pub const CLOSE_IO_ERROR: usize = 15;

impl CloseReason {
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Echo(code) => *code,
            CloseReason::Shutdown { .. } | CloseReason::IdleTimeout => 1001,
            CloseReason::Protocol(_) => 1002,
            CloseReason::BinaryMessage => 1003,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::QueueOverflow | CloseReason::WriteStalled | CloseReason::RateLimited => {
                1008
            }
            CloseReason::MessageTooBig { .. } => 1009,
            CloseReason::AuthFailed | CloseReason::AuthRevoked(_) => 4001,
            CloseReason::AuthTimeout => 4008,
            CloseReason::TokenExpired => 4003,
        }
    }

    /// Its index in [`CLOSE_KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            CloseReason::Echo(_) => 0,
            CloseReason::Shutdown { .. } => 1,
            CloseReason::IdleTimeout => 2,
            CloseReason::Protocol(_) => 3,
            CloseReason::BinaryMessage => 4,
            CloseReason::InvalidUtf8 => 5,
            CloseReason::MessageTooBig { .. } => 6,
            CloseReason::QueueOverflow => 7,
            CloseReason::WriteStalled => 8,
            CloseReason::RateLimited => 9,
            CloseReason::AuthFailed => 10,
            CloseReason::AuthTimeout => 11,
            CloseReason::TokenExpired => 12,
            CloseReason::AuthRevoked(_) => 13,
        }
    }

    /// Whether this closure is counted as a slow consumer.
    pub fn is_slow_consumer(&self) -> bool {
        matches!(self, CloseReason::QueueOverflow | CloseReason::WriteStalled)
    }

    /// Whether the client broke the protocol.
    pub fn is_protocol_error(&self) -> bool {
        matches!(
            self,
            CloseReason::Protocol(_)
                | CloseReason::BinaryMessage
                | CloseReason::InvalidUtf8
                | CloseReason::MessageTooBig { .. }
                | CloseReason::RateLimited
        )
    }
}

/// The reason text sent in the close frame; at most 123 bytes (RFC 6455 5.5).
impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Echo(_) => Ok(()),
            // JSON, so a client can read the hint without parsing prose.
            CloseReason::Shutdown { retry_after_ms } => write!(
                f,
                r#"{{"reason":"server shutting down","retry_after_ms":{retry_after_ms}}}"#
            ),
            CloseReason::IdleTimeout => f.write_str("idle timeout: nothing received"),
            CloseReason::Protocol(rule) => f.write_str(rule),
            CloseReason::BinaryMessage => f.write_str("binary messages are not supported"),
            CloseReason::InvalidUtf8 => f.write_str("text message is not valid UTF-8"),
            CloseReason::MessageTooBig { size, max } => {
                write!(f, "message of {size} bytes exceeds the limit of {max}")
            }
            CloseReason::QueueOverflow => f.write_str("slow consumer: outbound queue full"),
            CloseReason::WriteStalled => f.write_str("slow consumer: write deadline exceeded"),
            CloseReason::RateLimited => f.write_str("message rate limit exceeded"),
            CloseReason::AuthFailed => f.write_str("authentication failed"),
            CloseReason::AuthTimeout => f.write_str("authentication timeout"),
            CloseReason::AuthRevoked(how) => f.write_str(how),
            CloseReason::TokenExpired => f.write_str("token expired"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        let cases = [
            (CloseReason::Echo(1000), 1000),
            (
                CloseReason::Shutdown {
                    retry_after_ms: 3_600_000,
                },
                1001,
            ),
            (CloseReason::Protocol("x"), 1002),
            (CloseReason::BinaryMessage, 1003),
            (CloseReason::InvalidUtf8, 1007),
            (CloseReason::QueueOverflow, 1008),
            (CloseReason::WriteStalled, 1008),
            (CloseReason::RateLimited, 1008),
            (
                CloseReason::MessageTooBig {
                    size: 600,
                    max: 512,
                },
                1009,
            ),
            (CloseReason::AuthFailed, 4001),
            (CloseReason::AuthTimeout, 4008),
            (CloseReason::AuthRevoked(REVOKED_TOKEN), 4001),
            (CloseReason::AuthRevoked(NARROWED_TOKEN), 4001),
            (CloseReason::AuthRevoked(AUTH_NOW_REQUIRED), 4001),
            (CloseReason::TokenExpired, 4003),
        ];
        for (reason, code) in cases {
            assert_eq!(reason.code(), code, "{reason:?}");
            assert!(reason.to_string().len() <= 123, "{reason:?}");
        }
    }

    #[test]
    fn close_kinds_are_distinct_and_named() {
        let reasons = [
            CloseReason::Echo(1000),
            CloseReason::Shutdown { retry_after_ms: 0 },
            CloseReason::IdleTimeout,
            CloseReason::Protocol("x"),
            CloseReason::BinaryMessage,
            CloseReason::InvalidUtf8,
            CloseReason::MessageTooBig { size: 2, max: 1 },
            CloseReason::QueueOverflow,
            CloseReason::WriteStalled,
            CloseReason::RateLimited,
            CloseReason::AuthFailed,
            CloseReason::AuthTimeout,
            CloseReason::TokenExpired,
            CloseReason::AuthRevoked(REVOKED_TOKEN),
        ];
        let kinds: Vec<usize> = reasons.iter().map(CloseReason::kind).collect();
        assert_eq!(kinds, (0..reasons.len()).collect::<Vec<_>>());
        assert_eq!(CLOSE_KINDS[CLOSE_PEER_GONE], "peer_gone");
        assert_eq!(CLOSE_KINDS[CLOSE_IO_ERROR], "io_error");
    }

    #[test]
    fn shutdown_reason_is_json_with_the_hint() {
        let text = CloseReason::Shutdown {
            retry_after_ms: 4210,
        }
        .to_string();
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["retry_after_ms"], 4210);
        assert_eq!(v["reason"], "server shutting down");
    }
}
