//! What happens to an event in readers' queues (its [`Fate`], from the
//! `[[delivery]]` rules) and whether it also gets a deflated frame: decided
//! once per event, on the producer's thread, never per subscriber.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use serde_json::value::RawValue;

use crate::config::{key_segments, CompressionMode, Config, DeliveryPolicy};
use crate::route::pattern_matches;

/// How a reader's queue treats one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fate {
    /// Kept in order; the slow-consumer policy applies when the queue is full.
    #[default]
    All,
    /// Replaces a queued, unsent event with the same slot (a hash of its
    /// channel and key), in that event's place.
    Latest(u64),
    /// Never dropped by `drop_oldest`, never replaced.
    NeverDrop,
}

#[derive(Debug)]
struct Rule {
    pattern: Box<str>,
    policy: DeliveryPolicy,
    /// The key path's segments after `data`; empty for the whole channel.
    key: Option<Box<[String]>>,
}

/// The configured rules and compression, applied to each event as it is
/// encoded.
#[derive(Debug)]
pub struct Shaping {
    rules: Box<[Rule]>,
    /// Events whose JSON is at least this long get a deflated frame too;
    /// `None` with compression off.
    deflate_from: Option<usize>,
    /// Slots are hashed with keys chosen per run, so no producer can aim
    /// two different keys at one slot.
    hasher: RandomState,
}

impl Default for Shaping {
    fn default() -> Self {
        Shaping::new(&Config::default())
    }
}

impl Shaping {
    pub fn new(config: &Config) -> Shaping {
        let rules = config
            .delivery
            .iter()
            .map(|rule| Rule {
                pattern: rule.pattern.as_str().into(),
                policy: rule.policy,
                key: rule.key.as_deref().map(|path| {
                    let segments = key_segments(path).expect("bug: validated with the config");
                    segments[1..].to_vec().into_boxed_slice()
                }),
            })
            .collect();
        Shaping {
            rules,
            deflate_from: (config.compression == CompressionMode::On)
                .then_some(config.compression_min_size),
            hasher: RandomState::new(),
        }
    }

    /// Whether an event of `len` bytes of JSON also travels deflated.
    pub fn deflates(&self, len: usize) -> bool {
        self.deflate_from.is_some_and(|min| len >= min)
    }

    /// The fate of an event on `channel` carrying `data`.
    pub fn fate(&self, channel: &str, data: &RawValue) -> Fate {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| pattern_matches(&r.pattern, channel))
        else {
            return Fate::All;
        };
        match rule.policy {
            DeliveryPolicy::All => Fate::All,
            DeliveryPolicy::NeverDrop => Fate::NeverDrop,
            DeliveryPolicy::Latest => {
                let key = rule.key.as_deref().and_then(|path| key_text(data, path));
                Fate::Latest(self.hasher.hash_one((channel, key)))
            }
        }
    }
}

/// The JSON text of the value at `path` in `data`, if there is one. A
/// string gives its contents, so `"n1"` and `n1` written with escapes are
/// one key; other values give their compact JSON.
fn key_text(data: &RawValue, path: &[String]) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(data.get()).ok()?;
    for segment in path {
        value = match value {
            serde_json::Value::Object(mut map) => map.remove(segment)?,
            serde_json::Value::Array(mut items) => {
                let index: usize = segment.parse().ok()?;
                (index < items.len()).then(|| items.swap_remove(index))?
            }
            _ => return None,
        };
    }
    Some(match value {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryRule;

    fn shaping(rules: &[(&str, DeliveryPolicy, Option<&str>)]) -> Shaping {
        let config = Config {
            delivery: rules
                .iter()
                .map(|(pattern, policy, key)| DeliveryRule {
                    pattern: pattern.to_string(),
                    policy: *policy,
                    key: key.map(str::to_string),
                })
                .collect(),
            ..Config::default()
        };
        Shaping::new(&config)
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).expect("json")
    }

    #[test]
    fn the_first_matching_rule_wins_and_all_is_the_default() {
        let s = shaping(&[
            ("alert.>", DeliveryPolicy::NeverDrop, None),
            ("alert.debug", DeliveryPolicy::Latest, None),
            ("metrics.*", DeliveryPolicy::Latest, None),
        ]);
        let data = raw("{}");
        assert_eq!(s.fate("alert.debug", &data), Fate::NeverDrop);
        assert!(matches!(s.fate("metrics.system", &data), Fate::Latest(_)));
        assert_eq!(s.fate("job.progress", &data), Fate::All);
        assert_ne!(
            s.fate("metrics.system", &data),
            s.fate("metrics.disk", &data),
            "one slot per channel"
        );
    }

    #[test]
    fn keys_split_a_channel_into_slots() {
        let s = shaping(&[("metrics.>", DeliveryPolicy::Latest, Some("data.node"))]);
        let a1 = s.fate("metrics.system", &raw(r#"{"node":"a","cpu":1}"#));
        let a2 = s.fate("metrics.system", &raw(r#"{"cpu":2,"node":"\u0061"}"#));
        let b = s.fate("metrics.system", &raw(r#"{"node":"b","cpu":1}"#));
        let none = s.fate("metrics.system", &raw(r#"{"cpu":1}"#));
        let none_again = s.fate("metrics.system", &raw("[1]"));
        assert_eq!(a1, a2, "same node, however it is written");
        assert_ne!(a1, b);
        assert_ne!(a1, none);
        assert_eq!(none, none_again, "no key: one slot for the channel");
        let n = shaping(&[("m", DeliveryPolicy::Latest, Some("/data/list/1"))]);
        assert_eq!(
            n.fate("m", &raw(r#"{"list":[0,7]}"#)),
            n.fate("m", &raw(r#"{"list":[1,7],"x":2}"#))
        );
    }

    #[test]
    fn compression_threshold() {
        assert!(!Shaping::default().deflates(10_000), "off by default");
        let config = Config {
            compression: CompressionMode::On,
            compression_min_size: 100,
            ..Config::default()
        };
        let s = Shaping::new(&config);
        assert!(!s.deflates(99));
        assert!(s.deflates(100));
    }
}
