//! Channel names, patterns and the subscription trie that routes events.
//!
//! See `docs/protocol.md`, "Channels and patterns": a channel is dot-separated
//! segments; a pattern may use `*` (exactly one segment) and, as its last
//! segment, `>` (one or more segments), with NATS semantics.
//!
//! This module depends on `std` only, so it can be built and tested alone.

mod cache;
pub mod subject;
pub mod trie;

pub use subject::{
    is_literal, pattern_covers, pattern_matches, validate_channel, validate_pattern, SubjectError,
    SubjectLimits,
};
pub use trie::{SubscriberId, SubscriptionTrie};
