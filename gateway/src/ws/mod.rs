//! The `/ws` endpoint: upgrade, then one session per connection.

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::node::Node;
use crate::plugins;
use crate::protocol::ErrorCode;
use crate::wire::Peer;

mod handshake;
mod link;
mod ratelimit;
mod read_ahead;
mod session;

use handshake::Handshake;

/// tungstenite's read buffer per connection: tiny, because idle connections dominate memory;
/// it grows to the largest frame the connection received. tungstenite takes at most this
/// much per read, so [`read_ahead::ReadAhead`] reads the socket in larger gulps beneath it.
/// 4 KiB -> 1 KiB took 10k idle connections from 12.4 to 9.5 KiB each, 512 B and 128 B
/// saved 512 and 384 B more.
const READ_BUFFER: usize = 128;
/// Bytes tungstenite collects before writing. Only control frames (pings, the close) go
/// through it: deliveries and replies are written by the outbox's lane (`crate::outbox`).
const WRITE_BUFFER: usize = 16 * 1024;

/// Upgrades an HTTP request to a WebSocket session, or refuses it with a status and reason.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    uri: Uri,
    handshake: Handshake,
) -> Response {
    let remote = peer.remote;
    if node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node is shutting down").into_response();
    }
    let Some(slot) = node.try_connect() else {
        tracing::warn!(%remote, "connection refused: limits.max_connections reached");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    if let Err(e) = node
        .auth
        .check_origin(headers.get("origin").and_then(|v| v.to_str().ok()))
    {
        tracing::info!(%remote, reason = %e, "connection refused");
        return (StatusCode::FORBIDDEN, e.to_string()).into_response();
    }
    let token = bearer(&headers).or_else(|| query_token(uri.query()));
    let identity = match node.auth.authenticate(token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::info!(%remote, reason = %e, "connection refused");
            return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
        }
    };
    let plugins = node.plugins.current();
    let info = plugins::ConnectInfo {
        remote_addr: remote.to_string(),
        headers: plugins
            .forward_headers()
            .iter()
            .filter_map(|name| {
                let value = headers.get(name.as_str())?.to_str().ok()?;
                Some((name.clone(), value.to_owned()))
            })
            .collect(),
        query: uri.query().unwrap_or_default().to_owned(),
        identity,
    };
    let identity = match plugins.connect(info) {
        Ok(identity) => identity,
        Err(r) => {
            tracing::info!(%remote, code = %r.code, reason = %r.message, "connection refused by plugin");
            let status = if r.code == ErrorCode::Forbidden {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            return (status, format!("{}: {}", r.code, r.message)).into_response();
        }
    };
    let limits = &node.config.limits;
    let tracker = node.sessions.clone();
    let config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER.max(limits.max_frame_bytes) * 4);
    let identity = plugins::shared_identity(identity);
    handshake.accept(config, move |socket| {
        tracker.spawn(session::run(socket, slot, peer, identity));
    })
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The `token` parameter of the query string.
fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}
