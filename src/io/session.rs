//! What the reactor does with a WebSocket's input: frames to messages,
//! messages to commands, commands to router changes and replies.

use std::rc::Rc;
use std::time::SystemTime;

use log::info;

use super::conn::{Auth, Inbound, Phase, Subs};
use super::reactor::Reactor;
use crate::auth::TokenId;
use crate::error::CloseReason;
use crate::fanout::queue::Push;
use crate::proto::command::{
    parse_command, reply_authenticated, reply_error, reply_pong, reply_subscribed,
    reply_unsubscribed, Command, CommandError, ErrorCode,
};
use crate::proto::frames::{encode_binary, encode_pong, encode_text, Message, MessageReader};
use crate::rate::Verdict;
use crate::route::validate_pattern;
use crate::stats::Stats;
use crate::time::rfc3339_millis_string;

impl Reactor {
    /// Feeds bytes read from a WebSocket. Returns false once it is closing.
    pub(super) fn on_ws_bytes(&mut self, key: usize, data: &mut [u8]) -> bool {
        let max = self.config.limits.max_message_size;
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return false;
        };
        let echo = self.config.conformance_echo;
        let mut inbound = ws.inbound.take().map_or_else(
            || Inbound {
                reader: if echo {
                    MessageReader::accepting_binary()
                } else {
                    MessageReader::default()
                },
                leftover: Vec::new(),
            },
            |b| *b,
        );
        // Parse in place from the shared read buffer unless earlier bytes wait.
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
                        if !self.on_message(key, message) {
                            return false;
                        }
                    }
                }
                Err(reason) => {
                    self.close(key, reason);
                    return false;
                }
            }
        }
        // Keep only an incomplete frame, which the reader bounded by the
        // message size limit when it saw the frame's header.
        let rest = buf[at..].to_vec();
        inbound.leftover = rest;
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return false;
        };
        if !inbound.leftover.is_empty() || inbound.reader.in_message() {
            ws.inbound = Some(Box::new(inbound));
        }
        true
    }

    fn on_message(&mut self, key: usize, message: Message) -> bool {
        let limits = &self.config.limits;
        let (rate, burst) = (limits.messages_per_second, limits.message_burst);
        let now = self.now;
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return false;
        };
        // Pongs answer our pings; everything else the client chose to send.
        if message != Message::Pong {
            match ws.rate.take(now, rate, burst) {
                Verdict::Allow => {}
                Verdict::Warn => {
                    let error = CommandError::new(
                        ErrorCode::RateLimited,
                        format!("over {rate} messages per second; this one was dropped"),
                    );
                    return self.reply(key, &reply_error(&error));
                }
                Verdict::Exceeded => {
                    self.close(key, CloseReason::RateLimited);
                    return false;
                }
            }
        }
        match message {
            Message::Text(text) if self.config.conformance_echo => {
                self.send(key, encode_text(text.as_bytes()))
            }
            Message::Binary(data) => self.send(key, encode_binary(&data)),
            Message::Text(text) => self.on_text(key, &text),
            Message::Ping(payload) => self.send(key, encode_pong(&payload)),
            Message::Pong => true,
            Message::Close(code) => {
                // "the endpoint MUST send a Close frame in response" (5.5.1).
                self.close(key, CloseReason::Echo(code.unwrap_or(1000)));
                false
            }
        }
    }

    fn on_text(&mut self, key: usize, text: &str) -> bool {
        let result = match parse_command(text) {
            Err(e) => Err(e),
            Ok(Command::Ping) => {
                let reply = reply_pong(&rfc3339_millis_string(SystemTime::now()));
                return self.reply(key, &reply);
            }
            Ok(Command::Auth(token)) => return self.on_auth(key, &token),
            Ok(Command::Subscribe(channels)) => self
                .subscribe(key, &channels)
                .map(|()| reply_subscribed(&channels)),
            Ok(Command::Unsubscribe(channels)) => self
                .unsubscribe(key, &channels)
                .map(|()| reply_unsubscribed(&channels)),
        };
        match result {
            Ok(reply) => self.reply(key, &reply),
            Err(error) => self.reply(key, &reply_error(&error)),
        }
    }

    fn on_auth(&mut self, key: usize, token: &str) -> bool {
        if !self.tokens.clients_required() {
            return self.reply(key, &reply_authenticated());
        }
        let Some(id) = self.tokens.check_client(token) else {
            Stats::add(&self.stats.auth_failures, 1);
            info!("socket {key}: authentication failed");
            self.close(key, CloseReason::AuthFailed);
            return false;
        };
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return false;
        };
        let was_pending = matches!(ws.auth, Auth::Pending { .. });
        ws.auth = Auth::Authenticated(id);
        if was_pending {
            self.apply_defaults(key);
        }
        self.reply(key, &reply_authenticated())
    }

    /// Subscribes a socket that has not chosen yet to the default channels
    /// its token allows.
    pub(super) fn apply_defaults(&mut self, key: usize) {
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return;
        };
        let token = ws.auth.token();
        let tokens = &self.tokens;
        let defaults = if self.defaults.iter().all(|p| tokens.allows(token, p)) {
            Rc::clone(&self.defaults)
        } else {
            self.defaults
                .iter()
                .filter(|p| tokens.allows(token, p))
                .cloned()
                .collect()
        };
        for pattern in defaults.iter() {
            self.router.insert(pattern, key as u32);
        }
        ws.subs = Subs::Defaults(defaults);
    }

    /// All or nothing: every pattern is checked before any is added.
    fn subscribe(&mut self, key: usize, channels: &[String]) -> Result<(), CommandError> {
        let token = self.check_ready(key, channels)?;
        for pattern in channels {
            if !self.tokens.allows(token, pattern) {
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    format!("your token may not subscribe to {pattern:?}"),
                ));
            }
        }
        let max = self.config.limits.max_subscriptions;
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return Ok(());
        };
        // The first subscribe replaces the defaults.
        let own: &[Box<str>] = match &ws.subs {
            Subs::Own(list) => list,
            _ => &[],
        };
        let mut added: Vec<&str> = Vec::new();
        for pattern in channels {
            if !own.iter().any(|p| **p == **pattern) && !added.contains(&pattern.as_str()) {
                added.push(pattern);
            }
        }
        if own.len() + added.len() > max {
            return Err(CommandError::new(
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        let mut list = match std::mem::replace(&mut ws.subs, Subs::None) {
            Subs::Own(list) => list,
            old => {
                for pattern in old.patterns() {
                    self.router.remove(pattern, key as u32);
                }
                Vec::new()
            }
        };
        for pattern in added {
            self.router.insert(pattern, key as u32);
            list.push(pattern.into());
        }
        ws.subs = Subs::Own(list);
        Ok(())
    }

    fn unsubscribe(&mut self, key: usize, channels: &[String]) -> Result<(), CommandError> {
        self.check_ready(key, channels)?;
        let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws_mut()) else {
            return Ok(());
        };
        let mut list = match std::mem::replace(&mut ws.subs, Subs::None) {
            Subs::Own(list) => list,
            other => other.patterns().to_vec(),
        };
        list.retain(|held| {
            let gone = channels.iter().any(|c| **c == **held);
            if gone {
                self.router.remove(held, key as u32);
            }
            !gone
        });
        ws.subs = Subs::Own(list);
        Ok(())
    }

    /// Checks that the socket may change subscriptions and every pattern is
    /// valid; returns the socket's token.
    fn check_ready(
        &self,
        key: usize,
        channels: &[String],
    ) -> Result<Option<TokenId>, CommandError> {
        for pattern in channels {
            validate_pattern(pattern, &self.subject_limits).map_err(|e| {
                CommandError::new(ErrorCode::InvalidChannel, format!("{pattern:?}: {e}"))
            })?;
        }
        let auth = match self.conns.get(key).map(|c| &c.phase) {
            Some(Phase::WebSocket(ws)) => ws.auth,
            _ => {
                return Err(CommandError::new(
                    ErrorCode::BadRequest,
                    "connection is closing",
                ))
            }
        };
        if let Auth::Pending { .. } = auth {
            return Err(CommandError::new(
                ErrorCode::NotAuthenticated,
                "send {\"type\":\"auth\",\"token\":\"...\"} first",
            ));
        }
        Ok(auth.token())
    }

    fn reply(&mut self, key: usize, text: &str) -> bool {
        self.send(key, encode_text(text.as_bytes()))
    }

    /// Queues a reply or control frame within the queue limits (a client that
    /// sends commands but never reads is a slow consumer like any other) and
    /// writes it at once: replies are not held back by `timeouts.coalesce`.
    fn send(&mut self, key: usize, frame: bytes::Bytes) -> bool {
        let limits = self.queue_limits;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if !matches!(conn.phase, Phase::WebSocket(_)) {
            return false;
        }
        if conn.out.push(&Rc::new(frame), limits) == Push::Full {
            self.close(key, CloseReason::QueueOverflow);
            return false;
        }
        self.flush(key);
        self.conns.contains(key)
    }
}
