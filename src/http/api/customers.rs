//! The Customer routes of the command API, and a customer's orders from the
//! `orders_by_customer` read model (paged).
//!
//! Guarantee: a bad page parameter is a 400 naming it (an `offset` over
//! [`MAX_OFFSET`] included, on every backend); backends without read models
//! answer 501 for the orders page.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    create_failed, execute, if_match, load, path_id, read_model_unavailable, respond, respond_read, with_projection,
    ApiState,
};
use crate::domain::{Customer, CustomerCommand};
use crate::http::errors::ApiError;
use crate::http::input::{self, Input};
use crate::http::json_body::JsonBody;
use crate::http::query::Params;
use crate::projection::{PageRequest, DEFAULT_PAGE, MAX_OFFSET, MAX_PAGE};

pub(super) fn customer_view(id: Uuid, version: i64, c: &Customer) -> Value {
    json!({"id": id, "version": version, "name": c.name, "email": c.email, "phone": c.phone})
}

/// Parses `after`, `offset`, `limit` of GET /customers/{id}/orders; any
/// other, repeated or malformed parameter is a 400 naming it. `offset` is at
/// most [`MAX_OFFSET`] whatever the backend: one documented limit, checked
/// before the store is asked (CQL's store refuses more too).
pub fn page_request(query: &[(String, String)]) -> Result<PageRequest, ApiError> {
    let q = Params::new(query, &["after", "offset", "limit"])?;
    let after = q
        .parsed::<String>(
            "after",
            |s| crate::http::input::uuid_text(s).is_some(),
            "after must be an order id (the next_after of the previous page)",
        )?
        .and_then(|s| crate::http::input::uuid_text(&s));
    let offset = q
        .parsed::<u64>(
            "offset",
            |n| *n <= MAX_OFFSET,
            &format!("offset must be an integer from 0 to {MAX_OFFSET}; page further with the `after` cursor"),
        )?
        .unwrap_or(0);
    let limit = q
        .parsed::<usize>(
            "limit",
            |n| (1..=MAX_PAGE).contains(n),
            &format!("limit must be an integer from 1 to {MAX_PAGE}"),
        )?
        .unwrap_or(DEFAULT_PAGE);
    if after.is_some() && offset > 0 {
        return Err(ApiError::bad_request("offset", "give either after (a cursor) or offset, not both"));
    }
    Ok(PageRequest { after, offset, limit })
}

pub(super) async fn customer_orders(
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

pub(super) async fn register_customer(
    st: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<JsonBody>,
) -> Result<HttpResponse, ApiError> {
    if_match(&req)?;
    let b = Input::request(&body, &["id", "name", "email", "phone"])?;
    let id = super::create_id(&body, &b)?;
    super::create_precondition::<Customer>(&st, &req, id, "/customers").await?;
    let name = b.string("name")?;
    let email = input::email(&b)?;
    let phone = input::phone(&b)?;
    let out = execute::<Customer>(&st, &req, id, CustomerCommand::Register { name, email, phone })
        .await
        .map_err(|e| create_failed(e, "/customers", id))?;
    Ok(respond(
        StatusCode::CREATED,
        out.version,
        Some(format!("/customers/{id}")),
        customer_view(id, out.version, &out.state),
    ))
}

pub(super) async fn get_customer(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path)?;
    let l = load::<Customer>(&st, id).await?;
    if l.version == 0 {
        return Err(ApiError::not_found(format!("customer {id} does not exist")));
    }
    Ok(respond_read(&req, l.version, customer_view(id, l.version, &l.state)))
}

pub(super) async fn change_email(
    st: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<JsonBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path)?;
    if_match(&req)?;
    let b = Input::request(&body, &["email"])?;
    let email = input::email(&b)?;
    let out = execute::<Customer>(&st, &req, id, CustomerCommand::ChangeEmail { email }).await?;
    Ok(respond(StatusCode::OK, out.version, None, customer_view(id, out.version, &out.state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_request_params() {
        let q = |pairs: &[(&str, &str)]| {
            page_request(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>())
        };
        assert_eq!(q(&[]).unwrap(), PageRequest { after: None, offset: 0, limit: DEFAULT_PAGE });
        let id = Uuid::now_v7();
        assert_eq!(q(&[("after", &id.to_string()), ("limit", "3")]).unwrap(), PageRequest::after(id, 3));
        let upper = id.to_string().to_uppercase();
        assert_eq!(q(&[("after", &upper)]).unwrap().after, Some(id), "either case");
        assert_eq!(
            q(&[("offset", "6"), ("limit", "500")]).unwrap(),
            PageRequest { after: None, offset: 6, limit: 500 }
        );
        assert_eq!(q(&[("offset", "10000")]).unwrap().offset, MAX_OFFSET);
        for (bad, field) in [
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "501")], "limit"),
            (vec![("limit", "ten")], "limit"),
            (vec![("limit", "-1")], "limit"),
            (vec![("after", "nope")], "after"),
            (vec![("after", "0190a0a0000070008000000000000000")], "after"),
            (vec![("after", "{0190a0a0-0000-7000-8000-000000000000}")], "after"),
            (vec![("after", "urn:uuid:0190a0a0-0000-7000-8000-000000000000")], "after"),
            (vec![("offset", "-2")], "offset"),
            (vec![("offset", "10001")], "offset"),
            (vec![("offset", "18446744073709551615")], "offset"),
            (vec![("offset", "18446744073709551616")], "offset"),
            (vec![("limit", "2"), ("limit", "3")], "limit"),
            (vec![("colour", "red")], "colour"),
            (vec![("after", "0190a0a0-0000-7000-8000-000000000000"), ("offset", "2")], "offset"),
        ] {
            let e = q(&bad).unwrap_err();
            assert_eq!((e.status.as_u16(), e.body.field.as_deref()), (400, Some(field)), "{bad:?}");
        }
    }
}
