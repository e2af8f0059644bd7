//! What goes over NATS: channel ↔ subject, the event envelope, and the
//! message id that lets a relay drop the copies NATS sends it.
//!
//! A channel `a.b` is the subject `{prefix}a.b`; a pattern keeps its `*`
//! and `>`, which mean the same in NATS. The payload is the event's JSON
//! without `seq` (`{"type",["channel",]"timestamp","data"}`), since each
//! relay numbers events itself in core mode.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::fanout::delivery::Shaping;
use crate::fanout::event::{EncodedEvent, Event};
use crate::fanout::publisher::validate_event;
use crate::route::SubjectLimits;

/// The header that carries a message's id: `<relay>-<counter>`.
pub const ID_HEADER: &str = "Tidings-Id";

pub fn subject(prefix: &str, channel_or_pattern: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + channel_or_pattern.len());
    subject.push_str(prefix);
    subject.push_str(channel_or_pattern);
    subject
}

/// Why a message from NATS is not delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The subject is outside the prefix or not a valid channel.
    Subject,
    /// The payload is not an event envelope.
    Payload(String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    data: Box<RawValue>,
}

/// The event a message carries, ready for the sequencer. The channel is
/// the subject's (NATS routed it by that), whatever the payload says.
pub fn decode(
    prefix: &str,
    subject: &str,
    payload: &[u8],
    limits: &SubjectLimits,
    shaping: &Shaping,
) -> Result<EncodedEvent, Invalid> {
    let channel = subject.strip_prefix(prefix).ok_or(Invalid::Subject)?;
    let envelope: Envelope =
        serde_json::from_slice(payload).map_err(|e| Invalid::Payload(e.to_string()))?;
    let event_type = envelope
        .event_type
        .filter(|t| *t != channel)
        .map(|t| t.into_owned());
    let event = Event::from_raw(channel.to_string(), event_type, envelope.data);
    validate_event(&event, limits).map_err(|e| match e {
        crate::fanout::publisher::PublishError::InvalidChannel(_) => Invalid::Subject,
        other => Invalid::Payload(other.to_string()),
    })?;
    // The timestamp is kept as its publisher stamped it; only a JSON
    // string of a sane length is, else the event gets this relay's time.
    let stamped = envelope
        .timestamp
        .map(RawValue::get)
        .filter(|t| t.len() <= 64 && t.starts_with('"') && t.ends_with('"') && t.len() >= 2);
    Ok(match stamped {
        Some(quoted) => event.encode_stamped(&quoted.as_bytes()[1..quoted.len() - 1], shaping),
        None => event.encode_shaped(std::time::SystemTime::now(), shaping),
    })
}

/// The ids of the most recent messages, to drop a second copy of one: NATS
/// sends a message once per matching subscription, and a relay holds one
/// subscription per pattern, which may overlap (`a.*` and `*.b`). Ids are
/// kept as 64-bit hashes (16 bytes each with the set): a false match within
/// the window has odds of about `window² / 2⁶⁵` (negligible).
pub struct SeenIds {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    hasher: RandomState,
    window: usize,
}

impl SeenIds {
    pub fn new(window: usize) -> SeenIds {
        SeenIds {
            order: VecDeque::with_capacity(window.min(4096)),
            set: HashSet::with_capacity(window.min(4096)),
            hasher: RandomState::new(),
            window,
        }
    }

    /// True the first time `id` is seen within the window.
    pub fn first(&mut self, id: &str) -> bool {
        let hash = self.hasher.hash_one(id);
        if !self.set.insert(hash) {
            return false;
        }
        if self.order.len() == self.window {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.order.push_back(hash);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No delivery rules, no compression.
    fn plain() -> Shaping {
        Shaping::new(&crate::config::Config::default())
    }
    use crate::fanout::event::payload_of_frame;
    use std::time::SystemTime;

    fn round_trip(event: Event) -> String {
        let channel = event.channel().to_string();
        let envelope = event.encode(SystemTime::UNIX_EPOCH).envelope();
        let subject = subject("tidings.", &channel);
        let decoded = decode(
            "tidings.",
            &subject,
            &envelope,
            &SubjectLimits::default(),
            &plain(),
        )
        .expect("valid");
        String::from_utf8(payload_of_frame(&decoded.frame(7)).to_vec()).expect("utf8")
    }

    #[test]
    fn an_event_crosses_nats_unchanged_but_for_its_seq() {
        let plain = Event::from_json("job.1", r#"{"p":1}"#).expect("json");
        assert_eq!(
            round_trip(plain),
            r#"{"type":"job.1","timestamp":"1970-01-01T00:00:00.000Z","seq":7,"data":{"p":1}}"#
        );
        let typed = Event::from_json("job.1", "[1]")
            .expect("json")
            .with_type("progress");
        assert_eq!(
            round_trip(typed),
            r#"{"type":"progress","channel":"job.1","timestamp":"1970-01-01T00:00:00.000Z","seq":7,"data":[1]}"#
        );
    }

    #[test]
    fn bad_messages_are_refused() {
        let limits = SubjectLimits::default();
        let ok = br#"{"type":"a","data":1}"#;
        assert!(decode("tidings.", "tidings.a", ok, &limits, &plain()).is_ok());
        assert_eq!(
            decode("tidings.", "other.a", ok, &limits, &plain()).err(),
            Some(Invalid::Subject)
        );
        for payload in [&b"not json"[..], b"{\"type\":\"a\"}", b"[1]"] {
            assert!(matches!(
                decode("tidings.", "tidings.a", payload, &limits, &plain()),
                Err(Invalid::Payload(_))
            ));
        }
        let reserved = br#"{"type":"error","data":1}"#;
        assert!(matches!(
            decode("tidings.", "tidings.a", reserved, &limits, &plain()),
            Err(Invalid::Payload(_))
        ));
    }

    #[test]
    fn a_copy_within_the_window_is_dropped() {
        let mut seen = SeenIds::new(2);
        assert!(seen.first("a"));
        assert!(!seen.first("a"));
        assert!(seen.first("b"));
        assert!(seen.first("c"));
        assert!(seen.first("a"), "a left the window");
    }
}
