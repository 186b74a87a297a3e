//! Plain HTTP endpoints: liveness, readiness, and the backend API (publish, history,
//! presence, and control of live connections: disconnect, unsubscribe, subscribe, revoke).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::commands::{self, Command, Revocation};
use crate::error::ApiError;
use crate::identity::Identity;
use crate::node::Node;
use crate::protocol::{CloseReason, ErrorCode, Rejection};

/// Routes of the backend API (`/api/...`). The key is checked before anything else, the body
/// included: a request without it is refused without reading what it sends.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/publish", post(publish))
        .route("/api/history/{channel}", get(history))
        .route("/api/presence/users/{user}", get(presence_user))
        .route("/api/presence/channels/{channel}", get(presence_channel))
        .route("/api/disconnect", post(disconnect))
        .route("/api/unsubscribe", post(unsubscribe))
        .route("/api/subscribe", post(subscribe))
        .route("/api/revoke", post(revoke))
        .route_layer(middleware::from_fn_with_state(node.clone(), require_key))
        .with_state(node)
}

/// Lets a request through only with one of `api.keys`.
async fn require_key(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    match check_key(&node, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Reads a request body of at most `limit` bytes; a longer one is refused with 413, `code` and
/// the limit's name (`what`), without reading further.
pub async fn read_body(
    body: Body,
    limit: usize,
    what: &str,
    code: &'static str,
) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_long = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_long {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                code,
                format!("body is over {what} = {limit} bytes"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("cannot read the body: {e}"),
            )
        }
    })
}

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the node accepts traffic (broker connected, not draining), else 503.
pub async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, Json<serde_json::Value>) {
    let ready = node.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "node": node.id,
        "broker": { "kind": node.broker.kind(), "connected": node.broker.is_ready() },
        "draining": node.draining.is_cancelled() || node.shutdown.is_cancelled(),
    });
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    metrics::gauge!("switchyard_channels").set(node.hub.channel_count() as f64);
    metrics::gauge!("switchyard_broker_connected").set(if node.broker.is_ready() {
        1.0
    } else {
        0.0
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&node.metrics),
    )
}

/// Checks `Authorization: Bearer <key>` against `api.keys`, in constant time per key.
pub fn check_key(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let wrong = || ApiError::unauthorized("missing or wrong API key");
    let given = crate::auth::bearer(headers).ok_or_else(wrong)?;
    let keys = node.config.api.keys.iter().map(String::as_str);
    if crate::auth::matches_secret(given, keys) {
        Ok(())
    } else {
        Err(wrong())
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// `POST /api/publish {"channel":C,"data":ANY}`: publishes as a client would (plugins
/// included, with the server identity). 200 `{"published":true}` once the broker accepted it,
/// with `offset` and `epoch` on a channel with history.
pub async fn publish(
    State(node): State<Arc<Node>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = node.config.limits.max_message_bytes;
    let body = read_body(
        body,
        limit,
        "limits.max_message_bytes",
        ErrorCode::MessageTooLarge.as_str(),
    )
    .await?;
    let req: PublishBody<'_> = serde_json::from_slice(&body).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidJson,
            format!("body must be {{\"channel\":..,\"data\":..}}: {e}"),
        )
    })?;
    let position = node
        .publisher
        .publish(&Identity::server(), &req.channel, req.data.get())
        .await?;
    Ok(Json(match position {
        Some(at) => json!({"published": true, "offset": at.offset, "epoch": &*at.epoch}),
        None => json!({"published": true}),
    }))
}

/// The query of `GET /api/history/{channel}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Most messages wanted.
    pub limit: Option<u64>,
    /// With `since_epoch`: read after this position.
    pub since_offset: Option<u64>,
    /// With `since_offset`.
    pub since_epoch: Option<String>,
}

/// `GET /api/history/{channel}?limit=L&since_offset=N&since_epoch=E`: the channel's stored
/// messages, as the server identity would receive them (the subscribe and deliver hooks
/// decide, as for a client). The body is the WebSocket `history` reply without `type`.
pub async fn history(
    State(node): State<Arc<Node>>,
    Path(channel): Path<String>,
    query: Result<axum::extract::Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let invalid = |m: String| ApiError::from(Rejection::new(ErrorCode::InvalidField, m));
    let axum::extract::Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let since = match (query.since_offset, query.since_epoch) {
        (Some(offset), Some(epoch)) => Some(crate::history::Position {
            offset,
            epoch: epoch.into(),
        }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "since_offset and since_epoch go together".to_owned(),
            ));
        }
    };
    node.publisher.check_channel(&channel)?;
    let answer = node
        .replay
        .request(&Identity::server(), &channel, query.limit, since.as_ref())
        .await?;
    Ok(Json(answer.json(&channel)))
}

fn presence_failed(e: crate::presence::PresenceError) -> ApiError {
    Rejection::new(ErrorCode::Unavailable, e.to_string()).into()
}

/// `GET /api/presence/users/{user}`: whether the user is online and its connections on every node.
pub async fn presence_user(
    State(node): State<Arc<Node>>,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let connections = node.presence.user(&user).await.map_err(presence_failed)?;
    Ok(Json(json!({
        "user": user,
        "online": !connections.is_empty(),
        "connections": connections,
    })))
}

/// `GET /api/presence/channels/{channel}`: the channel's subscribers on every node.
pub async fn presence_channel(
    State(node): State<Arc<Node>>,
    Path(channel): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let subscribers = node
        .presence
        .channel(&channel)
        .await
        .map_err(presence_failed)?;
    Ok(Json(json!({
        "channel": channel,
        "count": subscribers.len(),
        "subscribers": subscribers,
    })))
}

/// Bodies of the connection-control calls are small.
const CONTROL_BODY_LIMIT: usize = 64 * 1024;

/// Reads a connection-control call's JSON body into `T`.
async fn control_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let body = read_body(body, CONTROL_BODY_LIMIT, "64 KiB", "message_too_large").await?;
    serde_json::from_slice(&body)
        .map_err(|e| Rejection::new(ErrorCode::InvalidJson, format!("malformed body: {e}")).into())
}

fn invalid(message: impl Into<String>) -> ApiError {
    Rejection::new(ErrorCode::InvalidField, message).into()
}

/// A user named by a call: present and not empty.
fn user_field(user: &str) -> Result<(), ApiError> {
    match user.is_empty() {
        true => Err(invalid("field `user` must not be empty")),
        false => Ok(()),
    }
}

/// Sends `command` to every node; an unreachable broker is `unavailable`.
async fn broadcast(node: &Node, command: &Command) -> Result<(), ApiError> {
    commands::send(&*node.broker, command)
        .await
        .map_err(|e| Rejection::new(ErrorCode::Unavailable, e.to_string()).into())
}

/// Sends `command` to every node; the reply says how many connections it was sent to.
async fn send(
    node: &Node,
    command: Command,
    connections: usize,
) -> Result<Json<serde_json::Value>, ApiError> {
    broadcast(node, &command).await?;
    Ok(Json(json!({ "connections": connections })))
}

/// The body of `POST /api/disconnect`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
    node: Option<String>,
    conn: Option<u64>,
    code: Option<u16>,
    reason: Option<String>,
    reconnect: Option<bool>,
}

/// `POST /api/disconnect {"user":U}` (optionally `"node"` and `"conn"` for one connection,
/// `"code"`, `"reason"`, `"reconnect"`): closes the user's connections on every node. The
/// reply counts the connections presence knows of that the call reaches.
pub async fn disconnect(
    State(node): State<Arc<Node>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: DisconnectBody = control_body(body).await?;
    user_field(&b.user)?;
    let code = match (b.code, b.reconnect) {
        (None, reconnect) => match reconnect.unwrap_or(true) {
            true => 4005,
            false => 4006,
        },
        (Some(code), _) if code != 4005 && code != 4006 && !(4100..5000).contains(&code) => {
            return Err(invalid("field `code` must be 4005, 4006 or 4100-4999"));
        }
        (Some(code), Some(reconnect)) if CloseReason::may_reconnect(code) != reconnect => {
            return Err(invalid(
                "field `code` contradicts `reconnect` (4005 and 4100-4499 reconnect; 4006 and 4500-4999 do not)",
            ));
        }
        (Some(code), _) => code,
    };
    let reason = match b.reason {
        Some(r) if r.len() > 123 => {
            return Err(invalid(
                "field `reason` must be at most 123 bytes (a close frame's limit)",
            ));
        }
        Some(r) => r,
        None => CloseReason::Disconnected(code).text().to_owned(),
    };
    if b.conn.is_some() != b.node.is_some() {
        return Err(invalid("fields `node` and `conn` go together"));
    }
    let connections = node.presence.user(&b.user).await.map_err(presence_failed)?;
    let reached = connections
        .iter()
        .filter(|c| {
            b.conn
                .is_none_or(|conn| c.conn == conn && b.node.as_deref() == Some(c.node.as_str()))
        })
        .count();
    let command = Command::Disconnect {
        user: b.user,
        conn: b.conn,
        node: b.node,
        code,
        reason,
    };
    send(&node, command, reached).await
}

/// The body of `POST /api/unsubscribe` and `POST /api/subscribe`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    user: String,
    channel: String,
    /// Subscribe only: whether the subscribe hook decides (default true).
    hook: Option<bool>,
}

/// `POST /api/unsubscribe {"user":U,"channel":C}`: ends the user's subscriptions to the
/// channel on every node; the client gets `{"type":"unsubscribed","channel":C,"server":true}`.
pub async fn unsubscribe(
    State(node): State<Arc<Node>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: ChannelBody = control_body(body).await?;
    user_field(&b.user)?;
    if b.hook.is_some() {
        return Err(invalid("field `hook` belongs to /api/subscribe"));
    }
    node.publisher.check_channel(&b.channel)?;
    let subscribers = node
        .presence
        .channel(&b.channel)
        .await
        .map_err(presence_failed)?;
    let reached = subscribers
        .iter()
        .filter(|s| s.user.as_deref() == Some(b.user.as_str()))
        .count();
    let command = Command::Unsubscribe {
        user: b.user,
        channel: b.channel,
    };
    send(&node, command, reached).await
}

/// `POST /api/subscribe {"user":U,"channel":C}` (`"hook":false` to skip the channel's
/// subscribe hook): subscribes the user's live connections on every node; each gets
/// `{"type":"subscribed","channel":C,"server":true}`, or nothing when the hook refuses.
pub async fn subscribe(
    State(node): State<Arc<Node>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: ChannelBody = control_body(body).await?;
    user_field(&b.user)?;
    node.publisher.check_channel(&b.channel)?;
    let connections = node.presence.user(&b.user).await.map_err(presence_failed)?;
    let command = Command::Subscribe {
        user: b.user,
        channel: b.channel,
        hook: b.hook.unwrap_or(true),
    };
    send(&node, command, connections.len()).await
}

/// The body of `POST /api/revoke`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    jti: Option<String>,
    user: Option<String>,
    issued_before: Option<u64>,
    expires_at: Option<u64>,
}

/// `POST /api/revoke {"jti":J}` or `{"user":U}` (with `"issued_before":T`, default now):
/// refuses those tokens at connect and refresh from now on, on every node, and closes the
/// connections holding them (4004). Kept until `"expires_at"` when given, else
/// `auth.max_token_lifetime_secs` after the revocation (by `jti`) or after `issued_before`.
pub async fn revoke(
    State(node): State<Arc<Node>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: RevokeBody = control_body(body).await?;
    let now = crate::clock::now_ms() / 1000;
    let lifetime = node.config.auth.max_token_lifetime_secs;
    let revocation = match (b.jti, b.user) {
        (Some(jti), None) if !jti.is_empty() => {
            if b.issued_before.is_some() {
                return Err(invalid("field `issued_before` goes with `user`, not `jti`"));
            }
            Revocation {
                jti: Some(jti),
                user: None,
                issued_before: None,
                until: b.expires_at.unwrap_or(now + lifetime),
            }
        }
        (None, Some(user)) if !user.is_empty() => {
            let before = b.issued_before.unwrap_or(now + 1);
            Revocation {
                jti: None,
                user: Some(user),
                issued_before: Some(before),
                until: b.expires_at.unwrap_or(before + lifetime),
            }
        }
        _ => return Err(invalid("give exactly one of `jti` and `user`, not empty")),
    };
    if revocation.until < now {
        return Err(invalid(
            "field `expires_at` is in the past: those tokens have expired",
        ));
    }
    node.revocations
        .store(&revocation)
        .await
        .map_err(|e| Rejection::new(ErrorCode::Unavailable, e.to_string()))?;
    let until = revocation.until;
    broadcast(&node, &Command::Revoke(revocation)).await?;
    Ok(Json(json!({ "revoked": true, "until": until })))
}
