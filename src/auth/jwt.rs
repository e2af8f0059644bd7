//! JWT verification with `jsonwebtoken`: the keys of `[auth.jwt]`, and what
//! a valid token grants. Time is passed in: `exp` is checked against the
//! caller's wall clock, so the rules are tested without waiting.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::JwtConfig;
use crate::error::ConfigError;

/// Which algorithms a key verifies. A token is only checked against keys
/// of its header's family, so a public key is never used as an HMAC secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family_of(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

#[derive(Clone)]
struct Key {
    family: Family,
    /// From the JWKS; PEM keys and the secret have none.
    kid: Option<String>,
    key: DecodingKey,
}

/// What a valid JWT grants: its claims, patterns checked as they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtGrant {
    pub sub: Option<Box<str>>,
    /// Patterns the client may subscribe to.
    pub channels: Box<[Box<str>]>,
    /// Patterns the bearer may publish to.
    pub publish: Box<[Box<str>]>,
    /// `exp`, in seconds since the Unix epoch.
    pub exp: u64,
    /// `exp` on the caller's monotonic clock (milliseconds), for timers.
    pub expires_at: u64,
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    sub: Option<String>,
    channels: Option<Vec<String>>,
    publish: Option<Vec<String>>,
}

/// Why a token was refused, for the log line (never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    /// No configured key of the token's algorithm family (or its `kid`).
    NoKey,
    BadSignature,
    Expired,
    WrongIssuer,
    WrongAudience,
    /// `exp`, or a required `iss` / `aud`, is missing; or a claim has the
    /// wrong type.
    BadClaims,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtError::Malformed => "not a JWT",
            JwtError::NoKey => "no configured key for its algorithm or kid",
            JwtError::BadSignature => "bad signature",
            JwtError::Expired => "expired",
            JwtError::WrongIssuer => "wrong issuer",
            JwtError::WrongAudience => "wrong audience",
            JwtError::BadClaims => "missing or malformed claims",
        })
    }
}

/// The configured keys and checks, built once at startup.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    channels_when_absent: Box<[Box<str>]>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Reads the key files; a key that cannot be read or parsed stops the
    /// relay at startup, naming the file.
    pub fn from_config(config: &JwtConfig) -> Result<JwtVerifier, ConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            keys.push(Key {
                family: Family::Hmac,
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        for path in &config.public_keys {
            keys.push(pem_key(path)?);
        }
        if let Some(path) = &config.jwks {
            keys.extend(jwks_keys(path)?);
        }
        Ok(JwtVerifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway.as_secs(),
            channels_when_absent: config
                .channels_when_absent
                .iter()
                .map(|p| p.as_str().into())
                .collect(),
        })
    }

    /// Verifies `token` at wall-clock time `now`, which is `now_millis` on
    /// the caller's monotonic clock.
    pub fn verify(
        &self,
        token: &str,
        now: SystemTime,
        now_millis: u64,
    ) -> Result<JwtGrant, JwtError> {
        let header = decode_header(token).map_err(|_| JwtError::Malformed)?;
        let family = family_of(header.alg);
        let by_kid = header.kid.as_deref().and_then(|kid| {
            self.keys
                .iter()
                .find(|k| k.family == family && k.kid.as_deref() == Some(kid))
        });
        let candidates: Vec<&Key> = match by_kid {
            Some(key) => vec![key],
            None => self
                .keys
                .iter()
                .filter(|k| k.family == family && k.kid.is_none())
                .collect(),
        };
        if candidates.is_empty() {
            return Err(JwtError::NoKey);
        }
        let validation = self.validation(header.alg);
        let mut error = JwtError::BadSignature;
        for key in candidates {
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return self.grant(data.claims, now, now_millis),
                Err(e) => {
                    error = classify(e.kind());
                    if error != JwtError::BadSignature {
                        break;
                    }
                }
            }
        }
        Err(error)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        // `exp` is checked in `grant`, against the time passed in.
        validation.validate_exp = false;
        let mut required = vec!["exp"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn grant(
        &self,
        claims: Claims,
        now: SystemTime,
        now_millis: u64,
    ) -> Result<JwtGrant, JwtError> {
        let wall_millis = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let exp_millis = claims.exp.saturating_mul(1000);
        if exp_millis.saturating_add(self.leeway * 1000) <= wall_millis {
            return Err(JwtError::Expired);
        }
        let patterns = |list: Vec<String>| list.into_iter().map(Box::from).collect();
        Ok(JwtGrant {
            sub: claims.sub.map(Box::from),
            channels: claims
                .channels
                .map_or_else(|| self.channels_when_absent.clone(), patterns),
            publish: claims.publish.map_or_else(Box::default, patterns),
            exp: claims.exp,
            expires_at: now_millis + exp_millis.saturating_sub(wall_millis),
        })
    }
}

fn classify(kind: &jsonwebtoken::errors::ErrorKind) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature | K::InvalidAlgorithm | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => {
            JwtError::BadSignature
        }
        K::ExpiredSignature => JwtError::Expired,
        K::InvalidIssuer => JwtError::WrongIssuer,
        K::InvalidAudience => JwtError::WrongAudience,
        K::MissingRequiredClaim(_) | K::Json(_) => JwtError::BadClaims,
        _ => JwtError::Malformed,
    }
}

/// A PEM public key of any family jsonwebtoken reads.
fn pem_key(path: &std::path::Path) -> Result<Key, ConfigError> {
    let text = std::fs::read(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let attempts: [(Family, Parse); 3] = [
        (Family::Rsa, DecodingKey::from_rsa_pem),
        (Family::Ec, DecodingKey::from_ec_pem),
        (Family::Ed, DecodingKey::from_ed_pem),
    ];
    for (family, parse) in attempts {
        if let Ok(key) = parse(&text) {
            return Ok(Key {
                family,
                kid: None,
                key,
            });
        }
    }
    Err(ConfigError::invalid(
        "auth.jwt.public_keys",
        format!(
            "{}: not a PEM RSA, EC or Ed25519 public key",
            path.display()
        ),
    ))
}

/// The keys of a JWKS file; each needs its `kid` unless it is the only one.
fn jwks_keys(path: &std::path::Path) -> Result<Vec<Key>, ConfigError> {
    let text = std::fs::read(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        error: e.to_string(),
    })?;
    let invalid = |message: String| {
        ConfigError::invalid("auth.jwt.jwks", format!("{}: {message}", path.display()))
    };
    let set: JwkSet = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            AlgorithmParameters::OctetKey(_) => Family::Hmac,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key {i}: {e}")))?;
        keys.push(Key {
            family,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(invalid("holds no keys".into()));
    }
    Ok(keys)
}
