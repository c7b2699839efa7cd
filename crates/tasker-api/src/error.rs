//! `ApiError`: every error the API returns, mapped to a status in one place, rendered as
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use tasker_orchestrator::{
    engine::RequestError, pipeline::operator::OperatorError, pipeline::remote::RemoteError,
};
use tasker_store::StoreError;

/// An error response.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, naming the field or id.
    pub message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422: the input is well-formed but invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 400: the input cannot be read.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Conflict { .. }
            | StoreError::StaleState { .. }
            | StoreError::Transition(_) => ApiError::conflict(e.to_string()),
            StoreError::LeaseLost { .. } => {
                ApiError::new(StatusCode::CONFLICT, "lease_lost", e.to_string())
            }
            // Storage is down, or the transaction lost a conflict: try again later.
            StoreError::Unavailable { .. }
            | StoreError::Contended { .. }
            | StoreError::Locked { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

impl From<tasker_orchestrator::ExecutorError> for ApiError {
    fn from(e: tasker_orchestrator::ExecutorError) -> Self {
        match e {
            tasker_orchestrator::ExecutorError::Store(s) => s.into(),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::UnknownTemplate(t) => {
                ApiError::not_found(format!("unknown template {t}"))
            }
            RequestError::InvalidContext(m) => ApiError::invalid(format!("context: {m}")),
            RequestError::Store(s) => s.into(),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

impl From<OperatorError> for ApiError {
    fn from(e: OperatorError) -> Self {
        match e {
            OperatorError::NotFound(m) => ApiError::not_found(format!("{m} not found")),
            OperatorError::Conflict(m) => ApiError::conflict(m),
            OperatorError::Executor(x) => x.into(),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}

impl From<RemoteError> for ApiError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::LeaseLost(_) => {
                ApiError::new(StatusCode::CONFLICT, "lease_lost", e.to_string())
            }
            // A token this server never issued is a client bug, not a lost lease.
            RemoteError::BadToken => ApiError::invalid(format!("lease_token: {e}")),
            RemoteError::WrongStep(_) => {
                ApiError::new(StatusCode::CONFLICT, "lease_mismatch", e.to_string())
            }
            RemoteError::Invalid(m) => ApiError::invalid(m),
            RemoteError::Executor(x) => x.into(),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}
