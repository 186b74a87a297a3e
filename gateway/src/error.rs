//! The one map from the protocol's error codes to HTTP statuses, for every endpoint that
//! answers over HTTP (the WebSocket upgrade, the backend API, the admin API).

use axum::http::StatusCode;

use crate::protocol::ErrorCode;

/// The HTTP status an operation refused with `code` is answered with.
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson
        | ErrorCode::InvalidField
        | ErrorCode::InvalidChannel
        | ErrorCode::UnknownType => StatusCode::BAD_REQUEST,
        ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::RateLimited | ErrorCode::TooManySubscriptions => StatusCode::TOO_MANY_REQUESTS,
        // A plugin is the gateway's upstream: it failed, not the request.
        ErrorCode::PluginError => StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
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
}
