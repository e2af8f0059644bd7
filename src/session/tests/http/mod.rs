//! `HttpSession`: the upgrade and its refusals, the HTTP API, keep-alive,
//! pipelining, `Expect: 100-continue` and the deadlines. This file plays
//! the reactor; the tests are in the modules below.

use serde_json::json;

use super::*;
use crate::proto::handshake::tests::UPGRADE;
use crate::proto::http::Status;
use crate::session::{HttpOutput, HttpSession, Query, UpgradeRequest};

mod api;
mod publish;
mod upgrade;

/// What the reactor did with one output, for comparing.
#[derive(Debug)]
enum Reply {
    /// `Send`: written, the socket stays on HTTP.
    Keep(String),
    /// `SendAndClose`.
    Final(String),
    Drop,
    Upgrade {
        response: String,
        session: WsSession,
        outputs: Vec<WsOutput>,
        /// For the embedder's `on_connect` hook, with hooks set.
        request: Option<Box<UpgradeRequest>>,
    },
    /// `Publish`, with each event's channel; answered with the next seqs.
    Published(Vec<String>),
    /// `Metrics`, answered with `METRICS`.
    Metrics,
    /// `Query`, answered with `{}`.
    Query(Query),
}

const METRICS: &str = "tidings_connections 3\n";

/// One socket on HTTP, with the reactor's side played by the test.
struct Peer<'f> {
    fx: &'f Fixture,
    session: HttpSession,
    next_seq: u64,
    /// Leave `Publish` unanswered (as while intake is paused).
    hold_publishes: bool,
}

impl<'f> Peer<'f> {
    fn new(fx: &'f Fixture) -> Peer<'f> {
        Peer {
            fx,
            session: HttpSession::new(0, &fx.cx()),
            next_seq: 0,
            hold_publishes: false,
        }
    }

    fn send(&mut self, bytes: impl AsRef<[u8]>, millis: Millis) -> Vec<Reply> {
        let mut out = Vec::new();
        self.session
            .handle_bytes(bytes.as_ref(), at(millis), &self.fx.cx(), &mut out);
        self.play(out, millis)
    }

    fn timer(&mut self, millis: Millis) -> (Option<Millis>, Vec<Reply>) {
        let mut out = Vec::new();
        let next = self.session.handle_timeout(millis, &self.fx.cx(), &mut out);
        (next, self.play(out, millis))
    }

    /// Answers every publish the session hands out with the next seqs.
    fn release(&mut self, count: usize, millis: Millis) -> Vec<Reply> {
        let seqs: Vec<u64> = (0..count)
            .map(|_| {
                self.next_seq += 1;
                self.next_seq
            })
            .collect();
        let mut out = Vec::new();
        self.session
            .publish_done(&seqs, at(millis), &self.fx.cx(), &mut out);
        self.play(out, millis)
    }

    /// Plays the reactor until no answer is owed; checks nothing follows a
    /// final output.
    fn play(&mut self, out: Vec<HttpOutput>, millis: Millis) -> Vec<Reply> {
        let mut replies = Vec::new();
        for output in out {
            assert!(
                !matches!(
                    replies.last(),
                    Some(Reply::Final(_) | Reply::Drop | Reply::Upgrade { .. })
                ),
                "output after the last one"
            );
            match output {
                HttpOutput::Send(bytes) => replies.push(Reply::Keep(text(bytes))),
                HttpOutput::SendAndClose(bytes) => replies.push(Reply::Final(text(bytes))),
                HttpOutput::Drop => replies.push(Reply::Drop),
                HttpOutput::Upgrade {
                    response,
                    session,
                    outputs,
                    request,
                    ..
                } => replies.push(Reply::Upgrade {
                    response: text(response),
                    session,
                    outputs,
                    request,
                }),
                HttpOutput::Publish(events) => {
                    let count = events.len();
                    let channels = events.iter().map(|e| e.channel.to_string()).collect();
                    replies.push(Reply::Published(channels));
                    if !self.hold_publishes {
                        replies.extend(self.release(count, millis));
                    }
                }
                HttpOutput::Metrics => {
                    replies.push(Reply::Metrics);
                    let mut out = Vec::new();
                    self.session
                        .metrics_done(METRICS, at(millis), &self.fx.cx(), &mut out);
                    replies.extend(self.play(out, millis));
                }
                HttpOutput::Query(query) => {
                    replies.push(Reply::Query(query));
                    let mut out = Vec::new();
                    self.session
                        .query_done(Status::Ok, b"{}", at(millis), &self.fx.cx(), &mut out);
                    replies.extend(self.play(out, millis));
                }
            }
        }
        replies
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("responses are text")
}

fn status(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {response:?}"))
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn body_json(response: &str) -> serde_json::Value {
    serde_json::from_str(body(response)).expect("a JSON body")
}

/// The statuses of the replies, with `K` for kept alive, `F` for final.
fn statuses(replies: &[Reply]) -> Vec<String> {
    replies
        .iter()
        .map(|reply| match reply {
            Reply::Keep(r) => format!("K{}", status(r)),
            Reply::Final(r) => format!("F{}", status(r)),
            Reply::Drop => "drop".into(),
            Reply::Upgrade { response, .. } => format!("U{}", status(response)),
            Reply::Published(channels) => format!("P{}", channels.join(",")),
            Reply::Metrics => "metrics".into(),
            Reply::Query(query) => format!("Q{query:?}"),
        })
        .collect()
}

fn publish(body: &str) -> String {
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn with_header(request: &str, header: &str) -> String {
    request.replacen("\r\n", &format!("\r\n{header}\r\n"), 1)
}

fn only(replies: Vec<Reply>) -> Reply {
    let [reply]: [Reply; 1] = replies.try_into().expect("exactly one reply");
    reply
}

/// Lets a `(next, replies)` pair be compared in one `assert_eq!`.
trait IntoReplies {
    fn into_replies(self) -> (Option<Millis>, Vec<String>);
}

impl IntoReplies for (Option<Millis>, Vec<Reply>) {
    fn into_replies(self) -> (Option<Millis>, Vec<String>) {
        (self.0, statuses(&self.1))
    }
}
