//! Carrying out what a session decided: queue its bytes, change the router,
//! hand its events to the sequencer, close it. Sessions only decide
//! (`crate::session`); this is the reactor doing what they asked, after the
//! session call has returned, so nothing writes from inside command handling.

use std::collections::VecDeque;

use tracing::debug;

use super::conn::Phase;
use super::reactor::{HeldPublish, PendingFetch, Reactor};
use super::timer::Millis;
use crate::error::CloseReason;
use crate::fanout::event::payload_of_frame;
use crate::fanout::event::EncodedEvent;
use crate::fanout::history::{Gap, Replay};
use crate::fanout::queue::{Push, SharedFrame};
use crate::fanout::sequencer::AppendError;
use crate::proto::command::{reply_subscribed, Recovery, Since};
use crate::proto::frames::encode_text;
use crate::proto::http::Status;
use crate::session::SubscribeAsk;
use crate::session::{
    HttpOutput, HttpSession, Now, Query, SessionContext, Subscribed, WsOutput, WsSession,
};
use crate::stats::Stats;
use crate::upstream::link::{FetchRequest, Fetched};
use crate::upstream::Refused;

/// Patterns `/api/stats` lists, most subscribers first.
const TOP_CHANNELS: usize = 10;

/// Where a WebSocket session's output came from: replies to what the client
/// sent go within the queue limits; the relay's own pings do not.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Client,
    Timer,
}

/// The context every session call gets, borrowed from the reactor's fields
/// (a macro rather than a method, so the borrow stays on those fields and
/// the slab can be borrowed mutably beside it).
macro_rules! session_cx {
    ($reactor:expr) => {
        $crate::session::SessionContext {
            config: &$reactor.config,
            tokens: &$reactor.tokens,
            defaults: &$reactor.defaults,
            subject_limits: &$reactor.subject_limits,
            stats: &$reactor.stats,
            hooks_set: $reactor.hooks.is_some(),
            shaping: $reactor.sequencer.shaping(),
            upstream: match &$reactor.upstream {
                None => $crate::session::UpstreamHealth::Standalone,
                Some(link) if link.is_up() => $crate::session::UpstreamHealth::Up,
                Some(_) => $crate::session::UpstreamHealth::Down,
            },
            fetch_resumes: $reactor
                .upstream
                .as_ref()
                .is_some_and(|link| link.fetches_resumes()),
        }
    };
}
pub(super) use session_cx;

impl Reactor {
    fn now_for_sessions(&self) -> Now {
        Now {
            millis: self.now,
            wall: self.wall,
        }
    }

    /// Hands bytes read from a socket to its session and carries out what it
    /// decided. Returns false once the socket stopped reading.
    pub(super) fn on_bytes(&mut self, key: usize, data: &mut [u8]) -> bool {
        let now = self.now_for_sessions();
        let cx = session_cx!(self);
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        match &mut conn.phase {
            Phase::Http(session) => {
                let mut out = Vec::new();
                session.handle_bytes(data, now, &cx, &mut out);
                self.apply_http(key, out);
            }
            Phase::WebSocket(session) => {
                let mut out = Vec::new();
                session.handle_bytes(data, conn.deflate, now, &cx, &mut out);
                self.apply_ws(key, out, Origin::Client);
            }
            // After our close frame, input is read only to see the peer's
            // FIN; its content no longer matters (RFC 6455 1.4).
            Phase::Closing(_) => return true,
        }
        matches!(
            self.conns.get(key).map(|c| &c.phase),
            Some(Phase::Http(_) | Phase::WebSocket(_))
        )
    }

    /// Calls the socket's WebSocket session, if it still has one; returns
    /// its outputs.
    fn ws_call(
        &mut self,
        key: usize,
        call: impl FnOnce(&mut WsSession, Now, &SessionContext, &mut Vec<WsOutput>),
    ) -> Vec<WsOutput> {
        let now = self.now_for_sessions();
        let cx = session_cx!(self);
        let mut out = Vec::new();
        if let Some(Phase::WebSocket(session)) = self.conns.get_mut(key).map(|c| &mut c.phase) {
            call(session, now, &cx, &mut out);
        }
        out
    }

    /// Calls the socket's HTTP session, if it still has one.
    pub(super) fn http_call<T>(
        &mut self,
        key: usize,
        call: impl FnOnce(&mut HttpSession, Now, &SessionContext, &mut Vec<HttpOutput>) -> T,
    ) -> Option<(T, Vec<HttpOutput>)> {
        let now = self.now_for_sessions();
        let cx = session_cx!(self);
        let Some(Phase::Http(session)) = self.conns.get_mut(key).map(|c| &mut c.phase) else {
            return None;
        };
        let mut out = Vec::new();
        let result = call(session, now, &cx, &mut out);
        Some((result, out))
    }

    /// Carries out an HTTP session's outputs in order; answers it owes
    /// (publish, metrics) may produce more, which follow.
    pub(super) fn apply_http(&mut self, key: usize, out: Vec<HttpOutput>) {
        let mut queue = VecDeque::from(out);
        while let Some(output) = queue.pop_front() {
            match output {
                HttpOutput::Send(bytes) => {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.out.push_unbounded(bytes.into());
                    }
                    self.flush_soon(key);
                }
                HttpOutput::SendAndClose(bytes) => self.respond_and_close(key, bytes),
                HttpOutput::Drop => self.drop_conn(key),
                HttpOutput::Upgrade {
                    response,
                    deflate,
                    session,
                    outputs,
                    request,
                } => {
                    if let Some(refusal) = request.and_then(|r| self.ask_on_connect(key, &r)) {
                        self.respond_and_close(key, refusal);
                    } else {
                        self.upgrade(key, response, deflate, session, outputs);
                    }
                }
                HttpOutput::Publish(events) => queue.extend(self.publish(key, events)),
                HttpOutput::Query(Query::Connections { sort, limit }) => {
                    self.start_gathering(key, sort, limit);
                }
                HttpOutput::Query(query) => {
                    let (status, body) = self.answer_query(query);
                    if let Some(((), more)) = self.http_call(key, |s, now, cx, out| {
                        s.query_done(status, &body, now, cx, out)
                    }) {
                        queue.extend(more);
                    }
                }
                HttpOutput::Metrics => {
                    let mut text = self.all_stats.prometheus();
                    if let Some(upstream) = &self.upstream {
                        text.push_str(&upstream.prometheus());
                    }
                    if let Some(((), more)) =
                        self.http_call(key, |s, now, cx, out| s.metrics_done(&text, now, cx, out))
                    {
                        queue.extend(more);
                    }
                }
            }
        }
        // Each request gets a fresh deadline; a held publish keeps its own.
        if let Some(Phase::Http(session)) = self.conns.get(key).map(|c| &c.phase) {
            let deadline = session.deadline();
            if !self.held.iter().any(|h| h.key == key) {
                self.arm(key, deadline);
            }
        }
    }

    fn upgrade(
        &mut self,
        key: usize,
        response: Vec<u8>,
        deflate: bool,
        session: WsSession,
        outputs: Vec<WsOutput>,
    ) {
        let now = self.now;
        let first_timer = session.first_timeout(now, &session_cx!(self));
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out.push_unbounded(response.into());
        conn.deflate = deflate;
        conn.phase = Phase::WebSocket(session);
        conn.last_rx = now;
        Stats::add(&self.stats.websockets, 1);
        self.arm(key, first_timer);
        // The 101 goes out this turn, not with the next (possibly
        // coalesced) pass: a reconnect storm waits on it.
        self.flush_soon(key);
        self.apply_ws(key, outputs, Origin::Client);
        if self.is_stopping() {
            self.send_away(key);
        }
    }

    /// Hands a publish request's events to the sequencer; the answer, or
    /// nothing while the request is held because the log is full.
    fn publish(&mut self, key: usize, mut events: Vec<EncodedEvent>) -> Vec<HttpOutput> {
        if self.upstream.is_some() {
            return self.publish_upstream(key, events);
        }
        let count = events.len() as u64;
        let refusal = match self.sequencer.try_append(&mut events) {
            Ok(first) => {
                let seqs: Vec<u64> = (first..first + count).collect();
                let done =
                    self.http_call(key, |s, now, cx, out| s.publish_done(&seqs, now, cx, out));
                return done.map(|((), out)| out).unwrap_or_default();
            }
            Err(AppendError::Full) => {
                let deadline = self.now + self.config.timeouts.publish_wait.as_millis() as Millis;
                let Some(conn) = self.conns.get(key) else {
                    return Vec::new();
                };
                // Retried when the sequencer wakes this reactor with room
                // (`retry_held_publishes`); answered 503 at the deadline.
                self.held.push(HeldPublish {
                    key,
                    id: conn.id,
                    events,
                    deadline,
                });
                self.arm(key, deadline);
                return Vec::new();
            }
            Err(AppendError::Closed) => (
                Status::ServiceUnavailable,
                "stopping",
                "the relay is shutting down".to_string(),
            ),
        };
        self.refuse_publish(key, refusal)
    }

    /// Fleet mode: hands a publish request to the upstream thread, which
    /// answers it (`take_upstream_answers`) once NATS confirmed it; refused
    /// at once when NATS is down or its queue is full.
    fn publish_upstream(&mut self, key: usize, events: Vec<EncodedEvent>) -> Vec<HttpOutput> {
        let (Some(upstream), Some(conn)) = (&self.upstream, self.conns.get(key)) else {
            return Vec::new();
        };
        let refusal = match upstream.submit_http(self.index, key, conn.id, events) {
            Ok(()) => return Vec::new(),
            Err((Refused::Down, _)) => (
                Status::ServiceUnavailable,
                "upstream_down",
                "NATS (upstream) is unreachable; retry shortly".to_string(),
            ),
            Err((Refused::Full, _)) => (
                Status::ServiceUnavailable,
                "upstream_full",
                "upstream.publish_capacity events are waiting for NATS; retry shortly".to_string(),
            ),
        };
        self.refuse_publish(key, refusal)
    }

    /// JetStream mode: asks the upstream thread for the events of a resume
    /// the history cannot answer (it does not reach back to `since`); true
    /// when asked.
    fn start_fetch(&mut self, key: usize, ask: &SubscribeAsk) -> bool {
        let Some(upstream) = self.upstream.clone() else {
            return false;
        };
        let Some(since) = ask.since() else {
            return false;
        };
        if !upstream.fetches_resumes() {
            return false;
        }
        self.catch_up_epoch();
        if *since.epoch != *self.epoch
            || since.seq > self.last_seq
            || self
                .sequencer
                .can_resume(&since.epoch, since.seq, ask.channels())
        {
            return false;
        }
        let Some(conn) = self.conns.get(key) else {
            return false;
        };
        upstream.submit_fetch(FetchRequest {
            reactor: self.index,
            key,
            id: conn.id,
            since: since.seq,
            channels: ask.channels().to_vec(),
        })
    }

    /// Answers the subscribes whose resume was read from JetStream.
    pub(super) fn take_fetches(&mut self) {
        let Some(upstream) = self.upstream.clone() else {
            return;
        };
        let mut answers = Vec::new();
        upstream.take_fetches(self.index, &mut answers);
        for answer in answers {
            let key = answer.key;
            match self.fetching.remove(&key) {
                Some(pending) if pending.id == answer.id => {
                    self.fetched.insert(key, answer.result);
                    let deflate = self.conns.get(key).is_some_and(|c| c.deflate);
                    let out = self.ws_call(key, |s, now, cx, out| {
                        s.subscribe_decided(*pending.ask, None, deflate, now, cx, out)
                    });
                    self.apply_ws(key, out, Origin::Client);
                    self.fetched.remove(&key);
                    // Input that came meanwhile was left unread.
                    self.read_again.push(key);
                }
                Some(other) => {
                    // A later socket on the same key.
                    self.fetching.insert(key, other);
                }
                None => {}
            }
        }
    }

    /// Answers the publish requests NATS has confirmed or failed.
    pub(super) fn take_upstream_answers(&mut self) {
        self.take_fetches();
        let Some(upstream) = &self.upstream else {
            return;
        };
        let mut answers = Vec::new();
        upstream.take_answers(self.index, &mut answers);
        for answer in answers {
            // The socket may have gone, and its slot been reused, since.
            if self.conns.get(answer.key).map(|c| c.id) != Some(answer.id) {
                continue;
            }
            let out = match answer.result {
                Ok(published) => self
                    .http_call(answer.key, |s, now, cx, out| {
                        s.publish_forwarded(published.count, published.seq, now, cx, out)
                    })
                    .map(|((), out)| out)
                    .unwrap_or_default(),
                Err(_) => self.refuse_publish(
                    answer.key,
                    (
                        Status::ServiceUnavailable,
                        "upstream_down",
                        "NATS (upstream) did not confirm the publish; retry shortly".to_string(),
                    ),
                ),
            };
            self.apply_http(answer.key, out);
        }
    }

    fn refuse_publish(
        &mut self,
        key: usize,
        (status, code, message): (Status, &str, String),
    ) -> Vec<HttpOutput> {
        self.http_call(key, |s, now, cx, out| {
            s.publish_refused(status, code, &message, now, cx, out)
        })
        .map(|((), out)| out)
        .unwrap_or_default()
    }

    /// Retries the publish requests that found the log full, in the order
    /// they arrived. Cheap when it still is: one look under the lock.
    pub(super) fn retry_held_publishes(&mut self) {
        if self.held.is_empty() || self.sequencer.is_full_wake_on_room() {
            return;
        }
        for held in std::mem::take(&mut self.held) {
            // The socket may have gone, and its slot been reused, since.
            if self.conns.get(held.key).map(|c| c.id) != Some(held.id) {
                continue;
            }
            let out = self.publish(held.key, held.events);
            self.apply_http(held.key, out);
        }
    }

    /// A held publish past `timeouts.publish_wait`: 503 with `Retry-After`.
    /// True if the socket had one due.
    pub(super) fn expire_held_publish(&mut self, key: usize) -> bool {
        let now = self.now;
        let Some(at) = self.held.iter().position(|h| h.key == key) else {
            return false;
        };
        if self.held[at].deadline > now {
            let deadline = self.held[at].deadline;
            self.arm(key, deadline);
            return true;
        }
        self.held.swap_remove(at);
        debug!("socket {key}: publish held past timeouts.publish_wait");
        let refusal = (
            Status::ServiceUnavailable,
            "saturated",
            "the relay is limits.ingest_capacity events behind; retry shortly".to_string(),
        );
        let out = self.refuse_publish(key, refusal);
        self.apply_http(key, out);
        true
    }

    /// Carries out a WebSocket session's outputs in order.
    pub(super) fn apply_ws(&mut self, key: usize, out: Vec<WsOutput>, origin: Origin) {
        let limits = self.queue_limits;
        let mut overflow = false;
        let mut queue = VecDeque::from(out);
        while let Some(output) = queue.pop_front() {
            match output {
                WsOutput::Send(frame) => {
                    let Some(conn) = self.conns.get_mut(key) else {
                        continue;
                    };
                    if origin == Origin::Timer {
                        conn.out.push_unbounded(frame);
                        self.mark_dirty(key);
                    } else if overflow
                        || conn.out.push(&SharedFrame::plain(frame), limits) == Push::Full
                    {
                        // A client that sends commands but never reads is a
                        // slow consumer like any other. Router changes
                        // still apply, so teardown finds them all.
                        overflow = true;
                    } else {
                        self.flush_soon(key);
                    }
                }
                WsOutput::Subscribe(pattern) => self.route_add(key, &pattern),
                WsOutput::Unsubscribe(pattern) => self.route_remove(key, &pattern),
                WsOutput::Subscribed(subscribed) => {
                    if !overflow && !self.answer_subscribe(key, *subscribed) {
                        overflow = true;
                    }
                }
                WsOutput::AskSubscribe(ask) => {
                    let denied = self.ask_on_subscribe(key, &ask);
                    if denied.is_none() && self.start_fetch(key, &ask) {
                        // Answered when the stream's events are in
                        // (`take_fetches`); the session reads nothing more
                        // until then, so commands keep their order.
                        if let Some(conn) = self.conns.get(key) {
                            let id = conn.id;
                            self.fetching.insert(key, PendingFetch { id, ask });
                        }
                        continue;
                    }
                    let deflate = self.conns.get(key).is_some_and(|c| c.deflate);
                    queue.extend(self.ws_call(key, |s, now, cx, out| {
                        s.subscribe_decided(*ask, denied, deflate, now, cx, out)
                    }));
                }
                WsOutput::Close(reason) => self.close(key, reason),
                WsOutput::WakeAt(at) => self.arm(key, at),
            }
        }
        if overflow {
            self.close(key, CloseReason::QueueOverflow);
        }
    }

    /// Answers a `Query` the socket's session is waiting on, after the
    /// call that handed it out has returned (an answer gathered from
    /// other reactors, or a refusal at its deadline).
    pub(super) fn answer_owed_query(&mut self, key: usize, status: Status, body: Vec<u8>) {
        if let Some(((), more)) = self.http_call(key, |s, now, cx, out| {
            s.query_done(status, &body, now, cx, out)
        }) {
            self.apply_http(key, more);
        }
    }

    /// The JSON answer to a read of the relay's state.
    fn answer_query(&self, query: Query) -> (Status, Vec<u8>) {
        match query {
            Query::Subscriptions { limit } => self.answer_subscriptions(limit),
            // Answered from every reactor (`start_gathering`), not here.
            Query::Connections { .. } => {
                let body = r#"{"error":{"code":"bug","message":"not gathered"}}"#;
                (Status::ServiceUnavailable, body.as_bytes().to_vec())
            }
            Query::Stats => {
                let s = self.all_stats.snapshot();
                let top: Vec<serde_json::Value> = self
                    .all_stats
                    .patterns
                    .top(TOP_CHANNELS)
                    .into_iter()
                    .map(|(pattern, n)| serde_json::json!({"pattern": pattern, "subscribers": n}))
                    .collect();
                let (history_events, history_bytes) = self.sequencer.history_size();
                let body = serde_json::json!({
                    "epoch": &*self.epoch,
                    "reactors": self.all_stats.reactors.len(),
                    "connections": s.connections,
                    "websockets": s.websockets,
                    "events_published": s.events_published,
                    "deliveries": s.deliveries,
                    "slow_consumer_closes": s.slow_consumer_closes,
                    "resyncs": s.resyncs,
                    "dropped_frames": s.dropped_frames,
                    "replaced_events": s.replaced_events,
                    "replayed": s.replayed,
                    "history_events": history_events,
                    "history_bytes": history_bytes,
                    "top_channels": top,
                });
                (Status::Ok, body.to_string().into_bytes())
            }
            Query::Channel(channel) => match self.sequencer.last_value(&channel) {
                Some(event) => (Status::Ok, payload_of_frame(&event.frame).to_vec()),
                None => {
                    let message = format!("no last value is kept for {channel:?}");
                    let body =
                        serde_json::json!({"error": {"code": "not_found", "message": message}});
                    (Status::NotFound, body.to_string().into_bytes())
                }
            },
            Query::Channels { pattern, token } => {
                let tokens = &self.tokens;
                let events = self.sequencer.snapshot(
                    std::slice::from_ref(&pattern),
                    |_| true,
                    |channel| tokens.allows(token.as_ref(), channel),
                );
                let mut body = Vec::from(*b"[");
                for (i, event) in events.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(payload_of_frame(&event.frame));
                }
                body.push(b']');
                (Status::Ok, body)
            }
        }
    }

    /// Adds a socket to the router under `pattern`, counted for the stats.
    pub(super) fn route_add(&mut self, key: usize, pattern: &str) {
        if self.router.insert(pattern, key as u32) {
            self.all_stats.patterns.add(pattern);
        }
    }

    pub(super) fn route_remove(&mut self, key: usize, pattern: &str) {
        if self.router.remove(pattern, key as u32) {
            self.all_stats.patterns.remove(pattern);
        }
    }

    /// Answers an accepted subscribe: the position it starts at, and for a
    /// resume or a snapshot the events from the history, queued right
    /// behind the reply. The session's router changes follow in the same
    /// step, with no event fanned out in between: every later event comes
    /// live, none twice. False when it did not fit in the queue.
    fn answer_subscribe(&mut self, key: usize, subscribed: Subscribed) -> bool {
        let Subscribed {
            channels,
            since,
            snapshot,
            token,
            id,
        } = subscribed;
        // Replies, replays and snapshots compare this reactor's position
        // with the history's seqs: both of the same epoch.
        self.catch_up_epoch();
        if let Some(since) = &since {
            if *since.epoch == *self.epoch && since.seq > self.last_seq {
                self.catch_up(since.seq);
            }
        }
        let position = self.last_seq;
        let tokens = &self.tokens;
        let allow = |channel: &str| tokens.allows(token.as_ref(), channel);
        let fetched = self.fetched.remove(&key);
        let replay = match (&since, fetched) {
            (None, _) => None,
            (Some(since), None) => {
                Some(
                    self.sequencer
                        .resume(&since.epoch, since.seq, position, &channels, allow),
                )
            }
            (Some(since), Some(fetched)) => {
                Some(self.replay_fetched(since, position, &channels, fetched, &allow))
            }
        };
        let (recovery, mut events) = match replay {
            None => (None, Vec::new()),
            Some(Replay::Recovered(events)) => (Some(Recovery::Recovered), events),
            Some(Replay::NotRecovered(gap)) => {
                (Some(Recovery::NotRecovered(gap.reason())), Vec::new())
            }
        };
        if snapshot {
            // Events a resume replayed are not sent twice, nor those that
            // will come live.
            let replayed_after = match (&since, recovery) {
                (Some(since), Some(Recovery::Recovered)) => since.seq,
                _ => u64::MAX,
            };
            let keep = |seq: u64| seq <= position && seq <= replayed_after;
            events.extend(self.sequencer.snapshot(&channels, keep, allow));
            events.sort_unstable_by_key(|e| e.seq);
        }
        let limits = self.queue_limits;
        let Some(conn) = self.conns.get_mut(key) else {
            return true;
        };
        let reply = reply_subscribed(&channels, &self.epoch, position, recovery, id.as_ref());
        // The reply goes within the queue limits, like any reply. The
        // replay and snapshot may go past them: a client resuming after a
        // `resync` missed at least a full queue, and must still be able to
        // recover. They are bounded instead by `history.max_replay` and
        // `history.max_channels`, and cost a pointer each (the frames are
        // the history's). Live events after them count against the limits
        // as usual, so a client that does not read them is still cut.
        if conn
            .out
            .push(&SharedFrame::plain(encode_text(reply.as_bytes())), limits)
            == Push::Full
        {
            return false;
        }
        for event in &events {
            let deflated = event.deflated.is_some() && conn.deflate;
            conn.out.push_past_limits(&event.shared_frame(deflated));
        }
        if !events.is_empty() {
            Stats::add(&self.stats.replayed, events.len() as u64);
        }
        self.flush_soon(key);
        true
    }

    /// A resume from events read from JetStream (those after `since` up to
    /// the stream's head when the read began) and, past them, from the
    /// history: the same events as a history reaching back to `since`
    /// would give.
    fn replay_fetched(
        &self,
        since: &Since,
        position: u64,
        channels: &[String],
        fetched: Result<Fetched, Gap>,
        allow: &impl Fn(&str) -> bool,
    ) -> Replay {
        let Fetched { events, through } = match fetched {
            Ok(fetched) => fetched,
            Err(gap) => return Replay::NotRecovered(gap),
        };
        let mut replay: Vec<_> = events
            .into_iter()
            .filter(|(seq, event)| *seq <= position && allow(&event.channel))
            .map(|(seq, event)| self.sequencer.replay_entry(seq, event))
            .collect();
        if through < position {
            match self
                .sequencer
                .resume(&since.epoch, through, position, channels, allow)
            {
                Replay::Recovered(more) => replay.extend(more),
                Replay::NotRecovered(gap) => return Replay::NotRecovered(gap),
            }
        }
        if replay.len() > self.config.history.max_replay {
            return Replay::NotRecovered(Gap::TooMany);
        }
        Replay::Recovered(replay)
    }

    /// Calls the socket's WebSocket session on its timer and carries out
    /// what it decided; returns when to look again.
    pub(super) fn ws_timeout(&mut self, key: usize) -> Option<Millis> {
        let now = self.now;
        let cx = session_cx!(self);
        let conn = self.conns.get_mut(key)?;
        let Phase::WebSocket(session) = &mut conn.phase else {
            return None;
        };
        let stalled =
            (conn.stalled_since != super::conn::NOT_STALLED).then_some(conn.stalled_since);
        let mut out = Vec::new();
        let next = session.handle_timeout(now, conn.last_rx, stalled, &cx, &mut out);
        self.apply_ws(key, out, Origin::Timer);
        next
    }
}
