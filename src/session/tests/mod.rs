//! The sessions driven with raw bytes and virtual time: each test plays the
//! reactor (applies router changes, answers publishes) with no socket.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use crate::auth::Tokens;
use crate::config::{Config, TokenConfig};
use crate::error::CloseReason;
use crate::route::SubjectLimits;
use crate::stats::Stats;

use super::{Auth, Millis, Now, SessionContext, WsOutput, WsSession};

mod http;
mod jwt;
mod ws;

pub(crate) use crate::proto::frames::tests::client_frame;

/// Everything a `SessionContext` borrows, owned by the test.
struct Fixture {
    config: Config,
    tokens: Tokens,
    defaults: Rc<[Box<str>]>,
    subject_limits: SubjectLimits,
    stats: Stats,
    /// Plays the embedder's `on_subscribe` hook when set: patterns starting
    /// with one of these are refused.
    hook_denies: Option<Vec<&'static str>>,
    shaping: crate::fanout::delivery::Shaping,
}

impl Fixture {
    /// The default configuration, changed by `tweak`.
    fn new(tweak: impl FnOnce(&mut Config)) -> Fixture {
        let mut config = Config::default();
        tweak(&mut config);
        Fixture {
            tokens: Tokens::from_config(&config).expect("no key files"),
            defaults: config
                .default_channels
                .iter()
                .map(|p| p.as_str().into())
                .collect(),
            subject_limits: config.subject_limits(),
            stats: Stats::default(),
            hook_denies: None,
            shaping: crate::fanout::delivery::Shaping::new(&config),
            config,
        }
    }

    /// Like `new`, with a subscribe hook refusing patterns under `denied`.
    fn with_hook(denied: &[&'static str], tweak: impl FnOnce(&mut Config)) -> Fixture {
        Fixture {
            hook_denies: Some(denied.to_vec()),
            ..Fixture::new(tweak)
        }
    }

    fn cx(&self) -> SessionContext<'_> {
        SessionContext {
            config: &self.config,
            tokens: &self.tokens,
            defaults: &self.defaults,
            subject_limits: &self.subject_limits,
            stats: &self.stats,
            hooks_set: self.hook_denies.is_some(),
            shaping: &self.shaping,
            upstream: Default::default(),
            fetch_resumes: false,
        }
    }

    fn stat(&self, counter: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64) -> u64 {
        counter(&self.stats).load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Auth on: `secret` may subscribe anywhere, `scoped` only under `public.>`.
fn with_tokens(config: &mut Config) {
    config.auth.tokens = vec![
        TokenConfig {
            token: "secret".into(),
            channels: None,
        },
        TokenConfig {
            token: "scoped".into(),
            channels: Some(vec!["public.>".into()]),
        },
    ];
}

/// `2024-12-22T10:30:00.123Z` plus `millis`, on both clocks.
fn at(millis: Millis) -> Now {
    Now {
        millis,
        wall: UNIX_EPOCH + Duration::from_millis(1_734_863_400_123 + millis),
    }
}

fn wall_text(now: Now) -> String {
    crate::time::rfc3339_millis_string(now.wall)
}

const TEXT: u8 = 0x81;
const BINARY: u8 = 0x82;
const CLOSE: u8 = 0x88;
const PING: u8 = 0x89;
const PONG: u8 = 0x8a;

/// A masked final text frame with a JSON command.
fn command(json: &str) -> Vec<u8> {
    client_frame(TEXT, json.as_bytes())
}

/// What a frame the server sent says, for comparing.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Json(serde_json::Value),
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(CloseReason),
    WakeAt(Millis),
    /// The session asked the subscribe hook about these patterns.
    Asked(Vec<String>),
}

/// Decodes one unmasked server frame (the whole of `frame`).
fn decode_server_frame(frame: &[u8]) -> Got {
    let (opcode, len_byte) = (frame[0] & 0x0f, frame[1]);
    assert_eq!(frame[0] & 0xf0, 0x80, "final, no reserved bits");
    assert_eq!(len_byte & 0x80, 0, "server frames are not masked");
    let (len, at) = match len_byte {
        126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = frame[at..].to_vec();
    assert_eq!(payload.len(), len, "one whole frame");
    match opcode {
        0x1 => {
            let text = String::from_utf8(payload).expect("utf-8");
            match serde_json::from_str(&text) {
                Ok(value) => Got::Json(value),
                Err(_) => Got::Text(text),
            }
        }
        0x2 => Got::Binary(payload),
        0x9 => Got::Ping(payload),
        0xa => Got::Pong(payload),
        other => panic!("unexpected opcode {other}"),
    }
}

/// A WebSocket client talking to a session, with the router entries the
/// reactor would hold for it.
struct Client<'f> {
    fx: &'f Fixture,
    session: WsSession,
    router: BTreeSet<String>,
    last_rx: Millis,
}

impl<'f> Client<'f> {
    /// A session made at time 0 with `auth`; returns it and what `new` said.
    fn open(fx: &'f Fixture, auth: Auth) -> (Client<'f>, Vec<Got>) {
        Client::open_seeded(fx, auth, 0)
    }

    /// As `open`, with a seed for the first ping's jitter.
    fn open_seeded(fx: &'f Fixture, auth: Auth, ping_seed: u64) -> (Client<'f>, Vec<Got>) {
        let mut out = Vec::new();
        let session = WsSession::new(auth, 0, ping_seed, &fx.cx(), &mut out);
        let mut client = Client {
            fx,
            session,
            router: BTreeSet::new(),
            last_rx: 0,
        };
        let got = client.apply(out);
        (client, got)
    }

    /// Sends raw bytes at `millis`; returns the frames and close the server
    /// sent, having applied the router changes.
    fn send(&mut self, bytes: &[u8], millis: Millis) -> Vec<Got> {
        let mut data = bytes.to_vec();
        let mut out = Vec::new();
        self.last_rx = millis;
        self.session
            .handle_bytes(&mut data, false, at(millis), &self.fx.cx(), &mut out);
        self.apply(out)
    }

    fn command(&mut self, json: &str, millis: Millis) -> Vec<Got> {
        self.send(&command(json), millis)
    }

    /// The timer at `now`, with nothing stalled.
    fn timer(&mut self, now: Millis) -> (Option<Millis>, Vec<Got>) {
        self.timer_stalled(now, None)
    }

    fn timer_stalled(
        &mut self,
        now: Millis,
        stalled: Option<Millis>,
    ) -> (Option<Millis>, Vec<Got>) {
        let mut out = Vec::new();
        let next = self
            .session
            .handle_timeout(now, self.last_rx, stalled, &self.fx.cx(), &mut out);
        (next, self.apply(out))
    }

    /// Plays the reactor: router changes are applied, frames decoded. Also
    /// checks that nothing follows a close and that the router and
    /// `patterns()` agree.
    fn apply(&mut self, out: Vec<WsOutput>) -> Vec<Got> {
        let mut got = Vec::new();
        let mut queue = std::collections::VecDeque::from(out);
        while let Some(output) = queue.pop_front() {
            assert!(
                !matches!(got.last(), Some(Got::Close(_))),
                "output after a close: {output:?}"
            );
            match output {
                WsOutput::Send(frame) => got.push(decode_server_frame(&frame)),
                WsOutput::Subscribe(pattern) => {
                    self.router.insert(pattern.into());
                }
                WsOutput::Unsubscribe(pattern) => {
                    assert!(self.router.remove(&*pattern), "{pattern} was not held");
                }
                // The reactor answers with the position; here the channels
                // and the id are what the session decided.
                WsOutput::Subscribed(subscribed) => {
                    let mut reply =
                        serde_json::json!({"type": "subscribed", "channels": subscribed.channels});
                    if let Some(id) = &subscribed.id {
                        reply["id"] = serde_json::to_value(id).expect("an id is JSON");
                    }
                    got.push(json(reply))
                }
                WsOutput::AskSubscribe(ask) => {
                    assert!(queue.is_empty(), "output after an AskSubscribe");
                    got.push(Got::Asked(
                        ask.patterns.iter().map(|p| p.to_string()).collect(),
                    ));
                    let denies = self.fx.hook_denies.as_ref().expect("asked without hooks");
                    let denied = ask
                        .patterns
                        .iter()
                        .find(|p| denies.iter().any(|d| p.starts_with(d)))
                        .map(|p| (p.clone(), "not on your plan".to_string()));
                    let mut more = Vec::new();
                    let now = at(self.last_rx);
                    self.session.subscribe_decided(
                        *ask,
                        denied,
                        false,
                        now,
                        &self.fx.cx(),
                        &mut more,
                    );
                    queue.extend(more);
                }
                WsOutput::Close(reason) => got.push(Got::Close(reason)),
                WsOutput::WakeAt(at) => got.push(Got::WakeAt(at)),
            }
        }
        let held: BTreeSet<String> = self
            .session
            .patterns()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(held, self.router, "patterns() and the router disagree");
        got
    }

    fn patterns(&self) -> Vec<&str> {
        self.session.patterns().iter().map(|p| &**p).collect()
    }
}

fn json(value: serde_json::Value) -> Got {
    Got::Json(value)
}

fn error(code: &str) -> impl Fn(&Got) -> bool + '_ {
    move |got| match got {
        Got::Json(value) => value["type"] == "error" && value["data"]["code"] == code,
        _ => false,
    }
}

/// How many milliseconds a `Duration` in the config is.
fn ms(duration: Duration) -> Millis {
    duration.as_millis() as Millis
}
