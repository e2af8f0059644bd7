//! The small HTTP API: routes, publish bodies and responses, without sockets.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The statuses the relay sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    LengthRequired,
    PayloadTooLarge,
    UpgradeRequired,
    HeaderFieldsTooLarge,
    NotImplemented,
    ServiceUnavailable,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::LengthRequired => 411,
            Status::PayloadTooLarge => 413,
            Status::UpgradeRequired => 426,
            Status::HeaderFieldsTooLarge => 431,
            Status::NotImplemented => 501,
            Status::ServiceUnavailable => 503,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::LengthRequired => "Length Required",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::UpgradeRequired => "Upgrade Required",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::NotImplemented => "Not Implemented",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    WebSocket,
    /// `/`: the status page.
    StatusPage,
    /// `/tidings.js`: the browser client.
    Client,
    /// `/api/stats`: the figures the status page shows, as JSON.
    Stats,
    /// `/api/channels/{channel}` (latest event) or `/api/channels?pattern=P`.
    Channels,
    /// `/api/admin/connections`: the slowest sockets first.
    AdminConnections,
    /// `/api/admin/subscriptions`: channels and patterns with subscribers.
    AdminSubscriptions,
    Publish,
    Health,
    Metrics,
    NotFound,
    /// The path exists but not for this method; the value is the `Allow` header.
    MethodNotAllowed(&'static str),
}

pub fn route(method: &str, path: &str) -> Route {
    match (path, method) {
        ("/ws", _) => Route::WebSocket,
        ("/api/publish", "POST") => Route::Publish,
        ("/api/publish", _) => Route::MethodNotAllowed("POST"),
        ("/healthz", "GET" | "HEAD") => Route::Health,
        ("/", "GET" | "HEAD") => Route::StatusPage,
        ("/tidings.js", "GET" | "HEAD") => Route::Client,
        ("/api/stats", "GET" | "HEAD") => Route::Stats,
        ("/api/admin/connections", "GET" | "HEAD") => Route::AdminConnections,
        ("/api/admin/subscriptions", "GET" | "HEAD") => Route::AdminSubscriptions,
        ("/api/admin/connections" | "/api/admin/subscriptions", _) => {
            Route::MethodNotAllowed("GET, HEAD")
        }
        (p, "GET" | "HEAD") if p == "/api/channels" || p.starts_with("/api/channels/") => {
            Route::Channels
        }
        ("/" | "/tidings.js" | "/api/stats", _) => Route::MethodNotAllowed("GET, HEAD"),
        (p, _) if p == "/api/channels" || p.starts_with("/api/channels/") => {
            Route::MethodNotAllowed("GET, HEAD")
        }
        ("/metrics", "GET" | "HEAD") => Route::Metrics,
        ("/healthz" | "/metrics", _) => Route::MethodNotAllowed("GET, HEAD"),
        _ => Route::NotFound,
    }
}

/// A percent-encoded part of a URL, decoded; `None` if it is not UTF-8.
pub fn url_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The value of `name` in a query string (`a=1&b=2`), decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| url_decode(&value.replace('+', " ")))
}

/// A complete HTTP/1.1 response.
pub fn response(
    status: Status,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        status.code(),
        status.reason(),
        body.len()
    );
    for (name, value) in extra_headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub fn json_response(status: Status, body: &serde_json::Value, keep_alive: bool) -> Vec<u8> {
    let extra: &[(&str, &str)] = match status {
        Status::Unauthorized => &[("WWW-Authenticate", "Bearer")],
        Status::ServiceUnavailable => &[("Retry-After", "1")],
        _ => &[],
    };
    let mut text = body.to_string();
    text.push('\n');
    response(
        status,
        extra,
        "application/json",
        text.as_bytes(),
        keep_alive,
    )
}

/// `{"error":{"code":...,"message":...}}` with the given status.
pub fn json_error(status: Status, code: &str, message: &str, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    json_response(status, &body, keep_alive)
}

/// The `405` for an API path asked with the wrong method (`Route::MethodNotAllowed`):
/// the JSON error body every other API refusal has, so a client reads one
/// shape, and the `Allow` header RFC 9110 15.5.6 requires ("The origin server
/// MUST generate an Allow header field in a 405 response").
pub fn method_not_allowed(allow: &str, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({
        "error": {
            "code": "method_not_allowed",
            "message": format!("this endpoint accepts {allow}"),
        }
    });
    let mut text = body.to_string();
    text.push('\n');
    response(
        Status::MethodNotAllowed,
        &[("Allow", allow)],
        "application/json",
        text.as_bytes(),
        keep_alive,
    )
}

/// One event in a `POST /api/publish` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishItem {
    pub channel: String,
    #[serde(rename = "type", default)]
    pub event_type: Option<String>,
    /// Kept as raw JSON text: the relay forwards it without re-encoding.
    pub data: Box<RawValue>,
}

/// Parses a publish body: one object, or an array of them.
pub fn parse_publish_body(body: &[u8]) -> Result<Vec<PublishItem>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let parsed = match first {
        Some(b'[') => serde_json::from_slice::<Vec<PublishItem>>(body),
        Some(b'{') => serde_json::from_slice::<PublishItem>(body).map(|item| vec![item]),
        _ => return Err("body must be a JSON object or an array of objects".to_string()),
    };
    match parsed {
        Ok(items) if items.is_empty() => Err("the array holds no events".to_string()),
        Ok(items) => Ok(items),
        Err(e) => Err(e.to_string()),
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("pattern=job.%3E&x=1", "pattern").as_deref(),
            Some("job.>")
        );
        assert_eq!(
            query_param("a=1&pattern=a.*", "pattern").as_deref(),
            Some("a.*")
        );
        assert_eq!(query_param("patterns=a", "pattern"), None);
        assert_eq!(query_param("pattern=%FF", "pattern"), None, "not UTF-8");
    }

    #[test]
    fn routes() {
        let table = [
            ("GET", "/ws", Route::WebSocket),
            ("POST", "/ws", Route::WebSocket),
            ("POST", "/api/publish", Route::Publish),
            ("GET", "/api/publish", Route::MethodNotAllowed("POST")),
            ("GET", "/healthz", Route::Health),
            ("GET", "/metrics", Route::Metrics),
            ("DELETE", "/healthz", Route::MethodNotAllowed("GET, HEAD")),
            ("GET", "/", Route::StatusPage),
            ("GET", "/tidings.js", Route::Client),
            ("GET", "/api/stats", Route::Stats),
            ("GET", "/api/channels", Route::Channels),
            ("GET", "/api/channels/a.b", Route::Channels),
            (
                "POST",
                "/api/channels/a.b",
                Route::MethodNotAllowed("GET, HEAD"),
            ),
            ("POST", "/", Route::MethodNotAllowed("GET, HEAD")),
            ("GET", "/api/channelsx", Route::NotFound),
            ("GET", "/wsx", Route::NotFound),
        ];
        for (method, path, expected) in table {
            assert_eq!(route(method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn response_shape() {
        let text = String::from_utf8(response(
            Status::NotFound,
            &[("X-A", "b")],
            "text/plain",
            b"nope",
            true,
        ))
        .expect("ascii");
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nX-A: b\r\nConnection: keep-alive\r\n\r\nnope"
        );
        let busy = String::from_utf8(json_error(
            Status::ServiceUnavailable,
            "ingest_full",
            "m",
            false,
        ))
        .expect("ascii");
        assert!(busy.contains("Retry-After: 1\r\n"));
        assert!(busy.ends_with("{\"error\":{\"code\":\"ingest_full\",\"message\":\"m\"}}\n"));
    }

    #[test]
    fn method_not_allowed_is_json_with_allow() {
        let text = String::from_utf8(method_not_allowed("POST", true)).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nAllow: POST\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: application/json\r\n"),
            "{head}"
        );
        assert!(head.ends_with("Connection: keep-alive"), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{head}"
        );
        let value: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(value["error"]["code"], "method_not_allowed");
        assert_eq!(value["error"]["message"], "this endpoint accepts POST");
        let closing = String::from_utf8(method_not_allowed("GET, HEAD", false)).expect("ascii");
        assert!(closing.contains("\r\nAllow: GET, HEAD\r\n"), "{closing}");
        assert!(closing.contains("\r\nConnection: close\r\n"), "{closing}");
    }

    #[test]
    fn publish_bodies() {
        let one =
            parse_publish_body(br#" {"channel":"job.progress","data":{"p":0.5}}"#).expect("one");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].channel, "job.progress");
        assert_eq!(one[0].data.get(), r#"{"p":0.5}"#);
        let many = parse_publish_body(
            br#"[{"channel":"a","data":1},{"channel":"b","type":"t","data":[true]}]"#,
        )
        .expect("many");
        assert_eq!(many.len(), 2);
        assert_eq!(many[1].event_type.as_deref(), Some("t"));
        for bad in [
            &b"nope"[..],
            b"[]",
            b"{\"channel\":\"a\"}",
            b"{\"data\":1}",
            b"{\"channel\":\"a\",\"data\":1,\"x\":2}",
            b"{\"channel\":\"a\",\"data\":}",
        ] {
            assert!(
                parse_publish_body(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
