//! Configuration for operating a relay: the admin views and restarts.

use std::time::Duration;

use serde::Deserialize;

use super::duration_text;
use crate::error::ConfigError;

/// `[admin]`: the operator's views (`/api/admin/...`). Off while `tokens`
/// is empty: the views then answer 404, as if they did not exist.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer tokens that may read the admin views.
    pub tokens: Vec<String>,
    /// Most rows `/api/admin/connections` returns, whatever `limit` asks.
    pub max_rows: usize,
}

/// `[shutdown]`: how a stopping relay sends its clients away.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Each client's close frame carries `retry_after_ms`, drawn uniformly
    /// from 0 to this, so clients come back spread over this window instead
    /// of all in the same second. 0: no spread (`retry_after_ms` is 0).
    #[serde(with = "duration_text")]
    pub reconnect_spread: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            tokens: Vec::new(),
            max_rows: 1000,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            reconnect_spread: Duration::from_secs(10),
        }
    }
}

// Tokens are secrets: keep them out of debug output and so out of logs.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("max_rows", &self.max_rows)
            .finish()
    }
}

impl AdminConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.tokens.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                "admin.tokens",
                "tokens must not be empty",
            ));
        }
        if self.max_rows == 0 {
            return Err(ConfigError::invalid(
                "admin.max_rows",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

impl ShutdownConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // The hint travels in a close frame's reason; keep it a sane figure.
        if self.reconnect_spread > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "shutdown.reconnect_spread",
                "must be at most 1h",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn defaults_and_overrides() {
        let config = Config::default();
        assert!(config.admin.tokens.is_empty());
        assert_eq!(config.shutdown.reconnect_spread.as_secs(), 10);
        assert_eq!(config.limits.accept_rate, 0);
        let config = Config::from_toml_str(
            "[admin]\ntokens = [\"ops\"]\nmax_rows = 50\n[shutdown]\nreconnect_spread = \"2s\"\n",
        )
        .expect("valid");
        assert_eq!(config.admin.tokens, ["ops"]);
        assert_eq!(config.admin.max_rows, 50);
        assert_eq!(config.shutdown.reconnect_spread.as_millis(), 2000);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[admin]\ntokens = [\"\"]", "admin.tokens"),
            ("[admin]\nmax_rows = 0", "admin.max_rows"),
            (
                "[shutdown]\nreconnect_spread = \"2h\"",
                "shutdown.reconnect_spread",
            ),
        ] {
            let err = Config::from_toml_str(text).expect_err(text).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let secret = Config::from_toml_str("[admin]\ntokens = [\"s3cret\"]").expect("valid");
        assert!(!format!("{secret:?}").contains("s3cret"));
    }
}
