//! The one place errors become HTTP responses, in the API's error format:
//! `{"error": {"code", "message", "details"}, "status", "request_id", "timestamp"}`.
//! Host faults are logged with their cause and shown to clients only as `INTERNAL_ERROR`.

use std::convert::Infallible;

use chrono::Utc;
use serde_json::{Value, json};
use tracing::error;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Rejection, Reply};

use super::request;
use crate::auth::AuthError;
use crate::engine::EngineError;
use crate::github::GithubError;
use crate::registry::RegistryError;
use crate::runners::RunnerError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl warp::reject::Reject for ApiError {}

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    pub status: u16,
    pub request_id: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// One of the codes in the API's error table (`VALIDATION_ERROR`, `NOT_FOUND`…).
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// A host fault: the cause goes to the log under the request id, the client gets none of it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        error!(request_id = %request::id(), error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "the server failed to handle this request; it has been logged",
        )
    }

    /// A failed store: 503 with its cause logged, or 500 when it is not the store's state.
    pub fn storage(error: crate::storage::StorageError) -> Self {
        match error {
            crate::storage::StorageError::Unavailable(cause) => {
                error!(request_id = %request::id(), error = %cause, "the store refused a write");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "the store cannot take writes now; whether this request took effect is \
                     unknown, so check before repeating it",
                )
                .retry_after(5)
            }
            other => Self::internal(other),
        }
    }

    pub fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
            },
            status: self.status.as_u16(),
            request_id: request::id(),
            timestamp: crate::model::timestamp::format(&Utc::now()),
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert("retry-after", warp::http::HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                "www-authenticate",
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::TaskNotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "TASK_NOT_FOUND",
                format!("task {id} not found"),
            ),
            EngineError::PluginNotFound(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "PLUGIN_NOT_FOUND",
                format!("plugin {name} not found"),
            ),
            EngineError::UnsupportedTaskType { plugin, task_type } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "UNSUPPORTED_TASK_TYPE",
                format!("plugin {plugin} has no task type {task_type}"),
            ),
            EngineError::Validation { message, details } => {
                ApiError::validation(message).with_details(details)
            }
            EngineError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "CONFLICT", message)
            }
            EngineError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
            }
            EngineError::Unavailable(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                message,
            ),
            EngineError::Registry(e) => e.into(),
            EngineError::Runner(e) => e.into(),
            EngineError::Storage(e) => ApiError::storage(e),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(message) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "AUTHENTICATION_REQUIRED", message)
            }
            AuthError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
            }
            AuthError::Invalid(message) => ApiError::validation(message),
            AuthError::Exists(what) => ApiError::new(
                StatusCode::CONFLICT,
                "CONFLICT",
                format!("{what} already exists"),
            ),
            AuthError::KeyNotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("API key {id} not found"),
            ),
            AuthError::Busy => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                error.to_string(),
            )
            .retry_after(1),
            AuthError::UserNotFound(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("user {name} not found"),
            ),
            AuthError::Storage(e) => ApiError::storage(e),
            AuthError::Setup(e) => ApiError::internal(e),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Load(e) => ApiError::validation(e.to_string()),
            RegistryError::AlreadyLoaded(_) | RegistryError::ChangedElsewhere(_) => {
                ApiError::new(StatusCode::CONFLICT, "CONFLICT", error.to_string())
            }
            RegistryError::NotFound(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "PLUGIN_NOT_FOUND",
                format!("plugin {name} not found"),
            ),
            RegistryError::NameMismatch { .. } => ApiError::validation(error.to_string()),
            RegistryError::GrantsFile { .. } => ApiError::validation(error.to_string()),
            RegistryError::Persist { source, .. } => ApiError::storage(source),
        }
    }
}

impl From<RunnerError> for ApiError {
    fn from(error: RunnerError) -> Self {
        match error {
            RunnerError::UnknownRunner(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "RUNNER_NOT_FOUND", error.to_string())
            }
            RunnerError::UnknownJob(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "JOB_NOT_FOUND", error.to_string())
            }
            RunnerError::NotLeased(_) => {
                ApiError::new(StatusCode::CONFLICT, "JOB_NOT_LEASED", error.to_string())
            }
            RunnerError::Invalid(message) => ApiError::validation(message),
            RunnerError::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
            }
            RunnerError::Storage(cause) => ApiError::storage(cause),
        }
    }
}

impl From<GithubError> for ApiError {
    fn from(error: GithubError) -> Self {
        match error {
            GithubError::Disabled => {
                ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", error.to_string())
            }
            GithubError::NoSecret => {
                tracing::warn!("a GitHub delivery arrived but the webhook secret is not set");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "the webhook is not configured on this host",
                )
            }
            GithubError::BadSignature => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_SIGNATURE",
                error.to_string(),
            ),
            GithubError::Invalid(message) => ApiError::validation(message),
            GithubError::Engine(e) => e.into(),
        }
    }
}

/// Turns every rejection, warp's own included, into the API's error format.
pub async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if let Some(api) = rejection.find::<ApiError>() {
        ApiError {
            status: api.status,
            code: api.code,
            message: api.message.clone(),
            details: api.details.clone(),
            retry_after: api.retry_after,
        }
    } else if rejection.is_not_found() {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route for {} {}", request::method(), request::path()),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        let allowed = super::openapi::allowed_methods(&request::path());
        if allowed.is_empty() {
            // warp says 405 when some route's method filter was the last to refuse; a path
            // no route serves is a 404.
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("no route for {} {}", request::method(), request::path()),
            )
        } else {
            let mut response = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!(
                    "{} is not allowed on {}; it takes {}",
                    request::method(),
                    request::path(),
                    allowed.join(", ")
                ),
            )
            .into_response();
            // RFC 9110 §15.5.6: a 405 says which methods the resource does take.
            if let Ok(value) = warp::http::HeaderValue::from_str(&allowed.join(", ")) {
                response
                    .headers_mut()
                    .insert(warp::http::header::ALLOW, value);
            }
            return Ok(response);
        }
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "the request body is too large",
        )
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::validation(format!("invalid query string: {e}"))
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::validation(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::validation(e.to_string())
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "VALIDATION_ERROR",
            "unsupported content type",
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "VALIDATION_ERROR",
            "a Content-Length header is required",
        )
    } else {
        ApiError::internal(format!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_the_specs_statuses_and_codes() {
        let cases: Vec<(EngineError, u16, &str)> = vec![
            (EngineError::TaskNotFound("x".into()), 404, "TASK_NOT_FOUND"),
            (
                EngineError::PluginNotFound("x".into()),
                404,
                "PLUGIN_NOT_FOUND",
            ),
            (
                EngineError::UnsupportedTaskType {
                    plugin: "p".into(),
                    task_type: "t".into(),
                },
                422,
                "UNSUPPORTED_TASK_TYPE",
            ),
            (EngineError::validation("bad"), 400, "VALIDATION_ERROR"),
            (EngineError::Conflict("dup".into()), 409, "CONFLICT"),
            (EngineError::Forbidden("no".into()), 403, "FORBIDDEN"),
            (
                EngineError::Unavailable("later".into()),
                503,
                "SERVICE_UNAVAILABLE",
            ),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from(error);
            assert_eq!((api.status.as_u16(), api.code), (status, code));
        }
    }

    #[test]
    fn storage_faults_do_not_leak_their_cause() {
        let api = ApiError::from(EngineError::Storage(crate::storage::StorageError::Backend(
            "/var/lib/taskhost/db: I/O error".into(),
        )));
        assert_eq!((api.status.as_u16(), api.code), (500, "INTERNAL_ERROR"));
        assert!(!api.message.contains("/var/lib"));
    }

    #[test]
    fn a_store_refusing_writes_is_a_503_to_retry_later_without_its_cause() {
        let api = ApiError::from(EngineError::Storage(
            crate::storage::StorageError::Unavailable(
                "/var/lib/taskhost/db: No space left on device".into(),
            ),
        ));
        assert_eq!(
            (api.status.as_u16(), api.code),
            (503, "SERVICE_UNAVAILABLE")
        );
        assert_eq!(api.retry_after, Some(5));
        assert!(!api.message.contains("/var/lib") && !api.message.contains("space"));
    }
}
