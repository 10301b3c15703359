//! API errors: every 4xx/5xx of both servers is an RFC 9457 problem
//! (`application/problem+json`):
//! `{"type": "urn:outboxd:problem:<kind>", "title", "status", "detail",
//! "error": kind, "field": optional}`; `error` (the kind as a token) and
//! `field` (the input at fault) are extensions. A 405 carries `Allow`, a 401
//! `WWW-Authenticate: Bearer`, a 503 `Retry-After`.
//!
//! Guarantee: infrastructure details (paths, driver messages) are logged,
//! never returned; a client only sees a short detail and a stable kind, and
//! every kind is one of [`KINDS`] (the `error` enum of docs/openapi.json).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use std::fmt;

use crate::actors::ActorError;
use crate::app::AppError;
use crate::store::StoreError;

/// Every problem kind with its title (the same for every occurrence).
pub const KINDS: &[(&str, &str)] = &[
    ("malformed_json", "Malformed JSON body"),
    ("bad_request", "Bad request"),
    ("unauthorized", "Unauthorized"),
    ("not_found", "Not found"),
    ("method_not_allowed", "Method not allowed"),
    ("version_conflict", "Version conflict"),
    ("already_exists", "Already exists"),
    ("not_running", "Not running"),
    ("request_failed", "Relay request failed"),
    ("precondition_failed", "Precondition failed"),
    ("payload_too_large", "Payload too large"),
    ("unsupported_media_type", "Unsupported media type"),
    ("validation", "Validation failed"),
    ("invalid_state", "Not allowed in the current state"),
    ("internal", "Internal error"),
    ("not_available", "Not available on this store backend"),
    ("shutting_down", "Shutting down"),
    ("unavailable", "Temporarily unavailable"),
    ("outcome_unknown", "Outcome unknown"),
    ("not_ready", "Not ready"),
];

/// The `type` URI of a problem kind.
pub fn problem_type(kind: &str) -> String {
    format!("urn:outboxd:problem:{kind}")
}

fn title(kind: &str) -> &'static str {
    KINDS.iter().find(|(k, _)| *k == kind).map(|(_, t)| *t).unwrap_or("Error")
}

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The body of a problem response.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    /// The problem kind (`error` in the JSON).
    pub error: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The resource a create tried to write (`outcome_unknown` on a create
/// whose id the server chose: the client reloads it there).
#[derive(Debug, Clone)]
pub struct Resource {
    pub id: String,
    pub location: String,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind_uri: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
    /// `id` in the body and the `Location` header: the resource a failed
    /// create tried to write (boxed: errors stay small).
    pub resource: Option<Box<Resource>>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> ApiError {
        debug_assert!(KINDS.iter().any(|(k, _)| *k == kind), "problem kind {kind} missing from KINDS");
        ApiError {
            status,
            body: ErrorBody { error: kind, detail: detail.into(), field: None },
            allow: None,
            resource: None,
        }
    }

    /// 405 for a route that supports only `allow` (e.g. "GET").
    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method not allowed on this route; allowed: {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    /// 412: `If-Match` names another version than the current one.
    pub fn precondition_failed(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", detail).with_field("If-Match")
    }

    fn problem(&self) -> Problem<'_> {
        Problem {
            kind_uri: problem_type(self.body.error),
            title: title(self.body.error),
            status: self.status.as_u16(),
            detail: &self.body.detail,
            error: self.body.error,
            field: self.body.field.as_deref(),
            id: self.resource.as_deref().map(|r| r.id.as_str()),
        }
    }

    /// The problem document.
    pub fn problem_json(&self) -> String {
        serde_json::to_string(&self.problem()).unwrap_or_default()
    }

    /// The problem document as a JSON value (to add extension members).
    pub fn problem_value(&self) -> serde_json::Value {
        serde_json::to_value(self.problem()).unwrap_or_default()
    }

    /// The problem response with extension members (e.g. `"ready": false`).
    pub fn response_with(&self, extensions: &[(&str, serde_json::Value)]) -> HttpResponse {
        let mut body = self.problem_value();
        for (k, v) in extensions {
            body[*k] = v.clone();
        }
        self.error_response().set_body(actix_web::body::BoxBody::new(body.to_string()))
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.body.field = Some(field.into());
        self
    }

    /// Names the resource a create tried to write: `id` in the body and
    /// `Location` (so an `outcome_unknown` create can be checked with a GET).
    pub fn with_resource(mut self, id: impl Into<String>, location: impl Into<String>) -> ApiError {
        self.resource = Some(Box::new(Resource { id: id.into(), location: location.into() }));
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

    /// 415: the body's form is refused (`field`: the header that says it).
    pub fn unsupported_media_type(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message).with_field(field)
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
        write!(f, "{} {}: {}", self.status.as_u16(), self.body.error, self.body.detail)
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
        // Not for `outcome_unknown`: retrying blindly may apply the command twice.
        if self.status == StatusCode::SERVICE_UNAVAILABLE && self.body.error != "outcome_unknown" {
            b.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        if let Some(allow) = self.allow {
            b.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        if let Some(location) = self.resource.as_deref().and_then(|r| HeaderValue::from_str(&r.location).ok()) {
            b.insert_header((header::LOCATION, location));
        }
        b.content_type(PROBLEM_JSON).body(self.problem_json())
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
                match domain_field(&d) {
                    Some(f) => err.with_field(f),
                    None => err,
                }
            }
            // Without If-Match (with it, the handler answers 412): concurrent
            // changes kept winning until the retries ran out.
            AppError::Conflict { expected, actual } => ApiError::new(
                StatusCode::CONFLICT,
                "version_conflict",
                format!("the aggregate changed concurrently (version {expected} became {actual}); retry"),
            ),
            AppError::ShuttingDown => ApiError::shutting_down(),
            AppError::Store(StoreError::NotFound(_)) => ApiError::not_found("no such resource"),
            AppError::Store(StoreError::Unavailable(detail)) => {
                tracing::warn!(%detail, "command refused: unavailable");
                ApiError::unavailable("temporarily unavailable; retry shortly")
            }
            AppError::Store(StoreError::OutcomeUnknown(detail)) => {
                tracing::error!(%detail, "command outcome unknown");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outcome_unknown",
                    "the store did not confirm whether this change was written; reload the resource (GET) and compare its version before retrying",
                )
            }
            other => {
                tracing::error!(error = %other, "command failed");
                ApiError::internal()
            }
        }
    }
}

/// The exact path of the input a domain error is about: an item field's
/// template (`items[].sku`) with the item's index filled in (`items[3].sku`).
fn domain_field(d: &crate::domain::DomainError) -> Option<String> {
    let f = d.field()?;
    Some(match d.item_index() {
        Some(i) => f.replacen("items[]", &format!("items[{i}]"), 1),
        None => f.to_string(),
    })
}

/// 413 `payload_too_large` for a body over `limit` bytes (when known).
pub fn too_large(limit: Option<usize>) -> ApiError {
    let detail = match limit {
        Some(limit) => format!("request body is larger than {limit} bytes"),
        None => "request body is too large".to_string(),
    };
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
}

/// A body that could not be read as bytes (`web::Bytes`): over the limit
/// is a 413, anything else a 400; both problem documents.
pub fn body_error(err: &actix_web::Error, limit: Option<usize>) -> ApiError {
    use actix_web::error::PayloadError as P;
    match err.as_error::<P>() {
        Some(P::Overflow) => too_large(limit),
        _ if err.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE => too_large(limit),
        _ => {
            tracing::debug!(error = %err, "request body could not be read");
            unreadable_body()
        }
    }
}

/// 400 `bad_request` for a body that could not be read (a broken chunked
/// encoding, a connection lost mid-body): `field` is `$`, the whole body,
/// as for a body that is not a JSON object.
pub fn unreadable_body() -> ApiError {
    ApiError::bad_request("$", "the request body could not be read")
}

/// Error handler of `web::JsonConfig`: every body problem as JSON.
pub fn json_error(err: actix_web::error::JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::{JsonPayloadError as J, PayloadError as P};
    let e = match &err {
        J::OverflowKnownLength { limit, .. } | J::Overflow { limit } => too_large(Some(*limit)),
        J::ContentType => ApiError::unsupported_media_type(
            "Content-Type",
            "send the body as JSON with Content-Type: application/json",
        ),
        J::Deserialize(e) => ApiError::malformed_json(describe_json_error(e)),
        J::Payload(P::Overflow) => too_large(None),
        J::Payload(_) => unreadable_body(),
        _ => ApiError::malformed_json("the request body is not valid JSON"),
    };
    e.into()
}

/// serde_json's position and category, without echoing input.
pub(super) fn describe_json_error(e: &serde_json::Error) -> String {
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
    // serde's message says what was wrong (it does not name the parameter).
    let why = match &err {
        actix_web::error::QueryPayloadError::Deserialize(e) => e.to_string(),
        other => other.to_string(),
    };
    ApiError::bad_request("query", format!("invalid query string: {why}")).into()
}

pub async fn route_not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("no such route"))
}

/// The default service of a resource that supports only `allow`: 405 with
/// `Allow: <allow>`.
pub fn method_not_allowed(allow: &'static str) -> actix_web::Route {
    actix_web::web::route()
        .to(move || async move { Err::<HttpResponse, ApiError>(ApiError::method_not_allowed(allow)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_refused_for_shutdown_is_the_intakes_503_shutting_down() {
        let e = ApiError::from(AppError::ShuttingDown);
        let intake = ApiError::shutting_down();
        assert_eq!((e.status, e.body.error, &e.body.detail), (intake.status, intake.body.error, &intake.body.detail));
        assert_eq!((e.status.as_u16(), e.body.error), (503, "shutting_down"));
        // An unavailable store stays a retryable 503 `unavailable`.
        let e = ApiError::from(AppError::Store(StoreError::Unavailable("disk".into())));
        assert_eq!((e.status.as_u16(), e.body.error), (503, "unavailable"));
        assert_eq!(e.error_response().headers().get(header::RETRY_AFTER).unwrap(), "1");
    }

    /// Review finding: an item rule the domain checks (mixed currencies,
    /// a repeated SKU, an unknown currency, an overflowing total) named
    /// `items[].unit_price.currency`, without the item's index.
    #[test]
    fn a_domain_item_error_names_the_exact_path() {
        use crate::domain::DomainError as D;
        let field = |d: D| ApiError::from(AppError::Domain(d)).body.field;
        let mixed = D::CurrencyMismatch { first: "EUR".into(), second: "USD".into() };
        assert_eq!(field(mixed.at_item(2)).as_deref(), Some("items[2].unit_price.currency"));
        assert_eq!(field(D::DuplicateSku { sku: "A".into() }.at_item(3)).as_deref(), Some("items[3].sku"));
        assert_eq!(field(D::UnknownCurrency("ZZZ".into()).at_item(0)).as_deref(), Some("items[0].unit_price.currency"));
        assert_eq!(field(D::TotalOverflow.at_item(1)).as_deref(), Some("items[1].unit_price.amount_minor"));
        assert_eq!(field(D::EmptyOrder).as_deref(), Some("items"));
        assert_eq!(field(D::InvalidEmail("x".into())).as_deref(), Some("email"));
        let e = ApiError::from(AppError::Domain(D::TotalOverflow.at_item(1)));
        assert_eq!((e.status.as_u16(), e.kind()), (422, "validation"));
    }

    /// Review finding: a 415 for a wrong Content-Type and a 400 for a body
    /// that could not be read named no field.
    #[test]
    fn body_level_errors_name_their_field() {
        use actix_web::error::{JsonPayloadError as J, PayloadError as P};
        use actix_web::test::TestRequest;
        let req = TestRequest::default().to_http_request();
        let field = |e: actix_web::Error| {
            let e = e.as_error::<ApiError>().unwrap().clone();
            (e.status.as_u16(), e.body.field)
        };
        assert_eq!(field(json_error(J::ContentType, &req)), (415, Some("Content-Type".into())));
        assert_eq!(field(json_error(J::Payload(P::Incomplete(None)), &req)), (400, Some("$".into())));
    }

    /// Review finding: an append whose outcome was unknown answered the
    /// retryable 503 `unavailable` with Retry-After, inviting a blind retry
    /// that could apply the command twice.
    #[test]
    fn an_unknown_outcome_is_its_own_503_without_retry_after() {
        let e = ApiError::from(AppError::Store(StoreError::OutcomeUnknown("cas timeout".into())));
        assert_eq!((e.status.as_u16(), e.body.error), (503, "outcome_unknown"));
        assert!(e.body.detail.contains("reload"), "{}", e.body.detail);
        assert!(e.error_response().headers().get(header::RETRY_AFTER).is_none());
    }
}
