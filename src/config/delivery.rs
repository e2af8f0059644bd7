//! `[[delivery]]` rules and `compression`: what happens to an event in a
//! reader's queue, and whether it also travels deflated.

use serde::Deserialize;

use crate::error::ConfigError;
use crate::route::{validate_pattern, SubjectLimits};

/// One `[[delivery]]` rule: the channels matching `pattern` get `policy`.
/// The first rule whose pattern matches an event's channel applies.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRule {
    pub pattern: String,
    pub policy: DeliveryPolicy,
    /// With `latest`: where in the event the conflation key is, as a field
    /// path (`data.node`) or a JSON pointer (`/data/node`). Events of one
    /// channel then replace each other only when their keys are equal.
    #[serde(default)]
    pub key: Option<String>,
}

/// What a reader's queue does with events of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryPolicy {
    /// Every event, in order; `limits.slow_consumer` decides when the queue
    /// is full (the default).
    #[default]
    All,
    /// A newer event replaces a queued, unsent one of the same channel (and
    /// key) in place.
    Latest,
    /// Never dropped by `drop_oldest` and never replaced.
    NeverDrop,
}

/// `compression`: permessage-deflate (RFC 7692) for clients that offer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionMode {
    #[default]
    Off,
    On,
}

/// The segments of a key path, checked: `data.node` and `/data/node` both
/// give `["data", "node"]`. The first must be `data`: the rest of an event
/// (`type`, `timestamp`, `seq`) is the relay's and would make every event
/// its own key.
pub fn key_segments(path: &str) -> Result<Vec<String>, String> {
    let segments: Vec<String> = match path.strip_prefix('/') {
        // RFC 6901: `~1` is `/`, `~0` is `~`, decoded in that order.
        Some(pointer) => pointer
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
        None => path.split('.').map(str::to_string).collect(),
    };
    if segments.first().map(String::as_str) != Some("data") {
        return Err(format!(
            "{path:?}: a key must point into the event's data, e.g. \"data.node\" or \"/data/node\""
        ));
    }
    if segments.iter().any(String::is_empty) {
        return Err(format!("{path:?}: a key path has no empty segment"));
    }
    Ok(segments)
}

pub(super) fn validate(rules: &[DeliveryRule], subject: &SubjectLimits) -> Result<(), ConfigError> {
    for (i, rule) in rules.iter().enumerate() {
        validate_pattern(&rule.pattern, subject).map_err(|e| {
            ConfigError::invalid(
                format!("delivery[{i}].pattern"),
                format!("{:?}: {e}", rule.pattern),
            )
        })?;
        if let Some(key) = &rule.key {
            if rule.policy != DeliveryPolicy::Latest {
                return Err(ConfigError::invalid(
                    format!("delivery[{i}].key"),
                    "only a policy = \"latest\" rule takes a key",
                ));
            }
            key_segments(key).map_err(|e| ConfigError::invalid(format!("delivery[{i}].key"), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_and_pointers() {
        assert_eq!(
            key_segments("data.node"),
            Ok(vec!["data".into(), "node".into()])
        );
        assert_eq!(
            key_segments("/data/a~1b~0c"),
            Ok(vec!["data".into(), "a/b~c".into()])
        );
        assert!(key_segments("node").is_err());
        assert!(key_segments("/type").is_err());
        assert!(key_segments("data..x").is_err());
    }
}
