//! The relay against a real Apache Kafka broker: round trip with headers,
//! SIGKILL crashes, a broker outage, a poison event and bad configuration.
//! Every test uses its own topics (prefix) and database file.

mod harness;

use harness::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

use outboxd::app::{CommandService, ServiceOptions};
use outboxd::config::{Compression, Config};
use outboxd::metrics::Metrics;
use outboxd::relay::topics::topic_names;
use outboxd::relay::Relay;
use outboxd::shutdown::Trigger;
use outboxd::store::sqlite::SqliteStore;
use outboxd::store::DynStore;

fn topics(c: &Config) -> Vec<String> {
    topic_names(c.kafka.per_event_type(), &c.kafka.topic_prefix)
}

async fn open(c: &Config) -> DynStore {
    SqliteStore::open(&c.store.path, c.store.sqlite.clone()).await.unwrap()
}

struct RunningRelay {
    trigger: Trigger,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
    status: tokio::sync::watch::Receiver<outboxd::relay::RelayStatus>,
}

fn start_relay(c: &Config, store: DynStore) -> RunningRelay {
    let metrics = Metrics::new();
    let (relay, status) = Relay::standalone(c, store, metrics.clone());
    let trigger = Trigger::new();
    let sd = trigger.subscribe();
    let task = tokio::spawn(async move {
        relay.run(sd).await.unwrap();
    });
    RunningRelay { trigger, task, metrics, status }
}

impl RunningRelay {
    async fn stop(mut self) {
        self.trigger.fire();
        self.task.await.unwrap();
        self.trigger.wait_drained().await;
    }
    async fn wait_checkpoint(&mut self, position: i64, timeout: Duration) {
        let ok = tokio::time::timeout(timeout, self.status.wait_for(|s| s.checkpoint.unwrap_or(0) >= position))
            .await
            .is_ok();
        assert!(ok, "relay did not reach position {position} in {timeout:?}: {:?}", *self.status.borrow());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_order_headers_and_exactly_once_per_event_id() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let store = open(&c).await;
    let mut relay = start_relay(&c, store.clone());
    let svc = CommandService::new(store.clone(), ServiceOptions::default());
    // 300 orders through their lifecycles + 40 customers, 16 at a time.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..300).step_by(16) {
                order_lifecycle(&svc, i).await;
            }
            for i in (w..40).step_by(16) {
                register_customer(&svc, i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    let stored: Vec<_> = store
        .read_feed(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| outboxd::envelope::StoredEvent { position: r.position(), envelope: r.envelope().unwrap() })
        .collect();
    assert_eq!(stored.len() as i64, head);
    let records = consume_all(&brokers, &topics(&c), stored.len(), Duration::from_secs(30));
    assert_eq!(records.len(), stored.len(), "every stored event is on the topic exactly once");
    assert_eq!(check_order_and_count_dups(&records), 0);

    let by_id: HashMap<String, &harness::Record> = records.iter().map(|r| (r.event_id(), r)).collect();
    for s in &stored {
        let e = &s.envelope;
        let r = by_id.get(&e.event_id.to_string()).unwrap_or_else(|| panic!("event {} missing", e.event_id));
        assert_eq!(r.topic, format!("{}{}-events", c.kafka.topic_prefix, e.aggregate_type));
        assert_eq!(r.key, e.aggregate_id.to_string(), "key = aggregate id");
        let h = &r.headers;
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_id"], e.event_id.to_string());
        assert_eq!(h["ce_type"], e.event_type);
        assert_eq!(h["ce_source"], format!("/outboxd/{}", e.aggregate_type));
        assert_eq!(h["ce_subject"], e.aggregate_id.to_string());
        assert_eq!(chrono::DateTime::parse_from_rfc3339(&h["ce_time"]).unwrap(), e.timestamp);
        assert_eq!(h["ce_sequence"], e.sequence.to_string());
        assert_eq!(h["ce_correlationid"], e.correlation_id.to_string());
        assert_eq!(h["content-type"], "application/json");
        let value: outboxd::envelope::EventEnvelope = serde_json::from_value(r.value.clone()).unwrap();
        assert_eq!(&value, e, "value is the event JSON");
    }
    let m = &relay.metrics;
    assert_eq!(m.cdc_events_processed.with_label_values(&["OrderCreated"]).get(), 300);
    assert_eq!(store.backlog(&c.relay.consumer_name).await.unwrap().events, Some(0), "nothing left unpublished");
    relay.stop().await;
    assert_eq!(
        store.get_checkpoint(&c.relay.consumer_name).await.unwrap(),
        Some(head),
        "checkpoint persisted at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_event_type_routing_reproduces_seed_topics() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    c.kafka.topic_routing = outboxd::config::TopicRouting::PerEventType;
    let store = open(&c).await;
    let mut relay = start_relay(&c, store.clone());
    let svc = CommandService::new(store.clone(), ServiceOptions::default());
    order_lifecycle(&svc, 0).await; // created, updated x4
    order_lifecycle(&svc, 3).await; // created, updated, cancelled
    let head = store.head_position().await.unwrap();
    relay.wait_checkpoint(head, Duration::from_secs(30)).await;
    let records = consume_all(&brokers, &topics(&c), head as usize, Duration::from_secs(30));
    let count = |t: &str| records.iter().filter(|r| r.topic == format!("{}{t}", c.kafka.topic_prefix)).count();
    assert_eq!((count("OrderCreated"), count("OrderUpdated"), count("OrderCancelled")), (2, 5, 1));
    relay.stop().await;
}

/// Appends `n` order events (creates + item updates) from `writers` tasks.
async fn write_events(store: DynStore, n: usize, writers: usize, pace: Duration) {
    let svc = CommandService::new(store, ServiceOptions { snapshot_every: 0, ..ServiceOptions::default() });
    let per = n / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            let mut i = 0;
            while written < per {
                let id = Uuid::now_v7();
                let eur = outboxd::domain::Currency::new("EUR").unwrap();
                let item = |k: i64| {
                    outboxd::domain::OrderItem::new(
                        outboxd::domain::Sku::new(format!("S{w}-{i}-{k}")).unwrap(),
                        k,
                        outboxd::domain::Money::new(100, eur).unwrap(),
                    )
                    .unwrap()
                };
                let meta = outboxd::envelope::Metadata::default();
                svc.execute::<outboxd::domain::Order>(
                    id,
                    &outboxd::domain::OrderCommand::Create {
                        customer_id: Uuid::from_u128(w as u128),
                        items: vec![item(1)],
                    },
                    meta.clone(),
                    None,
                )
                .await
                .unwrap();
                written += 1;
                for k in 2..=4 {
                    if written >= per {
                        break;
                    }
                    svc.execute::<outboxd::domain::Order>(
                        id,
                        &outboxd::domain::OrderCommand::UpdateItems { items: vec![item(k)] },
                        meta.clone(),
                        None,
                    )
                    .await
                    .unwrap();
                    written += 1;
                }
                i += 1;
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_crashes_lose_nothing_and_only_resend_in_flight_events() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    c.kafka.compression = Compression::Lz4;
    c.http.listen = format!("127.0.0.1:{}", free_port());
    c.http.admin_listen = format!("127.0.0.1:{}", free_port());
    let store = open(&c).await;
    let total = 20_000;
    let writer = tokio::spawn(write_events(store.clone(), total, 20, Duration::from_millis(8)));

    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("run")
            .envs(config_env(&c))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut windows = Vec::new(); // (checkpoint, head) right after each kill
    let mut kills = 0;
    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut child = spawn();
    while kills < 8 {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let wait = 300 + rng_state % 900;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        kills += 1;
        let cp = store.get_checkpoint(&c.relay.consumer_name).await.unwrap().unwrap_or(0);
        let head = store.head_position().await.unwrap();
        windows.push((cp, head));
        child = spawn();
    }
    writer.await.unwrap();
    let head = store.head_position().await.unwrap();
    assert_eq!(head as usize, total);
    // Let the last incarnation catch up, then stop it cleanly.
    let deadline = Instant::now() + Duration::from_secs(90);
    while store.get_checkpoint(&c.relay.consumer_name).await.unwrap().unwrap_or(0) < head {
        assert!(Instant::now() < deadline, "relay never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the last incarnation start up
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success(), "SIGTERM exits 0");

    let stored = store.read_feed(0, 100_000).await.unwrap();
    let position: HashMap<String, i64> =
        stored.iter().map(|s| (s.envelope().unwrap().event_id.to_string(), s.position())).collect();
    let records = consume_all(&brokers, &topics(&c), usize::MAX, Duration::from_secs(20));
    let ids: HashSet<String> = records.iter().map(|r| r.event_id()).collect();
    assert_eq!(ids.len(), total, "every event is on the topic");
    let dups = check_order_and_count_dups(&records);
    // Every duplicate is an event the relay had not checkpointed when it was killed.
    let mut seen = HashSet::new();
    for r in &records {
        if !seen.insert(r.event_id()) {
            let p = position[&r.event_id()];
            assert!(
                windows.iter().any(|(cp, head)| p > *cp && p <= *head),
                "duplicate of position {p} outside every in-flight window {windows:?}"
            );
        }
    }
    eprintln!("crash test: {kills} kills, {} records, {dups} duplicates, windows {windows:?}", records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_pauses_and_resumes_without_loss_or_dlq() {
    let kafka = PrivateKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&kafka.brokers, &dir.path().join("s.db"));
    c.kafka.message_timeout_ms = 2_000;
    c.relay.breaker.open_timeout_ms = 2_000;
    let store = open(&c).await;
    let mut relay = start_relay(&c, store.clone());
    write_events(store.clone(), 400, 4, Duration::ZERO).await;
    relay.wait_checkpoint(400, Duration::from_secs(30)).await;

    kafka.stop();
    let stopped = Instant::now();
    // Keep writing while the broker is down: the outbox accepts them.
    let writer = tokio::spawn(write_events(store.clone(), 400, 4, Duration::from_millis(150)));
    // The outage is established once the relay saw a delivery fail; nothing
    // written after the broker stopped can have been confirmed.
    tokio::time::timeout(Duration::from_secs(30), relay.status.wait_for(|s| !s.broker.is_reachable()))
        .await
        .expect("the relay notices the outage")
        .unwrap();
    let cp_at_outage = store.get_checkpoint(&c.relay.consumer_name).await.unwrap().unwrap();
    assert_eq!(cp_at_outage, 400, "the checkpoint covers exactly what was confirmed before the outage");
    tokio::time::sleep(Duration::from_secs(21).saturating_sub(stopped.elapsed())).await;
    let cp_during = store.get_checkpoint(&c.relay.consumer_name).await.unwrap().unwrap();
    assert_eq!(cp_during, 400, "the checkpoint did not move while the broker was down");
    assert_eq!(
        relay.metrics.circuit_breaker_transitions.with_label_values(&["closed", "open"]).get(),
        1,
        "breaker opened"
    );
    assert_eq!(store.dlq_count().await.unwrap(), 0, "nothing dead-lettered during the outage");
    assert!(!relay.status.borrow().broker.is_reachable());

    kafka.restart();
    let back = Instant::now();
    eprintln!("broker down for {:?}", back - stopped);
    let delivered_before = relay.status.borrow().delivered;
    tokio::time::timeout(Duration::from_secs(5), relay.status.wait_for(|s| s.delivered > delivered_before))
        .await
        .expect("delivery resumes within 5 s of the broker returning")
        .unwrap();
    eprintln!("delivery resumed {:?} after the broker returned", back.elapsed());
    writer.await.unwrap();
    relay.wait_checkpoint(800, Duration::from_secs(60)).await;
    let m = &relay.metrics;
    assert!(
        m.circuit_breaker_transitions.with_label_values(&["half_open", "closed"]).get() >= 1,
        "breaker closed again"
    );
    assert_eq!(m.circuit_breaker_state.get(), 0);
    assert!(m.retry_attempts.with_label_values(&["publish"]).get() > 0);
    assert_eq!(store.dlq_count().await.unwrap(), 0);
    let records = consume_all(&kafka.brokers, &topics(&c), 800, Duration::from_secs(30));
    let ids: HashSet<String> = records.iter().map(|r| r.event_id()).collect();
    assert_eq!(ids.len(), 800, "no event lost");
    check_order_and_count_dups(&records);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_event_parks_its_aggregate_and_replays_in_order_after_the_limit_is_raised() {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&brokers, &dir.path().join("s.db"));
    c.kafka.compression = Compression::None;
    c.relay.retry.initial_backoff_ms = 20;
    c.relay.retry.max_backoff_ms = 50;
    let topic = format!("{}order-events", c.kafka.topic_prefix);
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin
        .create_topics(&[NewTopic::new(&topic, 3, TopicReplication::Fixed(1)).set("max.message.bytes", "6000")], &opts)
        .await
        .unwrap();

    let store = open(&c).await;
    let mut relay = start_relay(&c, store.clone());
    let svc = CommandService::new(store.clone(), ServiceOptions::default());
    let before = order_lifecycle(&svc, 1).await;
    // 100 items with long random SKUs: ~12 KB of JSON, over the topic's limit.
    let eur = outboxd::domain::Currency::new("EUR").unwrap();
    let big: Vec<_> = (0..100)
        .map(|k| {
            outboxd::domain::OrderItem::new(
                outboxd::domain::Sku::new(format!("{k}-{}", Uuid::new_v4().simple())).unwrap(),
                1,
                outboxd::domain::Money::new(1, eur).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let poison_id = Uuid::now_v7();
    svc.execute::<outboxd::domain::Order>(
        poison_id,
        &outboxd::domain::OrderCommand::Create { customer_id: Uuid::nil(), items: big },
        Default::default(),
        None,
    )
    .await
    .unwrap();
    // A later, small event of the same order: held behind the poison one.
    svc.execute::<outboxd::domain::Order>(poison_id, &outboxd::domain::OrderCommand::Confirm, Default::default(), None)
        .await
        .unwrap();
    let after = order_lifecycle(&svc, 2).await;
    let head = store.head_position().await.unwrap();
    // The checkpoint passes the held events: the park record covers them.
    relay.wait_checkpoint(head, Duration::from_secs(30)).await;

    assert_eq!(store.dlq_count().await.unwrap(), 0, "park-aggregate writes no dead letter");
    let parked = store.parked("kafka-relay").await.unwrap();
    assert_eq!(parked.len(), 1, "exactly the poison aggregate is parked: {parked:?}");
    assert_eq!(parked[0].parked.aggregate_id, poison_id.to_string());
    assert_eq!(parked[0].parked.sequence, Some(1));
    assert_eq!(parked[0].held_events, 2, "the poison event and the one behind it are held");
    assert!(parked[0].parked.error.to_lowercase().contains("too large"), "{}", parked[0].parked.error);
    assert_eq!(relay.metrics.dlq_parked_aggregates.get(), 1);
    // Retries re-send events that were in flight beside the poison one (same ce_id),
    // so read until the topic is drained rather than up to a count.
    let records = consume_all(&brokers, std::slice::from_ref(&topic), usize::MAX, Duration::from_secs(8));
    let keys: HashSet<String> = records.iter().map(|r| r.key.clone()).collect();
    assert!(
        keys.contains(&before.to_string()) && keys.contains(&after.to_string()),
        "other aggregates flow past the parked one"
    );
    assert!(!keys.contains(&poison_id.to_string()), "nothing of the parked aggregate is published");
    relay.stop().await;

    // Raise the limit, then replay the aggregate with the CLI (no relay runs:
    // the CLI takes the relay lease and carries the request out itself).
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&topic)).set("max.message.bytes", "1000000");
    admin.alter_configs(&[alter], &opts).await.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["dlq", "replay", "--aggregate", &poison_id.to_string(), "--no-progress"])
        .envs(config_env(&c))
        .output()
        .unwrap();
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(store.parked("kafka-relay").await.unwrap().is_empty(), "replayed aggregate unparked");
    let records = consume_all(&brokers, &[topic], usize::MAX, Duration::from_secs(8));
    let seqs: Vec<i64> = records
        .iter()
        .filter(|r| r.key == poison_id.to_string())
        .map(|r| r.value["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2], "the parked aggregate is delivered in order after replay");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_exits_2_and_unreachable_broker_degrades_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let run = |envs: Vec<(&str, String)>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("run")
            .env("OUTBOX_STORE__PATH", &db)
            .envs(envs)
            .output()
            .unwrap()
    };
    let out = run(vec![("OUTBOX_KAFKA__BROKERS", "no-port-here".into())]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.brokers") && err.lines().count() == 1, "{err}");
    let out = run(vec![("OUTBOX_KAFKA__TOPIC_PREFIX", "bad prefix/".into())]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic name"));

    // A syntactically valid but unreachable broker: the daemon stays up, degraded.
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("run")
        .env("OUTBOX_STORE__PATH", &db)
        .env("OUTBOX_KAFKA__BROKERS", format!("127.0.0.1:{port}"))
        .env("OUTBOX_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("OUTBOX_HTTP__ADMIN_LISTEN", format!("127.0.0.1:{}", free_port()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(child.try_wait().unwrap().is_none(), "daemon must not exit on an unreachable broker");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Kafka unreachable"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
