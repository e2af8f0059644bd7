//! The client side of the WebSocket opening handshake.

/// What the buffered response head says so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The head is not complete yet.
    Partial,
    /// A complete head with this status; `len` bytes belong to the head.
    Status { code: u16, len: usize },
    /// Not HTTP, or a head longer than `MAX_HEAD`.
    Invalid,
}

pub const MAX_HEAD: usize = 8192;

/// The upgrade request for `path` on `host`, offering `extensions` (a
/// `Sec-WebSocket-Extensions` value) if there are any; a `token` goes in the
/// subprotocol list as `Bearer, <token>`, as browsers send one
/// (docs/protocol.md).
pub fn request(
    host: &str,
    path: &str,
    key: &str,
    extensions: Option<&str>,
    token: Option<&str>,
) -> Vec<u8> {
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    let protocol = token
        .map(|t| format!("Sec-WebSocket-Protocol: Bearer, {t}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}{protocol}\r\n"
    )
    .into_bytes()
}

/// A token that fits in a subprotocol list: an HTTP token (RFC 7230 3.2.6),
/// which JWTs (base64url and dots) and the usual static tokens are.
pub fn check_token(token: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if token.is_empty() || !token.bytes().all(ok) {
        return Err(format!(
            "the token ({} bytes) is not an HTTP token: it cannot go in Sec-WebSocket-Protocol",
            token.len()
        ));
    }
    Ok(())
}

/// A `Sec-WebSocket-Key`: 16 bytes in base64.
pub fn key(bytes: [u8; 16]) -> String {
    base64(&bytes)
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Looks for a complete response head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Head {
    let Some(end) = crate::scan::find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Head::Invalid
        } else {
            Head::Partial
        };
    };
    match status_code(buf) {
        Some(code) => Head::Status { code, len: end + 4 },
        None => Head::Invalid,
    }
}

/// The values of every header called `name` (any case) in a response
/// head; lines that are not UTF-8 or not `name: value` are passed over.
pub fn header_values<'a>(head: &'a [u8], name: &str) -> Vec<&'a str> {
    head.split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// The status code of an `HTTP/1.x NNN ...` status line at the start of `buf`.
pub fn status_code(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?;
    let digits = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u16, |v, d| v * 10 + u16::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(key([0; 16]).len(), 24);
        assert_eq!(key(*b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn request_has_the_upgrade_headers() {
        let r =
            String::from_utf8(request("127.0.0.1:80", "/ws", "k", None, None)).unwrap_or_default();
        assert!(r.starts_with("GET /ws HTTP/1.1\r\n"));
        assert!(r.contains("Upgrade: websocket\r\n"));
        assert!(r.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        assert!(!r.contains("Extensions"));
        let r = request("h", "/ws", "k", Some("permessage-deflate"), None);
        let r = String::from_utf8(r).unwrap_or_default();
        assert!(r.ends_with("13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"));
        assert!(!r.contains("Protocol"));
        let r =
            String::from_utf8(request("h", "/ws", "k", None, Some("a.b-c"))).unwrap_or_default();
        assert!(r.contains("\r\nSec-WebSocket-Protocol: Bearer, a.b-c\r\n"));
        assert!(r.ends_with("13\r\nSec-WebSocket-Protocol: Bearer, a.b-c\r\n\r\n"));
    }

    #[test]
    fn finds_header_values_in_any_case() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            sec-websocket-extensions: permessage-deflate; a\r\n\
            Sec-WebSocket-Extensions:b \r\nX-Sec-WebSocket-Extensions: no\r\n\r\n";
        assert_eq!(
            header_values(head, "Sec-WebSocket-Extensions"),
            vec!["permessage-deflate; a", "b"]
        );
        assert!(header_values(head, "Content-Length").is_empty());
    }

    #[test]
    fn tokens_must_be_http_tokens() {
        assert!(check_token("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig_-x").is_ok());
        assert!(check_token("dashboard-token").is_ok());
        assert!(check_token("").is_err());
        assert!(check_token("a b").is_err());
        assert!(check_token("a,b").is_err());
        assert!(check_token("a\r\nX: y").is_err());
    }

    #[test]
    fn parses_heads() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi";
        assert_eq!(
            parse_head(ok),
            Head::Status {
                code: 101,
                len: ok.len() - 4
            }
        );
        assert_eq!(parse_head(b"HTTP/1.1 101 Switching"), Head::Partial);
        assert_eq!(
            parse_head(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Head::Status { code: 503, len: 36 }
        );
        assert_eq!(parse_head(b"SSH-2.0\r\n\r\n"), Head::Invalid);
        assert_eq!(parse_head(&[b'a'; MAX_HEAD + 1]), Head::Invalid);
        assert_eq!(status_code(b"HTTP/1.1 1x1 "), None);
    }
}
