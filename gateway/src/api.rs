//! Plain HTTP endpoints: liveness, readiness, and the backend API (publish, presence).

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

use crate::error::ApiError;
use crate::identity::Identity;
use crate::node::Node;
use crate::protocol::{ErrorCode, Rejection};

/// Routes of the backend API (`/api/...`). The key is checked before anything else, the body
/// included: a request without it is refused without reading what it sends.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/publish", post(publish))
        .route("/api/history/{channel}", get(history))
        .route("/api/presence/users/{user}", get(presence_user))
        .route("/api/presence/channels/{channel}", get(presence_channel))
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
