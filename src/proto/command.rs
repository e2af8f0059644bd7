//! Client JSON commands and the relay's replies, without sockets.

use serde::{Deserialize, Serialize};

/// A command a client sends in a text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
    Ping,
    Auth(String),
}

/// An error reply that keeps the socket open; `code` goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    BadRequest,
    InvalidChannel,
    NotAuthenticated,
    Forbidden,
    TooManySubscriptions,
    RateLimited,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
        }
    }
}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError {
            code,
            message: message.into(),
        }
    }
}

/// Fields of any command; which are required depends on `type`.
#[derive(Deserialize)]
struct Fields {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    channels: Option<serde_json::Value>,
    token: Option<serde_json::Value>,
}

pub fn parse_command(text: &str) -> Result<Command, CommandError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| CommandError::new(ErrorCode::BadJson, format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(CommandError::new(
            ErrorCode::BadJson,
            "a command must be a JSON object",
        ));
    }
    let fields: Fields = serde_json::from_value(value)
        .map_err(|e| CommandError::new(ErrorCode::BadRequest, e.to_string()))?;
    let kind = match fields.kind {
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => {
            return Err(CommandError::new(
                ErrorCode::UnknownType,
                "`type` must be a string",
            ))
        }
        None => return Err(CommandError::new(ErrorCode::UnknownType, "missing `type`")),
    };
    match kind.as_str() {
        "subscribe" => channels(fields.channels).map(Command::Subscribe),
        "unsubscribe" => channels(fields.channels).map(Command::Unsubscribe),
        "ping" => Ok(Command::Ping),
        "auth" => match fields.token {
            Some(serde_json::Value::String(token)) => Ok(Command::Auth(token)),
            _ => Err(CommandError::new(
                ErrorCode::BadRequest,
                "`auth` needs a string `token`",
            )),
        },
        other => Err(CommandError::new(
            ErrorCode::UnknownType,
            format!("unknown type {other:?}; expected subscribe, unsubscribe, ping or auth"),
        )),
    }
}

fn channels(value: Option<serde_json::Value>) -> Result<Vec<String>, CommandError> {
    let bad = || {
        CommandError::new(
            ErrorCode::BadRequest,
            "`channels` must be a non-empty array of strings",
        )
    };
    let Some(serde_json::Value::Array(items)) = value else {
        return Err(bad());
    };
    if items.is_empty() {
        return Err(bad());
    }
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(bad()),
        })
        .collect()
}

/// Replies are structs, not `json!` maps, so `type` comes first on the wire.
#[derive(Serialize)]
struct ChannelsReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channels: &'a [String],
}

#[derive(Serialize)]
struct PongReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: &'a str,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: ErrorData<'a>,
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: &'static str,
    message: &'a str,
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("bug: replies serialize infallibly")
}

pub fn reply_subscribed(channels: &[String]) -> String {
    to_json(&ChannelsReply {
        kind: "subscribed",
        channels,
    })
}

pub fn reply_unsubscribed(channels: &[String]) -> String {
    to_json(&ChannelsReply {
        kind: "unsubscribed",
        channels,
    })
}

pub fn reply_pong(timestamp: &str) -> String {
    to_json(&PongReply {
        kind: "pong",
        timestamp,
    })
}

pub fn reply_authenticated() -> String {
    r#"{"type":"authenticated"}"#.to_string()
}

pub fn reply_error(error: &CommandError) -> String {
    to_json(&ErrorReply {
        kind: "error",
        data: ErrorData {
            code: error.code.as_str(),
            message: &error.message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands() {
        let table = [
            (
                r#"{"type":"subscribe","channels":["job.*","a"]}"#,
                Command::Subscribe(vec!["job.*".into(), "a".into()]),
            ),
            (
                r#"{"type":"unsubscribe","channels":["a"]}"#,
                Command::Unsubscribe(vec!["a".into()]),
            ),
            (r#"{"type":"ping"}"#, Command::Ping),
            (r#"{"type":"auth","token":"t"}"#, Command::Auth("t".into())),
            (
                r#" {"channels":["x"],"type":"subscribe","extra":1} "#,
                Command::Subscribe(vec!["x".into()]),
            ),
        ];
        for (text, expected) in table {
            assert_eq!(parse_command(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn errors() {
        let table = [
            ("{nope", ErrorCode::BadJson),
            ("[1,2]", ErrorCode::BadJson),
            ("\"subscribe\"", ErrorCode::BadJson),
            (r#"{"type":"dance"}"#, ErrorCode::UnknownType),
            (r#"{"channels":[]}"#, ErrorCode::UnknownType),
            (r#"{"type":7}"#, ErrorCode::UnknownType),
            (r#"{"type":"subscribe"}"#, ErrorCode::BadRequest),
            (
                r#"{"type":"subscribe","channels":[]}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"subscribe","channels":"a"}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"subscribe","channels":[1]}"#,
                ErrorCode::BadRequest,
            ),
            (r#"{"type":"auth"}"#, ErrorCode::BadRequest),
        ];
        for (text, code) in table {
            assert_eq!(parse_command(text).map_err(|e| e.code), Err(code), "{text}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply_subscribed(&["a.*".into()]),
            r#"{"type":"subscribed","channels":["a.*"]}"#
        );
        let value: serde_json::Value =
            serde_json::from_str(&reply_subscribed(&["a.*".into()])).expect("json");
        assert_eq!(value, json!({"type":"subscribed","channels":["a.*"]}));
        let value: serde_json::Value =
            serde_json::from_str(&reply_error(&CommandError::new(ErrorCode::Forbidden, "no")))
                .expect("json");
        assert_eq!(
            value,
            json!({"type":"error","data":{"code":"forbidden","message":"no"}})
        );
        let value: serde_json::Value =
            serde_json::from_str(&reply_pong("2024-12-22T10:30:00.123Z")).expect("json");
        assert_eq!(
            value,
            json!({"type":"pong","timestamp":"2024-12-22T10:30:00.123Z"})
        );
    }
}
