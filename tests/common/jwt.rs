//! JWTs minted by PyJWT (`tests/tools/mint_jwt.py`), an implementation
//! independent of the relay's. Tests that need them skip, saying so, when
//! Python or PyJWT is missing (`.ci/run` installs both).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tools/mint_jwt.py")
}

/// Whether `python3` with PyJWT and cryptography can run the script; if
/// not, says why on stderr, and the caller skips.
pub fn pyjwt_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        super::skipping(
            "python3 with PyJWT and cryptography, to mint JWTs (pip install pyjwt cryptography)",
        );
    }
    ok
}

fn run(args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("run mint_jwt.py");
    assert!(
        output.status.success(),
        "mint_jwt.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_string()
}

/// RSA keys in a fresh directory: `rsa_private.pem`, `rsa_public.pem`, and
/// `jwks.json` holding the public half of `k2_private.pem` under kid `k2`.
pub struct Keys {
    pub dir: PathBuf,
}

impl Keys {
    pub fn new(name: &str) -> Keys {
        let dir = std::env::temp_dir().join(format!("tidings-jwt-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        run(&["keys", dir.to_str().expect("UTF-8 path")]);
        Keys { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir
            .join(file)
            .to_str()
            .expect("UTF-8 path")
            .to_string()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HS256 token with `claims` (`"exp_in": N` for N seconds from now).
pub fn hs256(secret: &str, claims: &Value) -> String {
    run(&["sign", "HS256", secret, &claims.to_string()])
}

/// An RS256 token signed with the private PEM at `key`, with `kid` if given.
pub fn rs256(key: &str, claims: &Value, kid: Option<&str>) -> String {
    let claims = claims.to_string();
    let mut args = vec!["sign", "RS256", key, &claims];
    args.extend(kid);
    run(&args)
}
