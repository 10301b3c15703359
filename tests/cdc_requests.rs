//! Operator requests on the Scylla CDC relay (`relay::cdc::requests`),
//! against real servers: the CQL store on Apache Cassandra (`CASSANDRA_URI`;
//! requests, park records and the event table are ordinary tables) and the
//! shared Kafka broker. The reader itself needs ScyllaDB; here the request
//! server drives the same delivery call and reconciling sink it uses.
//! Without either server the case prints SKIPPED.

mod harness;

use harness::*;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use outboxd::config::CqlConfig;
use outboxd::metrics::Metrics;
use outboxd::relay::cdc::reconciler::{Handled, ReconcilingSink};
use outboxd::relay::cdc::requests::CdcRequests;
use outboxd::relay::deliver::Deliverer;
use outboxd::relay::sink::DeadLetterSink;
use outboxd::relay::{RelayStatus, StatusTx};
use outboxd::shutdown::Trigger;
use outboxd::store::cql::reconcile::ReconcileTable;
use outboxd::store::cql::CqlStore;
use outboxd::store::parking::{Parked, ParkingStore};
use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus, RequestStore};
use outboxd::store::{DynStore, EventStore};

const RELAY: &str = "kafka-relay";

/// A parked aggregate replayed on request: its held events reach the topic
/// in order, the park record goes, the reader skips the replayed events when
/// their rows come; a request this path does not carry out fails at once
/// with the reason instead of waiting unclaimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_aggregate_is_replayed_and_other_requests_are_refused() {
    let Some(brokers) = shared_brokers() else { return };
    let Some(uri) = std::env::var("CASSANDRA_URI").ok().filter(|s| !s.is_empty()) else {
        eprintln!("SKIPPED: CDC relay requests: set CASSANDRA_URI (make test does)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&brokers, &dir.path().join("unused.db"));
    cfg.kafka.partitions = 1;
    let cql = CqlConfig { uri, keyspace: format!("rq_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
    let store = CqlStore::connect(&cql).await.expect("connect");
    store.migrate().await.expect("schema");
    let (b, ts) = (brokers.clone(), topics(&cfg));
    tokio::task::spawn_blocking(move || ts.iter().for_each(|t| create_topic(&b, t, 1, &[]))).await.unwrap();
    let a = Uuid::now_v7();
    let events = order_events(a, 0, 4);
    store.append(a, 0, events.clone()).await.unwrap();
    // Events 1 was published; 2 failed for good and parked the aggregate; 3, 4 were held.
    let park = Parked {
        consumer: RELAY.into(),
        aggregate_id: a.to_string(),
        aggregate_type: Some("order".into()),
        position: Some(0),
        sequence: Some(2),
        event_id: Some(events[1].event_id.to_string()),
        event_type: Some(events[1].event_type.clone()),
        error: "message too large (message_size_too_large)".into(),
        parked_at: chrono::Utc::now(),
    };
    store.park(&park).await.unwrap();

    let dyn_store = store.clone() as DynStore;
    let sink: Arc<dyn DeadLetterSink> = Arc::new(dyn_store.clone());
    let status = StatusTx::new(tokio::sync::watch::channel(RelayStatus::default()).0);
    let deliverer = Arc::new(Deliverer::new(&cfg, dyn_store.clone(), sink, Metrics::new(), status).await.unwrap());
    assert!(deliverer.is_parked(&a.to_string()));
    let table = ReconcileTable::open(store.session(), store.keyspace()).await.unwrap();
    let rsink = ReconcilingSink::new(
        deliverer.clone(),
        dyn_store.clone(),
        table,
        Duration::from_secs(120),
        1_000,
        None,
        Arc::new(|| None),
    );
    let server = CdcRequests {
        sink: rsink.clone(),
        deliverer: deliverer.clone(),
        store: dyn_store.clone(),
        consumer: RELAY.into(),
        epoch: 0,
    };
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();

    let replay = RelayRequest::new(RELAY, RequestKind::ReplayAggregate { aggregate_id: a.to_string() }, "test");
    let discard = RelayRequest::new(
        RELAY,
        RequestKind::Discard { event_id: events[1].event_id.to_string(), reason: "r".into() },
        "test",
    );
    store.request_submit(&replay).await.unwrap();
    store.request_submit(&discard).await.unwrap();
    server.poll(&mut shutdown).await;

    let done = store.request_get(replay.id).await.unwrap().unwrap();
    assert_eq!(done.status, RequestStatus::Done, "{:?}", done.result);
    assert_eq!(done.result.as_ref().unwrap()["events"], 3, "{:?}", done.result);
    let refused = store.request_get(discard.id).await.unwrap().unwrap();
    assert_eq!(refused.status, RequestStatus::Failed);
    let why = refused.result.unwrap()["error"].as_str().unwrap().to_string();
    assert!(why.contains("dlq discard is not available on the Scylla CDC relay"), "{why}");

    let (b, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_all(&b, &ts, 3, Duration::from_secs(30))).await.unwrap();
    let seqs: Vec<i64> = records.iter().filter(|r| r.key == a.to_string()).map(|r| r.sequence()).collect();
    assert_eq!(seqs, vec![2, 3, 4], "the held events, in order");
    assert!(store.parked(RELAY).await.unwrap().is_empty(), "the park record is gone");
    assert!(!deliverer.is_parked(&a.to_string()));
    // The reader meets the rows of 3 and 4 later: not sent again.
    assert_eq!(
        rsink.deliver_through(a, 4, Some(events[3].clone()), None, &mut shutdown).await.unwrap(),
        Handled::Skipped
    );
    // A replay of an aggregate that is not parked fails with the reason.
    let again = RelayRequest::new(RELAY, RequestKind::ReplayAggregate { aggregate_id: a.to_string() }, "test");
    store.request_submit(&again).await.unwrap();
    server.poll(&mut shutdown).await;
    let r = store.request_get(again.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Failed);
    assert!(r.result.unwrap()["error"].as_str().unwrap().contains("is not parked"));

    // With no relay running, the CLI takes the lease and carries the replay
    // out itself on this path too.
    let b = Uuid::now_v7();
    let b_events = order_events(b, 0, 2);
    store.append(b, 0, b_events.clone()).await.unwrap();
    store
        .park(&Parked {
            aggregate_id: b.to_string(),
            sequence: Some(1),
            event_id: Some(b_events[0].event_id.to_string()),
            ..park.clone()
        })
        .await
        .unwrap();
    let mut env = config_env(&cfg);
    env.push(("OUTBOX_STORE__BACKEND".into(), "cql".into()));
    env.push(("OUTBOX_STORE__CQL__URI".into(), cql.uri.clone()));
    env.push(("OUTBOX_STORE__CQL__KEYSPACE".into(), cql.keyspace.clone()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .args(["dlq", "replay", "--aggregate", &b.to_string()])
            .envs(env)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"status\":\"done\""), "{stdout}");
    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_all(&bk, &ts, 5, Duration::from_secs(30))).await.unwrap();
    let seqs: Vec<i64> = records.iter().filter(|r| r.key == b.to_string()).map(|r| r.sequence()).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert!(store.parked(RELAY).await.unwrap().is_empty());

    // A held row event_store cannot decode either: the replay fails naming
    // it before anything is published, and the aggregate stays parked.
    let c = Uuid::now_v7();
    let c_events = order_events(c, 0, 3);
    store.append(c, 0, c_events.clone()).await.unwrap();
    let q = format!(
        "UPDATE {}.event_store SET payload = '{{not json' WHERE aggregate_id = ? AND sequence_number = 3",
        store.keyspace()
    );
    store.session().query_unpaged(q, (c,)).await.unwrap();
    let c_park = Parked {
        aggregate_id: c.to_string(),
        sequence: Some(2),
        event_id: Some(c_events[1].event_id.to_string()),
        ..park.clone()
    };
    store.park(&c_park).await.unwrap();
    let bad = RelayRequest::new(RELAY, RequestKind::ReplayAggregate { aggregate_id: c.to_string() }, "test");
    store.request_submit(&bad).await.unwrap();
    server.poll(&mut shutdown).await;
    let r = store.request_get(bad.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Failed);
    let why = r.result.unwrap()["error"].as_str().unwrap().to_string();
    assert!(why.contains(&format!("event {c}#3 cannot be decoded")) && why.contains("repair the row"), "{why}");
    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_all(&bk, &ts, 6, Duration::from_secs(5))).await.unwrap();
    assert!(records.iter().all(|r| r.key != c.to_string()), "nothing of c was published");
    assert_eq!(store.parked(RELAY).await.unwrap().len(), 1, "c stays parked");
}
