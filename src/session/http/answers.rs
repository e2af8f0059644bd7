//! What each request gets: the upgrade, publish checks, and the small
//! endpoints.

use log::{debug, info};
use serde_json::json;

use super::{Body, HttpOutput, HttpSession, Owed, Owing, Query, State, Step};
use crate::auth::PublishAuth;
use crate::config::Config;
use crate::fanout::event::{EncodedEvent, Event};
use crate::fanout::publisher::{validate_event, PublishError};
use crate::proto::handshake::{check_upgrade, upgrade_refusal, RequestHead};
use crate::proto::http::{
    bearer_token, json_error, json_response, method_not_allowed, parse_publish_body, query_param,
    response, route, url_decode, Route, Status,
};
use crate::route::{validate_channel, validate_pattern};
use crate::session::ws::{Auth, WsSession};
use crate::session::{millis, Now, SessionContext, UpstreamHealth};
use crate::stats::Stats;

/// Why a publish body is refused: the answer's status, `code` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BadBody {
    code: &'static str,
    message: String,
}

impl HttpSession {
    /// Answers one parsed request head, or starts waiting for its body or
    /// for the reactor.
    pub(super) fn answer_request(
        &mut self,
        head: &RequestHead,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) -> Step {
        let keep_alive = head.keep_alive;
        let answer = match route(&head.method, &head.path) {
            Route::WebSocket => return self.upgrade(head, now, cx, out),
            // The conformance echo server upgrades on any path.
            _ if cx.config.conformance_echo => return self.upgrade(head, now, cx, out),
            Route::Publish => return self.on_publish(head, cx, out),
            Route::Health => health(cx, keep_alive),
            Route::Metrics => return self.owe(Owing::Metrics, HttpOutput::Metrics, head, out),
            Route::StatusPage => response(
                Status::Ok,
                &[],
                "text/html; charset=utf-8",
                STATUS_PAGE.as_bytes(),
                keep_alive,
            ),
            Route::Client => response(
                Status::Ok,
                &[],
                "text/javascript; charset=utf-8",
                CLIENT.as_bytes(),
                keep_alive,
            ),
            Route::Stats | Route::Channels => match state_query(head, cx) {
                Ok(query) => return self.owe(Owing::Query, HttpOutput::Query(query), head, out),
                Err((status, code, message)) => json_error(status, code, &message, keep_alive),
            },
            Route::NotFound => json_error(
                Status::NotFound,
                "not_found",
                "no such endpoint; the WebSocket is at /ws",
                keep_alive,
            ),
            Route::MethodNotAllowed(allow) => method_not_allowed(allow, keep_alive),
        };
        if takes_no_body_but_has_one(head) || !keep_alive {
            out.push(HttpOutput::SendAndClose(answer));
            return Step::Finished;
        }
        out.push(HttpOutput::Send(answer));
        Step::Answered { consumed: head.len }
    }

    /// Hands a request the reactor answers (`ask`) out, and waits for it.
    fn owe(
        &mut self,
        what: Owing,
        ask: HttpOutput,
        head: &RequestHead,
        out: &mut Vec<HttpOutput>,
    ) -> Step {
        self.state = State::AwaitingAnswer(Owed {
            what,
            len: head.len,
            keep_alive: head.keep_alive,
            close: takes_no_body_but_has_one(head) || !head.keep_alive,
        });
        out.push(ask);
        Step::Wait
    }

    fn upgrade(
        &mut self,
        head: &RequestHead,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) -> Step {
        let upgrade = match check_upgrade(head) {
            Ok(upgrade) => upgrade,
            Err(status) => {
                debug!("upgrade refused with {}", status.code());
                out.push(HttpOutput::SendAndClose(upgrade_refusal(status)));
                return Step::Finished;
            }
        };
        if !origin_allowed(cx.config, head.origin.as_deref()) {
            Stats::add(&cx.stats.origin_refusals, 1);
            debug!(
                "origin {} is not in allowed_origins",
                head.origin.as_deref().unwrap_or_default()
            );
            out.push(HttpOutput::SendAndClose(upgrade_refusal(Status::Forbidden)));
            return Step::Finished;
        }
        let auth = if !cx.tokens.clients_required() {
            Auth::NotRequired
        } else if let Some(token) = upgrade
            .bearer_token
            .clone()
            .or_else(|| query_token(head, cx))
        {
            match cx.tokens.check_client(&token) {
                Some(id) => Auth::Authenticated(id),
                None => {
                    Stats::add(&cx.stats.auth_failures, 1);
                    debug!("bad bearer token in the upgrade");
                    out.push(HttpOutput::SendAndClose(upgrade_refusal(
                        Status::Unauthorized,
                    )));
                    return Step::Finished;
                }
            }
        } else {
            Auth::Pending {
                deadline: now.millis + millis(cx.config.timeouts.auth),
            }
        };
        // Frames the client sent right behind its request.
        let mut early = self.buf.split_off(head.len);
        let mut outputs = Vec::new();
        let mut session = WsSession::new(auth, now.millis, cx, &mut outputs);
        if !early.is_empty() {
            session.handle_bytes(&mut early, now, cx, &mut outputs);
        }
        out.push(HttpOutput::Upgrade {
            response: upgrade.response(),
            session,
            outputs,
        });
        Step::Finished
    }

    /// Checks a publish head; a good one moves on to its body.
    fn on_publish(
        &mut self,
        head: &RequestHead,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) -> Step {
        let bearer = head.authorization.as_deref().and_then(bearer_token);
        let refusal = match cx.tokens.check_publisher(bearer) {
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
            Stats::add(&cx.stats.auth_failures, 1);
            info!("publish refused: {message}");
            out.push(HttpOutput::SendAndClose(json_error(
                status, code, message, false,
            )));
            return Step::Finished;
        }
        let Some(length) = head.content_length.filter(|_| !head.chunked) else {
            let answer = json_error(
                Status::LengthRequired,
                "length_required",
                "send the body with a Content-Length",
                false,
            );
            out.push(HttpOutput::SendAndClose(answer));
            return Step::Finished;
        };
        let max = cx.config.limits.max_request_body;
        if length > max {
            let message = format!("the body is {length} bytes; limits.max_request_body is {max}");
            let answer = json_error(Status::PayloadTooLarge, "too_large", &message, false);
            out.push(HttpOutput::SendAndClose(answer));
            return Step::Finished;
        }
        self.state = State::ReadingBody(Body {
            head_len: head.len,
            body_len: length,
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            continue_sent: false,
        });
        Step::Proceed
    }

    /// The publish body has fully arrived: hand its events to the reactor,
    /// or refuse it.
    pub(super) fn on_body(
        &mut self,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) -> Step {
        let State::ReadingBody(body) = &self.state else {
            return Step::Wait;
        };
        let (keep_alive, end) = (body.keep_alive, body.head_len + body.body_len);
        match publish_events(&self.buf[body.head_len..end], now, cx) {
            Ok((events, single)) => {
                self.state = State::AwaitingAnswer(Owed {
                    what: Owing::Publish { single },
                    len: end,
                    keep_alive,
                    close: !keep_alive,
                });
                out.push(HttpOutput::Publish(events));
                Step::Wait
            }
            Err(bad) => {
                let answer = json_error(Status::BadRequest, bad.code, &bad.message, keep_alive);
                if !keep_alive {
                    out.push(HttpOutput::SendAndClose(answer));
                    return Step::Finished;
                }
                out.push(HttpOutput::Send(answer));
                Step::Answered { consumed: end }
            }
        }
    }
}

/// A body on a request that takes none would be read as the next request.
/// `?token=` on the WebSocket URL, when `auth.allow_query_token` is on.
fn query_token(head: &RequestHead, cx: &SessionContext) -> Option<String> {
    if !cx.config.auth.allow_query_token {
        return None;
    }
    head.query
        .as_deref()
        .and_then(|q| query_param(q, "token"))
        .filter(|t| !t.is_empty())
}

/// The browser client and the status page, served as they are in `client/`.
const CLIENT: &str = include_str!("../../../client/tidings.js");
const STATUS_PAGE: &str = include_str!("../../../client/status.html");

/// Reads of the relay's state need a client token when client tokens are
/// configured, and see only what its scope allows.
fn state_query(
    head: &RequestHead,
    cx: &SessionContext,
) -> Result<Query, (Status, &'static str, String)> {
    let token = if cx.tokens.clients_required() {
        let bearer = head.authorization.as_deref().and_then(bearer_token);
        match bearer.and_then(|b| cx.tokens.check_client(b)) {
            Some(id) => Some(id),
            None => {
                Stats::add(&cx.stats.auth_failures, 1);
                return Err((
                    Status::Unauthorized,
                    "unauthorized",
                    "send Authorization: Bearer <client token>".into(),
                ));
            }
        }
    } else {
        None
    };
    let invalid =
        |e: crate::route::SubjectError| (Status::BadRequest, "invalid_channel", e.to_string());
    let forbidden = |what: &str| {
        (
            Status::Forbidden,
            "forbidden",
            format!("your token may not read {what:?}"),
        )
    };
    if head.path == "/api/stats" {
        return Ok(Query::Stats);
    }
    if let Some(encoded) = head.path.strip_prefix("/api/channels/") {
        let channel = url_decode(encoded).unwrap_or_default();
        validate_channel(&channel, cx.subject_limits).map_err(invalid)?;
        if !cx.tokens.allows(token, &channel) {
            return Err(forbidden(&channel));
        }
        return Ok(Query::Channel(channel));
    }
    let Some(pattern) = head
        .query
        .as_deref()
        .and_then(|q| query_param(q, "pattern"))
    else {
        return Err((
            Status::BadRequest,
            "bad_request",
            "use /api/channels/{channel} or /api/channels?pattern=P".into(),
        ));
    };
    validate_pattern(&pattern, cx.subject_limits).map_err(invalid)?;
    if !cx.tokens.allows(token, &pattern) {
        return Err(forbidden(&pattern));
    }
    Ok(Query::Channels { pattern, token })
}

fn takes_no_body_but_has_one(head: &RequestHead) -> bool {
    head.content_length.unwrap_or(0) > 0 || head.chunked
}

/// Cross-site WebSocket hijacking guard: a browser always sends `Origin`,
/// and only listed origins may open a socket when a list is configured.
fn origin_allowed(config: &Config, origin: Option<&str>) -> bool {
    let allowed = &config.allowed_origins;
    match origin {
        Some(origin) if !allowed.is_empty() => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin)),
        _ => true,
    }
}

/// Validates every event first, so a bad one publishes none, then encodes
/// them stamped with `now`. Also says whether the body was a single object.
fn publish_events(
    body: &[u8],
    now: Now,
    cx: &SessionContext,
) -> Result<(Vec<EncodedEvent>, bool), BadBody> {
    let items = parse_publish_body(body).map_err(|message| BadBody {
        code: "bad_request",
        message,
    })?;
    let single = items.len() == 1 && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let event = Event::from_raw(item.channel, item.event_type, item.data);
        if let Err(e) = validate_event(&event, cx.subject_limits) {
            let message = if single {
                e.to_string()
            } else {
                format!("event {index}: {e}")
            };
            let code = match e {
                PublishError::InvalidChannel(_) => "invalid_channel",
                PublishError::ReservedType(_) => "reserved_type",
                _ => "invalid_event",
            };
            return Err(BadBody { code, message });
        }
        events.push(event);
    }
    let events = events.into_iter().map(|e| e.encode(now.wall)).collect();
    Ok((events, single))
}

/// `/healthz`: 200 while the relay serves; in fleet mode it also tells
/// whether NATS is reachable, and is 503 without it when
/// `upstream.required` says a relay cut off from the fleet is unhealthy.
fn health(cx: &SessionContext, keep_alive: bool) -> Vec<u8> {
    let upstream = match cx.upstream {
        UpstreamHealth::Standalone => {
            return json_response(Status::Ok, &json!({ "status": "ok" }), keep_alive)
        }
        UpstreamHealth::Up => "up",
        UpstreamHealth::Down => "down",
    };
    let required = cx.config.upstream.as_ref().is_some_and(|u| u.required);
    let (status, text) = if upstream == "down" && required {
        (Status::ServiceUnavailable, "unavailable")
    } else {
        (Status::Ok, "ok")
    };
    json_response(
        status,
        &json!({ "status": text, "upstream": upstream }),
        keep_alive,
    )
}
