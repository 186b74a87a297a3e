//! Checks for the parsers that take untrusted bytes, shared by the property tests and the
//! fuzz targets in `fuzz/` (feature `fuzzing`). Each feeds its input to one parser and
//! panics when the parser breaks its contract: a panic inside it, or an answer that is not
//! one of the documented ones (docs/protocol.md).

use crate::protocol::CloseReason;
use crate::protocol::{self, ErrorCode};

/// The codes a client frame that cannot be parsed may get.
const PARSE_CODES: [ErrorCode; 3] = [
    ErrorCode::InvalidJson,
    ErrorCode::InvalidField,
    ErrorCode::UnknownType,
];

/// What a session may close a connection with after a read error.
const READ_CLOSES: [CloseReason; 3] = [
    CloseReason::ProtocolError,
    CloseReason::InvalidUtf8,
    CloseReason::FrameTooBig,
];

/// A client frame: parsed, or refused with a documented code, a message and an error reply
/// that is JSON.
pub fn request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match protocol::parse_request(text) {
        Ok(request) => {
            if let Some(id) = request.id {
                assert!(id.get().starts_with('"') || id.get().parse::<f64>().is_ok());
            }
        }
        Err(e) => {
            assert!(PARSE_CODES.contains(&e.rejection.code), "{:?}", e.rejection);
            assert!(!e.rejection.message.is_empty());
            let reply = protocol::error(&e.rejection, e.id);
            serde_json::from_str::<serde_json::Value>(reply.as_str()).expect("replies are JSON");
        }
    }
    // Documented for valid JSON, but must survive anything.
    let _ = protocol::json_depth(data);
}

/// A channel name: accepted exactly when it is 1..=64 bytes of ASCII letters, digits and the
/// default extra characters; otherwise `invalid_channel`.
pub fn channel(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let extra = ":_-.@/=";
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    match protocol::validate_channel(name, 64, extra) {
        Ok(()) => assert!(valid, "{name:?} accepted"),
        Err(r) => {
            assert!(!valid, "{name:?} refused");
            assert_eq!(r.code, ErrorCode::InvalidChannel);
        }
    }
}

/// An HTTP request head to `/ws`: the handshake either takes it (all four headers right) or
/// refuses it with 400, 405 or 426 and a reason.
pub fn handshake(data: &[u8]) {
    crate::ws::check_handshake(data);
}

/// Bytes a client sends after the handshake, read as the session reads them (its small read
/// buffer under the read-ahead, a 200-byte frame limit): messages, then the end of the stream
/// or an error the session answers with a documented close code or none.
pub fn frames(data: &[u8]) {
    if let Some(reason) = crate::ws::read_all(data, 200) {
        assert!(READ_CLOSES.contains(&reason), "{reason:?}");
    }
}
