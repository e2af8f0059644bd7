//! One WebSocket after its upgrade: frames to messages, messages to
//! commands, commands to router changes and replies.
//!
//! Kept small: an idle, subscribed socket holds no read buffer and no timer
//! object (invariant 7), only what it needs to answer its next message.

use std::rc::Rc;

use bytes::Bytes;

use super::{millis, Millis, Now, SessionContext};
use crate::auth::{Grant, JwtGrant, TokenId};
use crate::error::CloseReason;
use crate::proto::command::{
    notice_refresh_required, reply_error, CommandError, CommandId, ErrorCode, Since, Subscribe,
};
use crate::proto::frames::{encode_binary, encode_ping, encode_pong, encode_text};
use crate::proto::frames::{Message, MessageReader};
use crate::proto::keepalive::{self, KeepaliveTimeouts, SocketClocks, Verdict};
use crate::rate::{self, TokenBucket};

mod commands;

/// What a [`WsSession`] asks of the reactor, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOutput {
    /// A reply or control frame for this socket. Replies go within the queue
    /// limits (a client that sends commands but never reads is a slow
    /// consumer like any other) and are written at once: they are not held
    /// back by `timeouts.coalesce`.
    Send(Bytes),
    /// Add this socket under a pattern in the router.
    Subscribe(Box<str>),
    /// Remove this socket from a pattern in the router.
    Unsubscribe(Box<str>),
    /// A subscribe the session accepted. It comes before the router
    /// changes it makes: the reactor answers it (the answer says where the
    /// relay's order stands, and a resume or snapshot sends history), then
    /// applies them, in one step with no event in between.
    Subscribed(Box<Subscribed>),
    /// The embedder's `on_subscribe` hook must be asked about the patterns
    /// of a subscribe that passed the session's own checks; the reactor
    /// answers with [`WsSession::subscribe_decided`]. Always the last output
    /// of its call: the session reads no further input until answered, so
    /// commands keep their order.
    AskSubscribe(Box<SubscribeAsk>),
    /// Send a close frame with this reason and stop reading; nothing follows.
    /// The router entries to remove are [`WsSession::patterns`].
    Close(CloseReason),
    /// Call [`WsSession::handle_timeout`] no later than this (a JWT given
    /// in the auth message expires then).
    WakeAt(Millis),
}

/// See [`WsOutput::Subscribed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub channels: Vec<String>,
    pub since: Option<Since>,
    pub snapshot: bool,
    /// The connection's credential, whose scope limits what history it gets.
    pub token: Option<Grant>,
    /// The command's `id`, for the reply.
    pub id: Option<CommandId>,
}

/// See [`WsOutput::AskSubscribe`]. Also asked in JetStream mode for a
/// resume, which the reactor may read from the stream before it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeAsk {
    /// The patterns the subscribe would add, each to be asked about.
    pub patterns: Vec<Box<str>>,
    /// The connection's token.
    pub token: Option<Grant>,
    subscribe: Subscribe,
    id: Option<CommandId>,
}

impl SubscribeAsk {
    /// The position a resume starts from.
    pub fn since(&self) -> Option<&crate::proto::command::Since> {
        self.subscribe.since.as_ref()
    }

    /// Every pattern of the subscribe (the resume's).
    pub fn channels(&self) -> &[String] {
        &self.subscribe.channels
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    NotRequired,
    /// Auth is on and the client has until `deadline` to send `auth`.
    Pending {
        deadline: Millis,
    },
    Authenticated(TokenId),
    /// A JWT, until its `expires_at`.
    Jwt(Rc<JwtGrant>),
    /// A JWT that expired: `refresh_required` went out, and the client has
    /// until `expires_at` + `auth.jwt.refresh_grace` to send `refresh`.
    JwtExpired(Rc<JwtGrant>),
}

impl Auth {
    pub fn grant(&self) -> Option<Grant> {
        match self {
            Auth::Authenticated(id) => Some(Grant::Token(*id)),
            Auth::Jwt(jwt) | Auth::JwtExpired(jwt) => Some(Grant::Jwt(Rc::clone(jwt))),
            Auth::NotRequired | Auth::Pending { .. } => None,
        }
    }
}

impl From<Grant> for Auth {
    fn from(grant: Grant) -> Auth {
        match grant {
            Grant::Token(id) => Auth::Authenticated(id),
            Grant::Jwt(jwt) => Auth::Jwt(jwt),
        }
    }
}

/// The patterns a socket holds in the router.
#[derive(Debug)]
enum Subs {
    None,
    /// The configured defaults (shared), until the first `subscribe`.
    Defaults(Rc<[Box<str>]>),
    Own(Vec<Box<str>>),
}

impl Subs {
    fn patterns(&self) -> &[Box<str>] {
        match self {
            Subs::None => &[],
            Subs::Defaults(list) => list,
            Subs::Own(list) => list,
        }
    }

    /// Keeps the patterns `keep` accepts; returns those it removed.
    fn retain(&mut self, keep: impl Fn(&str) -> bool) -> Vec<Box<str>> {
        let (kept, removed): (Vec<Box<str>>, Vec<Box<str>>) =
            self.patterns().iter().cloned().partition(|p| keep(p));
        if !removed.is_empty() {
            *self = match self {
                Subs::Defaults(_) => Subs::Defaults(kept.into()),
                _ => Subs::Own(kept),
            };
        }
        removed
    }
}

/// Partial frame bytes and a fragmented message, only while there are any.
#[derive(Debug)]
struct Inbound {
    reader: MessageReader,
    leftover: Vec<u8>,
    /// A subscribe waits for the embedder's hook (`AskSubscribe`): input
    /// is kept, not read, until the reactor answers.
    paused: bool,
}

/// Open, with what the client proved so far; or closed, after which the
/// session only answers [`WsSession::patterns`]. (An enum rather than a flag:
/// it fits in `Auth`'s spare tag values and costs no byte per socket.)
#[derive(Debug)]
enum State {
    Open(Auth),
    Closed,
}

#[derive(Debug)]
pub struct WsSession {
    state: State,
    subs: Subs,
    inbound: Option<Box<Inbound>>,
    next_ping: Millis,
    rate: TokenBucket,
}

impl WsSession {
    /// A socket just upgraded, with `auth` as the HTTP session decided it.
    /// Unless auth is pending, it holds the default channels its token
    /// allows from the start: pushes a `Subscribe` for each.
    ///
    /// `ping_seed` spreads the first ping: it comes at a point in the
    /// second half of `timeouts.ping_interval` picked by the seed (0: at the
    /// full interval), so sockets that connected together, after a restart,
    /// do not all ping, and all answer, in the same turn ever after.
    pub fn new(
        auth: Auth,
        now: Millis,
        ping_seed: u64,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) -> WsSession {
        let interval = millis(cx.config.timeouts.ping_interval);
        let mut session = WsSession {
            state: State::Open(auth),
            subs: Subs::None,
            inbound: None,
            next_ping: now + interval - ping_seed % (interval / 2 + 1),
            rate: TokenBucket::full(cx.config.limits.message_burst, now),
        };
        if !matches!(session.state, State::Open(Auth::Pending { .. })) {
            session.apply_defaults(cx, out);
        }
        session
    }

    /// When the reactor should first call [`WsSession::handle_timeout`] for
    /// a session made at `now`: the first ping, the silence limit or the
    /// auth deadline, whichever comes first.
    pub fn first_timeout(&self, now: Millis, cx: &SessionContext) -> Millis {
        let pong_wait = millis(cx.config.timeouts.pong_wait);
        let first = self.next_ping.min(now + pong_wait);
        match &self.state {
            State::Open(auth) => auth_deadline(auth, cx).map_or(first, |d| first.min(d)),
            State::Closed => first,
        }
    }

    /// Patterns currently held in the router, for teardown (also after
    /// `Close`).
    pub fn patterns(&self) -> &[Box<str>] {
        self.subs.patterns()
    }

    /// Whether a `Close` went out; the session then ignores input.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether a partial frame or a fragmented message is held.
    #[cfg(test)]
    pub(crate) fn holds_input(&self) -> bool {
        self.inbound.is_some()
    }

    /// Answers an [`WsOutput::AskSubscribe`]: `denied` names the first
    /// pattern the hook refused and its reason, else the subscribe goes
    /// ahead. Then reads the input held meanwhile (`deflate` as for
    /// [`WsSession::handle_bytes`]).
    pub fn subscribe_decided(
        &mut self,
        ask: SubscribeAsk,
        denied: Option<(Box<str>, String)>,
        deflate: bool,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) {
        let SubscribeAsk {
            patterns,
            token,
            subscribe,
            id,
        } = ask;
        match denied {
            Some((pattern, reason)) => {
                let error = CommandError::new(
                    ErrorCode::Forbidden,
                    format!("subscribing to {pattern:?} was refused: {reason}"),
                );
                reply(&reply_error(&error, id.as_ref()), out);
            }
            None => self.commit_subscribe(subscribe, id, token, patterns, out),
        }
        if let Some(inbound) = self.inbound.as_mut() {
            inbound.paused = false;
        }
        self.handle_bytes(&mut [], deflate, now, cx, out);
    }

    /// Feeds bytes read from the socket (unmasked in place). Handles every
    /// complete message and keeps an incomplete frame; stops after a
    /// `Close`. With `deflate` (permessage-deflate was agreed at the
    /// upgrade, and the caller keeps that), compressed messages are
    /// inflated. The flag is the caller's so that it costs a session no
    /// byte.
    pub fn handle_bytes(
        &mut self,
        data: &mut [u8],
        deflate: bool,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) {
        if self.is_closed() {
            return;
        }
        let max = cx.config.limits.max_message_size;
        let mut inbound = self.inbound.take().map_or_else(
            || Inbound {
                reader: MessageReader::new(cx.config.conformance_echo, deflate),
                leftover: Vec::new(),
                paused: false,
            },
            |b| *b,
        );
        if inbound.paused {
            inbound.leftover.extend_from_slice(data);
            self.inbound = Some(Box::new(inbound));
            return;
        }
        // Parse in place from the caller's read buffer unless earlier bytes wait.
        let held = !inbound.leftover.is_empty();
        if held {
            inbound.leftover.extend_from_slice(data);
        }
        let buf: &mut [u8] = if held { &mut inbound.leftover } else { data };
        let mut at = 0;
        loop {
            match inbound.reader.read(&mut buf[at..], max) {
                Ok(None) => break,
                Ok(Some((message, used))) => {
                    at += used;
                    if let Some(message) = message {
                        self.on_message(message, now, cx, out);
                        if self.is_closed() {
                            return;
                        }
                        if matches!(out.last(), Some(WsOutput::AskSubscribe(_))) {
                            inbound.paused = true;
                            break;
                        }
                    }
                }
                Err(reason) => {
                    self.close(reason, out);
                    return;
                }
            }
        }
        // Keep only an incomplete frame, which the reader bounded by the
        // message size limit when it saw the frame's header.
        inbound.leftover = buf[at..].to_vec();
        if inbound.paused || !inbound.leftover.is_empty() || inbound.reader.in_message() {
            self.inbound = Some(Box::new(inbound));
        }
    }

    /// The keepalive and auth-deadline check (`proto::keepalive`), due at
    /// the time this or [`WsSession::first_timeout`] returned last.
    /// `last_rx` is when any byte last arrived; `stalled_since`, since when
    /// output has waited without a byte leaving.
    ///
    /// Pushes `Send(ping)` (a control frame the reactor queues regardless of
    /// the queue limits, with the next flush pass) or `Close`. Returns when
    /// to look again; `None` once closed.
    pub fn handle_timeout(
        &mut self,
        now: Millis,
        last_rx: Millis,
        stalled_since: Option<Millis>,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) -> Option<Millis> {
        let State::Open(auth) = &self.state else {
            return None;
        };
        let timeouts = &cx.config.timeouts;
        let keepalive_timeouts = KeepaliveTimeouts {
            ping_interval: millis(timeouts.ping_interval),
            pong_wait: millis(timeouts.pong_wait),
            write_deadline: millis(timeouts.write_deadline),
        };
        let clocks = SocketClocks {
            last_rx,
            next_ping: self.next_ping,
            auth_deadline: match auth {
                Auth::Pending { deadline } => Some(*deadline),
                _ => None,
            },
            stalled_since,
        };
        match keepalive::check(now, &clocks, &keepalive_timeouts) {
            Verdict::Close(reason) => {
                self.close(reason, out);
                None
            }
            Verdict::Keep {
                ping,
                next_ping,
                wake_at,
            } => {
                self.next_ping = next_ping;
                if ping {
                    out.push(WsOutput::Send(encode_ping()));
                }
                let token_deadline = self.check_token_expiry(now, cx, out)?;
                Some(token_deadline.map_or(wake_at, |d| wake_at.min(d)))
            }
        }
    }

    /// A JWT past its `exp` gets `refresh_required`, then the close at the
    /// end of the grace. Returns when to look again for it; `None` inside
    /// when there is no JWT; `None` outside once closed.
    fn check_token_expiry(
        &mut self,
        now: Millis,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) -> Option<Option<Millis>> {
        let State::Open(auth) = &self.state else {
            return None;
        };
        match auth {
            Auth::Jwt(jwt) if now >= jwt.expires_at => {
                let expired = Auth::JwtExpired(Rc::clone(jwt));
                reply(&notice_refresh_required(), out);
                self.state = State::Open(expired);
            }
            Auth::JwtExpired(jwt) if now >= jwt.expires_at + refresh_grace(cx) => {
                self.close(CloseReason::TokenExpired, out);
                return None;
            }
            _ => {}
        }
        match &self.state {
            State::Open(auth) => Some(auth_deadline(auth, cx)),
            State::Closed => None,
        }
    }

    fn on_message(
        &mut self,
        message: Message,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) {
        let limits = &cx.config.limits;
        let (per_second, burst) = (limits.messages_per_second, limits.message_burst);
        // Pongs answer our pings; everything else the client chose to send.
        if message != Message::Pong {
            match self.rate.take(now.millis, per_second, burst) {
                rate::Verdict::Allow => {}
                rate::Verdict::Warn => {
                    let error = CommandError::new(
                        ErrorCode::RateLimited,
                        format!("over {per_second} messages per second; this one was dropped"),
                    );
                    // The message was not read, so there is no id to echo.
                    return reply(&reply_error(&error, None), out);
                }
                rate::Verdict::Exceeded => return self.close(CloseReason::RateLimited, out),
            }
        }
        match message {
            Message::Text(text) if cx.config.conformance_echo => {
                out.push(WsOutput::Send(encode_text(text.as_bytes())));
            }
            Message::Binary(data) => out.push(WsOutput::Send(encode_binary(&data))),
            Message::Text(text) => self.on_text(&text, now, cx, out),
            Message::Ping(payload) => out.push(WsOutput::Send(encode_pong(&payload))),
            Message::Pong => {}
            Message::Close(code) => {
                // "the endpoint MUST send a Close frame in response" (5.5.1).
                self.close(CloseReason::Echo(code.unwrap_or(1000)), out);
            }
        }
    }

    fn close(&mut self, reason: CloseReason, out: &mut Vec<WsOutput>) {
        self.state = State::Closed;
        self.inbound = None;
        out.push(WsOutput::Close(reason));
    }
}

/// `auth.jwt.refresh_grace` on the reactor's clock.
fn refresh_grace(cx: &SessionContext) -> Millis {
    cx.config
        .auth
        .jwt
        .as_ref()
        .map_or(0, |jwt| millis(jwt.refresh_grace))
}

/// When the session must next look at its credential: the auth deadline,
/// a JWT's expiry, or the end of its refresh grace.
fn auth_deadline(auth: &Auth, cx: &SessionContext) -> Option<Millis> {
    match auth {
        Auth::Pending { deadline } => Some(*deadline),
        Auth::Jwt(jwt) => Some(jwt.expires_at),
        Auth::JwtExpired(jwt) => Some(jwt.expires_at + refresh_grace(cx)),
        Auth::NotRequired | Auth::Authenticated(_) => None,
    }
}

/// A JSON reply as a text frame.
fn reply(text: &str, out: &mut Vec<WsOutput>) {
    out.push(WsOutput::Send(encode_text(text.as_bytes())));
}
