//! HTTP/1.1 request heads (httparse) and the WebSocket opening handshake
//! (RFC 6455 section 4.2), without sockets.

use tungstenite::handshake::derive_accept_key;

use super::http::{response, Status};

/// The parts of a request head the relay acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without any query string.
    pub path: String,
    /// What follows `?` in the request target, as sent (not decoded).
    pub query: Option<String>,
    /// Bytes the head occupies, up to and including the blank line.
    pub len: usize,
    /// Whether the connection stays open after the response (HTTP/1.1 default).
    pub keep_alive: bool,
    pub content_length: Option<usize>,
    /// `Transfer-Encoding` codings in order, lower case (every such header).
    pub transfer_codings: Vec<String>,
    pub authorization: Option<String>,
    pub origin: Option<String>,
    /// `Expect: 100-continue`: the client waits for a go-ahead before the body.
    pub expect_continue: bool,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    /// `Sec-WebSocket-Protocol` values, in order, trimmed.
    pub ws_protocols: Vec<String>,
    /// `Sec-WebSocket-Extensions` header values, in order, as sent.
    pub ws_extensions: Vec<String>,
}

/// Why a request head is refused before it is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over `limits.max_request_head` bytes or `limits.max_headers` headers.
    TooLarge,
    /// Not HTTP/1.x, or a header value the relay needs is malformed.
    Malformed,
}

impl HeadError {
    pub fn status(self) -> Status {
        match self {
            HeadError::TooLarge => Status::HeaderFieldsTooLarge,
            HeadError::Malformed => Status::BadRequest,
        }
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)` means more bytes are needed; it is not an error while `buf` is
/// under `max_len` bytes.
pub fn parse_head(
    buf: &[u8],
    max_len: usize,
    max_headers: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_len => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > max_len {
        return Err(HeadError::TooLarge);
    }
    let version = request.version.unwrap_or(0);
    let target = request.path.unwrap_or("/");
    let mut head = RequestHead {
        method: request.method.unwrap_or("").to_string(),
        path: target.split('?').next().unwrap_or("/").to_string(),
        query: target.split_once('?').map(|(_, q)| q.to_string()),
        len,
        keep_alive: version == 1,
        content_length: None,
        transfer_codings: Vec::new(),
        authorization: None,
        origin: None,
        expect_continue: false,
        upgrade_websocket: false,
        connection_upgrade: false,
        ws_key: None,
        ws_version: None,
        ws_protocols: Vec::new(),
        ws_extensions: Vec::new(),
    };
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| HeadError::Malformed)?
            .trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let length = value.parse().map_err(|_| HeadError::Malformed)?;
            // Two different lengths are a request-smuggling attempt (RFC 9112 6.3).
            if head.content_length.is_some_and(|seen| seen != length) {
                return Err(HeadError::Malformed);
            }
            head.content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_codings.extend(
                value
                    .split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty()),
            );
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(value, "close") {
                head.keep_alive = false;
            } else if has_token(value, "keep-alive") {
                head.keep_alive = true;
            }
            head.connection_upgrade |= has_token(value, "upgrade");
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket |= has_token(value, "websocket");
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue |= value.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            // "The |Sec-WebSocket-Key| header field MUST NOT appear more than
            // once in an HTTP request" (RFC 6455 11.3.1): with two, which
            // key the accept value answers would be a guess.
            if head.ws_key.is_some() {
                return Err(HeadError::Malformed);
            }
            head.ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            head.ws_extensions.push(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            head.ws_protocols
                .extend(value.split(',').map(|p| p.trim().to_string()));
        }
    }
    Ok(Some(head))
}

/// Every header of the complete request head at the start of `buf`, names
/// and values as sent (values lossily as UTF-8), for an embedder's hook.
pub fn header_list(buf: &[u8], max_headers: usize) -> Vec<(String, String)> {
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(buf).is_err() {
        return Vec::new();
    }
    request
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_string(), value)
        })
        .collect()
}

impl RequestHead {
    /// Whether the head announces a body, by length or by transfer coding.
    pub fn has_body(&self) -> bool {
        self.content_length.unwrap_or(0) > 0 || !self.transfer_codings.is_empty()
    }
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// An upgrade the relay accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    accept_key: String,
    /// The `Bearer` subprotocol exactly as the client offered it (any case),
    /// which must then be selected, spelled the same: clients compare the
    /// selected protocol byte for byte with what they offered.
    pub bearer_protocol: Option<String>,
    /// The token that followed `Bearer` in the subprotocol list, or else the
    /// one in `Authorization: Bearer` (non-browser clients send that).
    pub bearer_token: Option<String>,
    /// permessage-deflate agreed (`proto::deflate`): set by the caller,
    /// which knows whether compression is on.
    pub deflate: bool,
}

/// Checks an upgrade request (RFC 6455 4.2.1); a refusal is the status to send.
pub fn check_upgrade(head: &RequestHead) -> Result<Upgrade, Status> {
    if head.method != "GET" {
        return Err(Status::MethodNotAllowed);
    }
    if !head.upgrade_websocket || !head.connection_upgrade {
        return Err(Status::BadRequest);
    }
    // "If this version does not match a version understood by the server, the
    // server MUST abort the WebSocket handshake ... and instead send an
    // appropriate HTTP error code (such as 426 Upgrade Required)" (4.2.2).
    match head.ws_version.as_deref() {
        Some("13") => {}
        Some(_) => return Err(Status::UpgradeRequired),
        None => return Err(Status::BadRequest),
    }
    let key = head.ws_key.as_deref().ok_or(Status::BadRequest)?;
    if !is_valid_key(key) {
        return Err(Status::BadRequest);
    }
    let bearer_protocol = head
        .ws_protocols
        .first()
        .filter(|p| p.eq_ignore_ascii_case("bearer"))
        .cloned();
    let from_header = || {
        head.authorization
            .as_deref()
            .and_then(crate::proto::http::bearer_token)
            .map(str::to_string)
    };
    let bearer_token = bearer_protocol
        .as_ref()
        .and_then(|_| head.ws_protocols.get(1).cloned())
        .filter(|t| !t.is_empty())
        .or_else(from_header);
    Ok(Upgrade {
        accept_key: derive_accept_key(key.as_bytes()),
        bearer_protocol,
        bearer_token,
        deflate: false,
    })
}

/// "a base64-encoded value that, when decoded, is 16 bytes in length" (4.2.1).
fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

impl Upgrade {
    /// The 101 response. Only `Bearer` is selected (as offered), never the
    /// token: clients fail the connection when the server echoes a protocol
    /// they did not list as a whole entry, and the token must not travel
    /// back.
    pub fn response(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            self.accept_key
        );
        if let Some(protocol) = &self.bearer_protocol {
            out.push_str("Sec-WebSocket-Protocol: ");
            out.push_str(protocol);
            out.push_str("\r\n");
        }
        if self.deflate {
            out.push_str("Sec-WebSocket-Extensions: ");
            out.push_str(crate::proto::deflate::AGREED);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// The refusal of an upgrade, with the headers each status needs.
pub fn upgrade_refusal(status: Status) -> Vec<u8> {
    let extra: &[(&str, &str)] = match status {
        Status::UpgradeRequired => &[("Sec-WebSocket-Version", "13")],
        Status::MethodNotAllowed => &[("Allow", "GET")],
        Status::Unauthorized => &[("WWW-Authenticate", "Bearer")],
        _ => &[],
    };
    let body = format!("{}\n", status.reason());
    response(status, extra, "text/plain", body.as_bytes(), false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse(text: &str) -> RequestHead {
        parse_head(text.as_bytes(), 8192, 32)
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn rfc_sample_key() {
        let upgrade = check_upgrade(&parse(UPGRADE)).expect("accepted");
        let response = String::from_utf8(upgrade.response()).expect("ascii");
        // The accept value from RFC 6455 1.3.
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!response.contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn partial_then_complete() {
        for cut in 0..UPGRADE.len() {
            assert_eq!(parse_head(&UPGRADE.as_bytes()[..cut], 8192, 32), Ok(None));
        }
        assert_eq!(parse(UPGRADE).len, UPGRADE.len());
    }

    #[test]
    fn size_limits() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(
            parse_head(big.as_bytes(), 8192, 32),
            Err(HeadError::TooLarge)
        );
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_head(text.as_bytes(), 8192, 32),
            Err(HeadError::TooLarge)
        );
        assert_eq!(
            parse_head(b"\x00\x01garbage\r\n\r\n", 8192, 32),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn repeated_websocket_key_is_malformed() {
        let twice = UPGRADE.replace(
            "\r\n\r\n",
            "\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        assert_eq!(
            parse_head(twice.as_bytes(), 8192, 32),
            Err(HeadError::Malformed)
        );
        assert_eq!(HeadError::Malformed.status(), Status::BadRequest);
        // Once is fine, whatever the case of the name.
        let once = UPGRADE.replace("Sec-WebSocket-Key", "sec-websocket-key");
        assert!(check_upgrade(&parse(&once)).is_ok());
    }

    #[test]
    fn case_insensitive_tokens() {
        let text = UPGRADE
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("Connection: Upgrade", "CONNECTION: keep-alive, Upgrade");
        assert!(check_upgrade(&parse(&text)).is_ok());
    }

    #[test]
    fn refusals() {
        let cases = [
            (
                UPGRADE.replace("Version: 13", "Version: 12"),
                Status::UpgradeRequired,
            ),
            (UPGRADE.replace("GET", "POST"), Status::MethodNotAllowed),
            (
                "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
                Status::BadRequest,
            ),
            (
                UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
                Status::BadRequest,
            ),
            (
                UPGRADE.replace("Upgrade: websocket\r\n", ""),
                Status::BadRequest,
            ),
        ];
        for (text, status) in cases {
            assert_eq!(check_upgrade(&parse(&text)), Err(status), "{text}");
        }
        let refusal = String::from_utf8(upgrade_refusal(Status::UpgradeRequired)).expect("ascii");
        assert!(refusal.starts_with("HTTP/1.1 426 "));
        assert!(refusal.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn bearer_subprotocol_with_and_without_space() {
        for list in ["Bearer, tok-1", "Bearer,tok-1"] {
            let text = UPGRADE.replace(
                "\r\n\r\n",
                &format!("\r\nSec-WebSocket-Protocol: {list}\r\n\r\n"),
            );
            let upgrade = check_upgrade(&parse(&text)).expect("accepted");
            assert_eq!(upgrade.bearer_token.as_deref(), Some("tok-1"));
            let response = String::from_utf8(upgrade.response()).expect("ascii");
            assert!(response.contains("Sec-WebSocket-Protocol: Bearer\r\n"));
            assert!(!response.contains("tok-1"));
        }
    }

    #[test]
    fn keep_alive_and_lengths() {
        let head = parse(
            "POST /api/publish HTTP/1.1\r\nContent-Length: 5\r\nAuthorization: Bearer x\r\n\r\n",
        );
        assert!(head.keep_alive);
        assert_eq!(head.content_length, Some(5));
        assert_eq!(head.authorization.as_deref(), Some("Bearer x"));
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert_eq!(
            parse_head(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                8192,
                32
            ),
            Err(HeadError::Malformed)
        );
        assert_eq!(parse("GET /ws?x=1 HTTP/1.1\r\n\r\n").path, "/ws");
    }
}
