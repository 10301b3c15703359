//! Problem documents that name exactly what is wrong, on a real `outboxd
//! run` (real SQLite store, Kafka from `KAFKA_BROKERS`): the item at fault
//! in a rule across items, the real limits (name length, quantity range),
//! text made only of invisible characters, docs/HTTP.md's error example as
//! the server answers it, JSON 413s on confirm, a body that takes no fields,
//! and a rewind past the last stored event (422 naming `to_position`).

mod harness;

use harness::*;
use serde_json::json;
use uuid::Uuid;

/// Review findings: a rule the domain checks across items named
/// `items[].unit_price.currency` without the index; a name over 500
/// characters was refused with "at most 500" (the limit is 200); and
/// confirm, which reads its body as bytes, answered actix's 413 text/plain.
#[test]
fn problems_name_the_exact_item_the_real_limit_and_confirm_413s_as_json() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);
    let c = Uuid::now_v7();
    let line = |sku: &str, qty: i64, amount: i64, cur: &str| item(json!(sku), json!(qty), json!(amount), json!(cur));
    let eur = |sku: &str| line(sku, 1, 100, "EUR");
    let big = |sku: &str| line(sku, 4_000_000, 1_000_000_000_000, "EUR");
    for (items, field) in [
        (vec![eur("A"), eur("B"), line("C", 1, 100, "USD")], "items[2].unit_price.currency"),
        (vec![eur("A"), eur("B"), eur("C"), eur("B")], "items[3].sku"),
        (vec![line("A", 1, 100, "ZZZ")], "items[0].unit_price.currency"),
        // Each line fits in 64 bits; the sum overflows at the third.
        (vec![big("A"), big("B"), big("C")], "items[2].unit_price.amount_minor"),
    ] {
        let v = assert_error(&d.post("/orders", &json!({"customer_id": c, "items": items})), 422, "validation");
        assert_eq!(v["field"], field, "{v}");
    }
    let id = create_order(&d, c, "X-1");
    let v = assert_error(
        &d.post(&format!("/orders/{id}/items"), &json!({"items": [eur("A"), eur("A")]})),
        422,
        "validation",
    );
    assert_eq!(v["field"], "items[1].sku", "{v}");

    // docs/HTTP.md's error example is the answer to what it describes.
    let shown = harness::docs::json_example("docs/HTTP.md", "### Errors");
    let r = d.post("/orders", &json!({"customer_id": c, "items": [line("BOOK-1", 0, 100, "EUR")]}));
    assert_eq!(assert_error(&r, 422, "validation"), shown);
    // A quantity over the limit is told the limit, not "greater than 0".
    let v = assert_error(
        &d.post("/orders", &json!({"customer_id": c, "items": [line("A", 1 << 32, 1, "EUR")]})),
        422,
        "validation",
    );
    assert_eq!(v["field"], "items[0].quantity", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("between 1 and 4294967295, got 4294967296"), "{v}");
    // A name of zero-width characters only is blank.
    let v =
        assert_error(&d.post("/customers", &json!({"name": "\u{200b}\u{feff}", "email": "a@b.co"})), 422, "validation");
    assert_eq!(v["field"], "name", "{v}");

    for len in [201, 501, 5000] {
        let r = d.post("/customers", &json!({"name": "n".repeat(len), "email": "a@b.co"}));
        let v = assert_error(&r, 422, "validation");
        assert_eq!(v["field"], "name", "{v}");
        assert!(v["detail"].as_str().unwrap().contains("at most 200 characters"), "{len}: {v}");
    }

    let confirm = format!("/orders/{id}/confirm");
    let over = format!("{}{{}}", " ".repeat(64 * 1024 + 1));
    for h in [vec![("Content-Type", "application/json")], vec![]] {
        let v = assert_error(&d.api("POST", &confirm, &h, Some(over.as_bytes())), 413, "payload_too_large");
        assert!(v["detail"].as_str().unwrap().contains("65536 bytes"), "{v}");
    }
    let mut chunked = Vec::new();
    for part in over.as_bytes().chunks(8 * 1024) {
        chunked.extend(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend(part);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let head = format!(
        "POST {confirm} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        d.api
    );
    assert_error(&raw(d.api, head.as_bytes(), &chunked).unwrap(), 413, "payload_too_large");
    let v = assert_error(&d.api("POST", &confirm, &[], Some(b"[1]")), 422, "validation");
    assert_eq!(v["field"], "$", "{v}");
    let v = assert_error(&d.api("POST", &confirm, &[], Some(b"{\"x\": 1}")), 422, "validation");
    assert_eq!(v["field"], "x", "{v}");
    // It said "expected one of: " and nothing after.
    assert_eq!(v["detail"], "unknown field `x`; this body takes no fields (send none, or `{}`)", "{v}");
    assert_error(&d.api("POST", &confirm, &[], Some(b"nope")), 400, "malformed_json");
    // Nothing of the above was written; an empty body or `{}` confirms.
    assert_eq!(count_events(&d.cfg.store.path), 1);
    let r = d.api("POST", &confirm, &[("Content-Type", "application/json")], Some(b" {} "));
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("confirmed")), "{}", r.text());
    d.stop();
}

/// Operator walkthrough: `POST /relay/rewind {"to_position": N}` past the
/// last stored event wrote a request the relay then failed. It is a 422
/// naming `to_position`, and nothing is written.
#[test]
fn a_rewind_past_the_last_event_is_a_422() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);
    create_order(&d, Uuid::now_v7(), "A");
    let v = assert_error(&d.admin_post("/relay/rewind", &json!({"to_position": 5})), 422, "validation");
    assert_eq!(v["field"], "to_position", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("beyond the last event in the store (position 1)"), "{v}");
    let written = sqlite3(&d.cfg.store.path, "SELECT COUNT(*) FROM relay_requests");
    assert_eq!(written.trim(), "0");
    d.stop();
}
