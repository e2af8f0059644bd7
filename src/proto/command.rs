//! Client JSON commands and the relay's replies, without sockets.

use serde::{Deserialize, Serialize};

/// A command as read: its `id`, if it carried a valid one, and the command
/// or why it cannot be carried out. The id is echoed in the reply either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: Option<CommandId>,
    pub command: Result<Command, CommandError>,
}

/// The `id` a client put on a command, echoed in its reply or error so the
/// client knows which command failed. A string of at most
/// `limits.max_command_id` bytes, or an integer that fits a signed or
/// unsigned 64-bit JSON integer; on the wire exactly as it came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CommandId {
    Text(Box<str>),
    Unsigned(u64),
    Negative(i64),
}

impl CommandId {
    fn from_json(value: serde_json::Value, max_length: usize) -> Result<CommandId, CommandError> {
        let bad = |what: &str| {
            CommandError::new(
                ErrorCode::BadRequest,
                format!(
                    "`id` {what}; it must be a string of at most {max_length} bytes \
                     (limits.max_command_id) or an integer between -2^63 and 2^64-1"
                ),
            )
        };
        match value {
            serde_json::Value::String(text) if text.len() <= max_length => {
                Ok(CommandId::Text(text.into()))
            }
            serde_json::Value::String(text) => {
                Err(bad(&format!("is a string of {} bytes", text.len())))
            }
            serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Ok(CommandId::Unsigned(u)),
                (None, Some(i)) => Ok(CommandId::Negative(i)),
                _ => Err(bad(&format!("is {n}, not a 64-bit integer"))),
            },
            other => Err(bad(&format!("is {}", json_kind(&other)))),
        }
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

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

/// Reads a command and its `id` (ids over `max_id_length` bytes are refused).
pub fn parse_command(text: &str, max_id_length: usize) -> Request {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            let error = CommandError::new(ErrorCode::BadJson, format!("invalid JSON: {e}"));
            return Request {
                id: None,
                command: Err(error),
            };
        }
    };
    let serde_json::Value::Object(mut object) = value else {
        let error = CommandError::new(ErrorCode::BadJson, "a command must be a JSON object");
        return Request {
            id: None,
            command: Err(error),
        };
    };
    // A null id is no id, as in JSON-RPC clients that always send the field.
    let id = match object.remove("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(value) => match CommandId::from_json(value, max_id_length) {
            Ok(id) => Some(id),
            Err(error) => {
                return Request {
                    id: None,
                    command: Err(error),
                }
            }
        },
    };
    Request {
        id,
        command: command_of(serde_json::Value::Object(object)),
    }
}

fn command_of(value: serde_json::Value) -> Result<Command, CommandError> {
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
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a CommandId>,
    channels: &'a [String],
}

#[derive(Serialize)]
struct PongReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a CommandId>,
    timestamp: &'a str,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a CommandId>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a CommandId>,
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
    id: Option<&CommandId>,
) -> String {
    to_json(&SubscribedReply {
        kind: "subscribed",
        id,
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

pub fn reply_unsubscribed(channels: &[String], id: Option<&CommandId>) -> String {
    to_json(&ChannelsReply {
        kind: "unsubscribed",
        id,
        channels,
    })
}

pub fn reply_pong(timestamp: &str, id: Option<&CommandId>) -> String {
    to_json(&PongReply {
        kind: "pong",
        id,
        timestamp,
    })
}

#[derive(Serialize)]
struct AuthenticatedReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a CommandId>,
}

pub fn reply_authenticated(id: Option<&CommandId>) -> String {
    to_json(&AuthenticatedReply {
        kind: "authenticated",
        id,
    })
}

/// Sent when the connection's JWT expires: the client has
/// `auth.jwt.refresh_grace` to send `refresh`.
pub fn notice_refresh_required() -> String {
    r#"{"type":"refresh_required"}"#.to_string()
}

/// The answer to an accepted `refresh`; `unsubscribed` lists the
/// subscriptions the new token's scope no longer covers, which were removed.
pub fn reply_refreshed(unsubscribed: &[String], id: Option<&CommandId>) -> String {
    to_json(&RefreshedReply {
        kind: "refreshed",
        id,
        unsubscribed,
    })
}

#[derive(Serialize)]
struct RefreshedReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a CommandId>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    unsubscribed: &'a [String],
}

pub fn reply_error(error: &CommandError, id: Option<&CommandId>) -> String {
    to_json(&ErrorReply {
        kind: "error",
        id,
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
            let request = parse_command(text, 64);
            assert_eq!(request.command, Ok(expected), "{text}");
            assert_eq!(request.id, None, "{text}");
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
            let command = parse_command(text, 64).command;
            assert_eq!(command.map_err(|e| e.code), Err(code), "{text}");
        }
    }

    #[test]
    fn ids_are_read_within_their_limits() {
        let long = "x".repeat(64);
        let table = [
            (
                r#"{"type":"ping","id":"a-1"}"#.to_string(),
                Some(CommandId::Text("a-1".into())),
            ),
            (
                r#"{"id":0,"type":"ping"}"#.to_string(),
                Some(CommandId::Unsigned(0)),
            ),
            (
                r#"{"type":"ping","id":18446744073709551615}"#.to_string(),
                Some(CommandId::Unsigned(u64::MAX)),
            ),
            (
                r#"{"type":"ping","id":-9223372036854775808}"#.to_string(),
                Some(CommandId::Negative(i64::MIN)),
            ),
            (r#"{"type":"ping","id":null}"#.to_string(), None),
            (
                format!(r#"{{"type":"ping","id":"{long}"}}"#),
                Some(CommandId::Text(long.clone().into())),
            ),
        ];
        for (text, id) in table {
            let request = parse_command(&text, 64);
            assert_eq!(request.command, Ok(Command::Ping), "{text}");
            assert_eq!(request.id, id, "{text}");
        }
        // An id the relay cannot echo faithfully is refused, naming the limit;
        // the command is not carried out.
        let refused = [
            format!(r#"{{"type":"ping","id":"{long}x"}}"#),
            r#"{"type":"ping","id":18446744073709551616}"#.to_string(),
            r#"{"type":"ping","id":-9223372036854775809}"#.to_string(),
            r#"{"type":"ping","id":1.5}"#.to_string(),
            r#"{"type":"ping","id":true}"#.to_string(),
            r#"{"type":"ping","id":[1]}"#.to_string(),
            r#"{"type":"ping","id":{"a":1}}"#.to_string(),
        ];
        for text in refused {
            let request = parse_command(&text, 64);
            assert_eq!(request.id, None, "{text}");
            let error = request.command.expect_err(&text);
            assert_eq!(error.code, ErrorCode::BadRequest, "{text}");
            assert!(
                error.message.contains("limits.max_command_id"),
                "{text}: {}",
                error.message
            );
        }
        // The id comes back with the command's own error.
        let request = parse_command(r#"{"type":"subscribe","id":"s1"}"#, 64);
        assert_eq!(request.id, Some(CommandId::Text("s1".into())));
        assert_eq!(
            request.command.map_err(|e| e.code),
            Err(ErrorCode::BadRequest)
        );
    }

    #[test]
    fn replies_echo_the_id_second() {
        let id = CommandId::Text("c\"7".into());
        let error = CommandError::new(ErrorCode::Forbidden, "no");
        let table = [
            (
                reply_subscribed(&["a".into()], "e1", 9, None, Some(&id)),
                r#"{"type":"subscribed","id":"c\"7","channels":["a"],"epoch":"e1","seq":9}"#,
            ),
            (
                reply_unsubscribed(&["a".into()], Some(&CommandId::Unsigned(3))),
                r#"{"type":"unsubscribed","id":3,"channels":["a"]}"#,
            ),
            (
                reply_pong("T", Some(&CommandId::Negative(-2))),
                r#"{"type":"pong","id":-2,"timestamp":"T"}"#,
            ),
            (
                reply_authenticated(Some(&id)),
                r#"{"type":"authenticated","id":"c\"7"}"#,
            ),
            (reply_authenticated(None), r#"{"type":"authenticated"}"#),
            (
                reply_error(&error, Some(&CommandId::Unsigned(u64::MAX))),
                r#"{"type":"error","id":18446744073709551615,"data":{"code":"forbidden","message":"no"}}"#,
            ),
        ];
        for (reply, expected) in table {
            assert_eq!(reply, expected);
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply_subscribed(&["a.*".into()], "e1", 9, None, None),
            r#"{"type":"subscribed","channels":["a.*"],"epoch":"e1","seq":9}"#
        );
        assert_eq!(
            reply_subscribed(&["a".into()], "e1", 9, Some(Recovery::Recovered), None),
            r#"{"type":"subscribed","channels":["a"],"epoch":"e1","seq":9,"recovered":true}"#
        );
        let value: serde_json::Value = serde_json::from_str(&reply_subscribed(
            &["a".into()],
            "e1",
            0,
            Some(Recovery::NotRecovered("gone")),
            None,
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
        let value: serde_json::Value = serde_json::from_str(&reply_error(
            &CommandError::new(ErrorCode::Forbidden, "no"),
            None,
        ))
        .expect("json");
        assert_eq!(
            value,
            json!({"type":"error","data":{"code":"forbidden","message":"no"}})
        );
        let value: serde_json::Value =
            serde_json::from_str(&reply_pong("2024-12-22T10:30:00.123Z", None)).expect("json");
        assert_eq!(
            value,
            json!({"type":"pong","timestamp":"2024-12-22T10:30:00.123Z"})
        );
    }
}
