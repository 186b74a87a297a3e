//! The `/ws` endpoint: upgrade, then one session per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::node::Node;

mod ratelimit;
mod session;
mod writer;

/// Socket read buffer per connection: small, because idle connections dominate memory.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes tungstenite collects before writing; frames are flushed explicitly in batches.
const WRITE_BUFFER: usize = 16 * 1024;

/// Upgrades an HTTP request to a WebSocket session, or refuses it with a status and reason.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    if node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node is shutting down").into_response();
    }
    let Some(slot) = node.try_connect() else {
        tracing::warn!(%remote, "connection refused: limits.max_connections reached");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let limits = &node.config.limits;
    let tracker = node.sessions.clone();
    ws.max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER.max(limits.max_frame_bytes) * 4)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| tracker.track_future(session::run(socket, node, slot, remote)))
}
