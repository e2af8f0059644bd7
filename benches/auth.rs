//! What authenticating a client costs the reactor, per handshake: a static
//! token (compared with every configured one) against verifying a JWT
//! signed with HS256 and with RS256 (2048-bit key). The inverse of each
//! figure bounds the handshakes per second one core can authenticate.
//!
//! `cargo bench --bench auth`; figures are recorded in BENCHMARKS.md. The
//! RSA key pair in `benches/keys/` exists only for this bench.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tidings::auth::Tokens;
use tidings::Config;

const SECRET: &str = "bench-hs256-secret-0123456789abcdef";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/keys");

fn tokens() -> Tokens {
    let mut toml = String::new();
    // Ten static tokens, as a modest deployment might configure.
    for i in 0..10 {
        toml.push_str(&format!(
            "[[auth.tokens]]\ntoken = \"static-token-{i:02}-abcdef\"\n"
        ));
    }
    toml.push_str(&format!(
        "[auth.jwt]\nhs256_secret = \"{SECRET}\"\npublic_keys = [\"{KEYS}/rsa_public.pem\"]\n"
    ));
    let config = Config::from_toml_str(&toml).expect("bench config");
    Tokens::from_config(&config).expect("keys load")
}

fn claims() -> serde_json::Value {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(3600);
    json!({"exp": exp.as_secs(), "sub": "user-1", "channels": ["job.>", "metrics.*"]})
}

fn authentication(c: &mut Criterion) {
    let tokens = tokens();
    let hs256 = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS256");
    let pem = std::fs::read(format!("{KEYS}/rsa_private.pem")).expect("RSA key");
    let rs256 = encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(&pem).expect("RSA PEM"),
    )
    .expect("RS256");
    let mut group = c.benchmark_group("authenticate_client");
    let cases = [
        ("static_token", "static-token-07-abcdef"),
        ("jwt_hs256", hs256.as_str()),
        ("jwt_rs256", rs256.as_str()),
    ];
    for (name, token) in cases {
        assert!(
            tokens.check_client(token, SystemTime::now(), 0).is_ok(),
            "{name}"
        );
        group.bench_function(name, |b| {
            b.iter(|| black_box(tokens.check_client(black_box(token), SystemTime::now(), 0)))
        });
    }
    group.finish();
}

criterion_group!(benches, authentication);
criterion_main!(benches);
