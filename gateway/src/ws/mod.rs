//! The WebSocket transport: the `/ws` endpoint (upgrade, then one session per connection),
//! and the write end of a connection: its shared socket ([`socket`]), its bounded outbound
//! queue ([`outbox`], the hub's [`crate::hub::Sink`]) and the fan-out lanes that write queues
//! to sockets ([`lanes`]).

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::UpgradeRefused;
use crate::node::Node;
use crate::plugins;
use socket::Peer;

mod handshake;
pub mod lanes;
mod link;
pub mod outbox;
mod ratelimit;
mod read_ahead;
mod recovery;
mod session;
pub mod socket;

use handshake::Handshake;

/// tungstenite's read buffer per connection: tiny, because idle connections dominate memory;
/// it grows to the largest frame the connection received. tungstenite takes at most this
/// much per read, so [`read_ahead::ReadAhead`] reads the socket in larger gulps beneath it
/// (docs/benchmarks.md, "read buffer").
const READ_BUFFER: usize = 128;
/// Bytes tungstenite collects before writing. Only control frames (pings, the close) go
/// through it: deliveries and replies are written by the outbox's lane ([`lanes`]).
const WRITE_BUFFER: usize = 16 * 1024;

/// What the `/ws` endpoint serves with: the node, and the lanes that write its sessions'
/// sockets.
#[derive(Clone)]
pub struct Endpoint {
    /// The node.
    pub node: Arc<Node>,
    /// The fan-out lanes.
    pub lanes: Arc<lanes::Lanes>,
}

/// The `/ws` route.
pub fn router(endpoint: Endpoint) -> axum::Router {
    axum::Router::new()
        .route("/ws", axum::routing::get(upgrade))
        .with_state(endpoint)
}

/// Upgrades an HTTP request to a WebSocket session, or refuses it with a status and reason
/// ([`UpgradeRefused`]).
pub async fn upgrade(
    State(Endpoint { node, lanes }): State<Endpoint>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    uri: Uri,
    handshake: Handshake,
) -> Result<Response, UpgradeRefused> {
    let remote = peer.remote;
    if node.shutdown.is_cancelled() {
        return Err(UpgradeRefused::ShuttingDown);
    }
    let Some(slot) = node.try_connect() else {
        tracing::warn!(%remote, "connection refused: limits.max_connections reached");
        return Err(UpgradeRefused::TooManyConnections);
    };
    let refused = |e: UpgradeRefused| {
        tracing::info!(%remote, reason = %e, "connection refused");
        e
    };
    node.auth
        .check_origin(headers.get("origin").and_then(|v| v.to_str().ok()))
        .map_err(|e| refused(e.into()))?;
    let query = query_token(uri.query());
    let token = crate::auth::bearer(&headers).or(query.as_deref());
    let verified = node
        .auth
        .authenticate(token)
        .map_err(|e| refused(e.into()))?;
    let plugins = node.plugins.current();
    let forwarded: Vec<(&str, &str)> = plugins
        .forward_headers()
        .iter()
        .filter_map(|name| Some((name.as_str(), headers.get(name.as_str())?.to_str().ok()?)))
        .collect();
    let remote_addr = remote.to_string();
    let identity = plugins
        .connect(plugins::Connecting {
            remote_addr: &remote_addr,
            headers: &forwarded,
            query: uri.query().unwrap_or_default(),
            identity: &verified.identity,
        })
        .map_err(|r| refused(UpgradeRefused::Plugin(r)))?;
    if let Some(grant) = &verified.grant
        && !node.allows(&identity, grant)
    {
        return Err(refused(crate::auth::AuthError::Revoked.into()));
    }
    let limits = &node.config.limits;
    if let Some(user) = &identity.user
        && limits.max_connections_per_user > 0
    {
        // Presence is the cluster's count; while it cannot answer, connections are let in
        // (a limit must not lock every user out during a Redis outage).
        match node.presence.user(user).await {
            Ok(held) if held.len() >= limits.max_connections_per_user => {
                return Err(refused(UpgradeRefused::TooManyForUser(
                    limits.max_connections_per_user,
                )));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "per-user limit not checked"),
        }
    }
    let tracker = node.sessions.clone();
    let config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER.max(limits.max_frame_bytes) * 4);
    let identity = identity.shared();
    let grant = verified.grant.map(Arc::new);
    let lane = lanes.pick(slot.id);
    Ok(handshake.accept(config, move |socket| {
        tracker.spawn(session::run(socket, slot, peer, identity, grant, lane));
    }))
}

/// The `token` parameter of the query string.
fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// Runs the opening handshake's checks on a raw HTTP request head (for the fuzz targets and
/// property tests): a request with the four headers right is refused only for want of a
/// connection to take over (426); anything else with 400 or 405 and a reason.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_handshake(head: &[u8]) {
    use axum::extract::FromRequestParts;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use futures_util::FutureExt;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(head) else {
        return;
    };
    let mut request = axum::http::Request::builder()
        .method(parsed.method.unwrap_or("GET"))
        .uri(parsed.path.unwrap_or("/ws"));
    for h in parsed.headers.iter() {
        request = request.header(h.name, h.value);
    }
    let Ok(request) = request.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let refused = Handshake::from_request_parts(&mut parts, &())
        .now_or_never()
        .expect("the handshake's checks do not wait")
        .err()
        .expect("no connection to take over here");
    let reason = refused.to_string();
    let status = refused.into_response().status();
    assert!(
        [
            StatusCode::BAD_REQUEST,
            StatusCode::METHOD_NOT_ALLOWED,
            StatusCode::UPGRADE_REQUIRED
        ]
        .contains(&status),
        "{status}"
    );
    assert!(!reason.is_empty());
}

/// Reads `bytes` as a session reads its client's stream after the handshake (its read buffer
/// under the read-ahead, frames of at most `max_frame` bytes) until the end; returns the close
/// a read error calls for, if any (for the fuzz targets and property tests).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn read_all(bytes: &[u8], max_frame: usize) -> Option<crate::protocol::CloseReason> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(bytes.len().max(1));
        client
            .write_all(bytes)
            .await
            .expect("the pipe takes it all");
        drop(client);
        let config = WebSocketConfig::default()
            .max_message_size(Some(max_frame))
            .max_frame_size(Some(max_frame))
            .read_buffer_size(READ_BUFFER);
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            read_ahead::ReadAhead::new(server),
            Role::Server,
            Some(config),
        )
        .await;
        loop {
            match ws.next().await {
                None => return None,
                Some(Ok(_)) => {}
                Some(Err(e)) => return session::close_reason(e),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    /// One frame as a client might send it: any opcode and flags, masked or not, any payload
    /// (a close frame with any code and reason, text that may not be UTF-8).
    fn frame() -> impl Strategy<Value = Vec<u8>> {
        (
            0u8..16,
            any::<[bool; 4]>(),
            proptest::option::of(any::<[u8; 4]>()),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(opcode, [is_final, rsv1, rsv2, rsv3], mask, payload)| {
                let header = FrameHeader {
                    is_final,
                    rsv1,
                    rsv2,
                    rsv3,
                    opcode: OpCode::from(opcode),
                    mask,
                };
                let mut bytes = Vec::new();
                Frame::from_payload(header, payload.into())
                    .format(&mut bytes)
                    .expect("formats");
                bytes
            })
    }

    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Upgrade".to_owned()),
            Just("websocket".to_owned()),
            Just("13".to_owned()),
            Just("dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
            "[ -~]{0,30}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Whatever bytes a client sends after the handshake end in messages, then the end of
        /// the stream or a documented close: never a panic.
        #[test]
        fn any_bytes_end_in_a_documented_way(
            frames in proptest::collection::vec(frame(), 0..8),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes: Vec<u8> = frames.concat();
            bytes.extend_from_slice(&garbage);
            crate::fuzzing::frames(&bytes);
        }

        /// Any request to `/ws` with any of the four headers (or none) is answered with a
        /// documented status and a reason.
        #[test]
        fn any_upgrade_request_is_answered(
            method in prop_oneof![Just("GET"), Just("POST"), Just("HEAD")],
            headers in proptest::collection::vec((0usize..4, header_value()), 0..6),
        ) {
            let names = ["Connection", "Upgrade", "Sec-WebSocket-Version", "Sec-WebSocket-Key"];
            let mut head = format!("{method} /ws HTTP/1.1\r\nHost: gw\r\n");
            for (i, value) in &headers {
                head.push_str(&format!("{}: {value}\r\n", names[*i]));
            }
            head.push_str("\r\n");
            crate::fuzzing::handshake(head.as_bytes());
        }

        /// Arbitrary bytes as a request head.
        #[test]
        fn any_head_is_answered(head in proptest::collection::vec(any::<u8>(), 0..200)) {
            crate::fuzzing::handshake(&head);
        }
    }
}
