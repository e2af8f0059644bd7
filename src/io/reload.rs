//! Tokens reloaded while the relay runs (`RelayHandle::reload_auth`): the
//! handle puts the new set in a slot every reactor shares and wakes them;
//! each reactor swaps it in at the start of its next turn and tells its
//! sockets (`WsSession::tokens_reloaded`), so none is dropped that still
//! has a valid token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::info;

use super::conn::Phase;
use super::outputs::{session_cx, Origin};
use super::reactor::Reactor;
use crate::auth::Tokens;

/// The latest token set, and how many times it was replaced.
#[derive(Debug)]
pub(crate) struct TokenSlot {
    generation: AtomicU64,
    tokens: Mutex<Arc<Tokens>>,
}

impl TokenSlot {
    pub fn new(tokens: Tokens) -> TokenSlot {
        TokenSlot {
            generation: AtomicU64::new(0),
            tokens: Mutex::new(Arc::new(tokens)),
        }
    }

    /// Replaces the set; reactors pick it up when next woken.
    pub fn replace(&self, tokens: Tokens) {
        let mut slot = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Arc::new(tokens);
        // Under the lock: a reactor that sees the new generation finds the
        // new set (or a newer one) when it takes the lock.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The set and its generation, if newer than `seen`.
    pub fn newer_than(&self, seen: u64) -> Option<(u64, Arc<Tokens>)> {
        if self.generation.load(Ordering::Acquire) == seen {
            return None;
        }
        let slot = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        Some((self.generation.load(Ordering::Acquire), Arc::clone(&slot)))
    }

    pub fn current(&self) -> (u64, Arc<Tokens>) {
        let slot = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        (self.generation.load(Ordering::Acquire), Arc::clone(&slot))
    }
}

impl Reactor {
    /// Swaps in a reloaded token set, if there is one, and lets every
    /// WebSocket session judge its own token by it. One atomic load per
    /// turn when nothing changed.
    pub(super) fn take_reloaded_tokens(&mut self) {
        let Some((generation, tokens)) = self.token_slot.newer_than(self.tokens_generation) else {
            return;
        };
        let remap = self.tokens.remap(&tokens);
        self.tokens = tokens;
        self.tokens_generation = generation;
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::WebSocket(_)))
            .map(|(key, _)| key)
            .collect();
        let (checked, mut closed) = (keys.len(), 0);
        for key in keys {
            let cx = session_cx!(self);
            let Some(Phase::WebSocket(session)) = self.conns.get_mut(key).map(|c| &mut c.phase)
            else {
                continue;
            };
            let mut out = Vec::new();
            session.tokens_reloaded(&remap, &cx, &mut out);
            closed += usize::from(session.is_closed());
            self.apply_ws(key, out, Origin::Timer);
        }
        info!(
            "reactor {}: tokens reloaded: {checked} WebSockets checked, {closed} closed with 4001",
            self.index
        );
    }
}
