//! Calling the embedder's hooks (`crate::hooks`) for what sessions ask:
//! an upgrade about to be accepted, a subscribe about to take effect.

use tracing::info;

use super::reactor::{peer_text, Reactor};
use crate::auth::Grant;
use crate::hooks::{ConnectRequest, Subscriber, Verdict};
use crate::proto::http::{json_error, Status};
use crate::session::{SubscribeAsk, UpgradeRequest};

impl Reactor {
    /// Asks `on_connect`; the `403` to send instead of the upgrade if it
    /// refused.
    pub(super) fn ask_on_connect(&self, key: usize, request: &UpgradeRequest) -> Option<Vec<u8>> {
        let hooks = self.hooks.as_ref()?;
        let conn = self.conns.get(key)?;
        let refuse = |reason: &str| Some(json_error(Status::Forbidden, "forbidden", reason, false));
        let Ok(peer) = conn.socket.peer_addr() else {
            return refuse("the connection is gone");
        };
        let verdict = hooks.on_connect(&ConnectRequest {
            peer,
            path: &request.path,
            query: request.query.as_deref(),
            headers: &request.headers,
            token: request.token.as_deref(),
        });
        match verdict {
            Verdict::Allow => None,
            Verdict::Deny(reason) => {
                info!("on_connect refused {peer} (socket {key}): {reason}");
                refuse(&reason)
            }
        }
    }

    /// Asks `on_subscribe` about each new pattern; the first refused, with
    /// the reason.
    pub(super) fn ask_on_subscribe(
        &self,
        key: usize,
        ask: &SubscribeAsk,
    ) -> Option<(Box<str>, String)> {
        let hooks = self.hooks.as_ref()?;
        let first = ask.patterns.first()?;
        let conn = self.conns.get(key)?;
        let Ok(peer) = conn.socket.peer_addr() else {
            return Some((first.clone(), "the connection is gone".into()));
        };
        let (token, subject) = match &ask.token {
            Some(Grant::Token(id)) => (self.tokens.client_token(*id), None),
            Some(Grant::Jwt(jwt)) => (None, jwt.sub.as_deref()),
            None => (None, None),
        };
        let subscriber = Subscriber {
            peer,
            token,
            subject,
        };
        for pattern in &ask.patterns {
            if let Verdict::Deny(reason) = hooks.on_subscribe(&subscriber, pattern) {
                info!(
                    "on_subscribe refused {pattern:?} for {} (socket {key}): {reason}",
                    peer_text(&conn.socket)
                );
                return Some((pattern.clone(), reason));
            }
        }
        None
    }
}
