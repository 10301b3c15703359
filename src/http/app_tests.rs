//! In-process tests of the command API (`api_app`): no store, no broker.
//! The order actor's mailbox is closed, so a request that passes every
//! check of the HTTP layer reaches it and answers 503 `unavailable`; a
//! refused one answers its 4xx before.

use actix_web::{test, web};
use serde_json::Value;
use std::sync::Arc;

use crate::actors::{Intake, OrderActor};
use crate::http::{api_app, ApiState};
use crate::metrics::Metrics;

const JSON: (&str, &str) = ("Content-Type", "application/json");
const ID: &str = "0192d3a4-5b6c-7d8e-9f00-112233445566";

fn state(intake: Arc<Intake>) -> ApiState {
    let (tx, rx) = actix::dev::channel::channel::<OrderActor>(1);
    drop(rx);
    ApiState { order: actix::Addr::new(tx), intake, token: None, read_models: None }
}

/// Status and problem (or null) of one request.
async fn call_with(
    intake: Arc<Intake>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let app = test::init_service(api_app(state(intake), Metrics::new(), 64 * 1024)).await;
    let mut req = test::TestRequest::default()
        .method(actix_web::http::Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .set_payload(web::Bytes::copy_from_slice(body.as_bytes()));
    for h in headers {
        req = req.insert_header(*h);
    }
    let r = test::call_service(&app, req.to_request()).await;
    let status = r.status().as_u16();
    (status, serde_json::from_slice(&test::read_body(r).await).unwrap_or(Value::Null))
}

async fn call(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    call_with(Arc::new(Intake::new()), method, path, headers, body).await
}

fn item(sku: &str) -> String {
    format!(r#"{{"sku": "{sku}", "quantity": 1, "unit_price": {{"amount_minor": 100, "currency": "EUR"}}}}"#)
}

/// Review finding: serde_json keeps the last of two equal keys, so
/// `{"items": [A], "items": [B]}` ordered B without a word (and a proxy or
/// log reading the first saw A); a repeated key is a 422 naming it.
#[actix_web::test]
async fn a_key_given_twice_is_refused_naming_it() {
    let order = |rest: &str| format!(r#"{{"customer_id": "{ID}", {rest}}}"#);
    // The control: a body without a repeat passes the HTTP layer.
    let (status, v) = call("POST", "/orders", &[JSON], &order(&format!(r#""items": [{}]"#, item("A")))).await;
    assert_eq!((status, v["error"].as_str()), (503, Some("unavailable")), "{v}");
    let twice_items = order(&format!(r#""items": [{}], "items": [{}]"#, item("A"), item("B")));
    let twice_sku = order(
        r#""items": [{"sku": "A", "sku": "B", "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "EUR"}}]"#,
    );
    let twice_currency = order(
        r#""items": [{"sku": "A", "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "EUR", "currency": "USD"}}]"#,
    );
    let email = format!("/customers/{ID}/email");
    let ship = format!("/orders/{ID}/ship");
    for (path, body, field) in [
        ("/orders", twice_items.as_str(), "items"),
        ("/orders", &twice_sku, "items[0].sku"),
        ("/orders", &twice_currency, "items[0].unit_price.currency"),
        ("/customers", r#"{"name": "N", "email": "a@b.co", "email": "c@d.co"}"#, "email"),
        (&email, r#"{"email": "a@b.co", "email": "a@b.co"}"#, "email"),
        (&ship, r#"{"tracking_number": "T", "carrier": "A", "carrier": "B"}"#, "carrier"),
    ] {
        let (status, v) = call("POST", path, &[JSON], body).await;
        assert_eq!(
            (status, v["error"].as_str(), v["field"].as_str()),
            (422, Some("validation"), Some(field)),
            "{body}: {v}"
        );
    }
}

/// Review finding: GET /openapi.json on the command API passes the gate of
/// every request there (a correlation id that is not a UUID: 400; shutting
/// down: 503), but its description declared only 200.
#[actix_web::test]
async fn openapi_json_declares_the_statuses_the_gate_gives_it() {
    let doc: Value = serde_json::from_str(crate::http::openapi::OPENAPI_JSON).unwrap();
    let declared = &doc["paths"]["/openapi.json"]["get"]["responses"];
    let (status, v) = call("GET", "/openapi.json", &[("X-Correlation-Id", "nope")], "").await;
    assert_eq!((status, v["field"].as_str()), (400, Some("X-Correlation-Id")), "{v}");
    assert!(declared.get("400").is_some(), "GET /openapi.json answers 400 but does not declare it");
    let closed = Arc::new(Intake::new());
    closed.close();
    let (status, v) = call_with(closed, "GET", "/openapi.json", &[], "").await;
    assert_eq!((status, v["error"].as_str()), (503, Some("shutting_down")), "{v}");
    assert!(declared.get("503").is_some(), "GET /openapi.json answers 503 but does not declare it");
    let (status, _) = call("GET", "/openapi.json", &[], "").await;
    assert_eq!(status, 200);
}

/// Review finding: serde_json's `Value` (built with `raw_value`) reads an
/// object whose first key is `$serde_json::private::RawValue` as the JSON
/// text in its string, so a body whose only field is unknown was taken as
/// the order (or the empty confirm) inside it, never refused.
#[actix_web::test]
async fn a_body_is_read_as_written() {
    const MAGIC: &str = "$serde_json::private::RawValue";
    let inner = format!(r#"{{"customer_id": "{ID}", "items": [{}]}}"#, item("A"));
    let smuggled = serde_json::json!({ MAGIC: inner }).to_string();
    let (status, v) = call("POST", "/orders", &[JSON], &smuggled).await;
    assert_eq!((status, v["field"].as_str()), (422, Some(MAGIC)), "{v}");
    let (status, v) = call("POST", &format!("/orders/{ID}/confirm"), &[], &format!(r#"{{"{MAGIC}": "{{}}"}}"#)).await;
    assert_eq!((status, v["field"].as_str()), (422, Some(MAGIC)), "{v}");
    // The control: the inner body itself passes the HTTP layer.
    assert_eq!(call("POST", "/orders", &[JSON], &inner).await.0, 503);
}

/// Review finding: ids were read with `Uuid::parse_str`, which also takes
/// 32 bare digits, braces and `urn:uuid:`, while the API describes
/// `format: uuid` (the hyphenated text): a path, a body field and the
/// correlation header now take that form only, in either case.
#[actix_web::test]
async fn an_id_is_taken_in_its_described_form_only() {
    let loose = ["0192d3a45b6c7d8e9f00112233445566".to_string(), format!("{{{ID}}}"), format!("urn:uuid:{ID}")];
    for form in [ID.to_string(), ID.to_uppercase()].iter().chain(&loose) {
        let ok = !loose.contains(form);
        let (status, v) = call("POST", &format!("/orders/{form}/confirm"), &[], "").await;
        let want = if ok { (503, None) } else { (400, Some("id")) };
        assert_eq!((status, v["field"].as_str()), want, "path {form}: {v}");
        let body = format!(r#"{{"customer_id": "{form}", "items": [{}]}}"#, item("A"));
        let (status, v) = call("POST", "/orders", &[JSON], &body).await;
        let want = if ok { (503, None) } else { (422, Some("customer_id")) };
        assert_eq!((status, v["field"].as_str()), want, "body {form}: {v}");
        let (status, v) = call("GET", "/openapi.json", &[("X-Correlation-Id", form)], "").await;
        let want = if ok { (200, None) } else { (400, Some("X-Correlation-Id")) };
        assert_eq!((status, v["field"].as_str()), want, "header {form}: {v}");
    }
}
