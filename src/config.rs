//! Configuration: every limit and timeout, with defaults, loadable from TOML.
//!
//! Defaults follow the seeds the users already know: ping every 54 s, pong wait
//! 60 s, write deadline 10 s. Client limits are sized so that a client using
//! all it is allowed (every subscription, the longest channels) is never cut
//! for it: see [`Limits::largest_subscribe`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::route::{validate_pattern, SubjectLimits};
pub use crate::upstream::UpstreamConfig;

mod jwt;

pub use jwt::JwtConfig;

/// The values of `log_level` (and of `TIDINGS_LOG`), quietest first.
pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
mod operations;
pub use operations::{AdminConfig, ShutdownConfig};
mod delivery;
pub use delivery::{key_segments, CompressionMode, DeliveryPolicy, DeliveryRule};

/// The whole relay configuration. `Config::default()` is a working relay on
/// 127.0.0.1:8080 with auth off and no default channels.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address for both the WebSocket endpoint and the HTTP API. In TOML,
    /// `"host:port"` with a host name is resolved once, at load
    /// ([`resolve_listen`]).
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Reactor threads, each with its own sockets: a number, or `"auto"`
    /// (the default) for one per available core.
    pub reactors: Reactors,
    /// Patterns a socket receives until its first `subscribe`.
    pub default_channels: Vec<String>,
    /// Browser origins allowed to open a WebSocket (`Origin` header); empty
    /// allows any. Requests without `Origin` (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub auth: AuthConfig,
    pub publish: PublishConfig,
    /// Serve `wss://` (TLS) instead of plain `ws://` on `listen`.
    pub tls: Option<TlsConfig>,
    /// Recent events and last values, kept for resume and snapshots.
    pub history: HistoryConfig,
    /// The `tidings` binary's log level, one of [`LOG_LEVELS`]; re-read on
    /// SIGHUP. Unset, `TIDINGS_LOG` decides (info by default). Embedders
    /// set up their own logging; the library does not read it.
    pub log_level: Option<String>,
    /// The operator's views, behind their own tokens.
    pub admin: AdminConfig,
    /// How a stopping relay sends its clients away.
    pub shutdown: ShutdownConfig,
    /// Per channel pattern, what a reader's queue does with its events
    /// (`all`, `latest`, `never_drop`); the first matching rule wins.
    pub delivery: Vec<DeliveryRule>,
    /// permessage-deflate for clients that offer it: `"off"` (the default)
    /// or `"on"`.
    pub compression: CompressionMode,
    /// Events smaller than this (their JSON, in bytes) always travel plain:
    /// deflate saves little on them and costs the client an inflate.
    pub compression_min_size: usize,
    pub metrics: MetricsConfig,
    /// Fleet mode: share events with other relays through NATS.
    pub upstream: Option<UpstreamConfig>,
    /// Echo every client message (text or binary) instead of reading it as a
    /// command. Only for running the Autobahn conformance suite against the
    /// relay's own WebSocket code (`examples/echo.rs`); not settable in TOML.
    #[serde(skip)]
    #[doc(hidden)]
    pub conformance_echo: bool,
}

/// Sizes and counts. Memory under any input is a sum of these.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest incoming WebSocket message, in bytes (after reassembly).
    pub max_message_size: usize,
    /// Frames waiting in one socket's outbound queue.
    pub max_queue_messages: usize,
    /// Bytes waiting in one socket's outbound queue.
    pub max_queue_bytes: usize,
    /// `SO_SNDBUF` for each accepted socket, in bytes; 0 leaves it to the
    /// kernel, which grows it up to `net.ipv4.tcp_wmem` (4 MiB by default)
    /// for a reader that falls behind.
    pub socket_send_buffer: usize,
    /// What to do when a socket's queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// Patterns one socket may hold.
    pub max_subscriptions: usize,
    /// Longest channel name or pattern, in bytes.
    pub max_channel_length: usize,
    /// Most segments in a channel name or pattern.
    pub max_channel_segments: usize,
    /// Open sockets (WebSocket and HTTP) the relay accepts.
    pub max_connections: usize,
    /// Connections the kernel queues before the reactor accepts them (capped
    /// by `net.core.somaxconn`); reconnect storms overflow a short queue.
    pub listen_backlog: u32,
    /// Open sockets from one client IP address; 0 for no limit.
    pub max_connections_per_ip: usize,
    /// New connections accepted per second over the whole relay (a token
    /// bucket holding a tenth of a second's worth); above it they wait in
    /// the kernel's listen backlog. 0: no pacing.
    pub accept_rate: u32,
    /// Messages per second a client may send, on average (a token bucket).
    pub messages_per_second: u32,
    /// Messages a client may send in a burst above that rate.
    pub message_burst: u32,
    /// Longest string `id` a command may carry, in bytes (echoed in its
    /// reply). Integer ids need only fit 64 bits.
    pub max_command_id: usize,
    /// Largest HTTP request head (request line and headers), in bytes.
    pub max_request_head: usize,
    /// Most headers in one HTTP request.
    pub max_headers: usize,
    /// Largest `POST /api/publish` body, in bytes.
    pub max_request_body: usize,
    /// Events waiting between producers and the reactor.
    pub ingest_capacity: usize,
    /// Events the reactor takes from the ingest queue per loop turn, so that
    /// a publish burst cannot starve socket I/O.
    pub ingest_batch: usize,
    /// Connection closes each reactor logs one line for, per second; past
    /// that they are counted and one line per second says how many.
    pub close_log_per_second: u32,
}

/// How many reactor threads to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reactors {
    /// One per core the process may use (`std::thread::available_parallelism`).
    #[default]
    Auto,
    Count(usize),
}

impl Reactors {
    /// The number of reactors this means on this host.
    pub fn count(self) -> usize {
        match self {
            Reactors::Count(n) => n,
            Reactors::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl std::str::FromStr for Reactors {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "auto" {
            return Ok(Reactors::Auto);
        }
        match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Reactors::Count(n)),
            _ => Err(format!(
                "{text:?}: expected \"auto\" or a number of reactors greater than 0"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Reactors {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Number(u64),
            Word(String),
        }
        match Text::deserialize(d)? {
            Text::Number(n) => n.to_string().parse(),
            Text::Word(word) => word.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl Limits {
    /// Bytes of the longest `subscribe` a client may need: every one of
    /// `max_subscriptions` patterns at `max_channel_length` bytes, written
    /// compactly (as `JSON.stringify` and serde_json do) and without
    /// characters that need escaping:
    /// `{"type":"subscribe","channels":["…","…"]}`.
    pub fn largest_subscribe(&self) -> usize {
        const OPEN: &str = r#"{"type":"subscribe","channels":["#;
        const CLOSE: &str = "]}";
        let quoted = self.max_channel_length.saturating_add(2);
        let commas = self.max_subscriptions.saturating_sub(1);
        self.max_subscriptions
            .saturating_mul(quoted)
            .saturating_add(commas)
            .saturating_add(OPEN.len() + CLOSE.len())
    }
}

/// What happens to a socket whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Close it with 1008 (the default): the client reconnects and resyncs.
    Close,
    /// Drop its oldest whole queued frames to make room, and put a
    /// `resync` notice (reason `"dropped"`, the last dropped `seq`) where
    /// they were, so the loss is never silent.
    DropOldest,
    /// Drop its whole backlog and queue one `resync` notice (reason
    /// `"overflow"`); the connection stays open and the client resumes with
    /// `since` or reloads.
    Resync,
}

/// Every timeout. In TOML: `"54s"`, `"500ms"`, `"2m"`, a number of seconds,
/// or `"0"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    #[serde(with = "duration_text")]
    pub ping_interval: Duration,
    /// Close a socket from which nothing at all arrived for this long.
    #[serde(with = "duration_text")]
    pub pong_wait: Duration,
    /// Close a socket with output pending that made no write progress for this long.
    #[serde(with = "duration_text")]
    pub write_deadline: Duration,
    /// A complete HTTP request head must arrive within this.
    #[serde(with = "duration_text")]
    pub handshake: Duration,
    /// With auth on, an unauthenticated socket must send `auth` within this.
    #[serde(with = "duration_text")]
    pub auth: Duration,
    /// How long `POST /api/publish` waits for room while the relay is
    /// `limits.ingest_capacity` events behind, before it is answered `503`
    /// with `Retry-After`.
    #[serde(with = "duration_text")]
    pub publish_wait: Duration,
    /// After sending a close frame, how long to wait for the peer's before dropping.
    #[serde(with = "duration_text")]
    pub close_linger: Duration,
    /// Under load, write to sockets at most once per this interval, so that
    /// several events share one write. Applies only while flush passes come
    /// closer together than this; a lone event is written at once. 0 turns
    /// it off.
    #[serde(with = "duration_text")]
    pub coalesce: Duration,
    /// While the reactor stays close to saturation (over 90% of its time
    /// working, two 100 ms periods running), the write interval grows by a
    /// quarter, up to this; it shrinks by a fifth below 60%. Trades latency
    /// for throughput only when the relay would otherwise fall behind. At or
    /// below `coalesce`: a fixed interval.
    #[serde(with = "duration_text")]
    pub coalesce_max: Duration,
}

/// The history ring and last values behind resume (`since`) and snapshots
/// (`fanout::history`). Memory: at most `max_bytes` of frames in the ring,
/// plus the last values of at most `max_channels` channels.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept for resume; 0 turns resume off (every `since` is "gone").
    pub max_events: usize,
    /// Bytes of frames kept for resume.
    pub max_bytes: usize,
    /// Events older than this leave the history.
    #[serde(with = "duration_text")]
    pub max_age: Duration,
    /// Most events one resume replays; past it the client is told
    /// `too_many` and reloads instead.
    pub max_replay: usize,
    /// Patterns of channels whose latest event is kept for snapshots, even
    /// after it has left the ring.
    pub last_value: Vec<String>,
    /// Channels that keep a last value; further channels are not kept.
    pub max_channels: usize,
}

/// PEM files for `wss://`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// What `/metrics` measures beyond counters.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// One event in this many (by `seq`) is timed: its fan-out
    /// (`tidings_fanout_event_seconds`), and from its entry in the log to
    /// the end of the flush pass that wrote it
    /// (`tidings_publish_to_write_seconds`); 0 times none.
    pub latency_sample: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        // Two clock reads per sampled event, none for the others.
        MetricsConfig { latency_sample: 64 }
    }
}

/// WebSocket client auth. Off while `tokens` is empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
    /// Also take a client token from `?token=` in the WebSocket URL, for
    /// browsers behind proxies that strip subprotocols. Off by default: URLs
    /// end up in proxy and access logs, and the token with them.
    pub allow_query_token: bool,
    /// Accept JWTs too (`[auth.jwt]`): for clients, and on
    /// `POST /api/publish`, which then requires a token.
    pub jwt: Option<JwtConfig>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub token: String,
    /// Patterns this token may subscribe to; all channels when absent.
    #[serde(default)]
    pub channels: Option<Vec<String>>,
}

/// `POST /api/publish` auth. Open while `tokens` is empty.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    pub tokens: Vec<String>,
}

// Tokens are secrets: keep them out of debug output and so out of logs.
impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &"<redacted>")
            .field("channels", &self.channels)
            .finish()
    }
}

impl std::fmt::Debug for PublishConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishConfig")
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            reactors: Reactors::Auto,
            default_channels: Vec::new(),
            allowed_origins: Vec::new(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            auth: AuthConfig::default(),
            publish: PublishConfig::default(),
            tls: None,
            history: HistoryConfig::default(),
            log_level: None,
            admin: AdminConfig::default(),
            shutdown: ShutdownConfig::default(),
            delivery: Vec::new(),
            compression: CompressionMode::Off,
            compression_min_size: 128,
            metrics: MetricsConfig::default(),
            upstream: None,
            conformance_echo: false,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Room for a subscribe to all 128 patterns of 255 bytes (33,057
            // bytes, `largest_subscribe`), twice over for whitespace and
            // escapes. Centrifugo's defaults are the same three numbers.
            // 512 bytes cut a dashboard subscribing to 30 channels.
            max_message_size: 64 * 1024,
            // gorilla's chat hub cuts at 256 messages, Centrifugo at 1 MB; one
            // stuck reader costs at most 512 KiB of queued frames here. Half
            // of these (where intake pauses for readers that keep up) is about
            // one `writev` of 1,024 frames; at 1,024 / 256 KiB writes carried
            // half that, and the relay sustained fewer deliveries/s at
            // saturation (BENCHMARKS.md).
            max_queue_messages: 2048,
            max_queue_bytes: 512 * 1024,
            socket_send_buffer: 0,
            slow_consumer: SlowConsumerPolicy::Close,
            max_subscriptions: 128,
            max_channel_length: 255,
            max_channel_segments: 16,
            max_connections: 200_000,
            listen_backlog: 4096,
            // Off by default: load balancers and NAT put many clients behind one address.
            max_connections_per_ip: 0,
            // Off by default: pacing trades a returning crowd's wait for the
            // reactors' latency to the clients still connected; see
            // docs/operations.md for sizing it.
            accept_rate: 0,
            // Clients send a handful of commands and a ping every 30 s. The
            // burst lets a client that reconnects resubscribe every pattern
            // it may hold one message at a time, plus auth and a ping or
            // two, without hitting the limit.
            messages_per_second: 20,
            message_burst: 128 + 8,
            // A UUID (36) or a client's own counter with a prefix fits.
            max_command_id: 64,
            max_request_head: 8 * 1024,
            max_headers: 64,
            max_request_body: 1024 * 1024,
            ingest_capacity: 65_536,
            ingest_batch: 4096,
            close_log_per_second: 100,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            // 10,000 events over 10 minutes covers a reconnect after a
            // deploy or a laptop lid at a few events per second per channel;
            // 16 MiB bounds it when events are large.
            max_events: 10_000,
            max_bytes: 16 * 1024 * 1024,
            max_age: Duration::from_secs(600),
            // Fits limits.max_queue_messages (2048): a replay is queued at once.
            max_replay: 1000,
            last_value: Vec::new(),
            max_channels: 10_000,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            ping_interval: Duration::from_secs(54),
            pong_wait: Duration::from_secs(60),
            write_deadline: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            auth: Duration::from_secs(10),
            publish_wait: Duration::from_secs(2),
            close_linger: Duration::from_secs(2),
            coalesce: Duration::from_millis(5),
            coalesce_max: Duration::from_millis(100),
        }
    }
}

impl Config {
    /// Parses TOML and validates it; errors name the offending key.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        Config::from_toml_str(&text)
    }

    pub fn subject_limits(&self) -> SubjectLimits {
        SubjectLimits {
            max_length: self.limits.max_channel_length,
            max_segments: self.limits.max_channel_segments,
        }
    }

    /// Checks values that parse but cannot work; `Relay::new` calls it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive = [
            ("limits.max_message_size", l.max_message_size),
            ("limits.max_queue_messages", l.max_queue_messages),
            ("limits.max_queue_bytes", l.max_queue_bytes),
            ("limits.max_subscriptions", l.max_subscriptions),
            ("limits.max_channel_length", l.max_channel_length),
            ("limits.max_channel_segments", l.max_channel_segments),
            ("limits.max_connections", l.max_connections),
            ("limits.max_headers", l.max_headers),
            ("limits.ingest_capacity", l.ingest_capacity),
            ("limits.ingest_batch", l.ingest_batch),
            ("limits.messages_per_second", l.messages_per_second as usize),
            ("limits.message_burst", l.message_burst as usize),
            ("limits.listen_backlog", l.listen_backlog as usize),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if l.max_request_head < 256 {
            return Err(ConfigError::invalid(
                "limits.max_request_head",
                "must be at least 256 bytes",
            ));
        }
        if l.max_message_size > 16 * 1024 * 1024 {
            return Err(ConfigError::invalid(
                "limits.max_message_size",
                "must be at most 16 MiB",
            ));
        }
        // A client may hold max_subscriptions patterns of max_channel_length
        // bytes; the one message that subscribes them all must not be cut
        // with 1009 for doing only what the other two limits allow.
        let needed = l.largest_subscribe();
        if l.max_message_size < needed {
            return Err(ConfigError::invalid(
                "limits.max_message_size",
                format!(
                    "is {} bytes, but subscribing to limits.max_subscriptions ({}) channels \
                     of limits.max_channel_length ({}) bytes takes a {needed}-byte message: \
                     set limits.max_message_size to at least {needed}, or lower the other two",
                    l.max_message_size, l.max_subscriptions, l.max_channel_length
                ),
            ));
        }
        if let Some(level) = &self.log_level {
            if !LOG_LEVELS.contains(&level.as_str()) {
                return Err(ConfigError::invalid(
                    "log_level",
                    format!(
                        "{level:?} is not a log level; use one of {}",
                        LOG_LEVELS.join(", ")
                    ),
                ));
            }
        }
        let t = &self.timeouts;
        let timeouts = [
            ("timeouts.ping_interval", t.ping_interval),
            ("timeouts.pong_wait", t.pong_wait),
            ("timeouts.write_deadline", t.write_deadline),
            ("timeouts.handshake", t.handshake),
            ("timeouts.auth", t.auth),
            ("timeouts.publish_wait", t.publish_wait),
        ];
        for (key, value) in timeouts {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if t.pong_wait <= t.ping_interval {
            return Err(ConfigError::invalid(
                "timeouts.pong_wait",
                "must be longer than timeouts.ping_interval, or every idle client is cut off",
            ));
        }
        let subject = self.subject_limits();
        for pattern in &self.default_channels {
            validate_pattern(pattern, &subject).map_err(|e| {
                ConfigError::invalid("default_channels", format!("{pattern:?}: {e}"))
            })?;
        }
        for (i, token) in self.auth.tokens.iter().enumerate() {
            if token.token.is_empty() {
                return Err(ConfigError::invalid(
                    format!("auth.tokens[{i}].token"),
                    "must not be empty",
                ));
            }
            for pattern in token.channels.iter().flatten() {
                validate_pattern(pattern, &subject).map_err(|e| {
                    ConfigError::invalid(
                        format!("auth.tokens[{i}].channels"),
                        format!("{pattern:?}: {e}"),
                    )
                })?;
            }
        }
        if let Some(jwt) = &self.auth.jwt {
            if jwt.hs256_secret.is_none() && jwt.public_keys.is_empty() && jwt.jwks.is_none() {
                return Err(ConfigError::invalid(
                    "auth.jwt",
                    "needs a key: set hs256_secret, public_keys or jwks",
                ));
            }
            if jwt.hs256_secret.as_deref() == Some("") {
                return Err(ConfigError::invalid(
                    "auth.jwt.hs256_secret",
                    "must not be empty",
                ));
            }
            for pattern in &jwt.channels_when_absent {
                validate_pattern(pattern, &subject).map_err(|e| {
                    ConfigError::invalid(
                        "auth.jwt.channels_when_absent",
                        format!("{pattern:?}: {e}"),
                    )
                })?;
            }
        }
        self.validate_history(&subject)?;
        self.admin.validate()?;
        self.shutdown.validate()?;
        delivery::validate(&self.delivery, &subject)?;
        if let Some(upstream) = &self.upstream {
            upstream.validate()?;
        }
        if self.publish.tokens.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                "publish.tokens",
                "tokens must not be empty",
            ));
        }
        Ok(())
    }
}

impl Config {
    fn validate_history(&self, subject: &SubjectLimits) -> Result<(), ConfigError> {
        let h = &self.history;
        // max_events = 0 is the documented way to turn resume off, so the
        // other limits must not be zero: they would turn it off silently.
        let positive = [
            ("history.max_bytes", h.max_bytes),
            ("history.max_replay", h.max_replay),
            ("history.max_channels", h.max_channels),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(
                    key,
                    "must be greater than 0 (history.max_events = 0 turns resume off)",
                ));
            }
        }
        if h.max_age.is_zero() {
            return Err(ConfigError::invalid(
                "history.max_age",
                "must be greater than 0 (history.max_events = 0 turns resume off)",
            ));
        }
        for pattern in &h.last_value {
            validate_pattern(pattern, subject).map_err(|e| {
                ConfigError::invalid("history.last_value", format!("{pattern:?}: {e}"))
            })?;
        }
        Ok(())
    }
}

/// Resolves a listen address: an IP address and port, or a host name and
/// port (`localhost:8080`), which becomes the first address it resolves to.
/// The error says what was given and why it does not work.
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    // An address needs no lookup; most configurations give one.
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut addrs = text.to_socket_addrs().map_err(|e| {
        format!(
            "{text:?} is not an address to listen on (write host:port, e.g. 127.0.0.1:8080): {e}"
        )
    })?;
    addrs
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn listen_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    resolve_listen(&text).map_err(serde::de::Error::custom)
}

/// Durations written as `"54s"`, `"500ms"`, `"2m"`, `"1h"`, `"0"`, or a bare
/// number of seconds.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as \"54s\", \"500ms\", \"2m\", or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| E::custom("not a valid number of seconds"))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).ok_or_else(|| {
                E::custom(format!(
                    "{v:?} is not a duration; write e.g. \"54s\", \"500ms\" or \"2m\""
                ))
            })
        }
    }
}

/// Parses `"54s"`, `"500ms"`, `"2m"`, `"1h"` or `"1.5s"`, and `"0"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let Some(split) = text.find(|c: char| !(c.is_ascii_digit() || c == '.')) else {
        // Zero needs no unit, so `coalesce = "0"` turns coalescing off as
        // documented. Any other bare number in quotes stays an error: "5"
        // could mean seconds or milliseconds, and guessing wrong is silent.
        let value: f64 = text.parse().ok()?;
        return (value == 0.0).then_some(Duration::ZERO);
    };
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seeds() {
        let c = Config::default();
        assert_eq!(c.timeouts.ping_interval, Duration::from_secs(54));
        assert_eq!(c.timeouts.pong_wait, Duration::from_secs(60));
        assert_eq!(c.timeouts.write_deadline, Duration::from_secs(10));
        assert_eq!(c.limits.max_message_size, 64 * 1024);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn parses_the_documented_shape() {
        let c = Config::from_toml_str(
            r#"
            listen = "127.0.0.1:9000"
            default_channels = ["cluster.*"]
            [[auth.tokens]]
            token = "secret"
            channels = ["job.*"]
            [[auth.tokens]]
            token = "admin"
            [publish]
            tokens = ["pub"]
            [limits]
            max_message_size = 100000
            slow_consumer = "drop_oldest"
            [timeouts]
            ping_interval = "5s"
            pong_wait = 7
            write_deadline = "1500ms"
            "#,
        )
        .expect("valid config");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.default_channels, vec!["cluster.*"]);
        assert_eq!(c.auth.tokens.len(), 2);
        assert_eq!(
            c.auth.tokens[0].channels.as_deref(),
            Some(&["job.*".to_string()][..])
        );
        assert!(c.auth.tokens[1].channels.is_none());
        assert_eq!(c.publish.tokens, vec!["pub"]);
        assert_eq!(c.limits.max_message_size, 100_000);
        assert_eq!(c.limits.slow_consumer, SlowConsumerPolicy::DropOldest);
        assert_eq!(c.timeouts.ping_interval, Duration::from_secs(5));
        assert_eq!(c.timeouts.pong_wait, Duration::from_secs(7));
        assert_eq!(c.timeouts.write_deadline, Duration::from_millis(1500));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("listen = \"nowhere\"", "listen"),
            ("[limits]\nmax_message_size = 0", "limits.max_message_size"),
            ("[limits]\nbogus = 1", "bogus"),
            ("[timeouts]\nping_interval = \"soon\"", "ping_interval"),
            ("[timeouts]\nping_interval = \"70s\"", "timeouts.pong_wait"),
            ("default_channels = [\"a..b\"]", "default_channels"),
            ("[[auth.tokens]]\ntoken = \"\"", "auth.tokens[0].token"),
            ("[auth.jwt]\nleeway = \"1s\"", "auth.jwt"),
            ("[auth.jwt]\nhs256_secret = \"\"", "auth.jwt.hs256_secret"),
            (
                "[auth.jwt]\nhs256_secret = \"s\"\nchannels_when_absent = [\"a..b\"]",
                "auth.jwt.channels_when_absent",
            ),
            ("[history]\nmax_replay = 0", "history.max_replay"),
            ("[history]\nmax_bytes = 0", "history.max_bytes"),
            ("[history]\nmax_age = 0", "history.max_age"),
            ("[history]\nmax_channels = 0", "history.max_channels"),
            ("[history]\nlast_value = [\"a.>.b\"]", "history.last_value"),
            ("[history]\nmax_evnts = 1", "max_evnts"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml_str(text).expect_err(text).to_string();
            assert!(
                err.contains(key),
                "error for {text:?} should name {key}: {err}"
            );
        }
    }

    /// The largest subscribe the limits allow, as a client would send it.
    fn largest_subscribe_text(limits: &Limits) -> String {
        // Distinct valid channels of exactly max_channel_length bytes.
        let channels: Vec<String> = (0..limits.max_subscriptions)
            .map(|i| {
                let name = format!("widget-{i}.");
                let pad = limits.max_channel_length - name.len();
                format!("{name}{}", "s".repeat(pad))
            })
            .collect();
        // A struct, so `type` comes first as clients write it; the length
        // does not depend on the order anyway.
        #[derive(serde::Serialize)]
        struct Subscribe<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            channels: &'a [String],
        }
        serde_json::to_string(&Subscribe {
            kind: "subscribe",
            channels: &channels,
        })
        .expect("serializes")
    }

    #[test]
    fn default_limits_fit_the_largest_subscribe() {
        use crate::proto::command::{parse_command, Command, Subscribe};
        let c = Config::default();
        let text = largest_subscribe_text(&c.limits);
        assert_eq!(text.len(), c.limits.largest_subscribe(), "the arithmetic");
        assert!(
            text.len() <= c.limits.max_message_size,
            "a {}-byte subscribe over max_message_size {}",
            text.len(),
            c.limits.max_message_size
        );
        // The relay's own parser and channel rules accept every pattern.
        let parsed = parse_command(&text, c.limits.max_command_id).command;
        let Ok(Command::Subscribe(Subscribe { channels, .. })) = parsed else {
            panic!("not a subscribe: {}", &text[..80]);
        };
        assert_eq!(channels.len(), c.limits.max_subscriptions);
        for channel in &channels {
            assert_eq!(channel.len(), c.limits.max_channel_length);
            validate_pattern(channel, &c.subject_limits()).expect("a valid pattern");
        }
        // A client resubscribing one pattern per message right after it
        // connects, plus an auth and a ping, stays within the burst.
        let resubscribe = c.limits.max_subscriptions + 2;
        assert!(
            c.limits.message_burst as usize >= resubscribe,
            "burst {} < {resubscribe}",
            c.limits.message_burst
        );
    }

    #[test]
    fn largest_subscribe_matches_serde_for_other_limits() {
        for (subscriptions, length) in [(1, 40), (2, 17), (30, 32), (500, 20)] {
            let limits = Limits {
                max_subscriptions: subscriptions,
                max_channel_length: length,
                ..Limits::default()
            };
            let text = largest_subscribe_text(&limits);
            assert_eq!(
                text.len(),
                limits.largest_subscribe(),
                "{subscriptions} x {length}"
            );
        }
    }

    #[test]
    fn message_size_too_small_for_the_subscriptions_is_refused() {
        // 4 x 100: 33 + 4 * 103 = 445 bytes.
        let base = "[limits]\nmax_subscriptions = 4\nmax_channel_length = 100\n";
        Config::from_toml_str(&format!("{base}max_message_size = 445"))
            .expect("exactly the size needed");
        let err = Config::from_toml_str(&format!("{base}max_message_size = 444"))
            .expect_err("one byte short")
            .to_string();
        for part in [
            "limits.max_message_size",
            "limits.max_subscriptions",
            "limits.max_channel_length",
            "at least 445",
        ] {
            assert!(err.contains(part), "{part:?} missing from: {err}");
        }
        // The old default, with the other defaults, is refused.
        let err = Config::from_toml_str("[limits]\nmax_message_size = 512")
            .expect_err("512 is too small for 128 x 255")
            .to_string();
        assert!(err.contains("at least 33057"), "{err}");
    }

    #[test]
    fn listen_takes_host_names() {
        let c = Config::from_toml_str("listen = \"localhost:9000\"").expect("localhost resolves");
        assert!(c.listen.ip().is_loopback(), "{}", c.listen);
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(
            resolve_listen("[::1]:80"),
            Ok(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 80)))
        );
        // No port: nothing to look up, and the error shows the value.
        let err = resolve_listen("localhost").expect_err("no port");
        assert!(err.contains("\"localhost\""), "{err}");
        assert!(err.contains("host:port"), "{err}");
    }

    #[test]
    fn debug_output_hides_tokens() {
        let c = Config::from_toml_str(
            "[[auth.tokens]]\ntoken = \"s3cret-tok\"\n[publish]\ntokens = [\"pub-s3cret\"]",
        )
        .expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn reactors_as_a_number_or_auto() {
        let parse = |text: &str| Config::from_toml_str(text).map(|c| c.reactors);
        assert_eq!(parse("reactors = 4").unwrap(), Reactors::Count(4));
        assert_eq!(parse("reactors = \"auto\"").unwrap(), Reactors::Auto);
        assert_eq!(parse("").unwrap(), Reactors::Auto);
        assert!(Reactors::Auto.count() >= 1);
        for bad in ["reactors = 0", "reactors = \"many\"", "reactors = -1"] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("reactors"), "{bad}: {error}");
        }
    }

    #[test]
    fn zero_is_a_duration_for_every_key() {
        // docs/configuration.md: "`0` turns coalescing off".
        for zero in ["\"0\"", "0", "\"0s\"", "\"0ms\""] {
            let c = Config::from_toml_str(&format!(
                "[timeouts]\ncoalesce = {zero}\ncoalesce_max = {zero}\nclose_linger = {zero}"
            ))
            .unwrap_or_else(|e| panic!("coalesce = {zero}: {e}"));
            assert_eq!(c.timeouts.coalesce, Duration::ZERO, "{zero}");
            assert_eq!(c.timeouts.coalesce_max, Duration::ZERO, "{zero}");
            assert_eq!(c.timeouts.close_linger, Duration::ZERO, "{zero}");
        }
        // Keys where zero cannot work still parse it, and then validation
        // names the key, rather than the parser calling "0" no duration.
        for key in [
            "ping_interval",
            "pong_wait",
            "write_deadline",
            "handshake",
            "auth",
        ] {
            let err = Config::from_toml_str(&format!("[timeouts]\n{key} = \"0\""))
                .expect_err(key)
                .to_string();
            assert_eq!(
                err,
                format!("`timeouts.{key}` must be greater than 0"),
                "{key}"
            );
        }
    }

    #[test]
    fn history_section() {
        let c = Config::default();
        assert_eq!(c.history.max_events, 10_000);
        assert_eq!(c.history.max_bytes, 16 * 1024 * 1024);
        assert_eq!(c.history.max_age, Duration::from_secs(600));
        assert!(c.history.last_value.is_empty());
        let c = Config::from_toml_str(
            "[history]\nmax_events = 0\nmax_age = \"30s\"\nmax_replay = 50\n\
             last_value = [\"metrics.>\", \"cluster.*\"]\nmax_channels = 7",
        )
        .expect("history off is allowed");
        assert_eq!(c.history.max_events, 0);
        assert_eq!(c.history.max_age, Duration::from_secs(30));
        assert_eq!(c.history.max_replay, 50);
        assert_eq!(c.history.last_value, ["metrics.>", "cluster.*"]);
        assert_eq!(c.history.max_channels, 7);
    }

    #[test]
    fn duration_text_forms() {
        assert_eq!(parse_duration("54s"), Some(Duration::from_secs(54)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("0.0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("."), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }
}
