//! Plain HTTP endpoints: liveness, readiness, and the backend API (publish, presence).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::node::Node;
use crate::plugins::Identity;
use crate::protocol::{ErrorCode, Rejection};

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

/// An API failure: HTTP status plus the protocol's `{code, message}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with this status, machine code and human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: "missing or wrong API key".into(),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        let status = match r.code {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidField
            | ErrorCode::InvalidChannel
            | ErrorCode::UnknownType => StatusCode::BAD_REQUEST,
            ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited | ErrorCode::TooManySubscriptions => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::PluginError => StatusCode::BAD_GATEWAY,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self {
            status,
            code: r.code.as_str(),
            message: r.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

/// Checks `Authorization: Bearer <key>` against `api.keys`, in constant time per key.
pub fn check_key(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    let ok = node.config.api.keys.iter().fold(false, |ok, k| {
        ok | bool::from(k.as_bytes().ct_eq(given.as_bytes()))
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// The identity plugins see for API publishes.
pub fn server_identity() -> Identity {
    Identity {
        user: None,
        tenant: None,
        claims: r#"{"source":"api"}"#.to_owned(),
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// `POST /api/publish {"channel":C,"data":ANY}`: publishes as a client would (plugins
/// included, with the server identity). 200 `{"published":true}` once the broker accepted it.
pub async fn publish(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_key(&node, &headers)?;
    if body.len() > node.config.limits.max_message_bytes {
        return Err(Rejection::new(
            ErrorCode::MessageTooLarge,
            format!(
                "body is {} bytes; the limit is {}",
                body.len(),
                node.config.limits.max_message_bytes
            ),
        )
        .into());
    }
    let req: PublishBody<'_> = serde_json::from_slice(&body).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidJson,
            format!("body must be {{\"channel\":..,\"data\":..}}: {e}"),
        )
    })?;
    node.publish(&server_identity(), &req.channel, req.data.get())
        .await?;
    Ok(Json(json!({"published": true})))
}

fn presence_failed(e: crate::presence::PresenceError) -> ApiError {
    Rejection::new(ErrorCode::Unavailable, e.to_string()).into()
}

/// `GET /api/presence/users/{user}`: whether the user is online and its connections on every node.
pub async fn presence_user(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_key(&node, &headers)?;
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
    headers: HeaderMap,
    Path(channel): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_key(&node, &headers)?;
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
