//! The Order routes of the command API: commands through the OrderActor,
//! GET from the read model when it has the order at its current version
//! (else the event stream; a parked order's row, marked stale, when the
//! stream has an event this build cannot decode).
//!
//! Guarantee: a command's response is the state the command produced, with
//! its version as ETag; GET says where it read from (`source`) and how far
//! the read model lags (`X-Projection-Lag`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    create_failed, execute, if_match, load_outcome, path_id, respond, respond_read, with_projection, ApiState,
};
use crate::app::AppError;
use crate::domain::{Order, OrderCommand};
use crate::http::errors::ApiError;
use crate::http::input::{self, Input};
use crate::http::json_body::JsonBody;
use crate::projection::OrderView;
use crate::store::StoreError;

pub(super) fn order_view(id: Uuid, version: i64, o: &Order) -> Value {
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

/// The read-model row's body: the order plus `source`, `stream_version`,
/// timestamps and the projection's freshness.
fn row_body(id: Uuid, v: &OrderView) -> Value {
    let mut body = order_view(id, v.version, &v.state);
    body["source"] = json!("read_model");
    body["stream_version"] = json!(v.stream_version);
    body["created_at"] = json!(v.created_at);
    body["updated_at"] = json!(v.updated_at);
    body["projection"] = json!(v.projection);
    body
}

fn row_response(req: &HttpRequest, v: &OrderView, body: Value) -> HttpResponse {
    with_projection(respond_read(req, v.version, body), v.projection)
}

pub(super) async fn create_order(
    st: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<JsonBody>,
) -> Result<HttpResponse, ApiError> {
    if_match(&req)?;
    let b = Input::request(&body, &["id", "customer_id", "items"])?;
    let id = super::create_id(&body, &b)?;
    super::create_precondition::<Order>(&st, &req, id, "/orders").await?;
    let customer_id = b.uuid("customer_id")?;
    let items = input::items(&b)?;
    let out = execute::<Order>(&st, &req, id, OrderCommand::Create { customer_id, items })
        .await
        .map_err(|e| create_failed(e, "/orders", id))?;
    Ok(respond(
        StatusCode::CREATED,
        out.version,
        Some(format!("/orders/{id}")),
        order_view(id, out.version, &out.state),
    ))
}

pub(super) async fn get_order(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path)?;
    let mut freshness = None;
    let mut behind = None;
    if let Some(models) = &st.read_models {
        match models.get_order(id).await {
            // A row behind the stream (newer events not projected yet) would
            // answer an old version, its ETag and a 304 for it: the event
            // stream answers instead, with the lag. So it does for a row in
            // another build's state shape.
            Ok(Some(v)) if v.stream_version > v.version || !v.current_shape => {
                freshness = Some(v.projection);
                behind = Some(v);
            }
            Ok(Some(v)) => return Ok(row_response(&req, &v, row_body(id, &v))),
            // Not projected yet: the event stream may have it.
            Ok(None) => freshness = models.freshness().await.ok(),
            Err(e) => tracing::warn!(error = %e, order_id = %id, "read model unavailable; reading the event stream"),
        }
    }
    let l = match load_outcome::<Order>(&st, id).await? {
        Ok(l) => l,
        // A parked order: the event after the row's version cannot be
        // decoded by this build, or its stored row cannot be read at all
        // (not JSON, a column missing), so the stream cannot answer either;
        // the row does, as of its version, marked stale (not a 500).
        Err(e @ (AppError::Decode(_) | AppError::Store(StoreError::Codec(_)))) if behind.is_some() => {
            let v = behind.expect("checked");
            tracing::warn!(error = %e, order_id = %id, version = v.version, "order has an event this build cannot read; serving its read-model row, marked stale");
            let mut body = row_body(id, &v);
            body["stale"] = json!(true);
            body["stale_reason"] = json!(if v.stream_version > v.version {
                format!(
                    "an event of the order after version {} cannot be decoded or read by this build (written by a newer build, or damaged); its read model stays at version {} of {}: see `outboxd projections status`",
                    v.version, v.version, v.stream_version
                )
            } else {
                format!(
                    "the order's events cannot be decoded or read by this build, and its read model (version {}) was written in another build's state shape: see `outboxd projections status`",
                    v.version
                )
            });
            // Never a 304: a client holding this version would not learn
            // that the stream went past it.
            return Ok(with_projection(respond(StatusCode::OK, v.version, None, body), v.projection));
        }
        Err(e) => return Err(e.into()),
    };
    if l.version == 0 {
        return Err(ApiError::not_found(format!("order {id} does not exist")));
    }
    let mut body = order_view(id, l.version, &l.state);
    body["source"] = json!("events");
    let resp = match freshness {
        Some(f) => {
            body["projection"] = json!(f);
            with_projection(respond_read(&req, l.version, body), f)
        }
        None => respond_read(&req, l.version, body),
    };
    Ok(resp)
}

pub(super) async fn order_command(
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

pub(super) async fn update_items(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<JsonBody>,
) -> Result<HttpResponse, ApiError> {
    order_command(&st, &req, &path, || {
        let b = Input::request(&body, &["items"])?;
        Ok(OrderCommand::UpdateItems { items: input::items(&b)? })
    })
    .await
}

pub(super) async fn confirm(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: input::RawBody,
) -> Result<HttpResponse, ApiError> {
    // No fields: an empty body or `{}`; anything else is refused, not ignored
    // (a body over `http.max_body_bytes` is a 413 problem, see `RawBody`).
    input::no_fields(&body.0)?;
    order_command(&st, &req, &path, || Ok(OrderCommand::Confirm)).await
}

pub(super) async fn ship(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<JsonBody>,
) -> Result<HttpResponse, ApiError> {
    order_command(&st, &req, &path, || {
        let b = Input::request(&body, &["tracking_number", "carrier"])?;
        Ok(OrderCommand::Ship { tracking_number: b.string("tracking_number")?, carrier: b.string("carrier")? })
    })
    .await
}

pub(super) async fn deliver(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<JsonBody>,
) -> Result<HttpResponse, ApiError> {
    order_command(&st, &req, &path, || {
        let b = Input::request(&body, &["signature"])?;
        Ok(OrderCommand::Deliver { signature: b.string("signature")? })
    })
    .await
}

pub(super) async fn cancel(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<JsonBody>,
) -> Result<HttpResponse, ApiError> {
    order_command(&st, &req, &path, || {
        let b = Input::request(&body, &["reason"])?;
        Ok(OrderCommand::Cancel { reason: b.string("reason")? })
    })
    .await
}
