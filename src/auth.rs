//! Token checks for WebSocket clients, publishers and operators. Every
//! configured secret lives here, in one value a reload can replace.

use crate::config::Config;
use crate::route::pattern_covers;

/// Which configured token a client presented (an index into `auth.tokens`).
pub type TokenId = u16;

/// The configured tokens, ready to compare.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    clients: Vec<ClientToken>,
    publishers: Vec<Box<[u8]>>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishAuth {
    Allowed,
    Missing,
    Wrong,
}

impl Tokens {
    pub fn from_config(config: &Config) -> Tokens {
        Tokens {
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
        }
    }

    pub fn clients_required(&self) -> bool {
        !self.clients.is_empty()
    }

    /// The id of the client token equal to `presented`, comparing every token
    /// in full so the time taken says nothing about which bytes matched.
    pub fn check_client(&self, presented: &str) -> Option<TokenId> {
        let mut found = None;
        for (i, token) in self.clients.iter().enumerate() {
            if constant_time_eq(&token.secret, presented.as_bytes()) {
                found = Some(i as TokenId);
            }
        }
        found
    }

    /// Whether a client holding `token` may subscribe to `pattern`. With
    /// auth off every pattern is allowed.
    pub fn allows(&self, token: Option<TokenId>, pattern: &str) -> bool {
        let Some(id) = token else {
            return !self.clients_required();
        };
        match self.clients.get(usize::from(id)).map(|t| &t.channels) {
            Some(None) => true,
            Some(Some(allowed)) => allowed.iter().any(|a| pattern_covers(a, pattern)),
            None => false,
        }
    }

    /// Checks a publisher's bearer token; open while none are configured.
    pub fn check_publisher(&self, bearer: Option<&str>) -> PublishAuth {
        if self.publishers.is_empty() {
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
            PublishAuth::Allowed
        } else {
            PublishAuth::Wrong
        }
    }
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
        Tokens::from_config(&config)
    }

    #[test]
    fn client_tokens_and_restrictions() {
        let t = tokens();
        assert!(t.clients_required());
        assert_eq!(t.check_client("jobs-only"), Some(0));
        assert_eq!(t.check_client("admin"), Some(1));
        assert_eq!(t.check_client("admin2"), None);
        assert_eq!(t.check_client(""), None);
        assert!(t.allows(Some(0), "job.progress"));
        assert!(t.allows(Some(0), "job.*"));
        assert!(!t.allows(Some(0), "job.>"));
        assert!(!t.allows(Some(0), "alert.*"));
        assert!(t.allows(Some(1), ">"));
        assert!(!t.allows(None, "job.progress"));
    }

    #[test]
    fn publisher_tokens() {
        let t = tokens();
        assert_eq!(t.check_publisher(Some("pub-1")), PublishAuth::Allowed);
        assert_eq!(t.check_publisher(Some("pub-2")), PublishAuth::Wrong);
        assert_eq!(t.check_publisher(None), PublishAuth::Missing);
        let open = Tokens::from_config(&Config::default());
        assert_eq!(open.check_publisher(None), PublishAuth::Allowed);
        assert!(open.allows(None, ">"));
    }

    #[test]
    fn admin_tokens() {
        let off = Tokens::from_config(&Config::default());
        assert_eq!(off.check_admin(Some("anything")), AdminAuth::Off);
        let config =
            Config::from_toml_str("[admin]\ntokens = [\"ops-1\", \"ops-2\"]").expect("valid");
        let t = Tokens::from_config(&config);
        assert_eq!(t.check_admin(Some("ops-2")), AdminAuth::Allowed);
        assert_eq!(t.check_admin(Some("ops-3")), AdminAuth::Refused);
        assert_eq!(t.check_admin(Some("")), AdminAuth::Refused);
        assert_eq!(t.check_admin(None), AdminAuth::Refused);
        // Admin tokens are not client or publish tokens.
        assert_eq!(t.check_client("ops-1"), None);
        assert!(!t.clients_required());
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
