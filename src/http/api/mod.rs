//! The command API (`http.listen`, default 127.0.0.1:8080).
//!
//! | route | body | success |
//! |---|---|---|
//! | POST /orders | `{customer_id, items, id?}` | 201 order |
//! | GET /orders/{id} | | 200 order (+ `source`, `projection`) |
//! | POST /orders/{id}/items | `{items}` | 200 order |
//! | POST /orders/{id}/confirm | | 200 order |
//! | POST /orders/{id}/ship | `{tracking_number, carrier}` | 200 order |
//! | POST /orders/{id}/deliver | `{signature}` | 200 order |
//! | POST /orders/{id}/cancel | `{reason}` | 200 order |
//! | POST /customers | `{name, email, phone?, id?}` | 201 customer |
//! | GET /customers/{id} | | 200 customer |
//! | POST /customers/{id}/email | `{email}` | 200 customer |
//! | GET /customers/{id}/orders?after=&limit=&offset= | | 200 page |
//!
//! Reads from the read models (SQLite, or CQL with Scylla CDC; see `projection`):
//! - GET /orders/{id} serves the `order_read_model` row: the order body plus
//!   `"source": "read_model"`, `"projection": {checkpoint, head, lag_events}`
//!   and the header `X-Projection-Lag: <lag_events>`; ETag = the row's
//!   version. An order whose events are not projected yet (or a read-model
//!   error) falls back to the event stream (`CommandService::load`,
//!   `"source": "events"`); 404 only when neither has it. Backends without
//!   read models always read the event stream.
//! - GET /customers/{id}/orders: a page of `orders_by_customer` (ordered by
//!   order id): `after=<order uuid>` (keyset cursor, `next_after` of the
//!   previous page) or `offset=<n>`, `limit=1..=500` (default 50). A bad
//!   parameter is a 400 naming it. 501 on backends without read models.
//!
//! `If-Match: <version>` (quoted or bare) pins the expected version (409 on
//! mismatch). `X-Correlation-Id` (a UUID) is accepted or generated, stamped
//! on every event of the command (and so on the Kafka `ce_correlationid`
//! header) and echoed in the response. Responses carry `ETag: "<version>"`.
//! Handlers are thin: read the request, send one message to the OrderActor,
//! render the outcome. Files: this one (state, the gate, headers, routes),
//! `orders` and `customers` (the handlers).

mod customers;
mod orders;

use actix::dev::ToEnvelope;
use actix::{Addr, Handler};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

use crate::actors::{ExecuteCommand, Intake, LoadAggregate, OrderActor};
use crate::app::{Loaded, Outcome};
use crate::domain::Aggregate;
use crate::envelope::Metadata;
use crate::projection::{DynReadModels, Freshness};

use super::errors::{method_not_allowed, ApiError};
use customers::{change_email, customer_orders, get_customer, register_customer};
use orders::{cancel, confirm, create_order, deliver, get_order, ship, update_items};

pub use customers::page_request;

pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// How many events the read models are behind the event stream.
pub const PROJECTION_LAG_HEADER: &str = "x-projection-lag";

#[derive(Clone)]
pub struct ApiState {
    pub order: Addr<OrderActor>,
    pub intake: Arc<Intake>,
    /// `http.api_token`; never logged.
    pub token: Option<Arc<str>>,
    /// The read models (None: the backend has none; reads use the event stream).
    pub read_models: Option<DynReadModels>,
}

pub struct CorrelationId(pub Uuid);

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = (given.len() != expected.len()) as u8;
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Checks every request before routing: bearer token, intake open,
/// correlation id. Returns the correlation id, or the error and the
/// correlation id to echo (if one was valid).
pub fn gate(st: &ApiState, req: &HttpRequest) -> Result<Uuid, (ApiError, Option<Uuid>)> {
    if let Some(token) = &st.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return Err((ApiError::unauthorized(), None));
        }
    }
    let cid = match req.headers().get(CORRELATION_HEADER) {
        None => Uuid::now_v7(),
        Some(v) => match v.to_str().ok().and_then(|s| Uuid::parse_str(s.trim()).ok()) {
            Some(id) => id,
            None => return Err((ApiError::bad_request("X-Correlation-Id", "X-Correlation-Id must be a UUID"), None)),
        },
    };
    if !st.intake.is_open() {
        return Err((ApiError::shutting_down(), Some(cid)));
    }
    Ok(cid)
}

pub fn correlation_header(cid: Uuid) -> (header::HeaderName, HeaderValue) {
    let v = HeaderValue::from_str(&cid.to_string()).expect("a UUID is a valid header value");
    (header::HeaderName::from_static(CORRELATION_HEADER), v)
}

pub(super) fn correlation(req: &HttpRequest) -> Uuid {
    req.extensions().get::<CorrelationId>().map(|c| c.0).unwrap_or_else(Uuid::now_v7)
}

/// `If-Match: 3`, `If-Match: "3"` or `W/"3"`; `*` means "any version".
pub fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let Some(v) = req.headers().get(header::IF_MATCH) else { return Ok(None) };
    let bad = || {
        ApiError::bad_request(
            "If-Match",
            "If-Match must be the version number the change is based on, e.g. If-Match: \"3\"",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s == "*" {
        return Ok(None);
    }
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s);
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(Some(n)),
        _ => Err(bad()),
    }
}

pub(super) fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad_request("id", "the id in the path must be a UUID"))
}

pub(super) fn respond(status: StatusCode, version: i64, location: Option<String>, body: Value) -> HttpResponse {
    let mut b = HttpResponse::build(status);
    b.insert_header((header::ETAG, format!("\"{version}\"")));
    if let Some(l) = location {
        b.insert_header((header::LOCATION, l));
    }
    b.json(body)
}

pub(super) async fn execute<A>(
    st: &ApiState,
    req: &HttpRequest,
    id: Uuid,
    command: A::Command,
) -> Result<Outcome<A>, ApiError>
where
    A: Aggregate,
    OrderActor: Handler<ExecuteCommand<A>>,
    <OrderActor as actix::Actor>::Context: ToEnvelope<OrderActor, ExecuteCommand<A>>,
{
    let expected_version = if_match(req)?;
    let meta = Metadata { correlation_id: correlation(req), causation_id: None, trace: None };
    let msg = ExecuteCommand::<A> { id, command, meta, expected_version };
    st.order
        .send(msg)
        .await
        .map_err(|_| ApiError::unavailable("temporarily unavailable; retry shortly"))?
        .map_err(ApiError::from)
}

pub(super) async fn load<A>(st: &ApiState, id: Uuid) -> Result<Loaded<A>, ApiError>
where
    A: Aggregate,
    OrderActor: Handler<LoadAggregate<A>>,
    <OrderActor as actix::Actor>::Context: ToEnvelope<OrderActor, LoadAggregate<A>>,
{
    st.order
        .send(LoadAggregate::<A>::new(id))
        .await
        .map_err(|_| ApiError::unavailable("temporarily unavailable; retry shortly"))?
        .map_err(ApiError::from)
}

/// Registers the routes (each with a JSON 405 for other methods).
pub fn routes(cfg: &mut web::ServiceConfig) {
    let post = |path: &str, r: actix_web::Route| {
        web::resource(path.to_string()).route(r).default_service(web::to(method_not_allowed))
    };
    cfg.service(post("/orders", web::post().to(create_order)))
        .service(post("/orders/{id}", web::get().to(get_order)))
        .service(post("/orders/{id}/items", web::post().to(update_items)))
        .service(post("/orders/{id}/confirm", web::post().to(confirm)))
        .service(post("/orders/{id}/ship", web::post().to(ship)))
        .service(post("/orders/{id}/deliver", web::post().to(deliver)))
        .service(post("/orders/{id}/cancel", web::post().to(cancel)))
        .service(post("/customers", web::post().to(register_customer)))
        .service(post("/customers/{id}", web::get().to(get_customer)))
        .service(post("/customers/{id}/email", web::post().to(change_email)))
        .service(post("/customers/{id}/orders", web::get().to(customer_orders)));
}

pub(super) fn with_projection(mut resp: HttpResponse, f: Freshness) -> HttpResponse {
    if let Ok(v) = HeaderValue::from_str(&f.lag_events.to_string()) {
        resp.headers_mut().insert(header::HeaderName::from_static(PROJECTION_LAG_HEADER), v);
    }
    resp
}

pub(super) fn read_model_unavailable(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "read models unavailable");
    ApiError::unavailable("temporarily unavailable; retry shortly")
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn if_match_forms() {
        let r = |v: &str| if_match(&TestRequest::default().insert_header((header::IF_MATCH, v)).to_http_request());
        assert_eq!(r("3").unwrap(), Some(3));
        assert_eq!(r("\"3\"").unwrap(), Some(3));
        assert_eq!(r("W/\"7\"").unwrap(), Some(7));
        assert_eq!(r("*").unwrap(), None);
        for bad in ["abc", "-1", "\"3", "3.0", "99999999999999999999999"] {
            assert_eq!(r(bad).unwrap_err().body.field.as_deref(), Some("If-Match"), "{bad}");
        }
        assert_eq!(if_match(&TestRequest::default().to_http_request()).unwrap(), None);
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-124", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-1234", b"secret-token-123"));
        assert!(!constant_time_eq(b"", b"secret-token-123"));
    }
}
