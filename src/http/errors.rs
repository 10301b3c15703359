//! API errors: one JSON shape for every 4xx/5xx,
//! `{"error": kind, "message": ..., "field": optional}`.
//!
//! Guarantee: infrastructure details (paths, driver messages) are logged,
//! never returned; a client only sees a short message and a stable `kind`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use std::fmt;

use crate::actors::ActorError;
use crate::app::AppError;
use crate::store::StoreError;

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, body: ErrorBody { error: kind, message: message.into(), field: None } }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.body.field = Some(field.into());
        self
    }

    pub fn kind(&self) -> &'static str {
        self.body.error
    }

    pub fn malformed_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message).with_field(field)
    }

    /// 422: a field is missing, has the wrong type or breaks a rule.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message).with_field(field)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// An actor's refusal (409 `not_running`, with the reason) or its
    /// unavailability (503; the detail is logged, not returned).
    pub fn from_actor(e: ActorError, what: &str) -> ApiError {
        match e {
            ActorError::ShuttingDown => ApiError::shutting_down(),
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "{what} failed");
                ApiError::unavailable(format!("{what} failed; see the server log"))
            }
            e => ApiError::new(StatusCode::CONFLICT, "not_running", e.to_string()),
        }
    }

    pub fn shutting_down() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the service is shutting down; retry against another instance",
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.body.error, self.body.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            b.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            b.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        b.json(&self.body)
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> ApiError {
        match e {
            AppError::Domain(d) => {
                let (status, kind) = match d.kind() {
                    "not_found" => (StatusCode::NOT_FOUND, "not_found"),
                    "already_exists" => (StatusCode::CONFLICT, "already_exists"),
                    "invalid_state" => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_state"),
                    _ => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
                };
                let err = ApiError::new(status, kind, d.to_string());
                match d.field() {
                    Some(f) => err.with_field(f),
                    None => err,
                }
            }
            AppError::Conflict { expected, actual } => ApiError::new(
                StatusCode::CONFLICT,
                "version_conflict",
                format!("expected version {expected}, but the current version is {actual}"),
            )
            .with_field("If-Match"),
            AppError::Store(StoreError::NotFound(_)) => ApiError::not_found("no such resource"),
            AppError::Store(StoreError::Unavailable(detail)) => {
                tracing::warn!(%detail, "command refused: unavailable");
                ApiError::unavailable("temporarily unavailable; retry shortly")
            }
            other => {
                tracing::error!(error = %other, "command failed");
                ApiError::internal()
            }
        }
    }
}

/// Error handler of `web::JsonConfig`: every body problem as JSON.
pub fn json_error(err: actix_web::error::JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::{JsonPayloadError as J, PayloadError as P};
    let e = match &err {
        J::OverflowKnownLength { limit, .. } | J::Overflow { limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        ),
        J::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        J::Deserialize(e) => ApiError::malformed_json(describe_json_error(e)),
        J::Payload(P::Overflow) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
        }
        J::Payload(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "the request body could not be read"),
        _ => ApiError::malformed_json("the request body is not valid JSON"),
    };
    e.into()
}

/// serde_json's position and category, without echoing input.
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "the JSON body is empty or ends early",
        Category::Syntax => "the body is not valid JSON",
        Category::Data => "the JSON body has an unsupported value",
        Category::Io => "the body could not be read",
    };
    if e.line() > 0 {
        format!("{what} (line {}, column {}): {}", e.line(), e.column(), short(e))
    } else {
        what.to_string()
    }
}

fn short(e: &serde_json::Error) -> String {
    // serde_json messages are short and never contain the input itself;
    // drop its own " at line .. column .." suffix.
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Error handler of `web::PathConfig` / `web::QueryConfig`.
pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    tracing::debug!(error = %err, "bad path parameter");
    ApiError::bad_request("path", "invalid path parameter").into()
}

pub fn query_error(err: actix_web::error::QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    tracing::debug!(error = %err, "bad query string");
    ApiError::bad_request("query", "invalid query string").into()
}

pub async fn route_not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route"))
}
