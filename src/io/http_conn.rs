//! What the reactor does with a socket still speaking HTTP: the upgrade to
//! WebSocket, and the HTTP API (publish, health, metrics).

use std::time::SystemTime;

use log::{debug, info};
use serde_json::json;

use super::conn::{Auth, Phase, WsConn};
use super::reactor::Reactor;
use super::timer::Millis;
use crate::auth::PublishAuth;
use crate::fanout::event::Event;
use crate::fanout::publisher::{validate_event, PublishError};
use crate::fanout::sequencer::AppendError;
use crate::proto::handshake::{check_upgrade, parse_head, upgrade_refusal, RequestHead};
use crate::proto::http::{
    bearer_token, json_error, json_response, method_not_allowed, parse_publish_body, response,
    route, Route, Status,
};
use crate::rate::TokenBucket;
use crate::stats::Stats;

/// What one request did to the socket.
enum Outcome {
    /// Answered; the socket stays on HTTP for the next request.
    KeepAlive { consumed: usize },
    /// Answered with a final response, or upgraded: stop reading HTTP.
    Done,
    /// The body has not fully arrived.
    NeedMore,
}

impl Reactor {
    /// Feeds bytes read from an HTTP socket. Returns false once it stopped
    /// reading HTTP on this socket (closing).
    pub(super) fn on_http_bytes(&mut self, key: usize, data: &[u8]) -> bool {
        let limits = &self.config.limits;
        let max_buffered = limits.max_request_head + limits.max_request_body;
        let Some(Phase::Http(http)) = self.conns.get_mut(key).map(|c| &mut c.phase) else {
            return false;
        };
        if http.buf.len() + data.len() > max_buffered {
            let refusal = upgrade_refusal(Status::PayloadTooLarge);
            self.respond_and_close(key, refusal);
            return false;
        }
        http.buf.extend_from_slice(data);
        loop {
            let Some(Phase::Http(http)) = self.conns.get_mut(key).map(|c| &mut c.phase) else {
                return false;
            };
            let limits = &self.config.limits;
            let head = match parse_head(&http.buf, limits.max_request_head, limits.max_headers) {
                Ok(Some(head)) => head,
                Ok(None) => return true,
                Err(e) => {
                    debug!("socket {key}: bad request head: {e:?}");
                    self.respond_and_close(key, upgrade_refusal(e.status()));
                    return false;
                }
            };
            match self.on_request(key, &head) {
                Outcome::NeedMore => return true,
                Outcome::Done => {
                    return matches!(
                        self.conns.get(key).map(|c| &c.phase),
                        Some(Phase::WebSocket(_))
                    )
                }
                Outcome::KeepAlive { consumed } => {
                    let idle = self.config.timeouts.handshake.as_millis() as Millis;
                    let now = self.now;
                    let Some(Phase::Http(http)) = self.conns.get_mut(key).map(|c| &mut c.phase)
                    else {
                        return false;
                    };
                    http.buf.drain(..consumed);
                    http.continue_sent = false;
                    // Each request gets a fresh deadline, which also bounds
                    // how long an idle kept-alive socket stays.
                    http.deadline = now + idle;
                    self.arm(key, now + idle);
                }
            }
        }
    }

    /// Answers one parsed request head. A request whose body has not all
    /// arrived (or that waits for room) is parsed again later, so it is
    /// counted only once it is answered.
    fn on_request(&mut self, key: usize, head: &RequestHead) -> Outcome {
        let outcome = self.answer_request(key, head);
        if !matches!(outcome, Outcome::NeedMore) {
            Stats::add(&self.stats.http_requests, 1);
        }
        outcome
    }

    fn answer_request(&mut self, key: usize, head: &RequestHead) -> Outcome {
        let keep_alive = head.keep_alive;
        let answer = match route(&head.method, &head.path) {
            Route::WebSocket => return self.upgrade(key, head),
            // The conformance echo server upgrades on any path.
            _ if self.config.conformance_echo => return self.upgrade(key, head),
            Route::Publish => return self.on_publish(key, head),
            Route::Health => json_response(Status::Ok, &json!({ "status": "ok" }), keep_alive),
            Route::Metrics => {
                let text = self.all_stats.snapshot().prometheus();
                response(
                    Status::Ok,
                    &[],
                    "text/plain; version=0.0.4",
                    text.as_bytes(),
                    keep_alive,
                )
            }
            Route::NotFound => json_error(
                Status::NotFound,
                "not_found",
                "no such endpoint; the WebSocket is at /ws",
                keep_alive,
            ),
            Route::MethodNotAllowed(allow) => method_not_allowed(allow, keep_alive),
        };
        // A body on a request that takes none would be read as the next request.
        if head.content_length.unwrap_or(0) > 0 || head.chunked || !keep_alive {
            self.respond_and_close(key, answer);
            return Outcome::Done;
        }
        self.queue_response(key, answer);
        Outcome::KeepAlive { consumed: head.len }
    }

    /// Writes a response at once rather than after this turn's fan-out: a
    /// publisher waiting for it can send its next events while subscribers
    /// are being flushed.
    fn queue_response(&mut self, key: usize, bytes: Vec<u8>) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.out.push_unbounded(bytes.into());
        }
        self.flush(key);
    }

    fn upgrade(&mut self, key: usize, head: &RequestHead) -> Outcome {
        let upgrade = match check_upgrade(head) {
            Ok(upgrade) => upgrade,
            Err(status) => {
                debug!("socket {key}: upgrade refused with {}", status.code());
                self.respond_and_close(key, upgrade_refusal(status));
                return Outcome::Done;
            }
        };
        if !self.origin_allowed(head.origin.as_deref()) {
            info!(
                "socket {key}: origin {:?} is not in allowed_origins",
                head.origin
            );
            self.respond_and_close(key, upgrade_refusal(Status::Forbidden));
            return Outcome::Done;
        }
        let now = self.now;
        let auth = if !self.tokens.clients_required() {
            Auth::NotRequired
        } else if let Some(token) = &upgrade.bearer_token {
            match self.tokens.check_client(token) {
                Some(id) => Auth::Authenticated(id),
                None => {
                    Stats::add(&self.stats.auth_failures, 1);
                    info!("socket {key}: bad bearer token in the upgrade");
                    self.respond_and_close(key, upgrade_refusal(Status::Unauthorized));
                    return Outcome::Done;
                }
            }
        } else {
            let wait = self.config.timeouts.auth.as_millis() as Millis;
            Auth::Pending {
                deadline: now + wait,
            }
        };
        let ping_interval = self.config.timeouts.ping_interval.as_millis() as Millis;
        let pong_wait = self.config.timeouts.pong_wait.as_millis() as Millis;
        let Some(conn) = self.conns.get_mut(key) else {
            return Outcome::Done;
        };
        let Phase::Http(http) = &mut conn.phase else {
            return Outcome::Done;
        };
        // Frames the client sent right behind its request.
        let mut early = http.buf.split_off(head.len);
        conn.out.push_unbounded(upgrade.response().into());
        conn.phase = Phase::WebSocket(WsConn {
            auth,
            subs: super::conn::Subs::None,
            inbound: None,
            next_ping: now + ping_interval,
            rate: TokenBucket::full(self.config.limits.message_burst, now),
        });
        conn.last_rx = now;
        Stats::add(&self.stats.websockets, 1);
        let mut first_timer = (now + ping_interval).min(now + pong_wait);
        match auth {
            Auth::Pending { deadline } => first_timer = first_timer.min(deadline),
            _ => self.apply_defaults(key),
        }
        self.arm(key, first_timer);
        // The 101 goes out now, not with the next (possibly coalesced) pass:
        // a reconnect storm waits on it.
        self.flush(key);
        if !early.is_empty() {
            self.on_ws_bytes(key, &mut early);
        }
        Outcome::Done
    }

    /// Cross-site WebSocket hijacking guard: a browser always sends `Origin`,
    /// and only listed origins may open a socket when a list is configured.
    fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let allowed = &self.config.allowed_origins;
        match origin {
            Some(origin) if !allowed.is_empty() => allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(origin)),
            _ => true,
        }
    }

    fn on_publish(&mut self, key: usize, head: &RequestHead) -> Outcome {
        let keep_alive = head.keep_alive;
        let bearer = head.authorization.as_deref().and_then(bearer_token);
        let refusal = match self.tokens.check_publisher(bearer) {
            PublishAuth::Allowed => None,
            PublishAuth::Missing => Some((
                Status::Unauthorized,
                "unauthorized",
                "send Authorization: Bearer <publish token>",
            )),
            PublishAuth::Wrong => Some((
                Status::Forbidden,
                "forbidden",
                "the publish token is not valid",
            )),
        };
        if let Some((status, code, message)) = refusal {
            Stats::add(&self.stats.auth_failures, 1);
            info!("socket {key}: publish refused: {message}");
            self.respond_and_close(key, json_error(status, code, message, false));
            return Outcome::Done;
        }
        let Some(length) = head.content_length.filter(|_| !head.chunked) else {
            let answer = json_error(
                Status::LengthRequired,
                "length_required",
                "send the body with a Content-Length",
                false,
            );
            self.respond_and_close(key, answer);
            return Outcome::Done;
        };
        let max = self.config.limits.max_request_body;
        if length > max {
            let message = format!("the body is {length} bytes; limits.max_request_body is {max}");
            self.respond_and_close(
                key,
                json_error(Status::PayloadTooLarge, "too_large", &message, false),
            );
            return Outcome::Done;
        }
        let Some(Phase::Http(http)) = self.conns.get_mut(key).map(|c| &mut c.phase) else {
            return Outcome::Done;
        };
        let end = head.len + length;
        if http.buf.len() < end {
            // curl sends `Expect: 100-continue` for bodies over 1 KiB and
            // waits a second for this before sending the body anyway.
            if head.expect_continue && !http.continue_sent {
                http.continue_sent = true;
                self.queue_response(key, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec());
            }
            return Outcome::NeedMore;
        }
        let body = http.buf[head.len..end].to_vec();
        let Some(answer) = self.publish_body(&body, keep_alive) else {
            // The log is full: hold the request until the sequencer wakes
            // this reactor with room (`Reactor::retry_held_publishes`), for
            // at most `timeouts.publish_wait` (then 503, in `on_timer`).
            if !self.held_publishes.contains(&key) {
                let wait = self.config.timeouts.publish_wait.as_millis() as Millis;
                let deadline = self.now + wait;
                if let Some(Phase::Http(http)) = self.conns.get_mut(key).map(|c| &mut c.phase) {
                    http.deadline = deadline;
                }
                self.held_publishes.push(key);
                self.arm(key, deadline);
            }
            return Outcome::NeedMore;
        };
        if !keep_alive {
            self.respond_and_close(key, answer);
            return Outcome::Done;
        }
        self.queue_response(key, answer);
        Outcome::KeepAlive { consumed: end }
    }

    /// Validates every event first, so a bad one publishes none, then hands
    /// them to the sequencer together. `None` when the log is full.
    fn publish_body(&mut self, body: &[u8], keep_alive: bool) -> Option<Vec<u8>> {
        let items = match parse_publish_body(body) {
            Ok(items) => items,
            Err(message) => {
                return Some(json_error(
                    Status::BadRequest,
                    "bad_request",
                    &message,
                    keep_alive,
                ))
            }
        };
        let single =
            items.len() == 1 && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let mut events = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let event = Event::from_raw(item.channel, item.event_type, item.data);
            if let Err(e) = validate_event(&event, &self.subject_limits) {
                let message = if single {
                    e.to_string()
                } else {
                    format!("event {index}: {e}")
                };
                let code = match e {
                    PublishError::InvalidChannel(_) => "invalid_channel",
                    _ => "invalid_event",
                };
                return Some(json_error(Status::BadRequest, code, &message, keep_alive));
            }
            events.push(event);
        }
        let now = SystemTime::now();
        let count = events.len() as u64;
        let encoded = events.into_iter().map(|e| e.encode(now)).collect();
        let first = match self.sequencer.try_append(encoded) {
            Ok(first) => first,
            Err(AppendError::Full) => return None,
            Err(AppendError::TooMany { count, capacity }) => {
                let message =
                    format!("{count} events in one request; limits.ingest_capacity is {capacity}");
                return Some(json_error(
                    Status::PayloadTooLarge,
                    "too_large",
                    &message,
                    keep_alive,
                ));
            }
            Err(AppendError::Closed) => {
                return Some(json_error(
                    Status::ServiceUnavailable,
                    "stopping",
                    "the relay is shutting down",
                    keep_alive,
                ))
            }
        };
        let body = if single {
            json!({ "seq": first })
        } else {
            json!({ "seqs": (first..first + count).collect::<Vec<u64>>() })
        };
        Some(json_response(Status::Ok, &body, keep_alive))
    }
}
