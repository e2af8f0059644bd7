//! The admin views, on the reactor's side: `/api/admin/subscriptions` from
//! the relay-wide pattern counts, `/api/admin/connections` gathered from
//! every reactor (`super::gather`).

use std::sync::Arc;

use serde_json::json;
use tracing::debug;

use super::conn::{Phase, NOT_STALLED};
use super::gather::{ConnectionRow, Gathering, Letter, TopRows, GATHER_WAIT_MS};
use super::reactor::Reactor;
use super::timer::Millis;
use crate::proto::http::Status;
use crate::route::is_literal;
use crate::session::ConnectionSort;

/// A connections view this reactor owes an answer to.
pub(super) struct PendingGather {
    pub gathering: Arc<Gathering>,
    /// Answered 503 then, if some reactor has not added its rows.
    pub deadline: Millis,
}

impl Reactor {
    /// `/api/admin/subscriptions`: channels (no wildcard) and patterns,
    /// each with its subscribers over every reactor, most first.
    pub(super) fn answer_subscriptions(&self, limit: usize) -> (Status, Vec<u8>) {
        let all = self.all_stats.patterns.all();
        let (channels, patterns): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|(pattern, _)| is_literal(pattern));
        let list = |rows: Vec<(String, u64)>, name: &str| -> Vec<serde_json::Value> {
            rows.into_iter()
                .take(limit)
                .map(|(p, n)| json!({ name: p, "subscribers": n }))
                .collect()
        };
        let body = json!({
            "total_channels": channels.len(),
            "total_patterns": patterns.len(),
            "channels": list(channels, "channel"),
            "patterns": list(patterns, "pattern"),
        });
        (Status::Ok, body.to_string().into_bytes())
    }

    /// Starts `/api/admin/connections` for the request on socket `key`:
    /// asks every reactor for its rows, this one first.
    pub(super) fn start_gathering(&mut self, key: usize, sort: ConnectionSort, limit: usize) {
        let Some(id) = self.conns.get(key).map(|c| c.id) else {
            return;
        };
        let reactors = self.mail.count();
        let gathering = Arc::new(Gathering::new(self.index, (key, id), sort, limit, reactors));
        let deadline = self.now + GATHER_WAIT_MS;
        self.gathers.push(PendingGather {
            gathering: Arc::clone(&gathering),
            deadline,
        });
        self.arm(key, deadline);
        for reactor in (0..reactors).filter(|&r| r != self.index) {
            self.mail
                .post(reactor, Letter::Collect(Arc::clone(&gathering)));
            // Always a wake of its own: the reactor may have cleared the
            // log's wake flag already this turn.
            self.sequencer.wakeup(reactor).wake_now();
        }
        self.collect(&gathering);
    }

    /// Reads this reactor's mailbox: rows to add, answers to give.
    pub(super) fn read_mail(&mut self) {
        for letter in self.mail.take(self.index) {
            match letter {
                Letter::Collect(gathering) => self.collect(&gathering),
                Letter::Gathered(gathering) => self.answer_gathering(&gathering),
            }
        }
    }

    /// Adds this reactor's top rows; the last reactor hands the gathering
    /// back to its origin.
    fn collect(&mut self, gathering: &Arc<Gathering>) {
        let rows = self.connection_rows(gathering.sort, gathering.limit);
        if !gathering.add(rows) {
            return;
        }
        if gathering.origin == self.index {
            self.answer_gathering(gathering);
        } else {
            self.mail
                .post(gathering.origin, Letter::Gathered(Arc::clone(gathering)));
            self.sequencer.wakeup(gathering.origin).wake_now();
        }
    }

    /// This reactor's WebSockets that come first by `sort`, at most `limit`.
    fn connection_rows(&self, sort: ConnectionSort, limit: usize) -> Vec<ConnectionRow> {
        let now_s = self.now / 1000;
        let mut top = TopRows::new(limit);
        for (key, conn) in self.conns.iter() {
            if !matches!(conn.phase, Phase::WebSocket(_)) {
                continue;
            }
            let rank = match sort {
                ConnectionSort::Queue => (conn.out.bytes() as u64, conn.out.len() as u64),
                ConnectionSort::Resyncs => (u64::from(conn.resyncs), conn.out.bytes() as u64),
                ConnectionSort::Age => (now_s.saturating_sub(u64::from(conn.opened_s)), 0),
            };
            top.offer(rank, key);
        }
        top.into_items()
            .into_iter()
            .filter_map(|key| {
                let conn = self.conns.get(key)?;
                let Phase::WebSocket(session) = &conn.phase else {
                    return None;
                };
                let stalled_ms = if conn.stalled_since == NOT_STALLED {
                    0
                } else {
                    self.now.saturating_sub(conn.stalled_since)
                };
                Some(ConnectionRow {
                    reactor: self.index,
                    id: conn.id,
                    remote: conn
                        .socket
                        .peer_addr()
                        .map_or_else(|_| "gone".to_string(), |a| a.to_string()),
                    age_s: now_s.saturating_sub(u64::from(conn.opened_s)),
                    queue_messages: conn.out.len(),
                    queue_bytes: conn.out.bytes(),
                    stalled_ms,
                    resyncs: conn.resyncs,
                    patterns: session.patterns().iter().map(|p| p.to_string()).collect(),
                })
            })
            .collect()
    }

    /// Every reactor has added its rows: answer the request, if it still
    /// waits (it may have timed out, and its socket gone or moved on).
    fn answer_gathering(&mut self, gathering: &Arc<Gathering>) {
        let Some(at) = self
            .gathers
            .iter()
            .position(|p| Arc::ptr_eq(&p.gathering, gathering))
        else {
            return;
        };
        self.gathers.swap_remove(at);
        let rows = gathering.take_rows();
        let body = json!({
            "reactors": self.mail.count(),
            "websockets": self.all_stats.snapshot().websockets,
            "connections": rows,
        });
        self.answer_owed_query(gathering.key, Status::Ok, body.to_string().into_bytes());
    }

    /// A connections view past its deadline: 503. True if the socket had
    /// one waiting (due or not).
    pub(super) fn expire_gathering(&mut self, key: usize) -> bool {
        let id = self.conns.get(key).map(|c| c.id);
        let Some(at) = self
            .gathers
            .iter()
            .position(|p| p.gathering.key == key && Some(p.gathering.id) == id)
        else {
            return false;
        };
        let deadline = self.gathers[at].deadline;
        if deadline > self.now {
            self.arm(key, deadline);
            return true;
        }
        self.gathers.swap_remove(at);
        debug!("socket {key}: a reactor did not answer the connections view in time");
        let body = json!({"error": {
            "code": "unavailable",
            "message": "a reactor did not answer in time; retry",
        }});
        self.answer_owed_query(
            key,
            Status::ServiceUnavailable,
            body.to_string().into_bytes(),
        );
        true
    }
}
