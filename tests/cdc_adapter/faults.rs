//! Fault cases of the ScyllaDB suite: hard kills of `outboxd run` in its
//! first seconds and a restart while the broker is down (with /health's
//! `kafka` following the broker), a bad row written by hand, and the relay
//! as a role with only the documented grants.

use nix::sys::signal::{kill, Signal};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::harness::{
    component, consume_until, cql_login, daemon_config, eventually, grant_resource, order_events, relay_grants, Daemon,
    PrivateKafka,
};
use crate::rig::{append, env, log_rows, progress, rig, start, ProgressWatch, Rig, Topic, RELAY};
use crate::SETTLE;
use outboxd::envelope::EventEnvelope;
use outboxd::relay::cdc::{CdcFeed, FeedSpec};
use outboxd::relay::deliver::Deliverer;
use outboxd::relay::sink::DeadLetterSink;
use outboxd::store::cql::schema_statements;
use outboxd::store::parking::ParkingStore;

/// `outboxd run` on the rig's keyspace.
fn daemon(rig: &Rig, dir: &std::path::Path) -> Daemon {
    let mut cfg = daemon_config(&rig.config.kafka.brokers, dir);
    cfg.kafka.topic_prefix = rig.config.kafka.topic_prefix.clone();
    let c = &rig.config.store.cql;
    let mut env = crate::harness::cql::cql_env(&c.uri, &c.keyspace).to_vec();
    env.push(("OUTBOX_STORE__CQL__CDC__CHECKPOINT_INTERVAL_MS", c.cdc.checkpoint_interval_ms.to_string()));
    Daemon::start(&cfg, &env)
}

/// Waits until /health's `kafka` component is `want` (the CDC relay's broker watch).
fn kafka_becomes(d: &Daemon, want: &str) {
    eventually(Duration::from_secs(60), &format!("/health kafka {want} on the CDC path"), || {
        (component(&d.health().1, "kafka").0 == want).then_some(())
    });
}

fn kill9(d: &mut Daemon) {
    kill(d.pid(), Signal::SIGKILL).unwrap();
    d.wait_exit(Duration::from_secs(10)).expect("killed");
}

/// kill -9 within the first 5 s and a restart while the broker is down: the
/// saved progress never moves backwards (scylla-cdc's own saver wrote the
/// reader's 24 h lower bound at every start), the streams of unpublished
/// events are not passed, and once the broker is back every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ScyllaDB: make integration-test (SCYLLA_URI)"]
async fn hard_kills_in_the_first_seconds_and_a_restart_while_kafka_is_down() {
    let (scylla, _) = env();
    let kafka = PrivateKafka::start();
    let rig = rig(&scylla, &kafka.brokers).await;
    let dir = tempfile::tempdir().unwrap();
    let watch = ProgressWatch::start(rig.store.clone());
    let mut topic = Topic::open(&rig);
    let mut appended = Vec::new();
    for _ in 0..3 {
        appended.extend(append(&rig.store, Uuid::now_v7(), 0, 2).await);
    }
    let mut d = daemon(&rig, dir.path());
    topic.until(&appended, SETTLE * 2).await;
    kafka_becomes(&d, "healthy");
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill9(&mut d);
    let published = progress(&rig.store).await;
    for ms in [1_000, 2_500, 4_000] {
        let mut d = daemon(&rig, dir.path());
        tokio::time::sleep(Duration::from_millis(ms)).await;
        kill9(&mut d);
        let now = progress(&rig.store).await;
        for (s, t) in &published {
            assert!(now.get(s).is_some_and(|n| n >= t), "kill -9 after {ms} ms: stream {:02x?} moved back", &s[..4]);
        }
    }
    kafka.stop();
    let mut held = Vec::new();
    for _ in 0..3 {
        let id = Uuid::now_v7();
        held.push(id);
        appended.extend(append(&rig.store, id, 0, 2).await);
    }
    let d = daemon(&rig, dir.path());
    kafka_becomes(&d, "degraded");
    tokio::time::sleep(SETTLE).await;
    let saved = progress(&rig.store).await;
    for id in &held {
        let rows = log_rows(&rig.store, *id).await;
        let at = outboxd::relay::cdc::batch::timeuuid_ms(&rows[0].time).unwrap();
        assert!(saved.get(&rows[0].stream).is_none_or(|t| *t <= at), "{id}: progress passed an unpublished event");
    }
    kafka.restart();
    topic.until(&appended, SETTLE * 3).await;
    kafka_becomes(&d, "healthy");
    topic.read_for(Duration::from_secs(3)).await;
    topic.assert_in_order(&appended);
    eprintln!("kills and outage: {} duplicate copies of {} events", topic.duplicates(), appended.len());
    assert!(topic.duplicates() <= appended.len(), "duplicates only of events unconfirmed at a kill");
    d.stop();
    watch.assert_never_backwards();
}

/// A row written by hand whose payload is not JSON: the relay parks its
/// aggregate under the default policy (`park_aggregate`) and goes on, as the
/// position feed does; the aggregate's later events are held by the park
/// record, other aggregates' events keep flowing, and the feed never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ScyllaDB: make integration-test (SCYLLA_URI)"]
async fn a_bad_row_parks_its_aggregate_and_the_relay_goes_on() {
    let (scylla, brokers) = env();
    let rig = rig(&scylla, &brokers).await;
    let mut topic = Topic::open(&rig);
    let good = append(&rig.store, Uuid::now_v7(), 0, 2).await;
    let running = start(&rig).await;
    topic.until(&good, SETTLE * 2).await;
    let bad = Uuid::now_v7();
    let q = format!(
        "INSERT INTO {}.event_store (aggregate_id, sequence_number, version, event_id, aggregate_type, event_type, event_version, payload, correlation_id, timestamp) \
         VALUES (?, 1, 1, ?, 'order', 'OrderCreated', 1, '{{not json', ?, toTimestamp(now()))",
        rig.store.keyspace()
    );
    rig.store.session().query_unpaged(q, (bad, Uuid::now_v7(), Uuid::now_v7())).await.unwrap();
    let held = append(&rig.store, bad, 1, 1).await;
    let later = append(&rig.store, Uuid::now_v7(), 0, 3).await;
    topic.until(&later, SETTLE * 3).await;
    assert!(!running.handle.is_finished(), "the feed goes on past the bad row");
    let parked = rig.store.parked(RELAY).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!((parked[0].parked.aggregate_id.clone(), parked[0].parked.sequence), (bad.to_string(), Some(1)));
    topic.read_for(Duration::from_secs(3)).await;
    assert!(!topic.copies.contains_key(&held[0].event_id), "the parked aggregate's next event is held");
    topic.assert_in_order(&[good, later].concat());
    running.stop().await;
}

/// One append as `outboxd` writes it: one conditional batch.
async fn raw_append(admin: &Session, keyspace: &str, events: &[EventEnvelope]) {
    let mut batch = Batch::new(BatchType::Logged);
    let id = events[0].aggregate_id;
    batch.append_statement(
        format!("UPDATE {keyspace}.event_store SET version = ? WHERE aggregate_id = ? IF version = null").as_str(),
    );
    let mut values: Vec<Box<dyn scylla::serialize::row::SerializeRow + Send + Sync>> =
        vec![Box::new((events.len() as i64, id))];
    for e in events {
        batch.append_statement(
            format!("INSERT INTO {keyspace}.event_store (aggregate_id, sequence_number, event_id, aggregate_type, event_type, event_version, payload, correlation_id, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)").as_str(),
        );
        values.push(Box::new((
            id,
            e.sequence,
            e.event_id,
            e.aggregate_type.clone(),
            e.event_type.clone(),
            e.schema_version,
            e.payload.to_string(),
            e.correlation_id,
            e.timestamp,
        )));
    }
    admin.batch(&batch, values).await.expect("append as the admin role");
}

/// The relay's CDC side as a role with exactly the grants of
/// docs/OPERATIONS.md, on an auth-enabled ScyllaDB (`SCYLLA_AUTH_URI`, the
/// compose `scylla-auth` service): the feed opens, reads the log, saves its
/// progress and publishes; CREATE is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ScyllaDB: make integration-test (SCYLLA_URI)"]
async fn the_relay_runs_as_a_role_with_only_the_documented_grants() {
    let (_, brokers) = env();
    let uri = std::env::var("SCYLLA_AUTH_URI").ok().filter(|s| !s.is_empty()).expect(
        "needs SCYLLA_AUTH_URI: a ScyllaDB with PasswordAuthenticator and CassandraAuthorizer (make integration-test starts the compose scylla-auth service)",
    );
    let admin = cql_login(&uri, "cassandra", "cassandra").await;
    let ks = format!("g_{}", Uuid::now_v7().simple());
    for stmt in schema_statements(&ks, 1, true, 86_400) {
        admin.query_unpaged(stmt, ()).await.expect("outboxd schema as the admin role");
    }
    admin.await_schema_agreement().await.unwrap();
    let role = format!("relay_{}", Uuid::now_v7().simple());
    admin.query_unpaged(format!("CREATE ROLE {role} WITH PASSWORD = 'relay-pw' AND LOGIN = true"), ()).await.unwrap();
    for g in relay_grants(&ks, &role) {
        match admin.query_unpaged(g.clone(), ()).await {
            Ok(_) => {}
            // system.cdc_timestamps / cdc_streams exist from ScyllaDB 2025.x on.
            Err(e) if grant_resource(&g).starts_with("system.cdc_") => eprintln!("not on this server: {g}: {e}"),
            Err(e) => panic!("{g}: {e}"),
        }
    }
    let relay = cql_login(&uri, &role, "relay-pw").await;
    let err = relay.query_unpaged(format!("CREATE TABLE {ks}.sneaky (k int PRIMARY KEY)"), ()).await.unwrap_err();
    assert!(
        err.to_string().contains("Unauthorized") || err.to_string().contains("permission"),
        "the role has no CREATE: {err}"
    );

    let mut cfg = outboxd::config::Config::default();
    cfg.kafka.brokers = brokers;
    cfg.kafka.topic_prefix = format!("t{}.", Uuid::now_v7().simple());
    cfg.store.cql.cdc = crate::rig::cdc_cfg();
    let spec = FeedSpec { consumer: RELAY, epoch: None, legacy_table: None };
    let feed =
        CdcFeed::open(relay.clone(), &ks, &cfg.store.cql.cdc, spec).await.expect("the feed opens without CREATE");
    let sink: Arc<dyn DeadLetterSink> = Arc::new(NoDeadLetters);
    let (status, _) = tokio::sync::watch::channel(Default::default());
    let status = outboxd::relay::StatusTx::new(status);
    let store = crate::rig::rig_store_for_parking().await;
    let deliverer =
        Arc::new(Deliverer::new(&cfg, store, sink, outboxd::metrics::Metrics::new(), status).await.unwrap());
    let topics = outboxd::relay::topics::topic_names(false, &cfg.kafka.topic_prefix);
    outboxd::relay::admin::ensure_topics(&cfg.kafka, &topics, Duration::from_secs(30)).await.unwrap();
    let trigger = outboxd::shutdown::Trigger::new();
    let shutdown = trigger.subscribe();
    let run = tokio::spawn(async move { feed.run(deliverer, None, shutdown).await });
    let events = order_events(Uuid::now_v7(), 0, 3);
    raw_append(&admin, &ks, &events).await;
    let mut got = 0;
    // Until every event arrived (or `SETTLE * 2` pass with none): nothing
    // confirms them before the read, and the suite counts copies rather
    // than dropping them (one re-sent early would make a fixed count stop
    // short of an original).
    let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let c = consume_until(&cfg.kafka.brokers, &topics, events.len(), SETTLE * 2, |rs| {
        ids.iter().all(|id| rs.iter().any(|r| r.event_id() == *id))
    });
    for e in &events {
        got += usize::from(c.iter().any(|r| r.event_id() == e.event_id.to_string()));
    }
    assert_eq!(got, events.len(), "published as the restricted role");
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(60), run).await.unwrap().unwrap().expect("stops cleanly");
    let rows = outboxd::store::cql::progress::read_progress(&relay, &ks, RELAY).await.unwrap();
    assert!(rows.iter().any(|r| r.stream.is_empty()) && rows.len() > 1, "progress saved in relay_leases as the role");
}

/// This case's relay never dead-letters (its events are valid).
struct NoDeadLetters;

#[async_trait::async_trait]
impl DeadLetterSink for NoDeadLetters {
    async fn dead_letter(&self, letter: outboxd::store::DeadLetter) -> Result<(), outboxd::store::StoreError> {
        panic!("unexpected dead letter: {letter:?}")
    }
}
