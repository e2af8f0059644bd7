//! A WebSocket's JSON commands: auth, refresh, subscribe, unsubscribe, ping.

use std::rc::Rc;

use tracing::info;

use super::{
    refresh_grace, reply, Auth, State, Subs, SubscribeAsk, Subscribed, WsOutput, WsSession,
};
use crate::auth::{Grant, JwtGrant, TokenId};
use crate::error::{CloseReason, AUTH_NOW_REQUIRED, NARROWED_TOKEN, REVOKED_TOKEN};
use crate::proto::command::{
    parse_command, reply_authenticated, reply_error, reply_pong, reply_refreshed,
    reply_unsubscribed, Command, CommandError, CommandId, ErrorCode, Subscribe,
};
use crate::route::validate_pattern;
use crate::session::{Now, SessionContext};
use crate::stats::Stats;
use crate::time::rfc3339_millis_string;

impl WsSession {
    pub(super) fn on_text(
        &mut self,
        text: &str,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) {
        let request = parse_command(text, cx.config.limits.max_command_id);
        let id = request.id;
        let result = match request.command {
            Err(e) => Err(e),
            Ok(Command::Ping) => Ok(reply_pong(&rfc3339_millis_string(now.wall), id.as_ref())),
            Ok(Command::Auth(token)) => return self.on_auth(&token, id, now, cx, out),
            Ok(Command::Refresh(token)) => return self.on_refresh(&token, id, now, cx, out),
            // The reactor answers an accepted subscribe (`Subscribed`).
            Ok(Command::Subscribe(subscribe)) => {
                match self.subscribe(subscribe, id.clone(), cx, out) {
                    Ok(()) => return,
                    Err(e) => Err(e),
                }
            }
            Ok(Command::Unsubscribe(channels)) => self
                .unsubscribe(&channels, cx, out)
                .map(|()| reply_unsubscribed(&channels, id.as_ref())),
        };
        match result {
            Ok(text) => reply(&text, out),
            Err(error) => reply(&reply_error(&error, id.as_ref()), out),
        }
    }

    fn on_auth(
        &mut self,
        token: &str,
        id: Option<CommandId>,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) {
        if !cx.tokens.clients_required() {
            return reply(&reply_authenticated(id.as_ref()), out);
        }
        let grant = match cx.tokens.check_client(token, now.wall, now.millis) {
            Ok(grant) => grant,
            Err(e) => {
                Stats::add(&cx.stats.auth_failures, 1);
                info!("authentication failed: {e}");
                return self.close(CloseReason::AuthFailed, out);
            }
        };
        if let Grant::Jwt(jwt) = &grant {
            out.push(WsOutput::WakeAt(jwt.expires_at));
        }
        let was_pending = matches!(self.state, State::Open(Auth::Pending { .. }));
        self.state = State::Open(grant.into());
        if was_pending {
            self.apply_defaults(cx, out);
        }
        reply(&reply_authenticated(id.as_ref()), out);
    }

    /// The relay's tokens were reloaded: `cx.tokens` is the new set and
    /// `remap` (from [`crate::auth::Tokens::remap`]) gives each old token's
    /// id in it. A socket whose token is gone, or no longer covers a pattern
    /// it holds, is closed with 4001; one that never authenticated is
    /// closed too if auth is now on. With auth now off, every socket stays
    /// and one still waiting to authenticate gets its defaults.
    pub fn tokens_reloaded(
        &mut self,
        remap: &[Option<TokenId>],
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) {
        let State::Open(auth) = &self.state else {
            return;
        };
        if !cx.tokens.clients_required() {
            let was_pending = matches!(auth, Auth::Pending { .. });
            self.state = State::Open(Auth::NotRequired);
            if was_pending {
                self.apply_defaults(cx, out);
            }
            return;
        }
        let grant = match auth {
            Auth::Pending { .. } => return,
            Auth::NotRequired => {
                return self.close(CloseReason::AuthRevoked(AUTH_NOW_REQUIRED), out)
            }
            // A JWT stands on its own signature and claims, not on the list
            // of static tokens; a reload of the JWT keys is not one of these.
            Auth::Jwt(_) | Auth::JwtExpired(_) => return,
            Auth::Authenticated(old) => match remap.get(usize::from(*old)).copied().flatten() {
                Some(new) => Grant::Token(new),
                None => return self.close(CloseReason::AuthRevoked(REVOKED_TOKEN), out),
            },
        };
        let patterns = self.subs.patterns();
        let allowed = patterns.iter().all(|p| cx.tokens.allows(Some(&grant), p));
        self.state = State::Open(grant.into());
        if !allowed {
            self.close(CloseReason::AuthRevoked(NARROWED_TOKEN), out);
        }
    }

    /// A new JWT for a connection authenticated with one. Its scope replaces
    /// the old: subscriptions it does not cover are removed, and listed in
    /// the reply.
    fn on_refresh(
        &mut self,
        token: &str,
        id: Option<CommandId>,
        now: Now,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) {
        let old = match &self.state {
            State::Open(Auth::Jwt(jwt)) => Rc::clone(jwt),
            State::Open(Auth::JwtExpired(jwt))
                if now.millis < jwt.expires_at + refresh_grace(cx) =>
            {
                Rc::clone(jwt)
            }
            State::Open(Auth::JwtExpired(_)) => return self.close(CloseReason::TokenExpired, out),
            _ => {
                let error = CommandError::new(
                    ErrorCode::BadRequest,
                    "refresh renews a JWT; this connection was not authenticated with one",
                );
                return reply(&reply_error(&error, id.as_ref()), out);
            }
        };
        let jwt = match cx.tokens.check_client(token, now.wall, now.millis) {
            Ok(Grant::Jwt(jwt)) => jwt,
            Ok(Grant::Token(_)) => {
                let error = CommandError::new(ErrorCode::BadRequest, "refresh takes a JWT");
                return reply(&reply_error(&error, id.as_ref()), out);
            }
            Err(e) => {
                Stats::add(&cx.stats.auth_failures, 1);
                info!("token refresh failed: {e}");
                return self.close(CloseReason::AuthFailed, out);
            }
        };
        if jwt.sub != old.sub {
            let error = CommandError::new(
                ErrorCode::Forbidden,
                "the new token is for another subject (`sub`) than the connection's",
            );
            return reply(&reply_error(&error, id.as_ref()), out);
        }
        self.narrow_to(&jwt, id, cx, out);
        self.state = State::Open(Auth::Jwt(jwt));
    }

    /// Removes the subscriptions `jwt` does not cover, and says which.
    fn narrow_to(
        &mut self,
        jwt: &Rc<JwtGrant>,
        id: Option<CommandId>,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) {
        let grant = Some(Grant::Jwt(Rc::clone(jwt)));
        let removed = self
            .subs
            .retain(|pattern| cx.tokens.allows(grant.as_ref(), pattern));
        out.extend(removed.iter().cloned().map(WsOutput::Unsubscribe));
        let removed: Vec<String> = removed.iter().map(|p| p.to_string()).collect();
        reply(&reply_refreshed(&removed, id.as_ref()), out);
    }

    /// Subscribes a socket that has not chosen yet to the default channels
    /// its token allows.
    pub(super) fn apply_defaults(&mut self, cx: &SessionContext, out: &mut Vec<WsOutput>) {
        let token = self.token();
        let token = token.as_ref();
        let tokens = cx.tokens;
        let defaults = if cx.defaults.iter().all(|p| tokens.allows(token, p)) {
            Rc::clone(cx.defaults)
        } else {
            cx.defaults
                .iter()
                .filter(|p| tokens.allows(token, p))
                .cloned()
                .collect()
        };
        out.extend(defaults.iter().cloned().map(WsOutput::Subscribe));
        self.subs = Subs::Defaults(defaults);
    }

    /// All or nothing: every pattern is checked before any is added.
    fn subscribe(
        &mut self,
        subscribe: Subscribe,
        id: Option<CommandId>,
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) -> Result<(), CommandError> {
        let channels = &subscribe.channels;
        let token = self.check_ready(channels, cx)?;
        for pattern in channels {
            if !cx.tokens.allows(token.as_ref(), pattern) {
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    format!("your token may not subscribe to {pattern:?}"),
                ));
            }
        }
        let max = cx.config.limits.max_subscriptions;
        // The first subscribe replaces the defaults.
        let own: &[Box<str>] = match &self.subs {
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
        let added: Vec<Box<str>> = added.into_iter().map(Box::from).collect();
        let may_fetch = cx.fetch_resumes && subscribe.since.is_some();
        if (cx.hooks_set && !added.is_empty()) || may_fetch {
            out.push(WsOutput::AskSubscribe(Box::new(SubscribeAsk {
                patterns: added,
                token,
                subscribe,
                id,
            })));
            return Ok(());
        }
        self.commit_subscribe(subscribe, id, token, added, out);
        Ok(())
    }

    /// Carries out a subscribe that passed every check: `added` are the
    /// patterns not held yet.
    pub(super) fn commit_subscribe(
        &mut self,
        subscribe: Subscribe,
        id: Option<CommandId>,
        token: Option<Grant>,
        added: Vec<Box<str>>,
        out: &mut Vec<WsOutput>,
    ) {
        out.push(WsOutput::Subscribed(Box::new(Subscribed {
            channels: subscribe.channels,
            since: subscribe.since,
            snapshot: subscribe.snapshot,
            token,
            id,
        })));
        let mut list = match std::mem::replace(&mut self.subs, Subs::None) {
            Subs::Own(list) => list,
            old => {
                out.extend(old.patterns().iter().cloned().map(WsOutput::Unsubscribe));
                Vec::new()
            }
        };
        for pattern in added {
            out.push(WsOutput::Subscribe(pattern.clone()));
            list.push(pattern);
        }
        self.subs = Subs::Own(list);
    }

    fn unsubscribe(
        &mut self,
        channels: &[String],
        cx: &SessionContext,
        out: &mut Vec<WsOutput>,
    ) -> Result<(), CommandError> {
        self.check_ready(channels, cx)?;
        let mut list = match std::mem::replace(&mut self.subs, Subs::None) {
            Subs::Own(list) => list,
            other => other.patterns().to_vec(),
        };
        list.retain(|held| {
            let gone = channels.iter().any(|c| **c == **held);
            if gone {
                out.push(WsOutput::Unsubscribe(held.clone()));
            }
            !gone
        });
        self.subs = Subs::Own(list);
        Ok(())
    }

    /// Checks that the socket may change subscriptions and every pattern is
    /// valid; returns the socket's token.
    fn check_ready(
        &self,
        channels: &[String],
        cx: &SessionContext,
    ) -> Result<Option<Grant>, CommandError> {
        for pattern in channels {
            validate_pattern(pattern, cx.subject_limits).map_err(|e| {
                CommandError::new(ErrorCode::InvalidChannel, format!("{pattern:?}: {e}"))
            })?;
        }
        match self.state {
            State::Open(Auth::Pending { .. }) => {
                return Err(CommandError::new(
                    ErrorCode::NotAuthenticated,
                    "send {\"type\":\"auth\",\"token\":\"...\"} first",
                ))
            }
            State::Open(Auth::JwtExpired(_)) => {
                return Err(CommandError::new(
                    ErrorCode::NotAuthenticated,
                    "your token expired: send {\"type\":\"refresh\",\"token\":\"...\"} first",
                ))
            }
            _ => {}
        }
        Ok(self.token())
    }

    fn token(&self) -> Option<Grant> {
        match &self.state {
            State::Open(auth) => auth.grant(),
            State::Closed => None,
        }
    }
}
