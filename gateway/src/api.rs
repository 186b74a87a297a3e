//! Plain HTTP endpoints: liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::node::Node;

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
        "draining": node.shutdown.is_cancelled(),
    });
    (status, Json(body))
}
