//! The operations console's page, served at `/admin/` beside the admin API. Its assets are
//! compiled into the binary (no CDN, no build step): the page itself holds no data and needs
//! no token; every figure it shows comes from the token-protected admin API, which it calls
//! with the token the operator typed (kept in the tab's sessionStorage, sent as a header, so
//! no cookie and no CSRF).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// What the page may load: its own assets and the admin API, nothing from elsewhere, never
/// framed.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The console's routes: `/admin` (redirects), `/admin/` and its two assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(|| asset(INDEX, "text/html; charset=utf-8")))
        .route(
            "/admin/console.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/admin/console.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
}

async fn asset(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
