//! What the API answers when it cannot answer: a status and a JSON body that names the problem.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An API error: `{"error": <code>, "message": <text>, "parameter": <name, for a bad parameter>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    /// A stable code, e.g. `bad_parameter`, `identity_not_base64`.
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<&'static str>,
}

impl ApiError {
    /// 400 for the query parameter `parameter`.
    pub fn bad_parameter(parameter: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, error: "bad_parameter", message: message.into(), parameter: Some(parameter) }
    }

    /// 401: the identity is missing or not acceptable; `code` is the rejection's reason code.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::UNAUTHORIZED, error: code, message: message.into(), parameter: None }
    }

    /// 403: a valid identity that has no org, and so no events to see.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::FORBIDDEN, error: code, message: message.into(), parameter: None }
    }

    pub fn not_found() -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, error: "not_found", message: "no such resource".into(), parameter: None }
    }

    /// 503: the database did not answer in time. Logged with the cause; the client gets no detail.
    pub fn unavailable(cause: &sqlx::Error) -> ApiError {
        tracing::warn!(error = %cause, "events API query failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "unavailable",
            message: "the events store did not answer; try again".into(),
            parameter: None,
        }
    }
}

impl ApiError {
    /// 503: the request took longer than the service allows.
    pub fn timed_out() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "timed_out",
            message: "the request took too long; narrow the filters or try again".into(),
            parameter: None,
        }
    }
}

impl ApiError {
    /// 503: every feed slot of this instance is taken.
    pub fn busy() -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "busy",
            message: "too many feeds are open on this instance; try again later".into(),
            parameter: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}
