//! A WebSocket session and the router together: commands as masked frames,
//! raw bytes and time, in any order and split anywhere. The router applies
//! the session's outputs as the reactor would; after every step it must hold
//! exactly the session's `patterns()`, and after a close, once those are
//! removed, nothing.
#![no_main]

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tidings::auth::Tokens;
use tidings::route::{pattern_matches, SubscriptionTrie};
use tidings::session::{Auth, Now, SessionContext, WsOutput, WsSession};
use tidings::stats::Stats;
use tidings::{Config, TokenConfig};

const SEGMENTS: [&str; 7] = ["a", "b", "c", "*", ">", "job", ""];
/// Channels the router is asked about after every step.
const CHANNEL_SEGMENTS: [&str; 4] = ["a", "b", "c", "job"];
/// This socket's id in the router.
const ID: u32 = 7;

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe { patterns: Vec<Vec<u8>>, split: u8 },
    Unsubscribe { patterns: Vec<Vec<u8>>, split: u8 },
    Auth { good: bool, split: u8 },
    Ping { split: u8 },
    PingFrame { payload: Vec<u8> },
    Pong,
    Close { code: u16 },
    Raw(Vec<u8>),
    Advance { millis: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    auth_on: bool,
    with_defaults: bool,
    /// An embedder's subscribe hook, refusing patterns under `job.`.
    with_hooks: bool,
    mask: [u8; 4],
    ops: Vec<Op>,
}

fn pattern(picks: &[u8]) -> String {
    let parts: Vec<&str> = picks
        .iter()
        .take(4)
        .map(|p| SEGMENTS[usize::from(*p) % SEGMENTS.len()])
        .collect();
    parts.join(".")
}

fn channels_command(kind: &str, patterns: &[Vec<u8>]) -> String {
    let list: Vec<String> = patterns.iter().take(6).map(|p| pattern(p)).collect();
    serde_json::json!({ "type": kind, "channels": list }).to_string()
}

/// A final, masked client frame.
fn frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Every channel of one to three segments from `CHANNEL_SEGMENTS`.
fn channels() -> Vec<String> {
    let mut out = Vec::new();
    let n = CHANNEL_SEGMENTS.len();
    for len in 1..=3u32 {
        for mut i in 0..n.pow(len) {
            let mut parts = Vec::new();
            for _ in 0..len {
                parts.push(CHANNEL_SEGMENTS[i % n]);
                i /= n;
            }
            out.push(parts.join("."));
        }
    }
    out
}

struct Harness<'a> {
    cx: SessionContext<'a>,
    session: WsSession,
    trie: SubscriptionTrie,
    now: u64,
    last_rx: u64,
    next_timer: Option<u64>,
    closed: bool,
}

impl Harness<'_> {
    fn at(&self) -> Now {
        Now {
            millis: self.now,
            wall: UNIX_EPOCH + Duration::from_millis(self.now),
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.last_rx = self.now;
        let mut data = bytes.to_vec();
        let mut out = Vec::new();
        let now = self.at();
        self.session.handle_bytes(&mut data, false, now, &self.cx, &mut out);
        self.apply(out);
    }

    /// Feeds `bytes` in two reads, cut at `split`.
    fn feed_split(&mut self, bytes: &[u8], split: u8) {
        let cut = usize::from(split).min(bytes.len());
        self.feed(&bytes[..cut]);
        self.feed(&bytes[cut..]);
    }

    fn apply(&mut self, out: Vec<WsOutput>) {
        let mut queue = std::collections::VecDeque::from(out);
        while let Some(output) = queue.pop_front() {
            assert!(!self.closed, "output after a close: {output:?}");
            match output {
                WsOutput::Send(frame) => assert!(!frame.is_empty()),
                WsOutput::Subscribe(pattern) => {
                    assert!(self.trie.insert(&pattern, ID), "{pattern} twice");
                }
                WsOutput::Unsubscribe(pattern) => {
                    assert!(self.trie.remove(&pattern, ID), "{pattern} not held");
                }
                WsOutput::Subscribed(subscribed) => assert!(!subscribed.channels.is_empty()),
                WsOutput::AskSubscribe(ask) => {
                    assert!(queue.is_empty(), "output after an AskSubscribe");
                    assert!(!ask.patterns.is_empty());
                    let denied = ask
                        .patterns
                        .iter()
                        .find(|p| p.starts_with("job."))
                        .map(|p| (p.clone(), "no jobs".to_string()));
                    let now = self.at();
                    let mut more = Vec::new();
                    self.session
                        .subscribe_decided(*ask, denied, false, now, &self.cx, &mut more);
                    queue.extend(more);
                }
                WsOutput::Close(_) => self.closed = true,
                WsOutput::WakeAt(_) => {}
            }
        }
        self.check();
    }

    /// The router agrees with `patterns()` on every channel asked about.
    fn check(&mut self) {
        let held: BTreeSet<&str> = self.session.patterns().iter().map(|p| &**p).collect();
        assert_eq!(held.len(), self.session.patterns().len(), "no pattern twice");
        assert_eq!(self.trie.subscription_count(), held.len());
        for channel in channels() {
            let routed = self.trie.matches(&channel).contains(&ID);
            let expected = held.iter().any(|p| pattern_matches(p, &channel));
            assert_eq!(routed, expected, "channel {channel}, patterns {held:?}");
        }
    }

    fn advance(&mut self, millis: u16) {
        self.now += u64::from(millis);
        let Some(at) = self.next_timer.filter(|at| self.now >= *at) else {
            return;
        };
        assert!(at > 0);
        let mut out = Vec::new();
        self.next_timer =
            self.session
                .handle_timeout(self.now, self.last_rx, None, &self.cx, &mut out);
        if let Some(next) = self.next_timer {
            assert!(next > self.now, "the timer must move forward");
        }
        self.apply(out);
    }
}

fuzz_target!(|input: Input| {
    let mut config = Config::default();
    config.limits.max_subscriptions = 6;
    config.limits.message_burst = 20;
    config.timeouts.ping_interval = Duration::from_millis(5_000);
    config.timeouts.pong_wait = Duration::from_millis(8_000);
    config.timeouts.auth = Duration::from_millis(3_000);
    if input.with_defaults {
        config.default_channels = vec!["a.>".into(), "job.*".into(), "c".into()];
    }
    if input.auth_on {
        config.auth.tokens = vec![TokenConfig {
            token: "secret".into(),
            channels: Some(vec!["a.>".into(), "job.*".into()]),
        }];
    }
    let tokens = Tokens::from_config(&config).expect("no JWT keys to read");
    let defaults: Rc<[Box<str>]> = config
        .default_channels
        .iter()
        .map(|p| p.as_str().into())
        .collect();
    let subject_limits = config.subject_limits();
    let stats = Stats::default();
    let shaping = tidings::fanout::delivery::Shaping::new(&config);
    let cx = SessionContext {
        config: &config,
        tokens: &tokens,
        defaults: &defaults,
        subject_limits: &subject_limits,
        stats: &stats,
        hooks_set: input.with_hooks,
        // A relay without JetStream: resumes are answered from the history.
        fetch_resumes: false,
        shaping: &shaping,
        upstream: Default::default(),
    };
    let auth = if input.auth_on {
        Auth::Pending { deadline: 3_000 }
    } else {
        Auth::NotRequired
    };
    let mut out = Vec::new();
    let session = WsSession::new(auth, 0, 0, &cx, &mut out);
    let first = session.first_timeout(0, &cx);
    let mut h = Harness {
        cx,
        session,
        trie: SubscriptionTrie::new(4),
        now: 0,
        last_rx: 0,
        next_timer: Some(first),
        closed: false,
    };
    h.apply(out);
    let mask = input.mask;
    for op in input.ops.into_iter().take(64) {
        if h.closed {
            break;
        }
        match op {
            Op::Subscribe { patterns, split } => {
                let text = channels_command("subscribe", &patterns);
                h.feed_split(&frame(0x81, text.as_bytes(), mask), split);
            }
            Op::Unsubscribe { patterns, split } => {
                let text = channels_command("unsubscribe", &patterns);
                h.feed_split(&frame(0x81, text.as_bytes(), mask), split);
            }
            Op::Auth { good, split } => {
                let token = if good { "secret" } else { "guess" };
                let text = serde_json::json!({ "type": "auth", "token": token }).to_string();
                h.feed_split(&frame(0x81, text.as_bytes(), mask), split);
            }
            Op::Ping { split } => {
                h.feed_split(&frame(0x81, br#"{"type":"ping"}"#, mask), split);
            }
            Op::PingFrame { payload } => {
                let payload = &payload[..payload.len().min(125)];
                h.feed(&frame(0x89, payload, mask));
            }
            Op::Pong => h.feed(&frame(0x8a, b"", mask)),
            Op::Close { code } => h.feed(&frame(0x88, &code.to_be_bytes(), mask)),
            Op::Raw(bytes) => h.feed(&bytes),
            Op::Advance { millis } => h.advance(millis),
        }
    }
    if h.closed {
        // Teardown: what `patterns()` names is exactly what the router held.
        let held: Vec<Box<str>> = h.session.patterns().to_vec();
        for pattern in held {
            assert!(h.trie.remove(&pattern, ID));
        }
        assert!(h.trie.is_empty());
        assert!(h.session.is_closed());
    }
});
