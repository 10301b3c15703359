//! The actor system of a real `outboxd run` process against real Kafka:
//! supervision (restart, restart budget), the metric catalogue, SIGTERM
//! under load and dead letters through the DlqActor (health levels:
//! `tests/health.rs`); two harness self-tests: a metric missing from
//! /metrics is no 0, and a load writer's panic fails the load's stop.
//! Failure injection: `OUTBOXD_ENABLE_FAULT_INJECTION=1` enables
//! `POST /debug/fail/{actor}` on the admin server.

mod harness;

use harness::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[test]
fn injected_failures_restart_order_and_cdc_actors_and_events_keep_flowing() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[fault_injection()]);
    create_order(&d, Uuid::now_v7(), "BEFORE-1");
    caught_up(&d);
    assert_eq!(restarts(&d, "order_actor"), 0.0);

    // OrderActor: stops itself, the supervisor restarts it, commands work again.
    d.inject("order_actor", "stop");
    create_order(&d, Uuid::now_v7(), "AFTER-ORDER-1");
    assert_eq!(restarts(&d, "order_actor"), 1.0);
    eventually(Duration::from_secs(10), "order_actor healthy again", || {
        (component(&d.health().1, "order_actor").0 == "healthy").then_some(())
    });

    // CdcStreamProcessor: the relay task is killed, then panics, then the actor stops.
    for (i, mode) in ["kill", "panic", "stop"].into_iter().enumerate() {
        d.inject("cdc_processor", mode);
        eventually(Duration::from_secs(10), "the cdc restart to be counted", || {
            (restarts(&d, "cdc_processor") == (i + 1) as f64).then_some(())
        });
        create_order(&d, Uuid::now_v7(), &format!("AFTER-CDC-{mode}"));
        caught_up(&d);
    }
    // Resume policy: DLQ and health actors log and keep serving; no restart.
    d.inject("dlq_actor", "stop");
    d.inject("health_check", "stop");
    let before = d.health().1["checked_at"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(5), "health checks to continue", || {
        (d.health().1["checked_at"].as_str().unwrap() != before).then_some(())
    });
    assert_eq!(d.admin("GET", "/dlq").status, 200);
    let m = d.metrics();
    assert_eq!(m.value("actor_restarts_total", &[("actor", "order_actor")]), 1.0);
    assert_eq!(m.value("actor_restarts_total", &[("actor", "cdc_processor")]), 3.0);
    assert_eq!(
        m.value("actor_restarts_total", &[("actor", "dlq_actor")])
            + m.value("actor_restarts_total", &[("actor", "health_check")]),
        0.0
    );
    let head = caught_up(&d);
    assert_eq!(head, 5);
    assert_all_on_topic(&brokers, &d);
    let (status, h) = d.health();
    assert_eq!((status, h["status"].as_str()), (200, Some("healthy")), "{h}");
    let log = d.log_text();
    assert!(log.contains("relay task panicked") && log.contains("restarting actor"), "{log}");
    d.stop();
}

#[test]
fn exhausted_restart_budget_exits_non_zero() {
    let Some(brokers) = harness::shared_brokers() else { return };
    for actor in ["order_actor", "cdc_processor", "projection_actor"] {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::start(
            &daemon_config(&brokers, dir.path()),
            &[fault_injection(), ("OUTBOX_SUPERVISION__MAX_RESTARTS", "2".into())],
        );
        let mode = if actor == "order_actor" { "stop" } else { "kill" };
        for _ in 0..3 {
            d.inject(actor, mode);
        }
        let status = d.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!("{actor}: daemon still running after the budget was exhausted:\n{}", d.log_text())
        });
        let log = d.log_text();
        assert_eq!(status.code(), Some(70), "{actor}: {status:?}\n{log}");
        assert!(log.contains("restart budget exhausted") && log.contains("gave up"), "{log}");
        assert_eq!(restarts_in_log(&log, actor), 2, "{log}");
    }
}

fn restarts_in_log(log: &str, actor: &str) -> usize {
    log.lines().filter(|l| l.contains("restarting actor") && l.contains(&format!("actor={actor}"))).count()
}

/// The metric names issue 5 lists (histograms by their base name).
const CATALOGUE: &[&str] = &[
    "cdc_events_processed_total",
    "cdc_events_failed_total",
    "cdc_processing_duration_seconds",
    "retry_attempts_total",
    "retry_success_total",
    "retry_failure_total",
    "dlq_messages_total",
    "dlq_messages_by_event_type_total",
    "circuit_breaker_state",
    "circuit_breaker_transitions_total",
    "actor_health_status",
    "actor_restarts_total",
    "messages_sent_total",
    "messages_received_total",
    "relay_lag_events",
    "relay_checkpoint_position",
    "projection_lag_events",
    "projection_checkpoint_position",
    "event_end_to_end_latency_seconds",
    "store_append_duration_seconds",
    "http_requests_total",
];

#[test]
fn metrics_parse_list_the_catalogue_and_move_when_events_flow() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);
    d.admin("GET", "/health");
    let before = d.metrics();
    let names = before.names();
    let missing: Vec<_> = CATALOGUE.iter().filter(|n| !names.contains(**n)).collect();
    assert!(missing.is_empty(), "missing from /metrics: {missing:?}\n{}", before.text);
    for (name, kind) in [
        ("cdc_processing_duration_seconds", "histogram"),
        ("event_end_to_end_latency_seconds", "histogram"),
        ("store_append_duration_seconds", "histogram"),
        ("cdc_events_processed_total", "counter"),
        ("relay_lag_events", "gauge"),
    ] {
        assert!(before.text.contains(&format!("# TYPE {name} {kind}")), "{name} is a {kind}");
    }
    // The seed's processing buckets.
    for le in ["0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5"] {
        assert!(
            before.text.contains(&format!(
                "cdc_processing_duration_seconds_bucket{{event_type=\"OrderCreated\",le=\"{le}\"}}"
            )),
            "bucket {le}"
        );
    }

    for i in 0..5 {
        let id = create_order(&d, Uuid::now_v7(), &format!("M-{i}"));
        let r = d.api("POST", &format!("/orders/{id}/confirm"), &[], None);
        assert_eq!(r.status, 200);
    }
    d.post("/customers", &json!({"name": "M", "email": "m@example.com"}));
    let head = caught_up(&d);
    assert_eq!(head, 11);
    let after = d.metrics();
    let grew = |name: &str, labels: &[(&str, &str)], by: f64| {
        let (a, b) = (before.value(name, labels), after.value(name, labels));
        assert!(b - a >= by, "{name}{labels:?} moved {a} -> {b}, expected +{by}");
    };
    grew("cdc_events_processed_total", &[("event_type", "OrderCreated")], 5.0);
    grew("cdc_events_processed_total", &[("event_type", "OrderConfirmed")], 5.0);
    grew("cdc_events_processed_total", &[("event_type", "CustomerRegistered")], 1.0);
    grew("cdc_processing_duration_seconds", &[("event_type", "OrderCreated")], 5.0);
    grew("messages_sent_total", &[("topic", &format!("{}order-events", d.cfg.kafka.topic_prefix))], 10.0);
    grew("messages_received_total", &[("actor", "order_actor")], 11.0);
    grew("store_append_duration_seconds", &[], 11.0);
    grew("event_end_to_end_latency_seconds", &[], 11.0);
    grew("relay_checkpoint_position", &[], 11.0);
    grew("http_requests_total", &[("route", "/orders"), ("status", "201")], 5.0);
    grew("http_requests_total", &[("route", "/orders/:id/confirm"), ("status", "200")], 5.0);
    // `sample`: a 0 from a series on the page, not from a missing one.
    assert_eq!(after.sample("relay_lag_events", &[("role", "active")]), 0.0);
    assert_eq!(after.sample("circuit_breaker_state", &[]), 0.0);
    assert_eq!(after.sample("actor_health_status", &[("component", "system")]), 0.0);
    // The page as Prometheus' own lint reads it, with every family filled.
    match harness::metrics::promtool_findings(&after.text) {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "SKIPPED: promtool check metrics: promtool not installed (Debian `prometheus`; make test installs it)"
        ),
        Err(findings) => panic!("{findings}\n{}", after.text),
    }
    d.stop();
}

#[test]
fn sigterm_during_http_load_exits_0_and_loses_no_committed_event() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&brokers, dir.path());
    let mut d = Daemon::start(&cfg, &[]);
    let api = d.api;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let b = serde_json::to_vec(&order_body(Uuid::now_v7(), &format!("L-{w}-{i}"))).unwrap();
                    match try_request(api, "POST", "/orders", &[("Content-Type", "application/json")], Some(&b)) {
                        Ok(r) => seen.push((r.status, r.body)),
                        Err(_) => break, // the server has closed its listener
                    }
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    d.sigterm();
    // An impatient operator signals again: the shutdown under way goes on
    // as it was (docs/OPERATIONS.md, Shutdown), flush and checkpoint included.
    std::thread::sleep(Duration::from_millis(50));
    let _ = nix::sys::signal::kill(d.pid(), nix::sys::signal::Signal::SIGINT);
    let status = d.wait_exit(Duration::from_secs(40)).expect("exits after SIGTERM");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    stop.store(true, Ordering::SeqCst);
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    let mut created = HashSet::new();
    let mut refused = 0;
    for c in clients {
        for (s, body) in c.join().unwrap() {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            match s {
                201 => {
                    created.insert(v["id"].as_str().unwrap().to_string());
                }
                503 => {
                    assert!(v["error"] == "shutting_down" || v["error"] == "unavailable", "{v}");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {v}"),
            }
        }
    }
    eprintln!("{} orders created, {refused} refused during shutdown", created.len());
    assert!(created.len() > 10, "load ran");
    let stored = stored_events(&cfg.store.path);
    let aggregates: HashSet<String> = stored.iter().map(|(_, a, _)| a.clone()).collect();
    assert!(created.is_subset(&aggregates), "every acknowledged order is committed");
    assert_eq!(
        checkpoint(&cfg.store.path, &cfg.relay.consumer_name),
        stored.len() as i64,
        "the relay flushed every committed event before exiting"
    );

    // Restart: nothing left to publish, and every committed event is on the topic.
    let d = Daemon::start(&cfg, &[]);
    assert_eq!(caught_up(&d), stored.len() as i64);
    assert_all_on_topic(&brokers, &d);
    d.stop();
}

#[test]
/// Policy `skip` (the old behaviour): the poison event goes to the DLQ, its
/// aggregate moves on, and a replay through the admin API (carried out by the
/// running relay) publishes it; replayed while still too large under the
/// default policy, it is parked and the request fails. The default policy
/// parks the aggregate instead of dead-lettering: see tests/ordered_delivery.rs.
fn dead_letters_go_through_the_dlq_actor_and_replay_from_the_admin_api() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(&brokers, dir.path());
    cfg.kafka.compression = outboxd::config::Compression::None;
    let topic = format!("{}order-events", cfg.kafka.topic_prefix);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    rt.block_on(admin.create_topics(
        &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1)).set("max.message.bytes", "6000")],
        &opts,
    ))
    .unwrap();
    let env = [
        ("OUTBOX_RELAY__RETRY__INITIAL_BACKOFF_MS", "20".to_string()),
        ("OUTBOX_RELAY__RETRY__MAX_BACKOFF_MS", "50".to_string()),
        ("OUTBOX_RELAY__ON_PERMANENT_FAILURE", "skip".to_string()),
    ];
    let d = Daemon::start(&cfg, &env);

    let small = create_order(&d, Uuid::now_v7(), "SMALL-1").to_string();
    // 100 items with 64-character SKUs: ~12 KB of JSON, over the topic's limit.
    let items: Vec<Value> = (0..100).map(|k| json!({"sku": format!("{k:02}-{}", "X".repeat(61)), "quantity": 1, "unit_price": {"amount_minor": 1, "currency": "EUR"}})).collect();
    let r = d.post("/orders", &json!({"customer_id": Uuid::now_v7(), "items": items}));
    assert_eq!(r.status, 201, "{}", r.text());
    let poison = r.json()["id"].as_str().unwrap().to_string();
    let after = create_order(&d, Uuid::now_v7(), "SMALL-2").to_string();
    caught_up(&d);

    let list = eventually(Duration::from_secs(10), "the dead letter to be listed", || {
        let v = d.admin("GET", "/dlq").json();
        (v["count"] == 1).then_some(v)
    });
    let letter = &list["dead_letters"][0];
    assert_eq!(letter["aggregate_id"], poison.as_str());
    assert!(letter["error_message"].as_str().unwrap().to_lowercase().contains("too large"), "{letter}");
    let m = d.metrics();
    assert_eq!(m.value("dlq_messages_total", &[]), 1.0);
    assert_eq!(m.value("dlq_messages_by_event_type_total", &[("event_type", "OrderCreated")]), 1.0);
    assert!(
        m.value("messages_received_total", &[("actor", "dlq_actor")]) >= 2.0,
        "write + list went through the DlqActor"
    );
    eventually(Duration::from_secs(5), "/health to count the dead letter", || {
        d.health().1["components"]["dlq_actor"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("1 dead letters")
            .then_some(())
    });
    // Events after the poison may be re-sent once (at-least-once).
    let records = consume_until(&brokers, std::slice::from_ref(&topic), 2, Duration::from_secs(20), |rs| {
        rs.iter().any(|r| r.key == small) && rs.iter().any(|r| r.key == after)
    });
    let keys: HashSet<String> = records.into_iter().map(|r| r.key).collect();
    assert!(
        keys.contains(&small) && keys.contains(&after) && !keys.contains(&poison),
        "events around the poison are delivered"
    );

    // Raise the limit, then replay through the admin API.
    alter_topic(&brokers, &topic, "max.message.bytes", "1000000");
    let id = letter["id"].as_str().unwrap();
    // An id that names no dead letter: 422 naming it, nothing written (it
    // was written and failed later, or was reported as "do not exist").
    let requests = || sqlite3(&cfg.store.path, "SELECT COUNT(*) FROM relay_requests");
    let requests_before = requests();
    let unknown = Uuid::now_v7();
    let body = format!(r#"{{"ids": ["{id}", "{unknown}"]}}"#);
    let r = request(d.admin, "POST", "/dlq/replay", &[("Content-Type", "application/json")], Some(body.as_bytes()));
    assert_eq!((r.status, r.json()["field"].as_str()), (422, Some("ids[1]")), "{}", r.text());
    assert_eq!(requests(), requests_before, "no request written");
    // The same id twice names one letter (it failed as "do not exist").
    let body = format!(r#"{{"ids": ["{id}", "{id}"]}}"#);
    let r = request(d.admin, "POST", "/dlq/replay", &[("Content-Type", "application/json")], Some(body.as_bytes()));
    assert_eq!(r.status, 200, "the running relay carried the replay out: {}", r.text());
    assert_eq!(r.json()["request"]["status"], "done", "{}", r.text());
    assert_eq!(r.json()["request"]["result"]["events"], 1, "{}", r.text());
    assert_eq!(d.admin("GET", "/dlq").json()["count"], 0);
    assert_eq!(d.metrics().sample("dlq_depth", &[]), 0.0);
    let records = consume_until(&brokers, std::slice::from_ref(&topic), 3, Duration::from_secs(20), |rs| {
        rs.iter().any(|r| r.key == poison)
    });
    assert!(records.iter().any(|r| r.key == poison), "poison event delivered after replay");
    let r = request(d.admin, "POST", "/dlq/replay", &[("Content-Type", "application/json")], Some(b"{}"));
    assert_eq!((r.status, r.json()["error"].as_str()), (422, Some("validation")));

    // A dead letter replayed while it still cannot be published: the
    // request fails naming it (it used to wait forever) and the dead letter
    // stays, whatever the policy; its aggregate is not parked (that held
    // its later events behind an old one; under `skip` the letter was
    // deleted, the event on no topic and in no table).
    alter_topic(&brokers, &topic, "max.message.bytes", "6000");
    let r = d.post("/orders", &json!({"customer_id": Uuid::now_v7(), "items": items}));
    assert_eq!(r.status, 201, "{}", r.text());
    let again = r.json()["id"].as_str().unwrap().to_string();
    let list = eventually(Duration::from_secs(20), "the second dead letter", || {
        let v = d.admin("GET", "/dlq").json();
        (v["count"] == 1).then_some(v)
    });
    assert_eq!(list["dead_letters"][0]["aggregate_id"], again.as_str());
    d.stop();
    let d = Daemon::start(&cfg, &env[..2]);
    let id = list["dead_letters"][0]["id"].as_str().unwrap();
    let body = format!(r#"{{"ids": ["{id}"]}}"#);
    let r = request(d.admin, "POST", "/dlq/replay", &[("Content-Type", "application/json")], Some(body.as_bytes()));
    assert_eq!(r.status, 409, "the replay failed and says so: {}", r.text());
    assert_eq!(r.json()["request"]["status"], "failed", "{}", r.text());
    assert!(r.text().to_lowercase().contains("too large"), "{}", r.text());
    assert_eq!(r.json()["request"]["result"]["id"], id, "{}", r.text());
    let list = d.admin("GET", "/dlq").json();
    assert_eq!(list["count"], 1, "the dead letter stays: {list}");
    assert_eq!(list["dead_letters"][0]["id"], id, "the same letter: {list}");
    assert_eq!(d.metrics().sample("dlq_parked_aggregates", &[]), 0.0, "its aggregate is not parked");

    // `{"all": true, "wait": false}` writes both of its requests at once (it
    // used to write only the parked aggregates' and answer 202, so the dead
    // letters were never replayed): with the limit raised, the relay carries
    // out the parked aggregate's replay, then the dead letters'.
    alter_topic(&brokers, &topic, "max.message.bytes", "1000000");
    let body = br#"{"all": true, "wait": false}"#;
    let r = request(d.admin, "POST", "/dlq/replay", &[("Content-Type", "application/json")], Some(body));
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    let both = v["requests"].as_array().unwrap_or_else(|| panic!("both requests: {v}")).clone();
    let kinds: Vec<&str> = both.iter().map(|q| q["kind"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["replay_all_parked", "replay_dead_letters"], "{v}");
    assert_eq!(v["request"]["id"], both[1]["id"], "the answer's request is the last one");
    for q in &both {
        let path = format!("/relay/requests/{}", q["id"].as_str().unwrap());
        let done = eventually(Duration::from_secs(30), "the request to finish", || {
            let s = d.admin("GET", &path).json();
            (!matches!(s["request"]["status"].as_str(), Some("pending" | "running"))).then_some(s)
        });
        assert_eq!(done["request"]["status"], "done", "{done}");
    }
    assert_eq!(d.admin("GET", "/dlq").json()["count"], 0, "the dead letter was replayed");
    assert_eq!(d.metrics().sample("dlq_parked_aggregates", &[]), 0.0, "nothing is parked");
    let records = consume_until(&brokers, std::slice::from_ref(&topic), 4, Duration::from_secs(20), |rs| {
        rs.iter().any(|r| r.key == again)
    });
    assert!(records.iter().any(|r| r.key == again), "the second poison event delivered after replay --all");

    // `dlq_depth` is the store's count, whoever wrote the letter (another
    // instance, a tool): it counted only this instance's own letters.
    let letter = dead_letter(&order_events(Uuid::now_v7(), 0, 1)[0], None);
    rt.block_on(async {
        let store = outboxd::store::sqlite::SqliteStore::open(&cfg.store.path, cfg.store.sqlite.clone()).await.unwrap();
        outboxd::store::EventStore::dlq_insert(&*store, letter).await.unwrap();
    });
    eventually(Duration::from_secs(20), "dlq_depth to count a letter written by another process", || {
        (d.metrics().value("dlq_depth", &[]) == 1.0).then_some(())
    });
    d.stop();
}

/// SIGTERM with connections held open on both servers (an idle keep-alive
/// client, a request whose body never comes): the daemon exits 0 and gives
/// its relay lease back (holder cleared). (The servers now stop together,
/// and the fallback exit past the deadline releases the leases too; this
/// case does not reach that fallback, which needs a stop that overruns.)
#[test]
fn sigterm_with_connections_held_open_exits_0_and_releases_the_lease() {
    use std::io::Write;
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&brokers, dir.path());
    let mut d = Daemon::start(&cfg, &[("OUTBOX_SHUTDOWN_DEADLINE_MS", "3000".to_string())]);
    create_order(&d, Uuid::now_v7(), "HELD-1");
    eventually(Duration::from_secs(30), "the relay lease to be held", || {
        let held = sqlite3(&cfg.store.path, "SELECT holder FROM relay_leases WHERE name = 'kafka-relay'");
        (!held.trim().is_empty()).then_some(())
    });
    let mut open = Vec::new();
    for (addr, req) in [
        (d.api, "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"),
        (d.admin, "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"),
    ] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        open.push(s);
    }
    d.sigterm();
    let status = d.wait_exit(Duration::from_secs(20)).expect("the daemon exits");
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    let holder = sqlite3(&cfg.store.path, "SELECT holder FROM relay_leases WHERE name = 'kafka-relay'");
    assert!(holder.trim().is_empty(), "the relay lease is given back at exit: holder {holder:?}\n{}", d.log_text());
    drop(open);
}
