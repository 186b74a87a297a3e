//! Every error a client, a backend or an operator gets back over HTTP, and the one place that
//! decides its status: the modules that fail say why (their own error types), this module
//! says how that is answered. (WebSocket close codes are part of the wire protocol:
//! `protocol::CloseReason`.) docs/protocol.md lists the same tables.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::plugins::registry::SwapError;
use crate::protocol::{ErrorCode, Rejection};

/// The HTTP status an operation refused with `code` is answered with.
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson
        | ErrorCode::InvalidField
        | ErrorCode::InvalidChannel
        | ErrorCode::UnknownType => StatusCode::BAD_REQUEST,
        ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        // The channel exists; what was asked of it does not.
        ErrorCode::NoHistory => StatusCode::NOT_FOUND,
        ErrorCode::RateLimited | ErrorCode::TooManySubscriptions => StatusCode::TOO_MANY_REQUESTS,
        // A plugin is the gateway's upstream: it failed, not the request.
        ErrorCode::PluginError => StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An HTTP API failure (`/api`, `/admin`, timeouts): a status and the `{code, message}` body.
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

    /// A missing or wrong API key or admin token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        Self {
            status: http_status(r.code),
            code: r.code.as_str(),
            message: r.message,
        }
    }
}

impl From<SwapError> for ApiError {
    fn from(e: SwapError) -> Self {
        let (status, code) = match e {
            SwapError::NotWasm => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_wasm"),
            SwapError::NoPrevious(_) => (StatusCode::CONFLICT, "no_previous"),
            SwapError::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_plugin"),
            SwapError::Refused(_) => (StatusCode::UNPROCESSABLE_ENTITY, "refused"),
            SwapError::Conflict(_) => (StatusCode::CONFLICT, "rollout_conflict"),
            SwapError::NoTrial(_) => (StatusCode::NOT_FOUND, "no_rollout"),
            SwapError::BadPlan(_) => (StatusCode::BAD_REQUEST, "bad_plan"),
        };
        Self::new(status, code, e.to_string())
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

/// Why a request to `/ws` is not a WebSocket upgrade (RFC 6455 section 4.2.1).
#[derive(Debug, thiserror::Error)]
pub enum NotUpgrade {
    /// Upgrades are GET requests (HTTP/1.1).
    #[error("websocket upgrade must be a GET request over HTTP/1.1")]
    Method,
    /// `Connection` lacks `upgrade`.
    #[error("`Connection` header did not include `upgrade`")]
    Connection,
    /// `Upgrade` is not `websocket`.
    #[error("`Upgrade` header is not `websocket`")]
    Upgrade,
    /// Only version 13 of the protocol exists.
    #[error("`Sec-WebSocket-Version` header is not `13`")]
    Version,
    /// The client must send a key for the server to answer.
    #[error("`Sec-WebSocket-Key` header is missing")]
    Key,
    /// The key must be 16 bytes in base64 (RFC 6455 section 4.2.1, item 5).
    #[error("`Sec-WebSocket-Key` header is not 16 bytes in base64")]
    BadKey,
    /// The HTTP connection cannot be taken over (not a hyper connection with upgrades).
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

/// Why an upgrade request that is a WebSocket upgrade was refused. Answered with a status and
/// a plain-text reason (a browser's WebSocket API shows neither; other clients log them).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeRefused {
    /// Not a WebSocket upgrade at all.
    #[error("{0}")]
    NotUpgrade(#[from] NotUpgrade),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// `limits.max_connections` is reached.
    #[error("too many connections")]
    TooManyConnections,
    /// The user holds `limits.max_connections_per_user` connections already.
    #[error("too many connections for this user (limits.max_connections_per_user = {0})")]
    TooManyForUser(usize),
    /// The token or the origin is refused.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// The connect plugin refused or failed.
    #[error("{}: {}", .0.code, .0.message)]
    Plugin(Rejection),
}

impl UpgradeRefused {
    /// The status the refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotUpgrade(NotUpgrade::Method) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotUpgrade(NotUpgrade::NotUpgradable) => StatusCode::UPGRADE_REQUIRED,
            Self::NotUpgrade(_) => StatusCode::BAD_REQUEST,
            Self::ShuttingDown | Self::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyForUser(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Auth(AuthError::Origin(_)) => StatusCode::FORBIDDEN,
            Self::Auth(_) => StatusCode::UNAUTHORIZED,
            Self::Plugin(r) => http_status(r.code),
        }
    }
}

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        UpgradeRefused::from(self).into_response()
    }
}

impl IntoResponse for UpgradeRefused {
    fn into_response(self) -> Response {
        (self.status(), self.to_string()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_client_or_server_error_status() {
        for code in ErrorCode::ALL {
            let status = http_status(code);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{code}"
            );
        }
        assert_eq!(http_status(ErrorCode::PluginError), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn upgrade_refusals() {
        let plugin = UpgradeRefused::Plugin(Rejection::new(ErrorCode::PluginError, "x"));
        assert_eq!(plugin.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(plugin.to_string(), "plugin_error: x");
        let origin = UpgradeRefused::Auth(AuthError::Origin("o".into()));
        assert_eq!(origin.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            UpgradeRefused::Auth(AuthError::Expired).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            UpgradeRefused::from(NotUpgrade::Method).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
