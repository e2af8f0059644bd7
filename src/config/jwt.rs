//! `[auth.jwt]`: client and publisher JWTs, beside the static tokens.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration_text;

/// Which keys sign the JWTs the relay accepts, and what it checks in them.
/// At least one of `hs256_secret`, `public_keys` and `jwks` is required.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// The shared secret of HS256 tokens.
    pub hs256_secret: Option<String>,
    /// PEM public keys (RSA, EC P-256/P-384 or Ed25519), for RS*/PS*, ES*
    /// and EdDSA tokens. A token is checked against each key of its family.
    pub public_keys: Vec<PathBuf>,
    /// A JWKS file (`{"keys":[...]}`): a token's `kid` header picks its key.
    pub jwks: Option<PathBuf>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud` (or list it).
    pub audience: Option<String>,
    /// Clock difference tolerated when checking `exp` at authentication.
    #[serde(with = "duration_text")]
    pub leeway: Duration,
    /// How long a client whose token expired while connected has to send
    /// `refresh` before it is closed with 4003.
    #[serde(with = "duration_text")]
    pub refresh_grace: Duration,
    /// Patterns a token without a `channels` claim may subscribe to
    /// (none by default).
    pub channels_when_absent: Vec<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret: None,
            public_keys: Vec::new(),
            jwks: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            refresh_grace: Duration::from_secs(10),
            channels_when_absent: Vec::new(),
        }
    }
}

// The secret stays out of debug output and so out of logs.
impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_keys", &self.public_keys)
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("refresh_grace", &self.refresh_grace)
            .field("channels_when_absent", &self.channels_when_absent)
            .finish()
    }
}
