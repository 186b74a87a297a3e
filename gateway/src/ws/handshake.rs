//! The WebSocket opening handshake (RFC 6455 section 4.2), done here rather than by axum's
//! `WebSocketUpgrade` so the session owns the byte stream under tungstenite: it reads through
//! [`ReadAhead`](super::read_ahead::ReadAhead), which lets every idle connection keep a small
//! read buffer.

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::read_ahead::ReadAhead;
use crate::error::NotUpgrade;

/// A session's WebSocket, over the upgraded connection's byte stream.
pub type WebSocket = WebSocketStream<ReadAhead<TokioIo<Upgraded>>>;

/// A valid upgrade request: the answer to its key, and the connection to take over once the
/// `101 Switching Protocols` response has gone out.
pub struct Handshake {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NotUpgrade> {
        if parts.method != Method::GET || parts.version > Version::HTTP_11 {
            return Err(NotUpgrade::Method);
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(NotUpgrade::Connection);
        }
        if !is(headers, header::UPGRADE, "websocket") {
            return Err(NotUpgrade::Upgrade);
        }
        if !is(headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(NotUpgrade::Version);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(NotUpgrade::Key)?;
        if !is_valid_key(key.as_bytes()) {
            return Err(NotUpgrade::BadKey);
        }
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotUpgrade::NotUpgradable)?;
        Ok(Self { accept, on_upgrade })
    }
}

impl Handshake {
    /// Accepts: returns the `101` response and starts a task that, once the response is out,
    /// hands the WebSocket to `session`. The task ends there, so an idle connection does not
    /// carry the upgrade's state for its whole life.
    pub fn accept(
        self,
        config: WebSocketConfig,
        session: impl FnOnce(WebSocket) + Send + 'static,
    ) -> Response {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = ReadAhead::new(TokioIo::new(upgraded));
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    session(socket);
                }
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        response
    }
}

/// Whether `key` is base64 (standard alphabet, padded) for exactly 16 bytes.
fn is_valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    let mut decoded = [0u8; 18];
    // 16 bytes are 24 characters; longer input cannot be a valid key (and would not fit).
    key.len() == 24
        && base64::engine::general_purpose::STANDARD.decode_slice(key, &mut decoded) == Ok(16)
}

/// Whether `name` equals `value`, ignoring ASCII case.
fn is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// Whether the comma-separated list in `name` holds `token`, ignoring ASCII case.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_16_bytes_of_base64() {
        // RFC 6455's own example key.
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in [
            &b""[..],
            b"not base64 at all!!!!!!!",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZQ==AAAA",
            b"dGhlIHNhbXBsZSBub25j",
            b"dGhlIHNhbXBsZSBub25jZQ=!",
        ] {
            assert!(!is_valid_key(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn connection_header_is_a_token_list() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, upgraded"),
        );
        assert!(!has_token(&headers, header::CONNECTION, "upgrade"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// A key is accepted exactly when it is base64 for 16 bytes.
            #[test]
            fn keys_are_valid_exactly_when_they_decode_to_16_bytes(key in proptest::collection::vec(any::<u8>(), 0..40)) {
                use base64::Engine as _;
                let decodes = base64::engine::general_purpose::STANDARD
                    .decode(&key)
                    .is_ok_and(|k| k.len() == 16);
                prop_assert_eq!(is_valid_key(&key), decodes);
            }
        }
    }
}
