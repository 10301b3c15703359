//! The command API's operator side on a real `outboxd run` process (real
//! SQLite store, real Kafka from `KAFKA_BROKERS`): bearer tokens on the
//! command API and the admin write routes (never logged), correlation ids
//! and trace context from the request to the Kafka headers, a restarting
//! OrderActor answering 503 problems until it is back, an admin request
//! whose read-back fails answered with its outcome, never "retry", admin
//! bodies up to `http.max_body_bytes`, compressed or non-JSON bodies (415
//! naming the header) and an explicit null id on a create.

mod harness;

use harness::*;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

#[test]
fn bearer_token_protects_the_command_api_and_admin_writes_and_is_never_logged() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = format!("tok-{}", Uuid::new_v4().simple());
    let d = Daemon::start(
        &daemon_config(&brokers, dir.path()),
        &[("OUTBOX_HTTP__API_TOKEN", token.clone()), ("RUST_LOG", "debug,rdkafka=warn,librdkafka=warn".into())],
    );
    let body = serde_json::to_vec(&order_body(Uuid::now_v7(), "T-1")).unwrap();
    let ctype = ("Content-Type", "application/json");
    let r = d.api("POST", "/orders", &[ctype], Some(&body));
    assert_error(&r, 401, "unauthorized");
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    assert_error(
        &d.api("POST", "/orders", &[ctype, ("Authorization", "Bearer wrong-token-wrong-token")], Some(&body)),
        401,
        "unauthorized",
    );
    let almost = format!("Bearer {}", &token[..token.len() - 1]);
    assert_error(&d.api("POST", "/orders", &[ctype, ("Authorization", &almost)], Some(&body)), 401, "unauthorized");
    assert_error(&d.api("POST", "/orders", &[ctype, ("Authorization", &token)], Some(&body)), 401, "unauthorized");
    assert_error(&d.api("GET", &format!("/orders/{}", Uuid::now_v7()), &[], None), 401, "unauthorized");
    assert_eq!(count_events(&d.cfg.store.path), 0);
    let auth = format!("Bearer {token}");
    let r = d.api("POST", "/orders", &[ctype, ("Authorization", &auth)], Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(d.api("GET", &format!("/orders/{id}"), &[("Authorization", &auth)], None).status, 200);
    // The API description is public.
    assert_eq!(d.api("GET", "/openapi.json", &[], None).status, 200);
    // The admin server's reads are open (loopback); its write routes need the token.
    assert_eq!(d.admin("GET", "/health").status, 200);
    assert_eq!(d.admin("GET", "/dlq").status, 200);
    let replay = br#"{"all": true}"#;
    let r = request(d.admin, "POST", "/dlq/replay", &[ctype], Some(replay));
    assert_error(&r, 401, "unauthorized");
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    let r = request(
        d.admin,
        "POST",
        "/dlq/replay",
        &[ctype, ("Authorization", "Bearer nope-nope-nope-nope")],
        Some(replay),
    );
    assert_error(&r, 401, "unauthorized");
    let r = request(d.admin, "POST", "/dlq/replay", &[ctype, ("Authorization", &auth)], Some(replay));
    // With the token: a relay request the active relay carries out (parked aggregates, then dead letters).
    assert_eq!(r.status, 200, "{}", r.text());
    let done = &r.json()["request"];
    assert_eq!(
        (done["status"].as_str(), done["kind"]["kind"].as_str()),
        (Some("done"), Some("replay_dead_letters")),
        "{done}"
    );
    let both = r.json()["requests"].as_array().cloned().unwrap_or_default();
    assert_eq!(both.len(), 2, "both requests of the replay are listed: {}", r.text());
    // Walkthrough finding: they were listed as written ("pending", no
    // finished_at) beside a done `request`. Both as stored: done, and the
    // second is the `request` itself, field for field.
    assert!(both.iter().all(|q| q["status"] == "done" && q["finished_at"].is_string()), "{both:?}");
    assert_eq!(&both[1], done, "{both:?}");
    // A rewind names exactly one target; a member given as null still counts (Schemathesis found it).
    let both = br#"{"to_position": 0, "to_time": null}"#;
    let r = request(d.admin, "POST", "/relay/rewind", &[ctype, ("Authorization", &auth)], Some(both));
    assert_eq!(assert_error(&r, 422, "validation")["field"], "to_position");
    let requests = || sqlite3(&d.cfg.store.path, "SELECT COUNT(*) FROM relay_requests");
    let before = requests();
    // Review finding: a rewind by time on SQLite (whose relay rewinds by
    // position) was written (202) and failed later: 422 naming it, nothing written.
    let by_time = br#"{"to_time": "2026-12-07T08:00:00Z", "wait": false}"#;
    let r = request(d.admin, "POST", "/relay/rewind", &[ctype, ("Authorization", &auth)], Some(by_time));
    assert_eq!(assert_error(&r, 422, "validation")["field"], "to_time");
    assert_eq!(requests(), before, "no request written");
    // An empty `ids` names nothing: 422 naming it, nothing written (the request was written and did nothing).
    let r = request(d.admin, "POST", "/dlq/replay", &[ctype, ("Authorization", &auth)], Some(br#"{"ids": []}"#));
    assert_eq!(assert_error(&r, 422, "validation")["field"], "ids");
    assert_eq!(requests(), before, "no request written");
    let cfg_out = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("config")
        .env("OUTBOX_HTTP__API_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        cfg_out.status.success(),
        "outboxd config: {:?} {}",
        cfg_out.status,
        String::from_utf8_lossy(&cfg_out.stderr)
    );
    let printed = String::from_utf8_lossy(&cfg_out.stdout);
    assert!(printed.contains("\"api_token\": \"<redacted>\""), "{printed}");
    assert!(!printed.contains(&token));
    let log = d.log_text();
    d.stop();
    assert!(!log.contains(&token), "the token must never be logged");
}

#[test]
fn correlation_id_and_trace_context_are_stored_and_reach_the_kafka_headers() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);
    let cid = Uuid::new_v4().to_string();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let body = serde_json::to_vec(&json!({"name": "Grace", "email": "grace@example.com"})).unwrap();
    let r = d.api(
        "POST",
        "/customers",
        &[
            ("Content-Type", "application/json"),
            ("X-Correlation-Id", &cid),
            ("traceparent", traceparent),
            ("tracestate", tracestate),
        ],
        Some(&body),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-correlation-id").as_deref(), Some(cid.as_str()));
    let customer = r.json()["id"].as_str().unwrap().to_string();
    // Without one, a fresh UUID is generated and echoed, also on errors.
    let r = d.post("/orders", &order_body(Uuid::now_v7(), "C-1"));
    let generated = r.header("x-correlation-id").expect("generated correlation id");
    assert!(Uuid::parse_str(&generated).is_ok());
    let r = d.post("/orders", &json!({}));
    assert_eq!(r.status, 422);
    assert!(r.header("x-correlation-id").is_some_and(|h| Uuid::parse_str(&h).is_ok()));
    assert_error(
        &d.api(
            "POST",
            "/customers",
            &[("Content-Type", "application/json"), ("X-Correlation-Id", "nope")],
            Some(&body),
        ),
        400,
        "bad_request",
    );
    // A malformed traceparent is refused, naming the header; nothing is stored.
    let before = count_events(&d.cfg.store.path);
    let v = assert_error(
        &d.api(
            "POST",
            "/customers",
            &[("Content-Type", "application/json"), ("traceparent", "00-xyz-01")],
            Some(&body),
        ),
        400,
        "bad_request",
    );
    assert_eq!(v["field"], "traceparent", "{v}");
    // An oversize tracestate names its own header.
    let v = assert_error(
        &d.api(
            "POST",
            "/customers",
            &[("Content-Type", "application/json"), ("traceparent", traceparent), ("tracestate", &"k=v,".repeat(2300))],
            Some(&body),
        ),
        400,
        "bad_request",
    );
    assert_eq!(v["field"], "tracestate", "{v}");
    assert_eq!(count_events(&d.cfg.store.path), before);

    let stored = stored_events(&d.cfg.store.path);
    assert!(
        stored.iter().any(|(_, agg, c)| agg == &customer && c == &cid),
        "stored with the correlation id: {stored:?}"
    );
    // Both events confirmed, then each topic read to its end.
    caught_up(&d);
    let topic = format!("{}customer-events", d.cfg.kafka.topic_prefix);
    let records = harness::consume_to_end(&brokers, &[topic], Duration::from_secs(30));
    let rec = records.iter().find(|r| r.key == customer).expect("customer event on the topic");
    assert_eq!(rec.headers.get("ce_correlationid"), Some(&cid), "{:?}", rec.headers);
    assert_eq!(rec.headers.get("traceparent").map(String::as_str), Some(traceparent), "{:?}", rec.headers);
    assert_eq!(rec.headers.get("tracestate").map(String::as_str), Some(tracestate), "{:?}", rec.headers);
    let orders = harness::consume_to_end(
        &brokers,
        &[format!("{}order-events", d.cfg.kafka.topic_prefix)],
        Duration::from_secs(30),
    );
    assert_eq!(orders[0].headers.get("ce_correlationid"), Some(&generated));
    d.stop();
}

#[test]
fn restarting_order_actor_answers_503_json_then_recovers() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = [fault_injection(), ("OUTBOX_SUPERVISION__RESTART_BACKOFF_MS", "3000".to_string())];
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &env);
    d.inject("order_actor", "stop");
    let r = d.post("/orders", &order_body(Uuid::now_v7(), "R-1"));
    let v = assert_error(&r, 503, "unavailable");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(!v["detail"].as_str().unwrap().contains('/'), "no internal detail: {v}");
    assert_eq!(count_events(&d.cfg.store.path), 0);
    let r = eventually(Duration::from_secs(15), "the order actor to come back", || {
        let r = d.post("/orders", &order_body(Uuid::now_v7(), "R-2"));
        (r.status != 503).then_some(r)
    });
    assert_eq!(r.status, 201, "{}", r.text());
    d.stop();

    // Without the flag the debug route does not exist.
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);
    assert_error(&d.admin("POST", "/debug/fail/order_actor"), 404, "not_found");
    d.stop();
}

/// `POST /relay/rewind` while the store's reads fail for a while (longer
/// than the relay's poll and backoffs, shorter than the route's wait): the
/// request row is written, so the route keeps reading it back and answers
/// with its outcome. It answered 503 with `Retry-After` and no request id,
/// and a client retrying as told wrote a second rewind: the range went to
/// Kafka twice.
#[test]
fn a_rewind_whose_read_back_fails_for_a_while_is_answered_not_refused() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[fault_injection()]);
    create_order(&d, Uuid::now_v7(), "RB-1");
    caught_up(&d);
    let r = d.admin("POST", "/debug/store?fail_reads_ms=3000");
    assert_eq!(r.status, 202, "{}", r.text());
    let r = d.admin_post("/relay/rewind", &json!({ "to_position": 0 }));
    assert_eq!(r.status, 200, "the rewind's outcome, read back once the store answers: {}", r.text());
    assert_eq!(r.header("retry-after"), None);
    let v = r.json();
    assert_eq!(v["request"]["status"], "done", "{v}");
    let rows = sqlite3(&d.cfg.store.path, "SELECT count(*) FROM relay_requests");
    assert_eq!(rows.trim(), "1", "one rewind written");
    assert_eq!(d.metrics().value("relay_rewinds_total", &[]), 1.0, "carried out once");
    d.stop();
}

/// `data` as a gzip member of one stored (uncompressed) deflate block: what
/// a client that compresses its request bodies sends.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    let len = u16::try_from(data.len()).unwrap();
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255, 1];
    out.extend(len.to_le_bytes());
    out.extend((!len).to_le_bytes());
    out.extend(data);
    out.extend((!crc).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

/// Review findings: actix-web's `compress-gzip` feature decompressed
/// request bodies (the body limit applied to the compressed size: a 64 KiB
/// gzip of zeros became ~64 MiB before the 413), so a gzipped order was
/// created (201); and the 415 for a wrong Content-Type named no field. Both
/// are 415s naming the header, on the command API and the admin server.
#[test]
fn compressed_bodies_and_non_json_bodies_are_415s_naming_the_header() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);
    let body = serde_json::to_vec(&order_body(Uuid::now_v7(), "GZ-1")).unwrap();
    let gz = gzip_stored(&body);
    let json_ct = ("Content-Type", "application/json");
    for coding in ["gzip", "deflate", "br"] {
        let r = d.api("POST", "/orders", &[json_ct, ("Content-Encoding", coding)], Some(&gz));
        let v = assert_error(&r, 415, "unsupported_media_type");
        assert_eq!(v["field"], "Content-Encoding", "{coding}: {v}");
    }
    let v = assert_error(
        &d.api("POST", "/orders", &[("Content-Type", "text/plain")], Some(&body)),
        415,
        "unsupported_media_type",
    );
    assert_eq!(v["field"], "Content-Type", "{v}");
    assert_eq!(count_events(&d.cfg.store.path), 0, "nothing written");
    // The admin server's write routes refuse them too.
    let discard = serde_json::to_vec(&json!({"event_id": Uuid::now_v7(), "reason": "gzipped"})).unwrap();
    let r = request(
        d.admin,
        "POST",
        "/dlq/discard",
        &[json_ct, ("Content-Encoding", "gzip")],
        Some(&gzip_stored(&discard)),
    );
    assert_eq!(assert_error(&r, 415, "unsupported_media_type")["field"], "Content-Encoding");
    // `identity` is no coding at all.
    let r = d.api("POST", "/orders", &[json_ct, ("Content-Encoding", "identity")], Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    d.stop();
}

/// Review finding: the admin server read JSON bodies up to a hard-coded
/// 64 KiB whatever `http.max_body_bytes` said, though docs/HTTP.md applies
/// that setting to every route that reads a body.
#[test]
fn admin_routes_take_bodies_up_to_the_configured_limit() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let limit = 256 * 1024;
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[("OUTBOX_HTTP__MAX_BODY_BYTES", limit.to_string())]);
    // 100 KiB, over the old 64 KiB, under the configured limit: read and
    // checked (the unknown field is the 422), not refused as too large.
    let under = json!({"event_id": "x", "reason": "r".repeat(100 * 1024), "bogus": 1});
    let v = assert_error(&d.admin_post("/dlq/discard", &under), 422, "validation");
    assert_eq!(v["field"], "bogus", "{v}");
    // Over the configured limit: the 413 names it.
    let over = json!({"event_id": "x", "reason": "r".repeat(limit + 1)});
    for path in ["/dlq/discard", "/dlq/replay", "/relay/rewind"] {
        let v = assert_error(&d.admin_post(path, &over), 413, "payload_too_large");
        assert!(v["detail"].as_str().unwrap().contains(&format!("{limit} bytes")), "{path}: {v}");
    }
    // Two selectors: the 422 names the second one given (it named
    // `aggregate_id` whatever the body held).
    let v =
        assert_error(&d.admin_post("/dlq/replay", &json!({"ids": [Uuid::now_v7()], "all": true})), 422, "validation");
    assert_eq!(v["field"], "all", "{v}");
    // Walkthrough findings: a body naming no target was blamed on
    // `aggregate_id`; a short discard reason was told to "say why" (it had).
    let v = assert_error(&d.admin_post("/dlq/replay", &json!({})), 422, "validation");
    assert_eq!(v["field"], "$", "{v}");
    let short = json!({"event_id": Uuid::now_v7(), "reason": "ab"});
    let v = assert_error(&d.admin_post("/dlq/discard", &short), 422, "validation");
    assert_eq!(v["field"], "reason", "{v}");
    assert!(v["detail"].as_str().unwrap().contains("at least 3 characters"), "{v}");
    d.stop();
}

/// Review finding: `{"id": null}` on a create was taken as "no id" and a
/// new one generated, though docs/openapi.json types `id` as a string (not
/// nullable). It is a 422 naming `id`, and nothing is written.
#[test]
fn an_explicit_null_id_on_a_create_is_refused_naming_id() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);
    let mut order = order_body(Uuid::now_v7(), "N-1");
    order["id"] = serde_json::Value::Null;
    let customer = json!({"id": null, "name": "N", "email": "n@example.com"});
    for (path, body) in [("/orders", &order), ("/customers", &customer)] {
        let v = assert_error(&d.post(path, body), 422, "validation");
        assert_eq!(v["field"], "id", "{path}: {v}");
        assert!(v["detail"].as_str().unwrap().contains("not null"), "{path}: {v}");
    }
    assert_eq!(count_events(&d.cfg.store.path), 0, "nothing written");
    // Absent, a new id; a nullable field (phone) still takes null.
    order.as_object_mut().unwrap().remove("id");
    assert_eq!(d.post("/orders", &order).status, 201);
    let r = d.post("/customers", &json!({"name": "N", "email": "n@example.com", "phone": null}));
    assert_eq!(r.status, 201, "{}", r.text());
    d.stop();
}
