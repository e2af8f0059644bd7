//! Token checks for WebSocket clients, publishers and operators: the
//! static tokens of the configuration, and JWTs (`jwt`). Every configured
//! secret lives here, in one value a reload can replace.

use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::error::ConfigError;
use crate::route::pattern_covers;

mod jwt;

pub use jwt::{JwtError, JwtGrant, JwtVerifier};

/// Which configured token a client presented (an index into `auth.tokens`).
pub type TokenId = u16;

/// What a client proved: a static token, or a JWT with its claims (shared
/// between the session and the requests it makes; reactor-local).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Token(TokenId),
    Jwt(Rc<JwtGrant>),
}

/// Why a client credential was refused, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Not a configured token, and JWTs are off.
    UnknownToken,
    Jwt(JwtError),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::UnknownToken => f.write_str("unknown token"),
            AuthError::Jwt(e) => write!(f, "JWT refused: {e}"),
        }
    }
}

/// The configured tokens, ready to compare.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    clients: Vec<ClientToken>,
    publishers: Vec<Box<[u8]>>,
    jwt: Option<Arc<JwtVerifier>>,
    admins: Vec<Box<[u8]>>,
}

#[derive(Clone)]
struct ClientToken {
    secret: Box<[u8]>,
    channels: Option<Vec<String>>,
}

// Secrets stay out of debug output and so out of logs.
impl std::fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientToken")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// The outcome of checking an `Authorization: Bearer` header for the
/// admin views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAuth {
    /// No admin tokens are configured: the views do not exist.
    Off,
    Allowed,
    /// No token, or a wrong one.
    Refused,
}

/// The outcome of checking an `Authorization: Bearer` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishAuth {
    /// A publish token, or publish is open.
    Allowed,
    /// A JWT: the channels it may publish to (its `publish` claim).
    Scoped(Box<[Box<str>]>),
    Missing,
    Wrong,
}

impl Tokens {
    /// Reads the JWT keys, if any; a bad key file is a configuration error.
    pub fn from_config(config: &Config) -> Result<Tokens, ConfigError> {
        let jwt = match &config.auth.jwt {
            Some(jwt) => Some(Arc::new(JwtVerifier::from_config(jwt)?)),
            None => None,
        };
        Ok(Tokens {
            jwt,
            clients: config
                .auth
                .tokens
                .iter()
                .map(|t| ClientToken {
                    secret: t.token.as_bytes().into(),
                    channels: t.channels.clone(),
                })
                .collect(),
            publishers: config
                .publish
                .tokens
                .iter()
                .map(|t| t.as_bytes().into())
                .collect(),
            admins: config
                .admin
                .tokens
                .iter()
                .map(|t| t.as_bytes().into())
                .collect(),
        })
    }

    pub fn clients_required(&self) -> bool {
        !self.clients.is_empty() || self.jwt.is_some()
    }

    /// Whether JWTs are accepted.
    pub fn jwt_enabled(&self) -> bool {
        self.jwt.is_some()
    }

    /// Checks a client credential at wall-clock time `now` (`now_millis` on
    /// the reactor's clock): a configured token (every one compared in
    /// full, so the time taken says nothing about which bytes matched), else
    /// a JWT when they are on.
    pub fn check_client(
        &self,
        presented: &str,
        now: SystemTime,
        now_millis: u64,
    ) -> Result<Grant, AuthError> {
        let mut found = None;
        for (i, token) in self.clients.iter().enumerate() {
            if constant_time_eq(&token.secret, presented.as_bytes()) {
                found = Some(i as TokenId);
            }
        }
        if let Some(id) = found {
            return Ok(Grant::Token(id));
        }
        match &self.jwt {
            Some(jwt) => jwt
                .verify(presented, now, now_millis)
                .map(|grant| Grant::Jwt(Rc::new(grant)))
                .map_err(AuthError::Jwt),
            None => Err(AuthError::UnknownToken),
        }
    }

    /// The secret of client token `id`, for the embedder's hooks.
    pub fn client_token(&self, id: TokenId) -> Option<&str> {
        let secret = &self.clients.get(usize::from(id))?.secret;
        std::str::from_utf8(secret).ok()
    }

    /// For each client token of `self`, its id in `new`, or `None` if `new`
    /// no longer has it: what a reload (`RelayHandle::reload_auth`) makes
    /// of the sockets authenticated with it. Tokens are matched by their
    /// secret, so reordering or adding tokens keeps every socket.
    pub fn remap(&self, new: &Tokens) -> Vec<Option<TokenId>> {
        self.clients
            .iter()
            .map(|old| {
                new.clients
                    .iter()
                    .position(|t| t.secret == old.secret)
                    .map(|i| i as TokenId)
            })
            .collect()
    }

    /// Whether a client holding `grant` may subscribe to `pattern`. With
    /// auth off every pattern is allowed.
    pub fn allows(&self, grant: Option<&Grant>, pattern: &str) -> bool {
        let covered = |allowed: &[Box<str>]| allowed.iter().any(|a| pattern_covers(a, pattern));
        match grant {
            None => !self.clients_required(),
            Some(Grant::Jwt(jwt)) => covered(&jwt.channels),
            Some(Grant::Token(id)) => match self.clients.get(usize::from(*id)).map(|t| &t.channels)
            {
                Some(None) => true,
                Some(Some(allowed)) => allowed.iter().any(|a| pattern_covers(a, pattern)),
                None => false,
            },
        }
    }

    /// Checks a publisher's bearer token at wall-clock time `now`: a
    /// publish token, or a JWT. Open while neither is configured.
    pub fn check_publisher(&self, bearer: Option<&str>, now: SystemTime) -> PublishAuth {
        if self.publishers.is_empty() && self.jwt.is_none() {
            return PublishAuth::Allowed;
        }
        let Some(presented) = bearer else {
            return PublishAuth::Missing;
        };
        let mut ok = false;
        for secret in &self.publishers {
            ok |= constant_time_eq(secret, presented.as_bytes());
        }
        if ok {
            return PublishAuth::Allowed;
        }
        match self.jwt.as_ref().map(|jwt| jwt.verify(presented, now, 0)) {
            Some(Ok(grant)) => PublishAuth::Scoped(grant.publish),
            _ => PublishAuth::Wrong,
        }
    }
}

/// Whether a JWT's `publish` claim covers `channel`.
pub fn may_publish(scope: &[Box<str>], channel: &str) -> bool {
    scope.iter().any(|p| pattern_covers(p, channel))
}

impl Tokens {
    /// Checks an operator's bearer token against `admin.tokens`, every one
    /// in full.
    pub fn check_admin(&self, bearer: Option<&str>) -> AdminAuth {
        if self.admins.is_empty() {
            return AdminAuth::Off;
        }
        let presented = bearer.unwrap_or_default().as_bytes();
        let mut ok = false;
        for secret in &self.admins {
            ok |= constant_time_eq(secret, presented);
        }
        if ok {
            AdminAuth::Allowed
        } else {
            AdminAuth::Refused
        }
    }
}

/// Equality whose time depends only on the lengths, not on where bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let config = Config::from_toml_str(
            r#"
            [[auth.tokens]]
            token = "jobs-only"
            channels = ["job.*"]
            [[auth.tokens]]
            token = "admin"
            [publish]
            tokens = ["pub-1"]
            "#,
        )
        .expect("valid");
        Tokens::from_config(&config).expect("no key files")
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn client_tokens_and_restrictions() {
        let t = tokens();
        assert!(t.clients_required());
        let jobs = t.check_client("jobs-only", NOW, 0).expect("known");
        let admin = t.check_client("admin", NOW, 0).expect("known");
        assert_eq!(jobs, Grant::Token(0));
        assert_eq!(admin, Grant::Token(1));
        assert_eq!(
            t.check_client("admin2", NOW, 0),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(t.check_client("", NOW, 0), Err(AuthError::UnknownToken));
        assert!(t.allows(Some(&jobs), "job.progress"));
        assert!(t.allows(Some(&jobs), "job.*"));
        assert!(!t.allows(Some(&jobs), "job.>"));
        assert!(!t.allows(Some(&jobs), "alert.*"));
        assert!(t.allows(Some(&admin), ">"));
        assert!(!t.allows(None, "job.progress"));
    }

    #[test]
    fn publisher_tokens() {
        let t = tokens();
        assert_eq!(t.check_publisher(Some("pub-1"), NOW), PublishAuth::Allowed);
        assert_eq!(t.check_publisher(Some("pub-2"), NOW), PublishAuth::Wrong);
        assert_eq!(t.check_publisher(None, NOW), PublishAuth::Missing);
        let open = Tokens::from_config(&Config::default()).expect("no keys");
        assert_eq!(open.check_publisher(None, NOW), PublishAuth::Allowed);
        assert!(open.allows(None, ">"));
    }

    #[test]
    fn remap_follows_secrets_not_positions() {
        let old = tokens();
        let new = Tokens::from_config(
            &Config::from_toml_str(
                r#"
                [[auth.tokens]]
                token = "newcomer"
                [[auth.tokens]]
                token = "jobs-only"
                channels = ["job.>"]
                "#,
            )
            .expect("valid"),
        )
        .expect("no keys");
        // "jobs-only" moved to index 1; "admin" is gone.
        assert_eq!(old.remap(&new), [Some(1), None]);
        assert_eq!(old.remap(&Tokens::default()), [None, None]);
        assert_eq!(Tokens::default().remap(&old), []);
    }

    #[test]
    fn admin_tokens() {
        let off = Tokens::from_config(&Config::default()).expect("no keys");
        assert_eq!(off.check_admin(Some("anything")), AdminAuth::Off);
        let config =
            Config::from_toml_str("[admin]\ntokens = [\"ops-1\", \"ops-2\"]").expect("valid");
        let t = Tokens::from_config(&config).expect("no keys");
        assert_eq!(t.check_admin(Some("ops-2")), AdminAuth::Allowed);
        assert_eq!(t.check_admin(Some("ops-3")), AdminAuth::Refused);
        assert_eq!(t.check_admin(Some("")), AdminAuth::Refused);
        assert_eq!(t.check_admin(None), AdminAuth::Refused);
        // Admin tokens are not client or publish tokens.
        assert!(t.check_client("ops-1", SystemTime::UNIX_EPOCH, 0).is_err());
        assert!(!t.clients_required());
    }

    #[test]
    fn an_unreadable_or_unparsable_key_file_names_itself() {
        let missing =
            Config::from_toml_str("[auth.jwt]\npublic_keys = [\"/nonexistent/tidings-key.pem\"]")
                .expect("valid");
        let error = Tokens::from_config(&missing).expect_err("no such file");
        assert!(
            error.to_string().contains("/nonexistent/tidings-key.pem"),
            "{error}"
        );
        let path = std::env::temp_dir().join(format!("tidings-not-a-key-{}", std::process::id()));
        std::fs::write(&path, "not a key").expect("write");
        let garbage = Config::from_toml_str(&format!("[auth.jwt]\npublic_keys = [{:?}]", path))
            .expect("valid");
        let error = Tokens::from_config(&garbage).expect_err("not a key");
        let _ = std::fs::remove_file(&path);
        assert!(
            error.to_string().contains("auth.jwt.public_keys"),
            "{error}"
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
