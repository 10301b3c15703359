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
//! Reads from the read models (SQLite backend; see `projection`):
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
//! render the outcome.

use actix::dev::ToEnvelope;
use actix::{Addr, Handler};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::sync::Arc;
use uuid::Uuid;

use crate::actors::{ExecuteCommand, Intake, LoadAggregate, OrderActor};
use crate::app::{Loaded, Outcome};
use crate::domain::{Aggregate, Customer, CustomerCommand, Order, OrderCommand};
use crate::envelope::Metadata;
use crate::projection::{DynReadModels, Freshness, PageRequest, DEFAULT_PAGE, MAX_PAGE};

use super::errors::{method_not_allowed, ApiError};
use super::input::{self, Input};

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

/// The correlation id of the current request (set by the gate).
#[derive(Debug, Clone, Copy)]
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

fn correlation(req: &HttpRequest) -> Uuid {
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

fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad_request("id", "the id in the path must be a UUID"))
}

fn order_view(id: Uuid, version: i64, o: &Order) -> Value {
    json!({
        "id": id,
        "version": version,
        "status": o.status,
        "customer_id": o.customer_id,
        "items": o.items,
        "total": o.total,
        "tracking_number": o.tracking_number,
        "carrier": o.carrier,
        "signature": o.signature,
        "cancel_reason": o.cancel_reason,
    })
}

fn customer_view(id: Uuid, version: i64, c: &Customer) -> Value {
    json!({"id": id, "version": version, "name": c.name, "email": c.email, "phone": c.phone})
}

fn respond(status: StatusCode, version: i64, location: Option<String>, body: Value) -> HttpResponse {
    let mut b = HttpResponse::build(status);
    b.insert_header((header::ETAG, format!("\"{version}\"")));
    if let Some(l) = location {
        b.insert_header((header::LOCATION, l));
    }
    b.json(body)
}

async fn execute<A>(st: &ApiState, req: &HttpRequest, id: Uuid, command: A::Command) -> Result<Outcome<A>, ApiError>
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

async fn load<A>(st: &ApiState, id: Uuid) -> Result<Loaded<A>, ApiError>
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

// ---- orders ---------------------------------------------------------------

async fn create_order(
    st: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    if_match(&req)?;
    let b = Input::body(&body, &["id", "customer_id", "items"])?;
    let id = b.opt_uuid("id")?.unwrap_or_else(Uuid::now_v7);
    let customer_id = b.uuid("customer_id")?;
    let items = input::items(&b)?;
    let out = execute::<Order>(&st, &req, id, OrderCommand::Create { customer_id, items }).await?;
    Ok(respond(
        StatusCode::CREATED,
        out.version,
        Some(format!("/orders/{id}")),
        order_view(id, out.version, &out.state),
    ))
}

fn with_projection(mut resp: HttpResponse, f: Freshness) -> HttpResponse {
    if let Ok(v) = HeaderValue::from_str(&f.lag_events.to_string()) {
        resp.headers_mut().insert(header::HeaderName::from_static(PROJECTION_LAG_HEADER), v);
    }
    resp
}

fn read_model_unavailable(e: crate::store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "read models unavailable");
    ApiError::unavailable("temporarily unavailable; retry shortly")
}

async fn get_order(st: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path)?;
    let mut freshness = None;
    if let Some(models) = &st.read_models {
        match models.get_order(id).await {
            Ok(Some(v)) => {
                let mut body = order_view(id, v.version, &v.state);
                body["source"] = json!("read_model");
                body["stream_version"] = json!(v.stream_version);
                body["created_at"] = json!(v.created_at);
                body["updated_at"] = json!(v.updated_at);
                body["projection"] = json!(v.projection);
                return Ok(with_projection(respond(StatusCode::OK, v.version, None, body), v.projection));
            }
            // Not projected yet: the event stream may have it.
            Ok(None) => freshness = models.freshness().await.ok(),
            Err(e) => tracing::warn!(error = %e, order_id = %id, "read model unavailable; reading the event stream"),
        }
    }
    let l = load::<Order>(&st, id).await?;
    if l.version == 0 {
        return Err(ApiError::not_found(format!("order {id} does not exist")));
    }
    let mut body = order_view(id, l.version, &l.state);
    body["source"] = json!("events");
    let resp = match freshness {
        Some(f) => {
            body["projection"] = json!(f);
            with_projection(respond(StatusCode::OK, l.version, None, body), f)
        }
        None => respond(StatusCode::OK, l.version, None, body),
    };
    Ok(resp)
}

/// Parses `after`, `offset`, `limit` of GET /customers/{id}/orders; any
/// other, repeated or malformed parameter is a 400 naming it.
pub fn page_request(query: &[(String, String)]) -> Result<PageRequest, ApiError> {
    let mut page = PageRequest { after: None, offset: 0, limit: DEFAULT_PAGE };
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in query {
        if seen.contains(&k.as_str()) {
            return Err(ApiError::bad_request(k, format!("{k} is given more than once")));
        }
        seen.push(k.as_str());
        match k.as_str() {
            "after" => {
                page.after = Some(Uuid::parse_str(v.trim()).map_err(|_| {
                    ApiError::bad_request("after", "after must be an order id (the next_after of the previous page)")
                })?)
            }
            "offset" => {
                page.offset = v
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request("offset", "offset must be a non-negative integer"))?
            }
            "limit" => {
                page.limit = match v.trim().parse::<usize>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(
                            "limit",
                            format!("limit must be an integer from 1 to {MAX_PAGE}"),
                        ))
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(
                    other,
                    format!("unknown query parameter {other:?}; use after, offset or limit"),
                ))
            }
        }
    }
    if page.after.is_some() && page.offset > 0 {
        return Err(ApiError::bad_request("offset", "give either after (a cursor) or offset, not both"));
    }
    Ok(page)
}

async fn customer_orders(
    st: web::Data<ApiState>,
    path: web::Path<String>,
    q: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path)?;
    let page = page_request(&q)?;
    let Some(models) = &st.read_models else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_available",
            "read models are not available on this store backend",
        ));
    };
    let p = models.orders_by_customer(id, page).await.map_err(read_model_unavailable)?;
    let f = p.projection;
    Ok(with_projection(HttpResponse::Ok().json(p), f))
}

async fn order_command(
    st: &ApiState,
    req: &HttpRequest,
    raw_id: &str,
    cmd: impl FnOnce() -> Result<OrderCommand, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(raw_id)?;
    if_match(req)?;
    let cmd = cmd()?;
    let out = execute::<Order>(st, req, id, cmd).await?;
    Ok(respond(StatusCode::OK, out.version, None, order_view(id, out.version, &out.state)))
}

async fn update_items(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    order_command(&st, &req, &path, || {
        let b = Input::body(&body, &["items"])?;
        Ok(OrderCommand::UpdateItems { items: input::items(&b)? })
    })
    .await
}

async fn confirm(st: web::Data<ApiState>, req: HttpRequest, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    order_command(&st, &req, &path, || Ok(OrderCommand::Confirm)).await
}

async fn ship(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    order_command(&st, &req, &path, || {
        let b = Input::body(&body, &["tracking_number", "carrier"])?;
        Ok(OrderCommand::Ship { tracking_number: b.string("tracking_number")?, carrier: b.string("carrier")? })
    })
    .await
}

async fn deliver(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    order_command(&st, &req, &path, || {
        let b = Input::body(&body, &["signature"])?;
        Ok(OrderCommand::Deliver { signature: b.string("signature")? })
    })
    .await
}

async fn cancel(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    order_command(&st, &req, &path, || {
        let b = Input::body(&body, &["reason"])?;
        Ok(OrderCommand::Cancel { reason: b.string("reason")? })
    })
    .await
}

// ---- customers ------------------------------------------------------------

async fn register_customer(
    st: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    if_match(&req)?;
    let b = Input::body(&body, &["id", "name", "email", "phone"])?;
    let id = b.opt_uuid("id")?.unwrap_or_else(Uuid::now_v7);
    let name = b.string("name")?;
    let email = input::email(&b)?;
    let phone = input::phone(&b)?;
    let out = execute::<Customer>(&st, &req, id, CustomerCommand::Register { name, email, phone }).await?;
    Ok(respond(
        StatusCode::CREATED,
        out.version,
        Some(format!("/customers/{id}")),
        customer_view(id, out.version, &out.state),
    ))
}

async fn get_customer(st: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path)?;
    let l = load::<Customer>(&st, id).await?;
    if l.version == 0 {
        return Err(ApiError::not_found(format!("customer {id} does not exist")));
    }
    Ok(respond(StatusCode::OK, l.version, None, customer_view(id, l.version, &l.state)))
}

async fn change_email(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path)?;
    if_match(&req)?;
    let b = Input::body(&body, &["email"])?;
    let email = input::email(&b)?;
    let out = execute::<Customer>(&st, &req, id, CustomerCommand::ChangeEmail { email }).await?;
    Ok(respond(StatusCode::OK, out.version, None, customer_view(id, out.version, &out.state)))
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
    fn page_request_params() {
        let q = |pairs: &[(&str, &str)]| {
            page_request(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
        };
        assert_eq!(q(&[]).unwrap(), PageRequest { after: None, offset: 0, limit: DEFAULT_PAGE });
        let id = Uuid::now_v7();
        assert_eq!(q(&[("after", &id.to_string()), ("limit", "3")]).unwrap(), PageRequest::after(id, 3));
        assert_eq!(
            q(&[("offset", "6"), ("limit", "500")]).unwrap(),
            PageRequest { after: None, offset: 6, limit: 500 }
        );
        for (bad, field) in [
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "501")], "limit"),
            (vec![("limit", "ten")], "limit"),
            (vec![("limit", "-1")], "limit"),
            (vec![("after", "nope")], "after"),
            (vec![("offset", "-2")], "offset"),
            (vec![("limit", "2"), ("limit", "3")], "limit"),
            (vec![("colour", "red")], "colour"),
            (vec![("after", "0190a0a0-0000-7000-8000-000000000000"), ("offset", "2")], "offset"),
        ] {
            let e = q(&bad).unwrap_err();
            assert_eq!((e.status.as_u16(), e.body.field.as_deref()), (400, Some(field)), "{bad:?}");
        }
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
