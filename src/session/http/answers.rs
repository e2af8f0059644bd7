//! What each request gets: the upgrade, publish checks, and the small
//! endpoints.

use serde_json::json;
use tracing::{debug, info};

use super::{Body, HttpOutput, HttpSession, Owed, Owing, Query, State, Step, UpgradeRequest};
use crate::auth::{may_publish, PublishAuth};
use crate::config::{CompressionMode, Config};
use crate::fanout::event::{EncodedEvent, Event};
use crate::fanout::publisher::{validate_event, PublishError};
use crate::proto::handshake::{check_upgrade, header_list, upgrade_refusal, RequestHead};
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
    status: Status,
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
            Route::Publish => return self.on_publish(head, now, cx, out),
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
            Route::Stats | Route::Channels => match state_query(head, now, cx) {
                Ok(query) => return self.owe(Owing::Query, HttpOutput::Query(query), head, out),
                Err((status, code, message)) => json_error(status, code, &message, keep_alive),
            },
            admin @ (Route::AdminConnections | Route::AdminSubscriptions) => {
                let connections = admin == Route::AdminConnections;
                match super::admin::admin_query(head, connections, cx) {
                    Ok(query) => {
                        return self.owe(Owing::Query, HttpOutput::Query(query), head, out)
                    }
                    Err((status, code, message)) => json_error(status, code, &message, keep_alive),
                }
            }
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
        let mut upgrade = match check_upgrade(head) {
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
        let presented = if cx.tokens.clients_required() {
            upgrade
                .bearer_token
                .clone()
                .or_else(|| query_token(head, cx))
        } else {
            None
        };
        let auth = if !cx.tokens.clients_required() {
            Auth::NotRequired
        } else if let Some(token) = &presented {
            match cx.tokens.check_client(token, now.wall, now.millis) {
                Ok(grant) => Auth::from(grant),
                Err(e) => {
                    Stats::add(&cx.stats.auth_failures, 1);
                    debug!("upgrade refused: {e}");
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
        // The client's random key seeds the first ping's jitter: no clock
        // or RNG in the session, and a client choosing it only moves its own.
        let ping_seed = head.ws_key.as_deref().map_or(0, seed_of);
        let mut session = WsSession::new(auth, now.millis, ping_seed, cx, &mut outputs);
        upgrade.deflate = cx.config.compression == CompressionMode::On
            && crate::proto::deflate::accepts(&head.ws_extensions);
        if !early.is_empty() {
            session.handle_bytes(&mut early, upgrade.deflate, now, cx, &mut outputs);
        }
        let request = cx.hooks_set.then(|| {
            Box::new(UpgradeRequest {
                path: head.path.clone(),
                query: head.query.clone(),
                headers: header_list(&self.buf[..head.len], cx.config.limits.max_headers),
                token: presented,
            })
        });
        out.push(HttpOutput::Upgrade {
            response: upgrade.response(),
            deflate: upgrade.deflate,
            session,
            outputs,
            request,
        });
        Step::Finished
    }

    /// Checks a publish head; a good one moves on to its body.
    fn on_publish(
        &mut self,
        head: &RequestHead,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) -> Step {
        let bearer = head.authorization.as_deref().and_then(bearer_token);
        let mut scope = None;
        let refusal = match cx.tokens.check_publisher(bearer, now.wall) {
            PublishAuth::Allowed => None,
            PublishAuth::Scoped(patterns) => {
                scope = Some(patterns);
                None
            }
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
        let (length, chunked) = match body_framing(head) {
            Ok(Framing::Length(length)) => (length, None),
            Ok(Framing::Chunked) => (0, Some(Box::default())),
            Err((status, code, message)) => {
                debug!("publish refused with {}: {message}", status.code());
                out.push(HttpOutput::SendAndClose(json_error(
                    status, code, &message, false,
                )));
                return Step::Finished;
            }
        };
        let max = cx.config.limits.max_request_body;
        if length > max {
            out.push(HttpOutput::SendAndClose(body_too_large(
                length as u64,
                false,
                max,
            )));
            return Step::Finished;
        }
        self.state = State::ReadingBody(Body {
            head_len: head.len,
            body_len: length,
            chunked,
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            continue_sent: false,
            scope,
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
        // A chunked body was decoded as it came, its raw bytes dropped.
        let (keep_alive, end) = (body.keep_alive, body.head_len + body.body_len);
        let bytes = match &body.chunked {
            Some(chunked) => chunked.body(),
            None => &self.buf[body.head_len..end],
        };
        match publish_events(bytes, body.scope.as_deref(), now, cx) {
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
                let answer = json_error(bad.status, bad.code, &bad.message, keep_alive);
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
    now: Now,
    cx: &SessionContext,
) -> Result<Query, (Status, &'static str, String)> {
    let token = if cx.tokens.clients_required() {
        let bearer = head.authorization.as_deref().and_then(bearer_token);
        match bearer.map(|b| cx.tokens.check_client(b, now.wall, now.millis)) {
            Some(Ok(grant)) => Some(grant),
            _ => {
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
        if !cx.tokens.allows(token.as_ref(), &channel) {
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
    if !cx.tokens.allows(token.as_ref(), &pattern) {
        return Err(forbidden(&pattern));
    }
    Ok(Query::Channels { pattern, token })
}

/// FNV-1a over the text: a spread of seeds from distinct keys.
fn seed_of(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A body on a request that takes none would be read as the next request.
fn takes_no_body_but_has_one(head: &RequestHead) -> bool {
    head.has_body()
}

/// How a publish body is delimited.
enum Framing {
    Length(usize),
    Chunked,
}

/// Reads a publish head's framing (RFC 9112 section 6), or the refusal.
fn body_framing(head: &RequestHead) -> Result<Framing, (Status, &'static str, String)> {
    let codings = &head.transfer_codings;
    match (head.content_length, codings.as_slice()) {
        (Some(length), []) => Ok(Framing::Length(length)),
        (None, [only]) if only == "chunked" => Ok(Framing::Chunked),
        (None, []) => Err((
            Status::LengthRequired,
            "length_required",
            "send the body with a Content-Length or Transfer-Encoding: chunked".into(),
        )),
        // "A server MAY reject a request that contains both Content-Length
        // and Transfer-Encoding ... Regardless, the server MUST close the
        // connection after responding" (RFC 9112 6.3): two framings are how
        // requests are smuggled past a proxy that reads the other one.
        (Some(_), _) => Err((
            Status::BadRequest,
            "ambiguous_length",
            "both Content-Length and Transfer-Encoding: send one of them".into(),
        )),
        // "If any transfer coding other than chunked is applied to a request
        // message body, the sender MUST apply chunked as the final transfer
        // coding" (RFC 9112 6.1).
        (None, [.., last]) if last != "chunked" => Err((
            Status::BadRequest,
            "bad_transfer_encoding",
            format!("Transfer-Encoding must end with chunked, not {last:?}"),
        )),
        (None, _) => Err((
            Status::NotImplemented,
            "unsupported_transfer_encoding",
            format!(
                "Transfer-Encoding {:?} is not supported: send chunked alone, or a Content-Length",
                codings.join(", ")
            ),
        )),
    }
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

/// The `413` for a publish body over `limits.max_request_body`: `size` is
/// its `Content-Length`, or for a chunked body what is known of it, which
/// is `at_least` that.
pub(super) fn body_too_large(size: u64, at_least: bool, max: usize) -> Vec<u8> {
    let at_least = if at_least { "at least " } else { "" };
    let message = format!("the body is {at_least}{size} bytes; limits.max_request_body is {max}");
    json_error(Status::PayloadTooLarge, "too_large", &message, false)
}

/// Validates every event first, so a bad one publishes none, then encodes
/// them stamped with `now`. Also says whether the body was a single object.
fn publish_events(
    body: &[u8],
    scope: Option<&[Box<str>]>,
    now: Now,
    cx: &SessionContext,
) -> Result<(Vec<EncodedEvent>, bool), BadBody> {
    let items = parse_publish_body(body).map_err(|message| BadBody {
        status: Status::BadRequest,
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
            return Err(BadBody {
                status: Status::BadRequest,
                code,
                message,
            });
        }
        if let Some(scope) = scope {
            if !may_publish(scope, event.channel()) {
                Stats::add(&cx.stats.auth_failures, 1);
                let message = format!("your token may not publish to {:?}", event.channel());
                return Err(BadBody {
                    status: Status::Forbidden,
                    code: "forbidden",
                    message,
                });
            }
        }
        events.push(event);
    }
    let events = events
        .into_iter()
        .map(|e| e.encode_shaped(now.wall, cx.shaping))
        .collect();
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
