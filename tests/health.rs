//! Health levels of a real `outboxd run` process against real Kafka: a
//! broker outage under traffic and while idle (the broker watch's probes),
//! the store removed under the daemon (/health and the relay's own reads),
//! a standby saying whether it could take over (its producer is made before
//! its term; on the position feed and the Scylla CDC relay), and /health,
//! /health/ready and 503s during shutdown. The /health example of
//! OPERATIONS.md is checked against the live answer in the same state.

mod harness;

use harness::*;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[test]
fn health_degrades_while_the_broker_is_down_and_recovers_then_shutdown_answers_503() {
    let kafka = harness::PrivateKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(&kafka.brokers, dir.path());
    cfg.kafka.message_timeout_ms = 2_000;
    let env = [
        ("OUTBOX_HEALTH__INTERVAL_MS", "500".to_string()),
        ("OUTBOX_RELAY__BREAKER__OPEN_TIMEOUT_MS", "2000".to_string()),
        ("OUTBOX_SHUTDOWN_DEADLINE_MS", "10000".to_string()),
    ];
    let mut d = Daemon::start(&cfg, &env);
    create_order(&d, Uuid::now_v7(), "UP-1");
    caught_up(&d);
    // A clean start never passes through Degraded: a relay or projector task
    // that has not said it runs yet is "starting" (Unknown), not "not running".
    let log = d.log_text();
    assert!(!log.contains("component degraded"), "a clean start reported a degraded component:\n{log}");
    let (status, h) = d.health();
    assert_eq!(
        (status, h["status"].as_str(), component(&h, "kafka").0.as_str()),
        (200, Some("healthy"), "healthy"),
        "{h}"
    );
    assert_eq!(d.metrics().sample("actor_health_status", &[("component", "kafka")]), 0.0);

    kafka.stop();
    let down = Instant::now();
    let h = eventually(Duration::from_secs(60), "/health to report Degraded", || {
        create_order(&d, Uuid::now_v7(), "DOWN-1"); // the outbox keeps accepting
        let (status, h) = d.health();
        assert_eq!(status, 200, "Degraded still answers 200: {h}");
        (h["status"] == "degraded").then_some(h)
    });
    eprintln!("degraded {:?} after the broker stopped: {}", down.elapsed(), h["components"]["kafka"]["detail"]);
    assert_eq!(component(&h, "kafka").0, "degraded", "{h}");
    assert_eq!(component(&h, "store").0, "healthy");
    assert_eq!(d.metrics().value("actor_health_status", &[("component", "kafka")]), 1.0);
    assert_eq!(d.admin("GET", "/health/ready").status, 200, "a broker outage does not make the outbox unready");
    // Keep the relay failing until the circuit breaker opens.
    eventually(Duration::from_secs(60), "the circuit breaker to open", || {
        create_order(&d, Uuid::now_v7(), "DOWN-2");
        let (status, h) = d.health();
        assert_eq!(status, 200);
        (h["relay"]["breaker"] == "open").then_some(())
    });
    let h = d.health().1;
    assert_eq!(component(&h, "kafka").0, "degraded");
    // The documented /health (OPERATIONS.md shows this state): every field it shows is sent.
    let shown = docs::json_example("docs/OPERATIONS.md", "### Health");
    let missing = docs::keys_missing(&shown, &h, "");
    assert!(missing.is_empty(), "OPERATIONS.md's /health example shows fields /health lacks: {missing:?}\n{h}");
    assert_eq!(h["relay"]["broker"]["state"], "unreachable", "{h}");
    assert_eq!(d.metrics().value("circuit_breaker_state", &[]), 1.0);

    kafka.restart();
    let up = Instant::now();
    eventually(Duration::from_secs(90), "/health to report Healthy again", || {
        create_order(&d, Uuid::now_v7(), "BACK-1");
        let (status, h) = d.health();
        (status == 200 && h["status"] == "healthy").then_some(())
    });
    eprintln!("healthy {:?} after the broker returned", up.elapsed());
    caught_up(&d);
    assert_all_on_topic(&kafka.brokers, &d);
    assert!(d.metrics().value("circuit_breaker_transitions_total", &[("from", "closed"), ("to", "open")]) >= 1.0);

    // Shutdown while a delivery is in flight to a stopped broker: the relay
    // waits for it (message timeout), and meanwhile intake answers 503.
    kafka.stop();
    let stored_before = count_events(&d.cfg.store.path);
    create_order(&d, Uuid::now_v7(), "LAST-1");
    std::thread::sleep(Duration::from_millis(200));
    d.sigterm();
    let mut saw_503 = false;
    let mut saw_unready = false;
    let mut raced = 0; // requests that reached the daemon before it handled the signal
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end && !(saw_503 && saw_unready) {
        let b = serde_json::to_vec(&order_body(Uuid::now_v7(), "LATE-1")).unwrap();
        match try_request(d.api, "POST", "/orders", &[("Content-Type", "application/json")], Some(&b)) {
            Ok(r) if r.status == 503 => {
                assert_eq!(r.json()["error"], "shutting_down", "{}", r.text());
                saw_503 = true;
            }
            Ok(r) if r.status == 201 && !saw_503 => raced += 1,
            Ok(r) => panic!("after SIGTERM: {} {}", r.status, r.text()),
            Err(_) => break,
        }
        if let Ok(r) = try_request(d.admin, "GET", "/health/ready", &[], None) {
            if r.status == 503 {
                assert_eq!(r.json()["ready"], false);
                saw_unready = true;
            }
        }
    }
    let status = d.wait_exit(Duration::from_secs(20)).expect("exits within the shutdown deadline");
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(saw_503, "intake answered 503 while shutting down");
    assert!(saw_unready, "/health/ready answered 503 while shutting down");
    assert_eq!(count_events(&d.cfg.store.path), stored_before + 1 + raced, "nothing accepted once intake closed");
}

#[test]
fn store_gone_makes_health_unhealthy_503() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        &daemon_config(&brokers, dir.path()),
        &[("OUTBOX_HEALTH__INTERVAL_MS", "300".into()), ("OUTBOX_HEALTH__FEED_UNHEALTHY_AFTER_MS", "1000".into())],
    );
    create_order(&d, Uuid::now_v7(), "S-1");
    let (status, h) = d.health();
    assert_eq!((status, component(&h, "store").0.as_str()), (200, "healthy"), "{h}");
    // Remove the database, its WAL and the directory under the running daemon.
    std::fs::remove_dir_all(d.cfg.store.path.parent().unwrap()).unwrap();
    let h = eventually(Duration::from_secs(10), "/health to answer 503", || {
        let (status, h) = d.health();
        (status == 503).then_some(h)
    });
    assert_eq!(h["status"], "unhealthy");
    assert_eq!(component(&h, "store").0, "unhealthy", "{h}");
    assert!(h["components"]["store"]["detail"].as_str().unwrap().contains("gone"), "{h}");
    // The relay's own reads fail too (a pooled connection would otherwise
    // keep reading the deleted file): it reports that it cannot read the store
    // (Degraded at once, Unhealthy after health.feed_unhealthy_after_ms).
    let h = eventually(Duration::from_secs(10), "the relay to report the store unreadable", || {
        let (_, h) = d.health();
        (h["relay"]["feed"]["state"] == "failing" && component(&h, "cdc_processor").0 == "unhealthy").then_some(h)
    });
    assert!(component(&h, "cdc_processor").1.contains("relay cannot read the store feed"), "{h}");
    assert!(h["relay"]["feed"]["error"].as_str().unwrap_or_default().contains("gone"), "{h}");
    let r = d.admin("GET", "/health/ready");
    assert_eq!((r.status, r.json()["ready"].as_bool()), (503, Some(false)));
    assert_eq!(d.admin("GET", "/health/live").status, 200, "still alive");
    assert_eq!(d.metrics().value("actor_health_status", &[("component", "store")]), 2.0);
    assert_eq!(d.metrics().value("actor_health_status", &[("component", "system")]), 2.0);
    assert!(d.alive());
    d.sigterm();
    assert_eq!(d.wait_exit(Duration::from_secs(40)).expect("exits").code(), Some(0));
}

/// Nothing is published in this test: an idle relay has no delivery to learn
/// the broker's state from, so /health must come from the broker watch's
/// probes: unknown only until a broker answers, degraded while it is down,
/// healthy again once it is back (it used to stay "unknown" from the start,
/// and "unreachable" after an outage until the next event was published).
#[test]
fn an_idle_daemon_reports_the_broker_as_it_is_without_publishing() {
    let kafka = harness::PrivateKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&kafka.brokers, dir.path());
    let d = Daemon::start(&cfg, &[]);
    let kafka_health = |d: &Daemon| {
        let (_, h) = d.health();
        (component(&h, "kafka"), h["status"].as_str().unwrap_or_default().to_string(), h)
    };
    // Every component of an idle daemon becomes healthy, the broker included.
    let ((_, detail), _, h) = eventually(Duration::from_secs(30), "an idle daemon to be healthy", || {
        let (k, overall, h) = kafka_health(&d);
        (k.0 == "healthy" && overall == "healthy").then_some((k, overall, h))
    });
    assert!(detail.contains("broker reachable"), "{detail}");
    // Nothing ever checkpointed: the relay and the store's view agree on 0
    // (the store's view said null while the relay said 0).
    assert_eq!(
        (&h["relay"]["checkpoint"], &h["relay_lag"]["checkpoint"]),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "{h}"
    );
    assert_eq!(h["projection_lag"]["checkpoint"], serde_json::json!(0), "{h}");

    kafka.stop();
    let ((_, detail), _, _) = eventually(Duration::from_secs(60), "the idle daemon to see the broker gone", || {
        let (k, overall, h) = kafka_health(&d);
        (k.0 == "degraded").then_some((k, overall, h))
    });
    assert!(detail.contains("unreachable"), "{detail}");

    kafka.restart();
    let back = Instant::now();
    eventually(Duration::from_secs(90), "the idle daemon to see the broker back", || {
        let ((status, _), overall, _) = kafka_health(&d);
        (status == "healthy" && overall == "healthy").then_some(())
    });
    eprintln!("broker seen back {:?} after its restart, nothing published", back.elapsed());
    assert_eq!(count_events(&d.cfg.store.path), 0, "nothing was appended, so nothing was published");
    d.stop();
}

/// A standby makes its next term's producer before it waits for the lease:
/// its /health says whether it could publish if it took over. One whose
/// broker address answers nothing is degraded (and does not take the
/// lease); a ready one says "broker reachable", and when the holder stops
/// it takes over and publishes what is appended through it.
#[test]
fn a_standby_says_whether_it_could_take_over() {
    standby_case("at-least-once");
}

/// The same in exactly-once mode: the standby's transactional producer,
/// made ahead, takes no producer id before its term, so the holder is not
/// fenced while it stands by (it goes on publishing).
#[test]
fn an_exactly_once_standby_says_whether_it_could_take_over() {
    standby_case("exactly-once");
}

fn standby_case(delivery: &str) {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&brokers, dir.path());
    let env = [
        ("OUTBOX_HEALTH__INTERVAL_MS", "500".to_string()),
        ("OUTBOX_RELAY__DELIVERY", delivery.to_string()),
        ("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)),
    ];
    let active = Daemon::start(&cfg, &env);
    eventually(Duration::from_secs(30), "the first instance to lead", || is_leader(&active).then_some(()));
    create_order(&active, Uuid::now_v7(), "BEFORE-1");
    caught_up(&active);

    // A standby configured with a broker address nothing listens on.
    let mut wrong = on_new_ports(&cfg);
    wrong.kafka.brokers = format!("127.0.0.1:{}", free_port());
    let wrong = Daemon::start(&wrong, &env);
    let (code, h) = eventually(Duration::from_secs(30), "the misconfigured standby to say it cannot publish", || {
        let (code, h) = wrong.health();
        (component(&h, "kafka").0 == "degraded").then_some((code, h))
    });
    assert_eq!(code, 200, "a degraded standby still answers 200: {h}");
    assert_eq!(h["relay"]["role"], "standby", "{h}");
    let (_, detail) = component(&h, "kafka");
    assert!(detail.starts_with("standby:") && detail.contains("could not publish if it took over"), "{detail}");
    assert!(detail.contains("broker unreachable"), "{detail}");
    assert_eq!(component(&h, "cdc_processor").0, "healthy", "standing by is what it should do: {h}");
    assert_eq!(h["relay"]["delivered"], 0, "{h}");
    assert!(is_leader(&active) && !is_leader(&wrong), "the lease did not move");
    wrong.stop();

    // A standby that reaches the broker is ready, and the holder goes on
    // publishing beside it (exactly-once: not fenced by its producer).
    let ready = Daemon::start(&on_new_ports(&cfg), &env);
    let h = eventually(Duration::from_secs(30), "the standby to reach the broker", || {
        let (_, h) = ready.health();
        (component(&h, "kafka").1.ends_with("broker reachable")).then_some(h)
    });
    assert_eq!(h["relay"]["role"], "standby", "{h}");
    assert_eq!(component(&h, "kafka").0, "healthy", "{h}");
    assert_eq!(h["relay"]["delivered"], 0, "a standby publishes nothing: {h}");
    // Its projector stands by too (the `projections` lease is the holder's): healthy, saying so.
    let (st, detail) = eventually(Duration::from_secs(30), "the projector standby on /health", || {
        let (_, h) = ready.health();
        let c = component(&h, "projections");
        c.1.starts_with("standby (active projector").then_some(c)
    });
    assert_eq!(st, "healthy", "{detail}");
    create_order(&active, Uuid::now_v7(), "BESIDE-1");
    caught_up(&active);
    assert!(is_leader(&active) && !is_leader(&ready), "the lease did not move");

    // The holder stops (releasing the lease): the standby takes over and
    // publishes what is appended through it, and every stored event is on the topic.
    active.stop();
    eventually(Duration::from_secs(30), "the standby to take over", || is_leader(&ready).then_some(()));
    create_order(&ready, Uuid::now_v7(), "AFTER-1");
    caught_up(&ready);
    assert_all_on_topic(&brokers, &ready);
    eventually(Duration::from_secs(30), "the new holder's projector to run", || {
        let (_, h) = ready.health();
        component(&h, "projections").1.starts_with("projector running").then_some(())
    });
    ready.stop();
}

/// The same on the Scylla CDC relay, at the relay actor's body (`RelayBody`
/// on the CQL store; `outboxd run` refuses Apache Cassandra, which has no
/// CDC log, but standing by reads none): while another instance holds the
/// relay lease, the standby's producer, made before its term, puts its
/// broker state in the relay status that /health reads (unreachable with a
/// dead broker address, reachable with the real one). When the lease is
/// released it takes it and its term starts; on Cassandra the term then
/// stops at the missing CDC log, which ScyllaDB has (`make integration-test`).
#[test]
fn a_cdc_relay_standby_says_whether_it_could_take_over() {
    use harness::cdc_rig::Rig;
    use outboxd::actors::{ActorDeps, Leases, RelayBody, TaskBody};
    use outboxd::relay::producer::BrokerState;
    use outboxd::relay::{RelayStatus, Role};
    use outboxd::store::lease::{Lease, LeaseCas, LeaseStore};
    use std::sync::Arc;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let Some(rig) = Rig::start("CDC relay standby").await else { return };
        let other =
            Lease { name: RELAY.into(), holder: "another-instance".into(), epoch: 1, counter: 0, ttl_ms: 600_000 };
        assert!(rig.store.lease_cas(&LeaseCas { expected: None, new: other.clone() }).await.unwrap());
        let dead = format!("127.0.0.1:{}", free_port());
        for brokers in [dead.as_str(), rig.brokers.as_str()] {
            let reachable = brokers == rig.brokers;
            let mut cfg = rig.cfg.clone();
            cfg.kafka.brokers = brokers.to_string();
            let trigger = outboxd::shutdown::Trigger::new();
            let metrics = outboxd::metrics::Metrics::new();
            let keeper = outboxd::lease::keeper::spawn(
                rig.store.clone(),
                RELAY,
                &format!("standby-{reachable}"),
                Duration::from_secs(3),
                metrics.clone(),
                Default::default(),
                trigger.subscribe(),
            );
            let store: outboxd::store::DynStore = rig.store.clone();
            let deps = ActorDeps::new(cfg, store.clone(), metrics, tokio::runtime::Handle::current())
                .with_leases(Leases { relay: Some(keeper), ..Leases::default() })
                .with_cql(rig.store.clone());
            let mut status = deps.relay_status.subscribe();
            let body = RelayBody::new(Arc::new(store)).spawn(&deps, trigger.subscribe()).unwrap();
            let task = tokio::spawn(body);
            let standing_by = |s: &RelayStatus| {
                matches!(&s.role, Role::Standby { holder, .. } if holder == "another-instance")
                    && s.broker.is_reachable() == reachable
                    && !matches!(s.broker, BrokerState::Unknown)
            };
            let waited = tokio::time::timeout(Duration::from_secs(30), async {
                status.wait_for(standing_by).await.map(|s| s.clone())
            })
            .await;
            let Ok(s) = waited else {
                panic!("the standby (broker reachable: {reachable}) never said so: {:?}", status.borrow())
            };
            let s = s.unwrap();
            assert!(!s.running && s.delivered == 0, "a standby runs no term: {s:?}");
            let holder = rig.store.lease_get(RELAY).await.unwrap().unwrap().holder;
            assert_eq!(holder, "another-instance", "the lease did not move");
            if !reachable {
                trigger.fire();
                let end = tokio::time::timeout(Duration::from_secs(30), task).await.expect("the standby stops");
                assert!(end.unwrap().is_ok(), "a standby stops cleanly on shutdown");
                continue;
            }
            // Released: the standby takes the lease and starts its term.
            let released = Lease { holder: String::new(), counter: 1, ..other.clone() };
            assert!(rig.store.lease_cas(&LeaseCas { expected: Some((1, 0)), new: released }).await.unwrap());
            let end = tokio::time::timeout(Duration::from_secs(30), task).await.expect("the term starts and stops");
            let error = end.unwrap().expect_err("Cassandra has no CDC log").to_string();
            assert!(error.contains("CDC feed needs ScyllaDB"), "{error}");
            let lease = rig.store.lease_get(RELAY).await.unwrap().unwrap();
            assert_eq!((lease.holder.as_str(), lease.epoch), ("standby-true", 2), "the standby took the lease");
            trigger.fire();
        }
    });
}
