//! Client wire protocol: JSON text frames, request parsing and reply encoding.
//!
//! Parsing borrows from the received text and keeps `data` as raw JSON, so a publish is
//! never re-serialised on its way to the broker. Encoding builds each outgoing frame as a
//! single string; deliveries are encoded once and shared by all recipients.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::history::Position;
use crate::membership::{Change, Event};

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
    /// History was asked of a channel whose namespace keeps none.
    NoHistory,
    /// A token offered to refresh the connection was refused; the old deadline stands.
    Unauthorized,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 13] = [
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
        ErrorCode::NoHistory,
        ErrorCode::Unauthorized,
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
            ErrorCode::NoHistory => "no_history",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server closes a WebSocket connection; maps to a close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The node is shutting down (1001).
    ShuttingDown,
    /// The outbound queue overflowed (4001).
    SlowConsumer,
    /// A subscription fell behind what the server can send it live (a deliver hook failed
    /// and history could not make up for it): reconnect and recover (4001, as a slow
    /// consumer: clients treat both alike).
    Behind,
    /// No frame from the client within the idle timeout (4002).
    IdleTimeout,
    /// A frame exceeded `limits.max_frame_bytes` (1009).
    FrameTooBig,
    /// A text frame was not valid UTF-8 (1007).
    InvalidUtf8,
    /// The client broke the WebSocket protocol (1002).
    ProtocolError,
    /// The connection's token expired and was not refreshed (4003).
    TokenExpired,
    /// The connection's token was revoked (4004).
    Revoked,
    /// Closed through the backend API (`POST /api/disconnect`) with this code: 4005 or
    /// 4100-4499 tell the client it may reconnect, 4006 or 4500-4999 that it should not.
    Disconnected(u16),
}

impl CloseReason {
    /// WebSocket close code sent to the client.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ShuttingDown => 1001,
            CloseReason::SlowConsumer | CloseReason::Behind => 4001,
            CloseReason::IdleTimeout => 4002,
            CloseReason::FrameTooBig => 1009,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::ProtocolError => 1002,
            CloseReason::TokenExpired => 4003,
            CloseReason::Revoked => 4004,
            CloseReason::Disconnected(code) => code,
        }
    }

    /// Whether a close code of the backend API's range tells the client it may reconnect.
    pub fn may_reconnect(code: u16) -> bool {
        code == 4005 || (4100..4500).contains(&code)
    }

    /// Close reason text sent to the client.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::SlowConsumer => "slow consumer: outbound queue overflowed",
            CloseReason::Behind => "fell behind: reconnect and recover",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::FrameTooBig => "frame exceeds limits.max_frame_bytes",
            CloseReason::InvalidUtf8 => "text frame is not valid UTF-8",
            CloseReason::ProtocolError => "websocket protocol error",
            CloseReason::TokenExpired => "token expired",
            CloseReason::Revoked => "token revoked",
            CloseReason::Disconnected(code) if Self::may_reconnect(code) => {
                "disconnected by server"
            }
            CloseReason::Disconnected(_) => "disconnected by server; do not reconnect",
        }
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
        /// The last position the client saw: recover what it missed since.
        since: Option<Position>,
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
    /// Read a channel's stored messages.
    History {
        /// The channel.
        channel: Cow<'a, str>,
        /// Most messages wanted (clamped to [`crate::history::MAX_READ`]).
        limit: Option<u64>,
        /// Messages after this position; without it, the newest.
        since: Option<Position>,
    },
    /// Extend the connection's life with a new token.
    Refresh {
        /// The new token.
        token: Cow<'a, str>,
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
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
}

/// The shape of `since`.
#[derive(Deserialize)]
struct RawSince<'a> {
    offset: u64,
    #[serde(borrow)]
    epoch: Cow<'a, str>,
}

/// Reads `since`: `{"offset":N,"epoch":E}` (N a non-negative integer, E a string).
fn since_field(v: Option<&RawValue>) -> Result<Option<Position>, String> {
    let Some(v) = v else { return Ok(None) };
    let since: RawSince<'_> = serde_json::from_str(v.get()).map_err(|_| {
        "field `since` must be {\"offset\":N,\"epoch\":E} with N a non-negative integer and E a string"
            .to_owned()
    })?;
    Ok(Some(Position {
        offset: since.offset,
        epoch: since.epoch.as_ref().into(),
    }))
}

/// Reads `limit`: a non-negative integer.
fn limit_field(v: Option<&RawValue>) -> Result<Option<u64>, String> {
    v.map(|v| {
        serde_json::from_str::<u64>(v.get())
            .map_err(|_| "field `limit` must be a non-negative integer".to_owned())
    })
    .transpose()
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

/// The id of a frame refused before it was parsed (too large), if it is a JSON object with a
/// valid `id`: clients match every error to its request by id, also this one. Costs one parse
/// of the frame, which `limits.max_frame_bytes` bounds.
pub fn request_id(text: &str) -> Option<&RawValue> {
    let raw: RawRequest<'_> = serde_json::from_str(text).ok()?;
    raw.id.filter(|v| is_id(v))
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
    let invalid = |m| fail(ErrorCode::InvalidField, m);
    let action = match kind.as_ref() {
        "subscribe" => Action::Subscribe {
            channel: channel()?,
            since: since_field(raw.since).map_err(invalid)?,
        },
        "history" => Action::History {
            channel: channel()?,
            limit: limit_field(raw.limit).map_err(invalid)?,
            since: since_field(raw.since).map_err(invalid)?,
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
        "refresh" => Action::Refresh {
            token: string_field("token", raw.token).map_err(invalid)?,
        },
        other => {
            return Err(fail(
                ErrorCode::UnknownType,
                format!(
                    "unknown request type {other:?}; expected subscribe, unsubscribe, publish, history or refresh"
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
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        server: bool,
    },
    Unsubscribed {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        server: bool,
    },
    Published {
        id: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    History {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        offset: u64,
        epoch: &'a str,
        first: u64,
        messages: Vec<HistoryEntry<'a>>,
        limit: usize,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        clamped: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        code: ErrorCode,
        message: &'a str,
    },
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        expires_at: u64,
    },
    Expiring {
        expires_at: u64,
        in_secs: u64,
    },
    Join {
        channel: &'a str,
        user: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a RawValue>,
    },
    Leave {
        channel: &'a str,
        user: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a RawValue>,
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
    encode(&Reply::Subscribed {
        channel,
        id,
        offset: None,
        epoch: None,
        recovered: None,
        server: false,
    })
}

/// `{"type":"subscribed","channel":C,"server":true}`: the backend subscribed the connection
/// (`POST /api/subscribe`); on a channel with history, with the position it starts after.
pub fn subscribed_by_server(channel: &str, position: Option<&Position>) -> Frame {
    encode(&Reply::Subscribed {
        channel,
        id: None,
        offset: position.map(|p| p.offset),
        epoch: position.map(|p| &*p.epoch),
        recovered: None,
        server: true,
    })
}

/// `{"type":"unsubscribed","channel":C,"server":true}`: the backend ended the subscription
/// (`POST /api/unsubscribe`).
pub fn unsubscribed_by_server(channel: &str) -> Frame {
    encode(&Reply::Unsubscribed {
        channel,
        id: None,
        server: true,
    })
}

/// The `subscribed` reply to a subscribe with `since` on a channel without history:
/// `"recovered":false`, as nothing could be recovered.
pub fn subscribed_without_history(channel: &str, id: Option<&RawValue>) -> Frame {
    encode(&Reply::Subscribed {
        channel,
        id,
        offset: None,
        epoch: None,
        recovered: Some(false),
        server: false,
    })
}

/// The `subscribed` reply on a channel with history: the position the subscription starts
/// after, and, when the client asked to recover, whether it lost nothing.
pub fn subscribed_at(
    channel: &str,
    id: Option<&RawValue>,
    position: &Position,
    recovered: Option<bool>,
) -> Frame {
    encode(&Reply::Subscribed {
        channel,
        id,
        offset: Some(position.offset),
        epoch: Some(&position.epoch),
        recovered,
        server: false,
    })
}

/// One stored message in a `history` reply: its offset and `data` (raw JSON).
#[derive(Serialize)]
pub struct HistoryEntry<'a> {
    /// The message's offset.
    pub offset: u64,
    /// The message as the reader's deliver hook prepared it.
    pub data: &'a RawValue,
}

/// What a `history` reply reports besides the messages.
pub struct HistoryPage<'a> {
    /// The channel's position when it was read.
    pub position: &'a Position,
    /// The oldest offset history held.
    pub first: u64,
    /// The limit applied.
    pub limit: usize,
    /// Whether the asked limit was above [`crate::history::MAX_READ`] and was lowered to it.
    pub clamped: bool,
    /// With `since`: whether the messages follow it with nothing lost.
    pub recovered: Option<bool>,
}

/// `{"type":"history","channel":C,"offset":N,"epoch":E,"first":F,"messages":[..],"limit":L}`.
pub fn history(
    channel: &str,
    id: Option<&RawValue>,
    page: &HistoryPage<'_>,
    messages: Vec<HistoryEntry<'_>>,
) -> Frame {
    encode(&Reply::History {
        channel,
        id,
        offset: page.position.offset,
        epoch: &page.position.epoch,
        first: page.first,
        messages,
        limit: page.limit,
        clamped: page.clamped,
        recovered: page.recovered,
    })
}

/// `{"type":"unsubscribed","channel":C}` (with `id` when the request had one).
pub fn unsubscribed(channel: &str, id: Option<&RawValue>) -> Frame {
    encode(&Reply::Unsubscribed {
        channel,
        id,
        server: false,
    })
}

/// `{"type":"published","id":ID}`: the broker accepted the publish; on a channel with
/// history, with the message's `offset` and `epoch`.
pub fn published(id: &RawValue, position: Option<&Position>) -> Frame {
    encode(&Reply::Published {
        id,
        offset: position.map(|p| p.offset),
        epoch: position.map(|p| &*p.epoch),
    })
}

/// `{"type":"refreshed","expires_at":T}` (with `id` when the request had one): the new token
/// was accepted and the connection now lasts until `T` (Unix seconds).
pub fn refreshed(id: Option<&RawValue>, expires_at: u64) -> Frame {
    encode(&Reply::Refreshed { id, expires_at })
}

/// `{"type":"expiring","expires_at":T,"in_secs":N}`: the connection's token expires at `T`
/// (Unix seconds), in `N` seconds; refresh before then or be closed with 4003.
pub fn expiring(expires_at: u64, in_secs: u64) -> Frame {
    encode(&Reply::Expiring {
        expires_at,
        in_secs,
    })
}

/// `{"type":"error","code":..,"message":..}` (with `id` when known).
pub fn error(rejection: &Rejection, id: Option<&RawValue>) -> Frame {
    encode(&Reply::Error {
        id,
        code: rejection.code,
        message: &rejection.message,
    })
}

/// Encodes a delivery: `{"type":"message","channel":C,"data":DATA}`, and on a channel with
/// history `"offset":N,"epoch":E` after `data`.
///
/// `data` must already be valid JSON; it is copied in verbatim.
pub fn message(channel: &str, data: &[u8], position: Option<&Position>) -> Frame {
    let mut out = Vec::with_capacity(40 + channel.len() + data.len());
    out.extend_from_slice(b"{\"type\":\"message\",\"channel\":");
    serde_json::to_writer(&mut out, channel).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    if let Some(at) = position {
        use std::io::Write;
        write!(out, ",\"offset\":{},\"epoch\":", at.offset).expect("writing to a Vec");
        serde_json::to_writer(&mut out, &*at.epoch).expect("writing to a Vec cannot fail");
    }
    out.push(b'}');
    // The channel went through serde_json and `data` is JSON: the frame is UTF-8.
    String::from_utf8(out).expect("frame is UTF-8").into()
}

/// Encodes a join or leave event: `{"type":"join"|"leave","channel":C,"user":U}` (`U` is null
/// for an anonymous connection), with `"info":I` when the deliver hook rewrote the event to
/// `I` (JSON text).
pub fn event(channel: &str, event: &Event, info: Option<&[u8]>) -> Frame {
    let info = info.and_then(|i| serde_json::from_slice::<&RawValue>(i).ok());
    let user = event.user.as_deref();
    encode(&match event.event {
        Change::Join => Reply::Join {
            channel,
            user,
            info,
        },
        Change::Leave => Reply::Leave {
            channel,
            user,
            info,
        },
    })
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

/// How deeply the arrays and objects of `json` nest (0 for a scalar). `json` must already be
/// valid JSON (a check done by serde, which does not bound the depth of what it skips over):
/// this only counts brackets outside strings, in one pass without recursion.
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut bytes = json.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => {
                // Skip the string; an escaped character (`\"` included) is skipped whole.
                while let Some(&c) = bytes.next() {
                    match c {
                        b'\\' => {
                            bytes.next();
                        }
                        b'"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    deepest
}

/// Refuses JSON `data` nested deeper than `max` with `invalid_json`: plugins (and many
/// clients) parse it recursively, and serde skips it without a depth bound.
pub fn check_depth(data: &[u8], max: usize) -> Result<(), Rejection> {
    let depth = json_depth(data);
    if depth > max {
        return Err(Rejection::new(
            ErrorCode::InvalidJson,
            format!("data nests {depth} levels deep; the limit is limits.max_json_depth = {max}"),
        ));
    }
    Ok(())
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
        let f = message("a\"b", br#"{"k":1}"#, None);
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
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#""[[[""#), 0);
        assert_eq!(json_depth(b"[]"), 1);
        assert_eq!(json_depth(br#"{"a":[1,{"b":[]}],"c":{}}"#), 4);
        assert_eq!(json_depth(br#"["\"[[", "\\", [["]"]]]"#), 3);
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(json_depth(deep.as_bytes()), 1000);
        assert!(check_depth(deep.as_bytes(), 128).is_err());
        assert!(check_depth(b"[[1]]", 2).is_ok());
        assert_eq!(
            check_depth(b"[[[1]]]", 2).unwrap_err().code,
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn non_json_payloads_become_strings() {
        assert_eq!(&*normalize_payload(b"[1,2]"), b"[1,2]");
        assert_eq!(&*normalize_payload(b"hello"), br#""hello""#);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Frames that look like requests, with fields of any JSON shape.
        fn requestish() -> impl Strategy<Value = String> {
            let value = prop_oneof![
                Just("null".to_owned()),
                any::<i64>().prop_map(|n| n.to_string()),
                "[a-z:]{0,8}".prop_map(|s| format!("{s:?}")),
                Just("[1,{}]".to_owned()),
                Just("{\"a\":[]}".to_owned()),
                Just("true".to_owned()),
            ];
            let kind = prop_oneof![
                Just("\"subscribe\"".to_owned()),
                Just("\"unsubscribe\"".to_owned()),
                Just("\"publish\"".to_owned()),
                value.clone(),
            ];
            (
                proptest::option::of(kind),
                proptest::option::of(value.clone()),
                proptest::option::of(value.clone()),
                proptest::option::of(value),
            )
                .prop_map(|(kind, channel, data, id)| {
                    let fields: Vec<String> = [
                        ("type", kind),
                        ("channel", channel),
                        ("data", data),
                        ("id", id),
                    ]
                    .into_iter()
                    .filter_map(|(k, v)| Some(format!("\"{k}\":{}", v?)))
                    .collect();
                    format!("{{{}}}", fields.join(","))
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Arbitrary bytes never panic the parser, and a refusal carries a documented code,
            /// a message and a JSON reply.
            #[test]
            fn any_bytes_parse_or_get_a_documented_code(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                crate::fuzzing::request(&bytes);
            }

            /// Arbitrary text likewise.
            #[test]
            fn any_text_parses_or_gets_a_documented_code(text in any::<String>()) {
                crate::fuzzing::request(text.as_bytes());
            }

            /// Requests with fields of every JSON type: parsed, or refused with a documented
            /// code; an error reply echoes only an id that is a number or a string.
            #[test]
            fn request_shaped_frames_parse_or_get_a_documented_code(text in requestish()) {
                crate::fuzzing::request(text.as_bytes());
            }

            /// A channel name is accepted exactly when it is 1..=64 bytes of ASCII letters,
            /// digits and the configured characters; otherwise `invalid_channel`.
            #[test]
            fn channel_names_follow_the_rules(name in "[ -~é]{0,70}") {
                crate::fuzzing::channel(name.as_bytes());
            }

            /// The depth scan agrees with serde_json's own view of a generated value.
            #[test]
            fn depth_matches_the_structure(value in json_value()) {
                let text = serde_json::to_string(&value).unwrap();
                prop_assert_eq!(json_depth(text.as_bytes()), depth_of(&value));
            }

            /// Any payload becomes valid JSON to embed in a delivery.
            #[test]
            fn any_payload_is_delivered_as_json(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
                let data = normalize_payload(&payload);
                let frame = message("c", &data, None);
                prop_assert!(serde_json::from_str::<serde_json::Value>(frame.as_str()).is_ok());
            }
        }

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i32>().prop_map(serde_json::Value::from),
                "[\\[\\]{}\"\\\\a-z]{0,6}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(8, 64, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4)
                        .prop_map(serde_json::Value::from),
                    proptest::collection::btree_map("[a-z\\[{\"]{0,3}", inner, 0..4)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn depth_of(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
                serde_json::Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
                _ => 0,
            }
        }
    }
}
