//! The command API of a real `outboxd run` process (real SQLite store, real
//! Kafka from `KAFKA_BROKERS`): every endpoint, every error status as an
//! RFC 9457 problem, conditional requests (If-Match -> 412, If-None-Match ->
//! 304), 405 with Allow, 60+ malformed or hostile requests. Problems that
//! name the exact field and limit: `tests/http_problems.rs`. Bearer tokens,
//! correlation ids, a restarting actor, body encodings and admin body
//! limits: `tests/http_ops.rs`.

mod harness;

use harness::*;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

#[test]
fn every_endpoint_with_versions_etags_and_route_metrics() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);

    // Customers.
    let r = d.post(
        "/customers",
        &json!({"name": "Ada Lovelace 🙂 مرحبا", "email": "ada@Example.COM", "phone": "+44 20 7946 0958"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let c = r.json();
    let cid = c["id"].as_str().unwrap().to_string();
    assert_eq!(
        (c["version"].as_i64(), c["email"].as_str(), c["phone"].as_str()),
        (Some(1), Some("ada@example.com"), Some("+442079460958"))
    );
    assert_eq!(r.header("location").unwrap(), format!("/customers/{cid}"));
    assert_eq!(r.header("etag").unwrap(), "\"1\"");
    let r = d.api("GET", &format!("/customers/{cid}"), &[], None);
    assert_eq!((r.status, r.json()["name"].as_str()), (200, Some("Ada Lovelace 🙂 مرحبا")));
    let email = |v: &str, if_match: Option<&str>| {
        let b = serde_json::to_vec(&json!({"email": v})).unwrap();
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(m) = if_match {
            h.push(("If-Match", m));
        }
        d.api("POST", &format!("/customers/{cid}/email"), &h, Some(&b))
    };
    let r = email("ada@example.org", Some("\"1\""));
    assert_eq!((r.status, r.json()["version"].as_i64()), (200, Some(2)), "{}", r.text());
    // If-Match names a version that is no longer current: the precondition failed.
    let v = assert_error(&email("ada@example.net", Some("1")), 412, "precondition_failed");
    assert_eq!(v["field"], "If-Match");
    // If-None-Match with the current ETag: 304, no body; another version: 200.
    let r = d.api("GET", &format!("/customers/{cid}"), &[("If-None-Match", "\"2\"")], None);
    assert_eq!((r.status, r.body.len(), r.header("etag").as_deref()), (304, 0, Some("\"2\"")), "{}", r.text());
    let r = d.api("GET", &format!("/customers/{cid}"), &[("If-None-Match", "W/\"1\", \"7\"")], None);
    assert_eq!(r.status, 200);
    assert_error(&email("ada@example.net", Some("one")), 400, "bad_request");
    assert_eq!(email(" ada@EXAMPLE.org", None).header("etag"), Some("\"2\"".into())); // same email: no-op 200, not 422
    assert_error(&d.post("/customers", &json!({"id": cid, "name": "Again", "email": "a@b.co"})), 409, "already_exists");
    assert_error(&d.api("GET", &format!("/customers/{}", Uuid::now_v7()), &[], None), 404, "not_found");
    assert_error(
        &d.post(&format!("/customers/{}/email", Uuid::now_v7()), &json!({"email": "x@y.io"})),
        404,
        "not_found",
    );

    // Orders: the whole lifecycle.
    let oid = Uuid::now_v7();
    let mut body = order_body(Uuid::parse_str(&cid).unwrap(), "BOOK-1");
    body["id"] = json!(oid);
    let r = d.post("/orders", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let o = r.json();
    assert_eq!(
        (o["id"].as_str(), o["status"].as_str(), o["version"].as_i64()),
        (Some(oid.to_string().as_str()), Some("created"), Some(1))
    );
    assert_eq!(o["total"], json!({"amount_minor": 3998, "currency": "EUR"}));
    assert_eq!(r.header("location").unwrap(), format!("/orders/{oid}"));
    assert_error(&d.post("/orders", &body), 409, "already_exists");
    // `If-Match: *` on a create asks for an existing resource: a taken id
    // is still 409; a free one is 412 with nothing written; "0" on a taken one 412.
    let create_if = |b: &serde_json::Value, m: &str| {
        let b = serde_json::to_vec(b).unwrap();
        d.api("POST", "/orders", &[("Content-Type", "application/json"), ("If-Match", m)], Some(&b))
    };
    assert_error(&create_if(&body, "*"), 409, "already_exists");
    assert_error(&create_if(&body, "\"0\""), 412, "precondition_failed");
    let mut free = body.clone();
    let free_id = Uuid::now_v7();
    free["id"] = json!(free_id);
    let v = assert_error(&create_if(&free, "*"), 412, "precondition_failed");
    assert_eq!(v["field"], "If-Match");
    assert_error(&d.api("GET", &format!("/orders/{free_id}"), &[], None), 404, "not_found");
    // The same on POST /customers, with no id in the body (the server's
    // own is free), and with an id another kind of aggregate has (409).
    let register = |b: serde_json::Value| {
        let b = serde_json::to_vec(&b).unwrap();
        d.api("POST", "/customers", &[("Content-Type", "application/json"), ("If-Match", "*")], Some(&b))
    };
    assert_error(&register(json!({"name": "N", "email": "n@b.co"})), 412, "precondition_failed");
    assert_error(&register(json!({"id": oid, "name": "N", "email": "n@b.co"})), 409, "already_exists");
    let mut customer_id = body.clone();
    customer_id["id"] = json!(cid);
    assert_error(&create_if(&customer_id, "*"), 409, "already_exists");
    // The order's id is taken for any aggregate: not a customer's 404.
    assert_error(&d.post("/customers", &json!({"id": oid, "name": "X", "email": "x@y.co"})), 409, "already_exists");
    let r = d.api("GET", &format!("/orders/{oid}"), &[], None);
    assert_eq!((r.status, r.json()["items"][0]["sku"].as_str()), (200, Some("BOOK-1")));
    assert_error(
        &d.post(&format!("/orders/{oid}/ship"), &json!({"tracking_number": "T1", "carrier": "DHL"})),
        422,
        "invalid_state",
    );
    let items =
        json!({"items": [{"sku": "BOOK-2", "quantity": 3, "unit_price": {"amount_minor": 500, "currency": "EUR"}}]});
    let r = d.post(&format!("/orders/{oid}/items"), &items);
    assert_eq!(
        (r.status, r.json()["version"].as_i64(), r.json()["total"]["amount_minor"].as_i64()),
        (200, Some(2), Some(1500)),
        "{}",
        r.text()
    );
    let r = d.api("POST", &format!("/orders/{oid}/confirm"), &[("If-Match", "W/\"2\"")], None);
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("confirmed")), "{}", r.text());
    assert_error(
        &d.api("POST", &format!("/orders/{oid}/confirm"), &[("If-Match", "2")], None),
        412,
        "precondition_failed",
    );
    // GET's ETag is the version it read (the read model's row, once it caught up).
    eventually(Duration::from_secs(20), "the read model to reach version 3", || {
        let r = d.api("GET", &format!("/orders/{oid}"), &[], None);
        (r.header("etag").as_deref() == Some("\"3\"")).then_some(())
    });
    let r = d.api("GET", &format!("/orders/{oid}"), &[("If-None-Match", "\"3\"")], None);
    assert_eq!((r.status, r.body.len(), r.header("etag").as_deref()), (304, 0, Some("\"3\"")), "{}", r.text());
    let r = d.api("GET", &format!("/orders/{oid}"), &[("If-None-Match", "\"2\"")], None);
    assert_eq!(r.status, 200);
    let r = d.post(&format!("/orders/{oid}/ship"), &json!({"tracking_number": "TRK-42", "carrier": "DHL"}));
    assert_eq!(
        (r.status, r.json()["status"].as_str(), r.json()["tracking_number"].as_str()),
        (200, Some("shipped"), Some("TRK-42"))
    );
    let r = d.post(&format!("/orders/{oid}/deliver"), &json!({"signature": "A. L."}));
    assert_eq!(
        (r.status, r.json()["status"].as_str(), r.header("etag").as_deref()),
        (200, Some("delivered"), Some("\"5\""))
    );
    assert_error(&d.post(&format!("/orders/{oid}/cancel"), &json!({"reason": "too late"})), 422, "invalid_state");
    let other = d.post("/orders", &order_body(Uuid::now_v7(), "X-1")).json()["id"].as_str().unwrap().to_string();
    let r = d.post(&format!("/orders/{other}/cancel"), &json!({"reason": "changed my mind"}));
    assert_eq!(
        (r.status, r.json()["status"].as_str(), r.json()["cancel_reason"].as_str()),
        (200, Some("cancelled"), Some("changed my mind"))
    );
    assert_error(&d.api("GET", &format!("/orders/{}", Uuid::now_v7()), &[], None), 404, "not_found");
    assert_error(&d.api("POST", &format!("/orders/{}/confirm", Uuid::now_v7()), &[], None), 404, "not_found");
    assert_error(&d.api("GET", &format!("/orders/{cid}"), &[], None), 404, "not_found");
    assert_error(&d.api("GET", "/orders/not-a-uuid", &[], None), 400, "bad_request");
    assert_error(&d.api("GET", "/nope", &[], None), 404, "not_found");
    for (method, path, allow) in [
        ("DELETE", "/orders", "POST"),
        ("GET", "/orders", "POST"),
        ("HEAD", "/orders", "POST"),
        ("PUT", "/customers/x", "GET, HEAD"),
    ] {
        let r = d.api(method, path, &[], None);
        assert_eq!(r.status, 405, "{method} {path}");
        if method != "HEAD" {
            assert_error(&r, 405, "method_not_allowed");
        }
        assert_eq!(r.header("allow").as_deref(), Some(allow), "{method} {path}");
    }
    // HEAD on every kind of GET route: GET's status and headers, no body.
    let missing = format!("/orders/{}", Uuid::now_v7());
    for (path, status) in [(format!("/customers/{cid}"), 200), (missing, 404), ("/openapi.json".to_string(), 200)] {
        let (g, h) = (d.api("GET", &path, &[], None), d.api("HEAD", &path, &[], None));
        assert_eq!((g.status, h.status, h.body.len()), (status, status, 0), "HEAD {path}: {:?}", h.text());
        for name in ["etag", "content-type", "content-length"] {
            assert_eq!(h.header(name), g.header(name), "HEAD {path}: {name}");
        }
    }
    eventually(Duration::from_secs(20), "HEAD of the order to say version 5", || {
        let h = d.api("HEAD", &format!("/orders/{oid}"), &[], None);
        assert_eq!((h.status, h.body.len()), (200, 0));
        (h.header("etag").as_deref() == Some("\"5\"")).then_some(())
    });
    for path in ["/health", "/health/live", "/metrics", "/dlq"] {
        let h = request(d.admin, "HEAD", path, &[], None);
        assert_eq!((h.status, h.body.len()), (200, 0), "HEAD {path}: {:?}", h.text());
    }
    // A route that takes query parameters names the one it cannot use.
    assert_eq!(d.admin("GET", "/dlq?limit=5").status, 200);
    for (q, field) in [("limt=5", "limt"), ("limit=0", "limit"), ("limit=x", "limit"), ("limit=1&limit=2", "limit")] {
        let r = d.admin("GET", &format!("/dlq?{q}"));
        assert_eq!(assert_error(&r, 400, "bad_request")["field"], field, "/dlq?{q}");
    }

    // 13 events: customer 2, order 5, other order 2 ... all stored and all relayed.
    let head = count_events(&d.cfg.store.path);
    assert_eq!(head, 2 + 5 + 2);
    eventually(Duration::from_secs(30), "relay to catch up", || {
        (d.health().1["relay"]["checkpoint"].as_i64() == Some(head)).then_some(())
    });
    let m = d.metrics();
    assert!(m.value("http_requests_total", &[("route", "/orders/:id/confirm"), ("status", "200")]) >= 1.0);
    assert!(m.value("http_requests_total", &[("route", "/orders"), ("status", "201")]) >= 2.0);
    assert!(m.value("http_requests_total", &[("route", "unmatched"), ("status", "404")]) >= 1.0);
    for s in &m.scrape.samples {
        if s.metric == "http_requests_total" {
            let route = s.labels.get("route").unwrap();
            assert!(
                !route.contains(&oid.to_string()) && !route.contains("not-a-uuid"),
                "route label must be the pattern: {route}"
            );
        }
    }
    d.stop();
}

/// One hostile request: where, content type, body.
struct Case {
    name: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
}

fn case(name: &'static str, path: &str, status: u16, body: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        path: path.to_string(),
        headers: vec![("Content-Type", "application/json".into())],
        body: body.into(),
        status,
    }
}

fn order_json(customer: Uuid, item: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"customer_id": customer, "items": [item]})).unwrap()
}

#[test]
fn malformed_and_hostile_requests_get_4xx_json_and_change_nothing() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);
    let existing = d.post("/orders", &order_body(Uuid::now_v7(), "OK-1")).json()["id"].as_str().unwrap().to_string();
    let customer = d.post("/customers", &json!({"name": "C", "email": "c@example.com"})).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = count_events(&d.cfg.store.path);
    assert_eq!(before, 2);

    let c = Uuid::now_v7();
    let good = |q: Value| order_json(c, item(json!("A-1"), q, json!(100), json!("EUR")));
    let price = |a: Value| order_json(c, item(json!("A-1"), json!(1), a, json!("EUR")));
    let cur = |x: Value| order_json(c, item(json!("A-1"), json!(1), json!(100), x));
    let sku = |x: Value| order_json(c, item(x, json!(1), json!(100), json!("EUR")));
    let ten_mb = vec![b'x'; 10 * 1024 * 1024];
    let mut big_json = b"{\"customer_id\": \"".to_vec();
    big_json.extend(vec![b'a'; 10 * 1024 * 1024]);
    big_json.extend(b"\"}");
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let many_items: Vec<Value> =
        (0..101).map(|i| item(json!(format!("S-{i}")), json!(1), json!(1), json!("EUR"))).collect();
    let ship = format!("/orders/{existing}/ship");
    let cancel = format!("/orders/{existing}/cancel");
    let email = format!("/customers/{customer}/email");

    let mut cases = vec![
        // 400: not JSON at all.
        case("truncated object", "/orders", 400, "{"),
        case("truncated value", "/orders", 400, "{\"customer_id\":"),
        case("plain text", "/orders", 400, "not json"),
        case("trailing comma", "/orders", 400, "{\"customer_id\": \"x\",}"),
        case("single quotes", "/orders", 400, "{'customer_id': 'x'}"),
        case("NaN literal", "/orders", 400, "{\"customer_id\": NaN}"),
        case("unclosed array", "/orders", 400, "[1,2,3"),
        case("empty body", "/orders", 400, ""),
        case("invalid UTF-8", "/orders", 400, b"{\"customer_id\": \"\xff\xfe\xfd\"}".to_vec()),
        case("20k nesting levels", "/orders", 400, deep.clone()),
        case("1e400", "/orders", 400, format!("{{\"customer_id\": \"{c}\", \"items\": [{{\"sku\": \"A\", \"quantity\": 1e400, \"unit_price\": {{\"amount_minor\": 1, \"currency\": \"EUR\"}}}}]}}")),
        case("trailing garbage", "/orders", 400, format!("{} garbage", String::from_utf8(good(json!(1))).unwrap())),
        case("lone surrogate", "/customers", 400, "{\"name\": \"\\ud800\", \"email\": \"a@b.co\"}"),
        case("raw NUL inside a string", "/customers", 400, b"{\"name\": \"a\x00b\", \"email\": \"a@b.co\"}".to_vec()),
        case("byte order mark", "/customers", 400, b"\xef\xbb\xbf{\"name\": \"a\", \"email\": \"a@b.co\"}".to_vec()),
        case("two documents", "/customers", 400, "{} {}"),
        // 413: too large.
        case("10 MB of junk", "/orders", 413, ten_mb.clone()),
        case("10 MB JSON string", "/orders", 413, big_json),
        case("64 KiB + 1 of whitespace", "/orders", 413, format!("{}{}", " ".repeat(64 * 1024 + 1), "{}")),
        // 422: valid JSON, wrong shape or values; each names the field.
        case("array body", "/orders", 422, "[]"),
        case("string body", "/orders", 422, "\"order\""),
        case("null body", "/orders", 422, "null"),
        case("number body", "/orders", 422, "123"),
        case("empty object", "/orders", 422, "{}"),
        case("customer_id not a uuid", "/orders", 422, "{\"customer_id\": \"abc\", \"items\": []}"),
        case("customer_id a number", "/orders", 422, "{\"customer_id\": 123, \"items\": []}"),
        case("items missing", "/orders", 422, format!("{{\"customer_id\": \"{c}\"}}")),
        case("items an object", "/orders", 422, format!("{{\"customer_id\": \"{c}\", \"items\": {{}}}}")),
        case("items empty", "/orders", 422, format!("{{\"customer_id\": \"{c}\", \"items\": []}}")),
        case("item a number", "/orders", 422, format!("{{\"customer_id\": \"{c}\", \"items\": [1]}}")),
        case("item an array", "/orders", 422, format!("{{\"customer_id\": \"{c}\", \"items\": [[\"A\", 1]]}}")),
        case("quantity -1", "/orders", 422, good(json!(-1))),
        case("quantity 0", "/orders", 422, good(json!(0))),
        case("quantity 2^64", "/orders", 422, String::from_utf8(good(json!(1))).unwrap().replace("\"quantity\":1", "\"quantity\":18446744073709551616")),
        case("quantity i64::MAX", "/orders", 422, good(json!(i64::MAX))),
        case("quantity string", "/orders", 422, good(json!("2"))),
        case("quantity fraction", "/orders", 422, good(json!(1.5))),
        case("quantity bool", "/orders", 422, good(json!(true))),
        case("quantity object", "/orders", 422, good(json!({"$gt": 0}))),
        case("price negative", "/orders", 422, price(json!(-1))),
        case("price float", "/orders", 422, price(json!(1e15))),
        case("price 10^13", "/orders", 422, price(json!(10_000_000_000_000i64))),
        case("price nested", "/orders", 422, price(json!({"amount": 1}))),
        case("currency lower case", "/orders", 422, cur(json!("eur"))),
        case("currency emoji", "/orders", 422, cur(json!("💶"))),
        case("currency RTL override", "/orders", 422, cur(json!("\u{202e}RUE"))),
        case("currency number", "/orders", 422, cur(json!(978))),
        case("sku empty", "/orders", 422, sku(json!(""))),
        case("sku emoji", "/orders", 422, sku(json!("🙂🙂"))),
        case("sku escaped NUL", "/orders", 422, sku(json!("A\u{0000}B"))),
        case("sku 65 chars", "/orders", 422, sku(json!("S".repeat(65)))),
        case("sku arabic", "/orders", 422, sku(json!("مرحبا"))),
        case("sku array", "/orders", 422, sku(json!(["A"]))),
        case("sku 60 KB", "/orders", 422, sku(json!("A".repeat(60_000)))),
        case("duplicate skus", "/orders", 422, serde_json::to_vec(&json!({"customer_id": c, "items": [item(json!("D"), json!(1), json!(1), json!("EUR")), item(json!("D"), json!(2), json!(1), json!("EUR"))]})).unwrap()),
        case("mixed currencies", "/orders", 422, serde_json::to_vec(&json!({"customer_id": c, "items": [item(json!("A"), json!(1), json!(1), json!("EUR")), item(json!("B"), json!(1), json!(1), json!("USD"))]})).unwrap()),
        case("101 items", "/orders", 422, serde_json::to_vec(&json!({"customer_id": c, "items": many_items})).unwrap()),
        case("total overflow", "/orders", 422, serde_json::to_vec(&json!({"customer_id": c, "items": [item(json!("A"), json!(u32::MAX), json!(1_000_000_000_000i64), json!("EUR")), item(json!("B"), json!(u32::MAX), json!(1_000_000_000_000i64), json!("EUR")), item(json!("C"), json!(u32::MAX), json!(1_000_000_000_000i64), json!("EUR"))]})).unwrap()),
        case("unknown field", "/orders", 422, format!("{{\"customer_id\": \"{c}\", \"items\": [], \"admin\": true}}")),
        case("id not a uuid", "/orders", 422, format!("{{\"id\": \"../../etc/passwd\", \"customer_id\": \"{c}\", \"items\": []}}")),
        case("email invalid", "/customers", 422, "{\"name\": \"N\", \"email\": \"not-an-email\"}"),
        case("email with NUL", "/customers", 422, "{\"name\": \"N\", \"email\": \"a\\u0000@b.co\"}"),
        case("email missing", "/customers", 422, "{\"name\": \"N\"}"),
        case("name blank", "/customers", 422, "{\"name\": \"   \", \"email\": \"a@b.co\"}"),
        case("name 501 chars", "/customers", 422, format!("{{\"name\": \"{}\", \"email\": \"a@b.co\"}}", "n".repeat(501))),
        case("name a number", "/customers", 422, "{\"name\": 5, \"email\": \"a@b.co\"}"),
        case("name with escape sequence", "/customers", 422, "{\"name\": \"\\u001b[31mred\", \"email\": \"a@b.co\"}"),
        case("phone invalid", "/customers", 422, "{\"name\": \"N\", \"email\": \"a@b.co\", \"phone\": \"12345\"}"),
        case("ship without fields", &ship, 422, "{}"),
        case("cancel reason a number", &cancel, 422, "{\"reason\": 12}"),
        case("change email to garbage", &email, 422, "{\"email\": \"@@\"}"),
        case("bad path id", "/orders/..%2F..%2Fetc/confirm", 400, "{}"),
        case("confirm with a field", &format!("/orders/{existing}/confirm"), 422, "{\"x\": 1}"),
        case("confirm with malformed JSON", &format!("/orders/{existing}/confirm"), 400, "{\"x\""),
        case("currency not ISO 4217", "/orders", 422, cur(json!("ZZZ"))),
        case("unknown route", "/orders/x/y/z", 404, "{}"),
    ];
    // 415: not JSON content types.
    let mut ct = |name: &'static str, ctype: Option<&str>| {
        let mut k = case(name, "/orders", 415, good(json!(1)));
        k.headers = ctype.map(|t| vec![("Content-Type", t.to_string())]).unwrap_or_default();
        cases.push(k);
    };
    ct("text/plain", Some("text/plain"));
    ct("no content type", None);
    ct("form encoded", Some("application/x-www-form-urlencoded"));
    ct("multipart", Some("multipart/form-data; boundary=x"));
    ct("xml", Some("application/xml"));
    // Header problems.
    let mut k = case("X-Correlation-Id not a uuid", "/orders", 400, good(json!(1)));
    k.headers.push(("X-Correlation-Id", "'; DROP TABLE event_store; --".into()));
    cases.push(k);
    let mut k = case("If-Match garbage", "/orders", 400, good(json!(1)));
    k.headers.push(("If-Match", "\"\u{0}\"".replace('\u{0}', "x")));
    cases.push(k);
    let mut k = case("If-Match negative", &cancel, 400, "{\"reason\": \"r\"}");
    k.headers.push(("If-Match", "-3".into()));
    cases.push(k);

    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for k in &cases {
        let headers: Vec<(&str, &str)> = k.headers.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let r = match try_request(d.api, "POST", &k.path, &headers, Some(&k.body)) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: no response: {e}", k.name));
                continue;
            }
        };
        let json: Option<Value> = serde_json::from_slice(&r.body).ok();
        let kind_ok = json.as_ref().is_some_and(|v| v["error"].is_string() && v["detail"].is_string())
            && r.header("content-type").as_deref() == Some("application/problem+json");
        if r.status != k.status || !kind_ok {
            failures.push(format!(
                "{}: want {} JSON error, got {} {}",
                k.name,
                k.status,
                r.status,
                r.text().chars().take(200).collect::<String>()
            ));
        }
        // A 422 names the field at fault (unless it is about the order's state).
        if let Some(v) =
            json.filter(|v| r.status == 422 && v["error"] != "invalid_state" && v["field"].as_str().is_none())
        {
            failures.push(format!("{}: 422 without a field: {v}", k.name));
        }
    }
    // A 10 MB chunked body (no Content-Length).
    let mut chunked = Vec::new();
    for part in ten_mb.chunks(1 << 20) {
        chunked.extend(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend(part);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let head = format!("POST /orders HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", d.api);
    match raw(d.api, head.as_bytes(), &chunked) {
        Ok(r) if r.status == 413 && r.json()["error"] == "payload_too_large" => {}
        other => failures.push(format!("10 MB chunked: {other:?}")),
    }
    // A command without fields answers malformed JSON as every body does.
    let h = [("Content-Type", "application/json")];
    let r = request(d.api, "POST", &format!("/orders/{existing}/confirm"), &h, Some(b"{\"x\""));
    if r.status != 400 || r.json()["error"] != "malformed_json" {
        failures.push(format!("confirm with malformed JSON: {} {}", r.status, r.text()));
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile requests misbehaved:\n{}",
        failures.len(),
        cases.len() + 1,
        failures.join("\n")
    );

    // Still up, nothing written, nothing panicked.
    assert_eq!(d.admin("GET", "/health/live").status, 200);
    assert_eq!(d.api("GET", &format!("/orders/{existing}"), &[], None).status, 200);
    assert_eq!(count_events(&d.cfg.store.path), before, "hostile requests must not change the store");
    assert!(d.alive());
    let log = d.log_text();
    assert!(!log.contains("panicked"), "{log}");
    let m = d.metrics();
    assert!(m.value("http_requests_total", &[("route", "/orders"), ("status", "422")]) >= 30.0);
    assert!(m.value("http_requests_total", &[("route", "/orders"), ("status", "413")]) >= 3.0);
    assert!(m.value("http_requests_total", &[("route", "/orders"), ("status", "415")]) >= 5.0);
    d.stop();
}
