//! The wire format: published payloads and the frames a server sends back.
//!
//! Client frames follow `docs/protocol.md` (`subscribe`, `publish` with an optional `id`).
//! Server frames are classified leniently so that the Node `ws` seed server works too: a
//! delivery is any object with `channel` and `data` whose `type` is absent or `"message"`.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The fields the load generator puts in every published `data` object (plus `pad`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Payload {
    /// Publisher id.
    #[serde(rename = "pub")]
    pub publisher: u64,
    /// Sequence number, per publisher, from 0.
    pub seq: u64,
    /// Send time: nanoseconds since the process-wide clock base.
    pub ts: u64,
}

/// Bytes of `,"pad":""` (the padding field around its content).
const PAD_OVERHEAD: usize = 9;

/// Writes `payload` as a JSON object padded to `size` bytes (when `size` allows it).
pub fn write_payload(out: &mut String, payload: &Payload, size: usize) {
    let start = out.len();
    let _ = write!(
        out,
        "{{\"pub\":{},\"seq\":{},\"ts\":{}",
        payload.publisher, payload.seq, payload.ts
    );
    let used = out.len() - start + 1; // + closing brace
    if used + PAD_OVERHEAD <= size {
        out.push_str(",\"pad\":\"");
        let n = size - used - PAD_OVERHEAD;
        out.extend(std::iter::repeat_n('x', n));
        out.push('"');
    }
    out.push('}');
}

/// A `subscribe` request; `channel_json` is the channel as a JSON string (with quotes).
pub fn subscribe_frame(channel_json: &str) -> String {
    format!("{{\"type\":\"subscribe\",\"channel\":{channel_json}}}")
}

/// A `publish` request carrying `payload` padded to `size` bytes, with `id` when given.
pub fn publish_frame(
    channel_json: &str,
    payload: &Payload,
    size: usize,
    id: Option<u64>,
) -> String {
    let mut out = String::with_capacity(size + 64);
    out.push_str("{\"type\":\"publish\",");
    if let Some(id) = id {
        let _ = write!(out, "\"id\":{id},");
    }
    let _ = write!(out, "\"channel\":{channel_json},\"data\":");
    write_payload(&mut out, payload, size);
    out.push('}');
    out
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
}

/// A server frame, as far as the load generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message on a channel; `payload` is `None` when `data` is not one of ours.
    Delivery {
        /// The channel it was delivered on.
        channel: Cow<'a, str>,
        /// The parsed load generator fields of `data`.
        payload: Option<Payload>,
    },
    /// `{"type":"subscribed","channel":C}`.
    Subscribed {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// `{"type":"unsubscribed","channel":C}`.
    Unsubscribed {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// `{"type":"published","id":N}`.
    Published {
        /// The echoed id, when numeric.
        id: Option<u64>,
    },
    /// `{"type":"error",...}`: Switchyard's `code` or the seed server's `error` text.
    Error {
        /// The echoed id, when numeric.
        id: Option<u64>,
        /// The error code or text.
        code: String,
    },
    /// Anything else (other replies, non-JSON text).
    Other,
}

fn numeric_id(raw: Option<&RawValue>) -> Option<u64> {
    raw.and_then(|r| r.get().parse().ok())
}

/// Classifies one text frame.
pub fn parse_frame(text: &str) -> Frame<'_> {
    let Ok(raw) = serde_json::from_str::<RawFrame<'_>>(text) else {
        return Frame::Other;
    };
    match raw.kind.as_deref() {
        None | Some("message") => match (raw.channel, raw.data) {
            (Some(channel), Some(data)) => Frame::Delivery {
                channel,
                payload: serde_json::from_str(data.get()).ok(),
            },
            _ => Frame::Other,
        },
        Some("subscribed") => match raw.channel {
            Some(channel) => Frame::Subscribed { channel },
            None => Frame::Other,
        },
        Some("unsubscribed") => match raw.channel {
            Some(channel) => Frame::Unsubscribed { channel },
            None => Frame::Other,
        },
        Some("published") => Frame::Published {
            id: numeric_id(raw.id),
        },
        Some("error") => Frame::Error {
            id: numeric_id(raw.id),
            code: raw
                .code
                .or(raw.error)
                .map(Cow::into_owned)
                .unwrap_or_else(|| "error".to_owned()),
        },
        Some(_) => Frame::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Payload = Payload {
        publisher: 3,
        seq: 12345,
        ts: 987_654_321,
    };

    #[test]
    fn payload_is_padded_to_size_and_parses_back() {
        // 36 bytes without padding, 45 with an empty `pad`.
        for size in [45, 46, 64, 256, 1000] {
            let mut s = String::new();
            write_payload(&mut s, &P, size);
            assert_eq!(s.len(), size, "{s}");
            let back: Payload = serde_json::from_str(&s).unwrap();
            assert_eq!(back, P);
        }
        // Too small to pad: the bare fields.
        for size in [1, 44] {
            let mut s = String::new();
            write_payload(&mut s, &P, size);
            assert_eq!(s, r#"{"pub":3,"seq":12345,"ts":987654321}"#);
        }
    }

    #[test]
    fn publish_frame_is_valid_json() {
        let f = publish_frame("\"bench:1\"", &P, 256, Some(7));
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["type"], "publish");
        assert_eq!(v["channel"], "bench:1");
        assert_eq!(v["id"], 7);
        assert_eq!(v["data"]["seq"], 12345);
        assert_eq!(serde_json::to_string(&v["data"]).unwrap().len(), 256);
        let f = publish_frame("\"bench:1\"", &P, 64, None);
        assert!(!f.contains("\"id\""));
        assert_eq!(
            subscribe_frame("\"bench:0\""),
            r#"{"type":"subscribe","channel":"bench:0"}"#
        );
    }

    #[test]
    fn deliveries_from_both_servers() {
        let ours = r#"{"type":"message","channel":"bench:1","data":{"pub":3,"seq":12345,"ts":987654321,"pad":"xx"}}"#;
        let seed = r#"{"channel":"bench:1","data":{"pad":"x","ts":987654321,"seq":12345,"pub":3},"extra":1}"#;
        for f in [ours, seed] {
            assert_eq!(
                parse_frame(f),
                Frame::Delivery {
                    channel: "bench:1".into(),
                    payload: Some(P)
                }
            );
        }
        assert_eq!(
            parse_frame(r#"{"type":"message","channel":"c","data":"hello"}"#),
            Frame::Delivery {
                channel: "c".into(),
                payload: None
            }
        );
        assert_eq!(
            parse_frame(r#"{"type":"message","channel":"a\"b","data":{}}"#),
            Frame::Delivery {
                channel: "a\"b".into(),
                payload: None
            }
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse_frame(r#"{"type":"subscribed","channel":"bench:0"}"#),
            Frame::Subscribed {
                channel: "bench:0".into()
            }
        );
        assert_eq!(
            parse_frame(r#"{"type":"published","id":42}"#),
            Frame::Published { id: Some(42) }
        );
        assert_eq!(
            parse_frame(r#"{"type":"published","id":"x"}"#),
            Frame::Published { id: None }
        );
        assert_eq!(
            parse_frame(r#"{"type":"error","id":9,"code":"rate_limited","message":"slow down"}"#),
            Frame::Error {
                id: Some(9),
                code: "rate_limited".into()
            }
        );
        assert_eq!(
            parse_frame(r#"{"type":"error","error":"invalid JSON"}"#),
            Frame::Error {
                id: None,
                code: "invalid JSON".into()
            }
        );
        assert_eq!(
            parse_frame(r#"{"type":"unsubscribed","channel":"x"}"#),
            Frame::Unsubscribed {
                channel: "x".into()
            }
        );
        assert_eq!(parse_frame("not json"), Frame::Other);
        assert_eq!(parse_frame(r#"{"channel":"x"}"#), Frame::Other);
    }
}
