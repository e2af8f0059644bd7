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
}

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
            CloseReason::AuthFailed => 4001,
            CloseReason::AuthTimeout => 4008,
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
        ];
        for (reason, code) in cases {
            assert_eq!(reason.code(), code, "{reason:?}");
            assert!(reason.to_string().len() <= 123, "{reason:?}");
        }
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
