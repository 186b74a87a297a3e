//! The admin API: the cluster's nodes, list plugins, upload a version, roll back, unbind,
//! and roll a version out gradually (shadow, canary, promote, abort).
//! Token-protected; optionally on its own listener (`admin.listen`), together with the
//! console page (`crate::console`) that calls it.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::json;

use crate::api::read_body;
use crate::error::ApiError;
use crate::node::Node;
use crate::plugins::Code;
use crate::plugins::candidate::{Plan, Role};
use crate::plugins::registry::{Origin, Outcome, SwapError, is_component};
use crate::rollout::Deployed;

/// Routes under `/admin`: the API (token required) and the console page (no data, no token).
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/admin/cluster", get(cluster))
        .route("/admin/plugins", get(list))
        .route("/admin/plugins/{name}", put(upload))
        .route("/admin/plugins/{name}/rollback", post(rollback))
        .route("/admin/plugins/{name}/bindings", delete(unbind))
        .route(
            "/admin/plugins/{name}/rollout",
            put(start_rollout).delete(abort_rollout),
        )
        .route("/admin/plugins/{name}/rollout/promote", post(promote))
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            require_token,
        ))
        .with_state(node)
        .merge(crate::console::router())
}

/// Lets a request through only with the admin token.
async fn require_token(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authorize(&node, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &node.config.admin.token else {
        return Err(ApiError::unauthorized(
            "admin API disabled: set admin.token",
        ));
    };
    let given = crate::auth::bearer(headers).unwrap_or_default();
    if crate::auth::matches_secret(given, [token.as_str()]) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("missing or wrong admin token"))
    }
}

fn swap_failed(e: SwapError) -> Response {
    ApiError::from(e).into_response()
}

/// Refuses a name the configuration would refuse too ([`crate::config::check_plugin_name`]).
fn check_name(name: &str) -> Result<(), ApiError> {
    crate::config::check_plugin_name(name)
        .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", why))
}

/// `GET /admin/cluster`: every node's status (`crate::status`), this node's fresh; with Redis
/// the others' as last posted (`stale` when a node stopped posting), and `error` when Redis
/// could not be read (then only this node).
async fn cluster(State(node): State<Arc<Node>>) -> Response {
    let (nodes, error) = node.board.read(node.status().await).await;
    let mut body = json!({"node": node.id, "nodes": nodes});
    if let Some(e) = error {
        body["error"] = json!(e.to_string());
    }
    Json(body).into_response()
}

/// `GET /admin/plugins`: every plugin's version, source, status, last error, bindings, call
/// statistics, and (with Redis) the version each node serves.
async fn list(State(node): State<Arc<Node>>) -> Response {
    let plugins = node.rollout.list().await;
    Json(json!({"node": node.id, "plugins": plugins})).into_response()
}

/// The component in an upload's body, or the refusal to answer with: a bad name, a body over
/// `admin.max_upload_bytes`, bytes that are not a component.
async fn component(node: &Node, name: &str, body: Body) -> Result<Code, Response> {
    check_name(name).map_err(IntoResponse::into_response)?;
    let limit = node.config.admin.max_upload_bytes;
    let body = read_body(body, limit, "admin.max_upload_bytes", "too_large")
        .await
        .map_err(IntoResponse::into_response)?;
    if !is_component(&body) {
        return Err(swap_failed(SwapError::NotWasm));
    }
    Ok(Code::new(body.to_vec()))
}

/// What an upload or a rollout did, as the API answers it (`stage` for a rollout).
fn deployed(name: &str, d: &Deployed, stage: Option<Role>) -> Response {
    let mut answer = json!({
        "plugin": name,
        "version": &d.code.hash[..12],
        "hash": d.code.hash,
        "changed": d.changed,
        "cluster": d.cluster,
    });
    if let Some(stage) = stage {
        answer["stage"] = json!(stage);
    }
    Json(answer).into_response()
}

/// `PUT /admin/plugins/{name}` with the component as the body: installs it on this node and,
/// with Redis, on every node.
async fn upload(State(node): State<Arc<Node>>, Path(name): Path<String>, body: Body) -> Response {
    let code = match component(&node, &name, body).await {
        Ok(code) => code,
        Err(refused) => return refused,
    };
    match node.rollout.deploy(&name, code, Origin::Api).await {
        Ok(d) => deployed(&name, &d, None),
        Err(e) => swap_failed(e),
    }
}

/// `POST /admin/plugins/{name}/rollback`: back to the previous version (cluster-wide with Redis).
async fn rollback(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    if let Err(refused) = check_name(&name) {
        return refused.into_response();
    }
    match node.rollout.rollback(&name).await {
        Ok(d) => Json(json!({"plugin": name, "version": &d.code.hash[..12], "cluster": d.cluster}))
            .into_response(),
        Err(e) => swap_failed(e),
    }
}

/// `DELETE /admin/plugins/{name}/bindings`: unbinds the plugin on this node.
async fn unbind(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    if let Err(refused) = check_name(&name) {
        return refused.into_response();
    }
    match node.rollout.unbind(&name).await {
        Ok(()) => Json(json!({"plugin": name, "status": "unbound"})).into_response(),
        Err(e) => swap_failed(e),
    }
}

/// `PUT /admin/plugins/{name}/rollout?stage=shadow|canary&...` with the candidate component
/// as the body: starts a shadow or canary beside the live version, here and on every node
/// (the query is the plan: `percent`, `tenants`, `by`, the guard's `window_ms`, `min_calls`,
/// `max_error_rate`, `max_denial_rate`, `max_forward_ratio`, `promote_after_ms`, and for a
/// shadow `budget` and `excerpts`). Sent again with the same component, changes the plan.
async fn start_rollout(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    plan: Result<axum::extract::Query<Plan>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Response {
    let plan = match plan {
        Ok(axum::extract::Query(plan)) => plan,
        Err(e) => return swap_failed(SwapError::BadPlan(e.body_text())),
    };
    let code = match component(&node, &name, body).await {
        Ok(code) => code,
        Err(refused) => return refused,
    };
    let stage = plan.stage;
    match node.rollout.start_trial(&name, code, plan).await {
        Ok(d) => deployed(&name, &d, Some(stage)),
        Err(e) => swap_failed(e),
    }
}

/// `POST /admin/plugins/{name}/rollout/promote`: the candidate becomes the live version for
/// everyone, on every node.
async fn promote(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    if let Err(refused) = check_name(&name) {
        return refused.into_response();
    }
    match node
        .rollout
        .end_trial(&name, Outcome::Promoted, "promoted by an operator")
        .await
    {
        Ok(Some(d)) => Json(json!({
            "plugin": name,
            "version": &d.code.hash[..12],
            "outcome": Outcome::Promoted,
            "cluster": d.cluster,
        }))
        .into_response(),
        Ok(None) => unreachable!("a promotion installs the candidate"),
        Err(e) => swap_failed(e),
    }
}

/// `DELETE /admin/plugins/{name}/rollout`: drops the shadow or canary on every node; the
/// live version serves everyone.
async fn abort_rollout(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    if let Err(refused) = check_name(&name) {
        return refused.into_response();
    }
    match node
        .rollout
        .end_trial(&name, Outcome::Aborted, "aborted by an operator")
        .await
    {
        Ok(_) => Json(json!({"plugin": name, "outcome": Outcome::Aborted})).into_response(),
        Err(e) => swap_failed(e),
    }
}
