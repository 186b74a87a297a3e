//! Client wire protocol: JSON text frames, request parsing and reply encoding.
//!
//! Parsing borrows from the received text and keeps `data` as raw JSON, so a publish is
//! never re-serialised on its way to the broker. Encoding builds each outgoing frame as a
//! single string; deliveries are encoded once and shared by all recipients.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An encoded, UTF-8-validated text frame, cheap to clone and share between sessions.
pub type Frame = tungstenite::Utf8Bytes;

/// Stable, machine-readable error codes sent in `{"type":"error"}` replies.
///
/// The string forms are part of the public protocol (see `docs/protocol.md`): never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, not a JSON object, or not UTF-8.
    InvalidJson,
    /// The `type` field names no known request.
    UnknownType,
    /// A required field is missing or has the wrong JSON type.
    InvalidField,
    /// The channel name is empty, too long or uses a character outside the allowed set.
    InvalidChannel,
    /// The connection already holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// The frame or its `data` exceeds the configured size limit.
    MessageTooLarge,
    /// The connection publishes faster than its configured rate.
    RateLimited,
    /// A plugin (or policy) refused the operation.
    Forbidden,
    /// A plugin failed (trap, timeout, memory cap, invalid output) while handling the request.
    PluginError,
    /// The broker is unreachable; the operation was not performed and may be retried.
    Unavailable,
    /// An unexpected server-side failure; details are logged, not sent.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::InvalidJson,
        ErrorCode::UnknownType,
        ErrorCode::InvalidField,
        ErrorCode::InvalidChannel,
        ErrorCode::TooManySubscriptions,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Forbidden,
        ErrorCode::PluginError,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PluginError => "plugin_error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the client may not make, with the code and text to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl Rejection {
    /// Builds a rejection from a code and any displayable message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What a client asks for.
#[derive(Debug)]
pub enum Action<'a> {
    /// Start receiving a channel's messages.
    Subscribe {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// Stop receiving a channel's messages.
    Unsubscribe {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// Send `data` to every subscriber of `channel`.
    Publish {
        /// The channel.
        channel: Cow<'a, str>,
        /// The payload as raw JSON, exactly as the client sent it.
        data: &'a RawValue,
    },
}

/// A parsed client request: its action and optional correlation id.
#[derive(Debug)]
pub struct Request<'a> {
    /// The `id` field, raw (a JSON number or string), echoed in replies.
    pub id: Option<&'a RawValue>,
    /// What the client asks for.
    pub action: Action<'a>,
}

/// Every field we read, kept raw so type errors can be reported per field.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// The JSON literal `null`, used when a publish carries no `data` (as the seed server does).
fn json_null() -> &'static RawValue {
    static NULL: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| RawValue::from_string("null".to_owned()).expect("null is JSON"))
}

/// A parse failure, with the request id when it could be recovered so the reply can echo it.
#[derive(Debug)]
pub struct ParseError<'a> {
    /// The id of the failed request, if it was readable.
    pub id: Option<&'a RawValue>,
    /// Why the frame was refused.
    pub rejection: Rejection,
}

/// Parses one client frame.
pub fn parse_request(text: &str) -> Result<Request<'_>, ParseError<'_>> {
    let raw: RawRequest<'_> = serde_json::from_str(text).map_err(|e| ParseError {
        id: None,
        rejection: Rejection::new(
            ErrorCode::InvalidJson,
            if e.classify() == serde_json::error::Category::Data {
                "frame must be a JSON object".to_owned()
            } else {
                format!("malformed JSON: {e}")
            },
        ),
    })?;
    let id = match raw.id {
        Some(v) if is_id(v) => Some(v),
        Some(_) => {
            return Err(ParseError {
                id: None,
                rejection: Rejection::new(
                    ErrorCode::InvalidField,
                    "field `id` must be a number or a string",
                ),
            });
        }
        None => None,
    };
    let fail = |code, message: String| ParseError {
        id,
        rejection: Rejection::new(code, message),
    };
    let kind = string_field("type", raw.kind).map_err(|m| fail(ErrorCode::InvalidField, m))?;
    let channel =
        || string_field("channel", raw.channel).map_err(|m| fail(ErrorCode::InvalidField, m));
    let action = match kind.as_ref() {
        "subscribe" => Action::Subscribe {
            channel: channel()?,
        },
        "unsubscribe" => Action::Unsubscribe {
            channel: channel()?,
        },
        "publish" => Action::Publish {
            channel: channel()?,
            data: match raw.data {
                Some(d) => d,
                None => json_null(),
            },
        },
        other => {
            return Err(fail(
                ErrorCode::UnknownType,
                format!(
                    "unknown request type {other:?}; expected subscribe, unsubscribe or publish"
                ),
            ));
        }
    };
    Ok(Request { id, action })
}

fn is_id(v: &RawValue) -> bool {
    matches!(v.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

fn string_field<'a>(name: &str, v: Option<&'a RawValue>) -> Result<Cow<'a, str>, String> {
    let v = v.ok_or_else(|| format!("missing field `{name}`"))?;
    serde_json::from_str::<Cow<'a, str>>(v.get())
        .map_err(|_| format!("field `{name}` must be a string"))
}

/// Server-to-client frames other than deliveries.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply<'a> {
    Subscribed {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Unsubscribed {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Published {
        id: &'a RawValue,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        code: ErrorCode,
        message: &'a str,
    },
}

fn encode(reply: &Reply<'_>) -> Frame {
    // Serialising these plain structs cannot fail.
    serde_json::to_string(reply)
        .expect("reply serialises")
        .into()
}

/// `{"type":"subscribed","channel":C}` (with `id` when the request had one).
pub fn subscribed(channel: &str, id: Option<&RawValue>) -> Frame {
    encode(&Reply::Subscribed { channel, id })
}

/// `{"type":"unsubscribed","channel":C}` (with `id` when the request had one).
pub fn unsubscribed(channel: &str, id: Option<&RawValue>) -> Frame {
    encode(&Reply::Unsubscribed { channel, id })
}

/// `{"type":"published","id":ID}`: the broker accepted the publish.
pub fn published(id: &RawValue) -> Frame {
    encode(&Reply::Published { id })
}

/// `{"type":"error","code":..,"message":..}` (with `id` when known).
pub fn error(rejection: &Rejection, id: Option<&RawValue>) -> Frame {
    encode(&Reply::Error {
        id,
        code: rejection.code,
        message: &rejection.message,
    })
}

/// Encodes a delivery: `{"type":"message","channel":C,"data":DATA}`.
///
/// `data` must already be valid JSON; it is copied in verbatim.
pub fn message(channel: &str, data: &[u8]) -> Frame {
    let mut out = Vec::with_capacity(40 + channel.len() + data.len());
    out.extend_from_slice(b"{\"type\":\"message\",\"channel\":");
    serde_json::to_writer(&mut out, channel).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.push(b'}');
    // The channel went through serde_json and `data` is JSON: the frame is UTF-8.
    String::from_utf8(out).expect("frame is UTF-8").into()
}

/// Makes any broker payload safe to embed as `data`: valid JSON passes through, anything
/// else (e.g. an external `PUBLISH` of plain text) becomes a JSON string.
pub fn normalize_payload(payload: &[u8]) -> Cow<'_, [u8]> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
        Cow::Borrowed(payload)
    } else {
        let text = String::from_utf8_lossy(payload);
        Cow::Owned(serde_json::to_vec(&text).expect("string serialises"))
    }
}

/// Checks a channel name against the configured length and character set.
pub fn validate_channel(name: &str, max_len: usize, extra_chars: &str) -> Result<(), Rejection> {
    if name.is_empty() {
        return Err(Rejection::new(
            ErrorCode::InvalidChannel,
            "channel name is empty",
        ));
    }
    if name.len() > max_len {
        return Err(Rejection::new(
            ErrorCode::InvalidChannel,
            format!(
                "channel name is {} bytes long; the limit is {max_len}",
                name.len()
            ),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra_chars.contains(*c))
    {
        return Err(Rejection::new(
            ErrorCode::InvalidChannel,
            format!(
                "channel name contains {c:?}; allowed are ASCII letters, digits and {extra_chars:?}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> ErrorCode {
        parse_request(text).unwrap_err().rejection.code
    }

    #[test]
    fn parses_requests_and_keeps_data_raw() {
        let r = parse_request(r#"{"type":"publish","channel":"a","data":{"x": [1, 2]},"id":7}"#)
            .unwrap();
        assert_eq!(r.id.unwrap().get(), "7");
        match r.action {
            Action::Publish { channel, data } => {
                assert_eq!(channel, "a");
                assert_eq!(data.get(), r#"{"x": [1, 2]}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn publish_without_data_publishes_null() {
        let r = parse_request(r#"{"type":"publish","channel":"a"}"#).unwrap();
        assert!(matches!(r.action, Action::Publish { data, .. } if data.get() == "null"));
    }

    #[test]
    fn classifies_bad_frames() {
        assert_eq!(code_of("{"), ErrorCode::InvalidJson);
        assert_eq!(code_of("[1]"), ErrorCode::InvalidJson);
        assert_eq!(code_of(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"channel":"a"}"#), ErrorCode::InvalidField);
        assert_eq!(code_of(r#"{"type":"subscribe"}"#), ErrorCode::InvalidField);
        assert_eq!(
            code_of(r#"{"type":"subscribe","channel":5}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"type":"subscribe","channel":"a","id":[]}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn errors_echo_the_id() {
        let e = parse_request(r#"{"type":"nope","id":"abc"}"#).unwrap_err();
        let frame = error(&e.rejection, e.id);
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v["id"], "abc");
        assert_eq!(v["code"], "unknown_type");
    }

    #[test]
    fn message_frame_is_json_with_escaped_channel() {
        let f = message("a\"b", br#"{"k":1}"#);
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["channel"], "a\"b");
        assert_eq!(v["data"]["k"], 1);
    }

    #[test]
    fn channel_names_are_checked() {
        assert!(validate_channel("chat:room-1", 20, ":-").is_ok());
        assert!(validate_channel("", 20, ":").is_err());
        assert!(validate_channel("a b", 20, ":").is_err());
        assert!(validate_channel("é", 20, ":").is_err());
        assert!(validate_channel("abcdef", 5, ":").is_err());
    }

    #[test]
    fn non_json_payloads_become_strings() {
        assert_eq!(&*normalize_payload(b"[1,2]"), b"[1,2]");
        assert_eq!(&*normalize_payload(b"hello"), br#""hello""#);
    }
}
