//! A socket still speaking HTTP: the upgrade to WebSocket, and the HTTP API
//! (publish, health, metrics) with keep-alive and pipelining.
//!
//! Each request head is parsed once; the session then moves through explicit
//! states (head, body, an answer the reactor owes) and drops the request's
//! bytes only once it is answered.

use tracing::debug;

use super::{millis, Millis, Now, SessionContext};
use crate::fanout::event::EncodedEvent;
use crate::proto::chunked::{ChunkError, ChunkLimits, ChunkedBody};
use crate::proto::handshake::{parse_head, upgrade_refusal};
use crate::proto::http::{json_error, response, Status};
use crate::session::ws::{WsOutput, WsSession};
use crate::stats::Stats;

mod admin;
mod answers;

/// What an [`HttpSession`] asks of the reactor, in order.
#[derive(Debug)]
pub enum HttpOutput {
    /// Bytes to write; the socket stays on HTTP (keep-alive). Written at once
    /// rather than after the turn's fan-out: a publisher waiting for its
    /// answer can send its next events while subscribers are being flushed.
    Send(Vec<u8>),
    /// A final response: write it, then close the socket (lingering as for
    /// any close). Nothing follows.
    SendAndClose(Vec<u8>),
    /// Drop the socket without a response: a kept-alive socket stayed idle
    /// past its deadline. Nothing follows.
    Drop,
    /// The upgrade: write `response` (the 101) at once, not with the next
    /// (possibly coalesced) pass, since a reconnect storm waits on it; then
    /// switch the socket to `session` and apply `outputs` as any
    /// `WsOutput`: the default subscriptions, and whatever the frames the
    /// client sent right behind its request produced. Nothing follows.
    ///
    /// With hooks set (`SessionContext::hooks_set`), `request` carries what
    /// the embedder's `on_connect` hook sees; if it refuses, the reactor
    /// answers `403` instead and drops `session` and `outputs` unapplied.
    Upgrade {
        response: Vec<u8>,
        /// permessage-deflate was agreed: pass it to every
        /// `WsSession::handle_bytes`, and send events deflated.
        deflate: bool,
        session: WsSession,
        outputs: Vec<WsOutput>,
        request: Option<Box<UpgradeRequest>>,
    },
    /// A complete, valid `POST /api/publish`, every event checked (a bad one
    /// publishes none) and encoded. The reactor fans them out in order and
    /// calls [`HttpSession::publish_done`] or [`HttpSession::publish_refused`];
    /// until then the session buffers input (bounded) and emits nothing.
    Publish(Vec<EncodedEvent>),
    /// `GET /metrics`: the reactor calls [`HttpSession::metrics_done`].
    Metrics,
    /// A read of the relay's state (`/api/stats`, `/api/channels`,
    /// `/api/admin/...`), auth already checked: the reactor calls
    /// [`HttpSession::query_done`].
    Query(Query),
}

/// An upgrade request's details, for the embedder's `on_connect` hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    pub path: String,
    pub query: Option<String>,
    /// Every header, in order, as sent.
    pub headers: Vec<(String, String)>,
    /// The client token presented in the upgrade, if auth is on.
    pub token: Option<String>,
}

/// What a state read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Stats,
    /// The latest event of one channel.
    Channel(String),
    /// The latest events of the kept channels matching a pattern, within
    /// the client token's scope.
    Channels {
        pattern: String,
        token: Option<crate::auth::Grant>,
    },
    /// The `limit` sockets that come first by `sort`, over every reactor.
    Connections {
        sort: ConnectionSort,
        limit: usize,
    },
    /// Every channel and pattern with its subscribers, at most `limit` of each.
    Subscriptions {
        limit: usize,
    },
}

/// The order of `/api/admin/connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionSort {
    /// Most bytes queued first: the sockets falling behind.
    Queue,
    /// Most resyncs (frames dropped for it) first.
    Resyncs,
    /// Oldest first.
    Age,
}

#[derive(Debug)]
pub struct HttpSession {
    /// Unanswered input: the current request, and any pipelined behind it.
    buf: Vec<u8>,
    /// The current request must be complete by then (slowloris guard).
    deadline: Millis,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Waiting for a complete request head at the start of `buf`.
    ReadingHead,
    /// A publish head is parsed and checked; its body is arriving.
    ReadingBody(Body),
    /// The reactor owes the answer to the request at the start of `buf`.
    AwaitingAnswer(Owed),
    /// A final response, a drop or an upgrade went out.
    Done,
}

#[derive(Debug)]
struct Body {
    head_len: usize,
    /// The `Content-Length`; 0 for a chunked body.
    body_len: usize,
    /// A `Transfer-Encoding: chunked` body, decoded as its bytes arrive
    /// (the raw chunks are then dropped from `buf`, so chunk framing does
    /// not count against the buffer limit).
    chunked: Option<Box<ChunkedBody>>,
    keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead.
    expect_continue: bool,
    /// `100 Continue` went out for this request.
    continue_sent: bool,
    /// With a JWT: the channels it may publish to.
    scope: Option<Box<[Box<str>]>>,
}

#[derive(Debug)]
struct Owed {
    what: Owing,
    /// Bytes of the request (head and body) at the start of `buf`.
    len: usize,
    /// For the response's `Connection` header.
    keep_alive: bool,
    /// Close after the answer.
    close: bool,
}

#[derive(Debug)]
enum Owing {
    /// `{"seq":N}` when the body was one object, else `{"seqs":[...]}`.
    Publish {
        single: bool,
    },
    Metrics,
    Query,
}

/// What handling one request head or body did.
enum Step {
    /// Answered, kept alive: the next request starts `consumed` bytes in.
    Answered { consumed: usize },
    /// Answered with a final response, or upgraded.
    Finished,
    /// The head could not be read; refused without counting a request.
    Refused,
    /// The state changed; look again at the same bytes.
    Proceed,
    /// More bytes are needed, or the reactor's answer.
    Wait,
}

impl HttpSession {
    /// A socket just accepted at `now`: its first request is due within
    /// `timeouts.handshake`.
    pub fn new(now: Millis, cx: &SessionContext) -> HttpSession {
        HttpSession {
            buf: Vec::new(),
            deadline: now + millis(cx.config.timeouts.handshake),
            state: State::ReadingHead,
        }
    }

    /// When the current request must be complete (or an idle kept-alive
    /// socket goes); the reactor re-arms its timer at this after each call.
    pub fn deadline(&self) -> Millis {
        self.deadline
    }

    /// Feeds bytes read from the socket and answers every complete request,
    /// in order, until one needs more bytes or the reactor's answer.
    pub fn handle_bytes(
        &mut self,
        data: &[u8],
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) {
        if matches!(self.state, State::Done) {
            return;
        }
        let limits = &cx.config.limits;
        let max_buffered = limits.max_request_head + limits.max_request_body;
        if self.buf.len() + data.len() > max_buffered {
            return self.close(upgrade_refusal(Status::PayloadTooLarge), out);
        }
        self.buf.extend_from_slice(data);
        self.advance(now, cx, out);
    }

    /// Answers the publish handed out as `Publish` with the `seq` each
    /// event got, then goes on with requests already buffered behind it.
    pub fn publish_done(
        &mut self,
        seqs: &[u64],
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) {
        let State::AwaitingAnswer(owed) = &self.state else {
            return;
        };
        let Owing::Publish { single } = owed.what else {
            return;
        };
        let body = match seqs {
            [seq] if single => serde_json::json!({ "seq": seq }),
            _ => serde_json::json!({ "seqs": seqs }),
        };
        let answer = crate::proto::http::json_response(Status::Ok, &body, owed.keep_alive);
        self.answer_owed(answer, now, cx, out);
    }

    /// Answers the publish handed out as `Publish` once NATS took its
    /// `count` events (fleet mode). Core NATS: no `seq`, since each relay
    /// numbers the events itself when NATS delivers them. JetStream: `seq`
    /// is the stream sequence of the last event, every relay's seq for it.
    pub fn publish_forwarded(
        &mut self,
        count: usize,
        seq: Option<u64>,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) {
        let State::AwaitingAnswer(owed) = &self.state else {
            return;
        };
        if !matches!(owed.what, Owing::Publish { .. }) {
            return;
        }
        let body = match seq {
            Some(seq) => serde_json::json!({ "published": count, "seq": seq }),
            None => serde_json::json!({ "published": count }),
        };
        let answer = crate::proto::http::json_response(Status::Ok, &body, owed.keep_alive);
        self.answer_owed(answer, now, cx, out);
    }

    /// Refuses the publish handed out as `Publish`, keeping the socket as
    /// the request asked. Today's one refusal: the relay is saturated,
    /// `(Status::ServiceUnavailable, "ingest_full", "the relay is saturated;
    /// retry shortly")`, which also carries `Retry-After`.
    pub fn publish_refused(
        &mut self,
        status: Status,
        code: &str,
        message: &str,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) {
        let State::AwaitingAnswer(owed) = &self.state else {
            return;
        };
        if !matches!(owed.what, Owing::Publish { .. }) {
            return;
        }
        let answer = json_error(status, code, message, owed.keep_alive);
        self.answer_owed(answer, now, cx, out);
    }

    /// Answers the `Metrics` request with the Prometheus text.
    pub fn metrics_done(
        &mut self,
        text: &str,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) {
        let State::AwaitingAnswer(owed) = &self.state else {
            return;
        };
        if !matches!(owed.what, Owing::Metrics) {
            return;
        }
        let content_type = crate::stats::CONTENT_TYPE;
        let answer = response(
            Status::Ok,
            &[],
            content_type,
            text.as_bytes(),
            owed.keep_alive,
        );
        self.answer_owed(answer, now, cx, out);
    }

    /// Answers the `Query` request with a JSON body (already serialized).
    pub fn query_done(
        &mut self,
        status: Status,
        json: &[u8],
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) {
        let State::AwaitingAnswer(owed) = &self.state else {
            return;
        };
        if !matches!(owed.what, Owing::Query) {
            return;
        }
        let answer = response(status, &[], "application/json", json, owed.keep_alive);
        self.answer_owed(answer, now, cx, out);
    }

    /// Due at [`HttpSession::deadline`]: a request still incomplete gets a
    /// 408, an idle kept-alive socket is dropped. Returns when to look again;
    /// `None` once done, and while the reactor owes an answer (the request
    /// is complete, so it is not timed out; the reactor re-arms at
    /// `deadline()` after answering).
    pub fn handle_timeout(
        &mut self,
        now: Millis,
        _cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) -> Option<Millis> {
        match self.state {
            State::Done | State::AwaitingAnswer(_) => None,
            State::ReadingHead | State::ReadingBody(_) if now < self.deadline => {
                Some(self.deadline)
            }
            State::ReadingHead | State::ReadingBody(_) => {
                if self.buf.is_empty() {
                    // An idle kept-alive connection: nothing to answer.
                    self.state = State::Done;
                    out.push(HttpOutput::Drop);
                } else {
                    debug!("request incomplete after timeouts.handshake");
                    self.close(upgrade_refusal(Status::RequestTimeout), out);
                }
                None
            }
        }
    }

    /// Handles buffered requests until one waits or the socket is done.
    fn advance(&mut self, now: Now, cx: &SessionContext, out: &mut Vec<HttpOutput>) {
        loop {
            let step = match &mut self.state {
                State::ReadingHead => self.on_head(now, cx, out),
                State::ReadingBody(_) => self.on_body_bytes(now, cx, out),
                State::AwaitingAnswer(_) | State::Done => Step::Wait,
            };
            match step {
                Step::Proceed => {}
                Step::Wait => return,
                Step::Refused => {
                    self.state = State::Done;
                    return;
                }
                Step::Finished => {
                    Stats::add(&cx.stats.http_requests, 1);
                    self.state = State::Done;
                    return;
                }
                Step::Answered { consumed } => {
                    Stats::add(&cx.stats.http_requests, 1);
                    self.next_request(consumed, now.millis, cx);
                }
            }
        }
    }

    /// Writes the answer the reactor owed, then goes on with the requests
    /// buffered behind it. Requests are counted once, when answered.
    fn answer_owed(
        &mut self,
        answer: Vec<u8>,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<HttpOutput>,
    ) {
        let State::AwaitingAnswer(owed) = &self.state else {
            return;
        };
        Stats::add(&cx.stats.http_requests, 1);
        if owed.close {
            return self.close(answer, out);
        }
        let consumed = owed.len;
        out.push(HttpOutput::Send(answer));
        self.next_request(consumed, now.millis, cx);
        self.advance(now, cx, out);
    }

    fn next_request(&mut self, consumed: usize, now: Millis, cx: &SessionContext) {
        self.buf.drain(..consumed);
        self.state = State::ReadingHead;
        // Each request gets a fresh deadline, which also bounds how long an
        // idle kept-alive socket stays.
        self.deadline = now + millis(cx.config.timeouts.handshake);
    }

    /// Body bytes arrived: waits for the rest, or handles the whole body.
    fn on_body_bytes(&mut self, now: Now, cx: &SessionContext, out: &mut Vec<HttpOutput>) -> Step {
        let State::ReadingBody(body) = &mut self.state else {
            return Step::Wait;
        };
        let complete = match body.chunked.as_mut() {
            None => self.buf.len() >= body.head_len + body.body_len,
            Some(chunked) => {
                let limits = ChunkLimits {
                    max_body: cx.config.limits.max_request_body,
                    max_line: cx.config.limits.max_request_head,
                };
                match chunked.decode(&self.buf[body.head_len..], limits) {
                    Ok(used) => {
                        self.buf.drain(body.head_len..body.head_len + used);
                        chunked.is_done()
                    }
                    Err(error) => {
                        out.push(HttpOutput::SendAndClose(chunk_refusal(error)));
                        return Step::Finished;
                    }
                }
            }
        };
        if complete {
            return self.on_body(now, cx, out);
        }
        // curl sends `Expect: 100-continue` for bodies over 1 KiB and waits
        // a second for this before sending the body anyway.
        if body.expect_continue && !body.continue_sent {
            body.continue_sent = true;
            out.push(HttpOutput::Send(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()));
        }
        Step::Wait
    }

    /// Sends a final response; the session is done.
    fn close(&mut self, response: Vec<u8>, out: &mut Vec<HttpOutput>) {
        self.state = State::Done;
        self.buf = Vec::new();
        out.push(HttpOutput::SendAndClose(response));
    }

    fn on_head(&mut self, now: Now, cx: &SessionContext, out: &mut Vec<HttpOutput>) -> Step {
        let limits = &cx.config.limits;
        match parse_head(&self.buf, limits.max_request_head, limits.max_headers) {
            Ok(Some(head)) => self.answer_request(&head, now, cx, out),
            Ok(None) => Step::Wait,
            Err(e) => {
                debug!("bad request head: {e:?}");
                out.push(HttpOutput::SendAndClose(upgrade_refusal(e.status())));
                Step::Refused
            }
        }
    }
}

/// The final answer to a chunked body that broke its framing or the size
/// limit: the rest of the stream cannot be read as requests.
fn chunk_refusal(error: ChunkError) -> Vec<u8> {
    match error {
        ChunkError::TooLarge { at_least, max } => answers::body_too_large(at_least, true, max),
        ChunkError::Malformed(why) => {
            debug!("malformed chunked body: {why}");
            json_error(
                Status::BadRequest,
                "bad_chunk",
                &format!("malformed chunked body: {why}"),
                false,
            )
        }
    }
}
