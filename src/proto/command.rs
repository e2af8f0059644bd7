//! Client JSON commands and the relay's replies, without sockets.

use serde::{Deserialize, Serialize};

/// A command a client sends in a text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe(Subscribe),
    Unsubscribe(Vec<String>),
    Ping,
    Auth(String),
    /// `{"type":"refresh","token":"..."}`: a new JWT for this connection.
    Refresh(String),
}

/// `{"type":"subscribe","channels":[...],"since"?:{...},"snapshot"?:bool}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    pub channels: Vec<String>,
    /// Resume: the position the client last saw.
    pub since: Option<Since>,
    /// Send the last value of every matching channel kept as one.
    pub snapshot: bool,
}

/// A position in the relay's event order: `{"epoch":"E","seq":N}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub epoch: String,
    pub seq: u64,
}

/// Whether a resume could be filled; `reason` when not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    Recovered,
    NotRecovered(&'static str),
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
    since: Option<serde_json::Value>,
    snapshot: Option<serde_json::Value>,
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
        "subscribe" => Ok(Command::Subscribe(Subscribe {
            channels: channels(fields.channels)?,
            since: match fields.since {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => Some(serde_json::from_value(value).map_err(|e| {
                    CommandError::new(
                        ErrorCode::BadRequest,
                        format!("`since` must be {{\"epoch\":\"...\",\"seq\":N}}: {e}"),
                    )
                })?),
            },
            snapshot: match fields.snapshot {
                None => false,
                Some(serde_json::Value::Bool(b)) => b,
                Some(_) => {
                    return Err(CommandError::new(
                        ErrorCode::BadRequest,
                        "`snapshot` must be true or false",
                    ))
                }
            },
        })),
        "unsubscribe" => channels(fields.channels).map(Command::Unsubscribe),
        "ping" => Ok(Command::Ping),
        "auth" | "refresh" => match fields.token {
            Some(serde_json::Value::String(token)) if kind == "auth" => Ok(Command::Auth(token)),
            Some(serde_json::Value::String(token)) => Ok(Command::Refresh(token)),
            _ => Err(CommandError::new(
                ErrorCode::BadRequest,
                format!("`{kind}` needs a string `token`"),
            )),
        },
        other => Err(CommandError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown type {other:?}; expected subscribe, unsubscribe, ping, auth or refresh"
            ),
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

#[derive(Serialize)]
struct SubscribedReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channels: &'a [String],
    epoch: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// The reply to a subscribe: where the subscription starts (`epoch`, `seq`:
/// the last event assigned before it took effect) and, for a resume,
/// whether the gap was filled.
pub fn reply_subscribed(
    channels: &[String],
    epoch: &str,
    seq: u64,
    recovery: Option<Recovery>,
) -> String {
    to_json(&SubscribedReply {
        kind: "subscribed",
        channels,
        epoch,
        seq,
        recovered: recovery.map(|r| r == Recovery::Recovered),
        reason: match recovery {
            Some(Recovery::NotRecovered(reason)) => Some(reason),
            _ => None,
        },
    })
}

#[derive(Serialize)]
struct ResyncReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: ResyncData<'a>,
}

#[derive(Serialize)]
struct ResyncData<'a> {
    reason: &'a str,
    epoch: &'a str,
    seq: u64,
}

/// Events were dropped for this client (`reason`: "overflow" or
/// "dropped"); `seq` is the last dropped. The client resumes or reloads.
pub fn notice_resync(reason: &str, epoch: &str, seq: u64) -> String {
    to_json(&ResyncReply {
        kind: "resync",
        data: ResyncData { reason, epoch, seq },
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

/// Sent when the connection's JWT expires: the client has
/// `auth.jwt.refresh_grace` to send `refresh`.
pub fn notice_refresh_required() -> String {
    r#"{"type":"refresh_required"}"#.to_string()
}

/// The answer to an accepted `refresh`; `unsubscribed` lists the
/// subscriptions the new token's scope no longer covers, which were removed.
pub fn reply_refreshed(unsubscribed: &[String]) -> String {
    if unsubscribed.is_empty() {
        return r#"{"type":"refreshed"}"#.to_string();
    }
    to_json(&UnsubscribedByRefresh {
        kind: "refreshed",
        unsubscribed,
    })
}

#[derive(Serialize)]
struct UnsubscribedByRefresh<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    unsubscribed: &'a [String],
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
                Command::Subscribe(Subscribe {
                    channels: vec!["job.*".into(), "a".into()],
                    ..Subscribe::default()
                }),
            ),
            (
                r#"{"type":"subscribe","channels":["a"],"since":{"epoch":"e1","seq":7},"snapshot":true}"#,
                Command::Subscribe(Subscribe {
                    channels: vec!["a".into()],
                    since: Some(Since {
                        epoch: "e1".into(),
                        seq: 7,
                    }),
                    snapshot: true,
                }),
            ),
            (
                r#"{"type":"unsubscribe","channels":["a"]}"#,
                Command::Unsubscribe(vec!["a".into()]),
            ),
            (r#"{"type":"ping"}"#, Command::Ping),
            (r#"{"type":"auth","token":"t"}"#, Command::Auth("t".into())),
            (
                r#"{"type":"refresh","token":"t"}"#,
                Command::Refresh("t".into()),
            ),
            (
                r#" {"channels":["x"],"type":"subscribe","extra":1,"since":null} "#,
                Command::Subscribe(Subscribe {
                    channels: vec!["x".into()],
                    ..Subscribe::default()
                }),
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
            (r#"{"type":"refresh","token":1}"#, ErrorCode::BadRequest),
            (
                r#"{"type":"subscribe","channels":["a"],"since":{"seq":1}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"subscribe","channels":["a"],"since":{"epoch":"e","seq":-1}}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"subscribe","channels":["a"],"snapshot":"yes"}"#,
                ErrorCode::BadRequest,
            ),
        ];
        for (text, code) in table {
            assert_eq!(parse_command(text).map_err(|e| e.code), Err(code), "{text}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply_subscribed(&["a.*".into()], "e1", 9, None),
            r#"{"type":"subscribed","channels":["a.*"],"epoch":"e1","seq":9}"#
        );
        assert_eq!(
            reply_subscribed(&["a".into()], "e1", 9, Some(Recovery::Recovered)),
            r#"{"type":"subscribed","channels":["a"],"epoch":"e1","seq":9,"recovered":true}"#
        );
        let value: serde_json::Value = serde_json::from_str(&reply_subscribed(
            &["a".into()],
            "e1",
            0,
            Some(Recovery::NotRecovered("gone")),
        ))
        .expect("json");
        assert_eq!(
            value,
            json!({"type":"subscribed","channels":["a"],"epoch":"e1","seq":0,"recovered":false,"reason":"gone"})
        );
        assert_eq!(
            notice_resync("overflow", "e1", 12),
            r#"{"type":"resync","data":{"reason":"overflow","epoch":"e1","seq":12}}"#
        );
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
