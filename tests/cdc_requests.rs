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
use outboxd::relay::cdc::progress::StreamKey;
use outboxd::relay::cdc::reconciler::{Handled, ReconcilingSink};
use outboxd::relay::cdc::requests::{CdcRequests, Rewinder};
use outboxd::relay::cdc::rewind::{self, rewind_progress, rfc3339};
use outboxd::relay::cdc::saver::{read_progress, LeaseCheckpointSaver};
use outboxd::relay::deliver::Deliverer;
use outboxd::relay::sink::DeadLetterSink;
use outboxd::relay::{RelayStatus, StatusTx};
use outboxd::shutdown::Trigger;
use outboxd::store::cql::progress::generation_floor;
use outboxd::store::cql::reconcile::ReconcileTable;
use outboxd::store::cql::CqlStore;
use outboxd::store::parking::{Parked, ParkingStore};
use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus, RequestStore};
use outboxd::store::{DeadLetter, DynStore, EventStore};

const RELAY: &str = "kafka-relay";
const LOG_TTL: Duration = Duration::from_secs(86_400);
const MIN: i64 = 60_000;

/// A config on the shared broker (one partition, topics created) and a
/// fresh keyspace on the Cassandra of `CASSANDRA_URI`; `None` (SKIPPED)
/// without either server.
struct Rig {
    brokers: String,
    cfg: outboxd::config::Config,
    cql: CqlConfig,
    store: Arc<CqlStore>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(what: &str) -> Option<Rig> {
        let brokers = shared_brokers()?;
        let Some(uri) = std::env::var("CASSANDRA_URI").ok().filter(|s| !s.is_empty()) else {
            eprintln!("SKIPPED: {what}: set CASSANDRA_URI (make test does)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(&brokers, &dir.path().join("unused.db"));
        cfg.kafka.partitions = 1;
        let cql = CqlConfig { uri, keyspace: format!("rq_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
        let store = CqlStore::connect(&cql).await.expect("connect");
        store.migrate().await.expect("schema");
        let (b, ts) = (brokers.clone(), topics(&cfg));
        tokio::task::spawn_blocking(move || ts.iter().for_each(|t| create_topic(&b, t, 1, &[]))).await.unwrap();
        Some(Rig { brokers, cfg, cql, store, _dir: dir })
    }
}

/// The request server a CDC relay runs: its delivery call, reconciling sink
/// and the server over them, at epoch 0 (no lease).
async fn request_server(
    cfg: &outboxd::config::Config,
    store: &Arc<CqlStore>,
) -> (Arc<Deliverer>, Arc<ReconcilingSink<Deliverer>>, CdcRequests) {
    let dyn_store = store.clone() as DynStore;
    let sink: Arc<dyn DeadLetterSink> = Arc::new(dyn_store.clone());
    let status = StatusTx::new(tokio::sync::watch::channel(RelayStatus::default()).0);
    let deliverer = Arc::new(Deliverer::new(cfg, dyn_store.clone(), sink, Metrics::new(), status).await.unwrap());
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
    let rewind = Rewinder::Saver { saver: progress_saver(store, None).await, log_ttl: LOG_TTL };
    let server = CdcRequests {
        sink: rsink.clone(),
        deliverer: deliverer.clone(),
        store: dyn_store,
        consumer: RELAY.into(),
        epoch: 0,
        rewind,
    };
    (deliverer, rsink, server)
}

/// The relay consumer's CDC progress saver (`epoch`: fenced by it).
async fn progress_saver(store: &Arc<CqlStore>, epoch: Option<i64>) -> Arc<LeaseCheckpointSaver> {
    LeaseCheckpointSaver::open(store.session(), store.keyspace(), RELAY, epoch, LOG_TTL, None).await.unwrap()
}

fn stream(b: u8) -> StreamKey {
    StreamKey(vec![b; 16])
}

/// Saved progress as a relay leaves it: a generation begun at `generation`,
/// first read from `lower` (its floor, if later), and `streams` published
/// up to their times.
async fn seed_progress(store: &Arc<CqlStore>, generation: i64, lower: i64, streams: &[(u8, i64)]) {
    let s = progress_saver(store, None).await;
    s.run_starts(lower);
    s.start_generation(generation).await.unwrap();
    for (b, t) in streams {
        s.record(&stream(*b), *t).unwrap();
    }
    s.flush().await.unwrap();
}

/// The saved time of each of `streams` and the generation's floor.
async fn saved_times(store: &Arc<CqlStore>, streams: &[u8]) -> (Vec<Option<i64>>, Option<i64>) {
    let rows = read_progress(&store.session(), store.keyspace(), RELAY).await.unwrap();
    let time = |b: u8| rows.iter().find(|r| r.stream == stream(b).0).and_then(|r| r.time);
    (streams.iter().map(|b| time(*b)).collect(), generation_floor(&rows))
}

/// Runs `outboxd <args>` on the CQL store with no relay running (the CLI
/// takes the lease and carries the request out) and expects it done.
async fn cli_request_done(cfg: &outboxd::config::Config, cql: &CqlConfig, args: &[&str]) {
    let (code, stdout) = cli_request(cfg, cql, args).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("\"status\":\"done\""), "{stdout}");
}

/// Runs `outboxd <args>` as above: its exit code, stdout and stderr.
async fn cli_request(cfg: &outboxd::config::Config, cql: &CqlConfig, args: &[&str]) -> (Option<i32>, String) {
    let mut env = config_env(cfg);
    env.push(("OUTBOX_STORE__BACKEND".into(), "cql".into()));
    env.push(("OUTBOX_STORE__CQL__URI".into(), cql.uri.clone()));
    env.push(("OUTBOX_STORE__CQL__KEYSPACE".into(), cql.keyspace.clone()));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .args(&args)
            .envs(env)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), output)
}

/// A dead letter holding `env`, as the relay writes one.
fn letter(env: &outboxd::envelope::EventEnvelope) -> DeadLetter {
    let now = chrono::Utc::now();
    DeadLetter {
        id: Uuid::now_v7(),
        position: None,
        event_id: env.event_id,
        aggregate_id: env.aggregate_id,
        event_type: env.event_type.clone(),
        payload: serde_json::to_string(env).unwrap(),
        error_message: "message too large (message_size_too_large)".into(),
        failure_count: 5,
        first_failed_at: now,
        last_failed_at: now,
        created_at: now,
    }
}

/// A parked aggregate replayed on request: its held events reach the topic
/// in order, the park record goes, the reader skips the replayed events when
/// their rows come; a rewind this relay cannot carry out (by position, or
/// with no progress saved) fails at once with the reason instead of waiting
/// unclaimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_aggregate_is_replayed_and_other_requests_are_refused() {
    let Some(Rig { brokers, cfg, cql, store, _dir }) = Rig::start("CDC relay requests").await else { return };
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

    let (deliverer, rsink, server) = request_server(&cfg, &store).await;
    assert!(deliverer.is_parked(&a.to_string()));
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();

    let replay = RelayRequest::new(RELAY, RequestKind::ReplayAggregate { aggregate_id: a.to_string() }, "test");
    let rewind = RelayRequest::new(RELAY, RequestKind::RewindToTime { time: chrono::Utc::now() }, "test");
    let by_position = RelayRequest::new(RELAY, RequestKind::RewindToPosition { position: 0 }, "test");
    store.request_submit(&replay).await.unwrap();
    store.request_submit(&rewind).await.unwrap();
    store.request_submit(&by_position).await.unwrap();
    server.poll(&mut shutdown).await;

    let done = store.request_get(replay.id).await.unwrap().unwrap();
    assert_eq!(done.status, RequestStatus::Done, "{:?}", done.result);
    assert_eq!(done.result.as_ref().unwrap()["events"], 3, "{:?}", done.result);
    let refused = store.request_get(rewind.id).await.unwrap().unwrap();
    assert_eq!(refused.status, RequestStatus::Failed);
    let why = refused.result.unwrap()["error"].as_str().unwrap().to_string();
    assert_eq!(why, "the relay has saved no CDC progress yet: nothing to rewind");
    let refused = store.request_get(by_position.id).await.unwrap().unwrap();
    assert_eq!(refused.status, RequestStatus::Failed);
    let why = refused.result.unwrap()["error"].as_str().unwrap().to_string();
    assert!(why.contains("this relay reads the Scylla CDC log: use --to-time"), "{why}");

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
    cli_request_done(&cfg, &cql, &["dlq", "replay", "--aggregate", &b.to_string()]).await;
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

/// Dead letters replayed on the CDC relay: each letter's event reaches the
/// topic (an aggregate's letters in sequence order, whatever order they were
/// written in) and its letter goes; a letter whose payload is not an event
/// is reported and stays; `outboxd dlq replay --id` and `--all` carry it out
/// with no relay running. A letter whose event still fails for good stays,
/// and the request fails naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_replayed_and_removed_once_confirmed() {
    let Some(Rig { brokers, cfg, cql, store, _dir }) = Rig::start("CDC relay: dead-letter replay").await else {
        return;
    };
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let (a_events, b_events) = (order_events(a, 0, 3), order_events(b, 0, 1));
    store.append(a, 0, a_events.clone()).await.unwrap();
    store.append(b, 0, b_events.clone()).await.unwrap();
    let (a3, a2, b1) = (letter(&a_events[2]), letter(&a_events[1]), letter(&b_events[0]));
    let broken = DeadLetter { payload: "{not json".into(), ..letter(&order_events(Uuid::now_v7(), 0, 1)[0]) };
    for l in [&a3, &broken, &a2, &b1] {
        store.dlq_insert(l.clone()).await.unwrap();
    }
    let (_, _, server) = request_server(&cfg, &store).await;
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let replay = RelayRequest::new(RELAY, RequestKind::ReplayDeadLetters { ids: None }, "test");
    store.request_submit(&replay).await.unwrap();
    server.poll(&mut shutdown).await;
    let done = store.request_get(replay.id).await.unwrap().unwrap();
    assert_eq!(done.status, RequestStatus::Done, "{:?}", done.result);
    let result = done.result.unwrap();
    assert_eq!(result["replayed"], 3, "{result}");
    assert_eq!(result["failed"][0]["id"], broken.id.to_string(), "{result}");
    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_all(&bk, &ts, 3, Duration::from_secs(30))).await.unwrap();
    let seqs = |k: Uuid| records.iter().filter(|r| r.key == k.to_string()).map(|r| r.sequence()).collect::<Vec<_>>();
    assert_eq!((seqs(a), seqs(b)), (vec![2, 3], vec![1]), "in sequence order per aggregate");
    let left: Vec<Uuid> = store.dlq_list(10).await.unwrap().into_iter().map(|l| l.id).collect();
    assert_eq!(left, vec![broken.id], "confirmed letters removed, the broken one stays");

    // The documented commands, with no relay running.
    let c = Uuid::now_v7();
    let c_events = order_events(c, 0, 2);
    store.append(c, 0, c_events.clone()).await.unwrap();
    let (c1, c2) = (letter(&c_events[0]), letter(&c_events[1]));
    store.dlq_insert(c1.clone()).await.unwrap();
    cli_request_done(&cfg, &cql, &["dlq", "replay", "--id", &c1.id.to_string()]).await;
    store.dlq_insert(c2.clone()).await.unwrap();
    store.dlq_remove(broken.id).await.unwrap();
    cli_request_done(&cfg, &cql, &["dlq", "replay", "--all"]).await;
    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_all(&bk, &ts, 5, Duration::from_secs(30))).await.unwrap();
    let c_seqs: Vec<i64> = records.iter().filter(|r| r.key == c.to_string()).map(|r| r.sequence()).collect();
    assert_eq!(c_seqs, vec![1, 2]);
    assert_eq!(store.dlq_count().await.unwrap(), 0);

    // A letter whose event still cannot be published (larger than the
    // broker takes) stays, and the request fails naming it.
    let d = Uuid::now_v7();
    let mut huge = order_events(d, 0, 1).remove(0);
    huge.payload = serde_json::json!({ "blob": "x".repeat(1_100_000) });
    let stuck = letter(&huge);
    store.dlq_insert(stuck.clone()).await.unwrap();
    let again = RelayRequest::new(RELAY, RequestKind::ReplayDeadLetters { ids: Some(vec![stuck.id]) }, "test");
    store.request_submit(&again).await.unwrap();
    server.poll(&mut shutdown).await;
    let r = store.request_get(again.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Failed, "{:?}", r.result);
    let result = r.result.unwrap();
    assert_eq!(result["id"], stuck.id.to_string(), "{result}");
    assert!(store.dlq_list(10).await.unwrap().iter().any(|l| l.id == stuck.id), "the letter stays");
}

/// `dlq discard` on the CDC relay: the first held event of a parked
/// aggregate, whose `event_store` row cannot be decoded, is replaced on the
/// topic by a marker (same key, `ce_id` and `ce_sequence`), followed by the
/// events held behind it, in order; the audit row is written once and the
/// park record goes. Run through the documented command with no relay
/// running; a discard of an event nothing is held behind fails with the
/// reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_discard_replaces_the_poison_event_by_a_marker_and_releases_the_rest() {
    let Some(Rig { brokers, cfg, cql, store, _dir }) = Rig::start("CDC relay: discard").await else { return };
    let e = Uuid::now_v7();
    let events = order_events(e, 0, 4);
    store.append(e, 0, events.clone()).await.unwrap();
    let q = format!(
        "UPDATE {}.event_store SET payload = '{{not json' WHERE aggregate_id = ? AND sequence_number = 2",
        store.keyspace()
    );
    store.session().query_unpaged(q, (e,)).await.unwrap();
    let poison = events[1].event_id.to_string();
    store
        .park(&Parked {
            consumer: RELAY.into(),
            aggregate_id: e.to_string(),
            aggregate_type: Some("order".into()),
            position: Some(0),
            sequence: Some(2),
            event_id: Some(poison.clone()),
            event_type: Some(events[1].event_type.clone()),
            error: "unreadable: payload is not JSON".into(),
            parked_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    cli_request_done(&cfg, &cql, &["dlq", "discard", "--id", &poison, "--reason", "corrupt row, approved by ops"])
        .await;

    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_all(&bk, &ts, 3, Duration::from_secs(30))).await.unwrap();
    let mine: Vec<_> = records.iter().filter(|r| r.key == e.to_string()).collect();
    let seqs: Vec<i64> = mine.iter().map(|r| r.sequence()).collect();
    assert_eq!(seqs, vec![2, 3, 4], "the marker in the poison event's place, then the held events");
    assert_eq!(mine[0].headers["ce_type"], "outboxd.EventDiscarded");
    assert_eq!(mine[0].event_id(), poison);
    assert_eq!(mine[0].value["reason"], "corrupt row, approved by ops");
    assert!(store.parked(RELAY).await.unwrap().is_empty(), "the park record is gone");
    let audit = store.discards(10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (audit[0].event_id.as_str(), audit[0].reason.as_str()),
        (poison.as_str(), "corrupt row, approved by ops")
    );

    // Nothing is held behind that event any more.
    let (_, _, server) = request_server(&cfg, &store).await;
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let again =
        RelayRequest::new(RELAY, RequestKind::Discard { event_id: poison.clone(), reason: "again".into() }, "t");
    store.request_submit(&again).await.unwrap();
    server.poll(&mut shutdown).await;
    let r = store.request_get(again.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Failed);
    let why = r.result.unwrap()["error"].as_str().unwrap().to_string();
    assert!(why.contains(&format!("no parked aggregate is held behind event {poison}")), "{why}");
}

/// `outboxd relay rewind --to-time T` on the CQL backend with no relay
/// running: the CLI takes the lease and lowers every stream published past
/// T, and the generation's floor, to T (a reader started afterwards loads
/// them); a stream already behind T keeps its progress. A time before the
/// generation, in the future, or behind no stream is refused with the
/// reason and changes nothing; so is a rewind by position; and a former
/// lease holder's rewind is fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewind_lowers_the_saved_progress_or_is_refused_with_the_reason() {
    let Some(Rig { cfg, cql, store, .. }) = Rig::start("CDC relay rewind (CLI)").await else { return };
    let now = chrono::Utc::now().timestamp_millis();
    let streams = [(1, now - 30 * MIN), (2, now - 20 * MIN), (3, now - 50 * MIN)];
    seed_progress(&store, now - 120 * MIN, now - 35 * MIN, &streams).await;
    assert_eq!(saved_times(&store, &[]).await.1, Some(now - 35 * MIN), "the floor, later than T");
    let to = now - 40 * MIN;
    let (code, out) = cli_request(&cfg, &cql, &["relay", "rewind", "--to-time", &rfc3339(to)]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"status\":\"done\"") && out.contains("\"streams\":2"), "{out}");
    assert!(out.contains(&format!("\"rewound_to\":\"{}\"", rfc3339(to))), "{out}");
    assert!(out.contains(&format!("\"rewound_from\":\"{}\"", rfc3339(now - 20 * MIN))), "the newest progress: {out}");
    let after = saved_times(&store, &[1, 2, 3]).await;
    assert_eq!(after, (vec![Some(to), Some(to), Some(now - 50 * MIN)], Some(to)));
    let reader = progress_saver(&store, None).await;
    assert_eq!(reader.progress().loaded(&stream(2)), Some(to), "a reader started now resumes there");
    assert_eq!(reader.floor_ms(), Some(to), "so does a stream group without a row");

    for (t, why) in [
        (now - 180 * MIN, "before the current CDC generation, which began at"),
        (now + 10 * MIN, "it is in the future"),
        (to, "no stream has been published past it"),
    ] {
        let (code, out) = cli_request(&cfg, &cql, &["relay", "rewind", "--to-time", &rfc3339(t)]).await;
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(why), "{why}: {out}");
    }
    let (code, out) = cli_request(&cfg, &cql, &["relay", "rewind", "--to-position", "0"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("use --to-time"), "{out}");
    assert_eq!(saved_times(&store, &[1, 2, 3]).await, after, "a refused rewind changes nothing");

    // The CLI held the lease at epoch >= 1: a saver of epoch 0 is a former holder's.
    let stale = progress_saver(&store, Some(0)).await;
    let err = rewind_progress(&stale, now - 55 * MIN, LOG_TTL).await.unwrap_err();
    assert_eq!(err, "another instance holds the relay lease");
    assert_eq!(stale.progress().loaded(&stream(1)), Some(to), "nor keeps it in memory");
    assert_eq!(saved_times(&store, &[1, 2, 3]).await, after, "a fenced rewind writes nothing");
}

/// On a running relay the request server checks the rewind against the
/// feed's progress, hands it to the feed's runner, and while the reader is
/// stopped makes the reconciling sink forget what it published, so the
/// events read again go out again instead of being skipped as re-reads.
/// The runner's side of the channel needs a Scylla CDC reader; here a task
/// takes the rewind and does what the runner does between two reader runs
/// (`Rewind::carry_out`, which the runner calls once its reader stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_relays_rewind_goes_to_its_runner_and_its_events_go_out_again() {
    let Some(Rig { brokers, cfg, store, .. }) = Rig::start("CDC relay rewind (running relay)").await else { return };
    let a = Uuid::now_v7();
    let events = order_events(a, 0, 2);
    store.append(a, 0, events.clone()).await.unwrap();
    let (deliverer, rsink, mut server) = request_server(&cfg, &store).await;
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    for (i, e) in events.iter().enumerate() {
        let got = rsink.deliver_through(a, i as i64 + 1, Some(e.clone()), None, &mut shutdown).await.unwrap();
        assert_eq!(got, Handled::Delivered { filled: 0 });
    }
    let again = rsink.deliver_through(a, 2, Some(events[1].clone()), None, &mut shutdown).await.unwrap();
    assert_eq!(again, Handled::Skipped, "a re-read is not sent twice");

    let now = chrono::Utc::now().timestamp_millis();
    seed_progress(&store, now - 120 * MIN, now - 120 * MIN, &[(1, now - 10 * MIN)]).await;
    let feed = progress_saver(&store, None).await;
    let (tx, rx) = rewind::channel();
    server.rewind = Rewinder::Runner { tx, saver: feed.clone(), log_ttl: LOG_TTL };
    let runner = tokio::spawn(async move {
        let rw = rewind::next(&mut Some(rx)).await;
        let to_ms = rw.to_ms;
        assert!(rw.carry_out(&feed, LOG_TTL).await, "written");
        to_ms
    });

    let early = RelayRequest::new(RELAY, RequestKind::RewindToTime { time: chrono::Utc::now() }, "test");
    store.request_submit(&early).await.unwrap();
    server.poll(&mut shutdown).await;
    let r = store.request_get(early.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Failed, "checked before the reader is stopped");
    assert!(r.result.unwrap()["error"].as_str().unwrap().contains("no stream has been published past it"));

    let to = chrono::DateTime::from_timestamp_millis(now - 30 * MIN).unwrap();
    let req = RelayRequest::new(RELAY, RequestKind::RewindToTime { time: to }, "test");
    store.request_submit(&req).await.unwrap();
    server.poll(&mut shutdown).await;
    let r = store.request_get(req.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Done, "{:?}", r.result);
    assert_eq!(r.result.as_ref().unwrap()["streams"], 1, "{:?}", r.result);
    assert_eq!(runner.await.unwrap(), now - 30 * MIN, "the refused rewind never reached the runner");
    assert_eq!(saved_times(&store, &[1]).await.0, vec![Some(now - 30 * MIN)]);
    let m = deliverer.metrics();
    assert_eq!(m.relay_requests.with_label_values(&["rewind"]).get(), 2, "both requests counted");
    assert_eq!(m.relay_rewinds.get(), 1, "one rewind carried out");

    // The reader reads the aggregate's rows again: they go out again.
    for (i, e) in events.iter().enumerate() {
        let got = rsink.deliver_through(a, i as i64 + 1, Some(e.clone()), None, &mut shutdown).await.unwrap();
        assert_eq!(got, Handled::Delivered { filled: 0 }, "event {} after the rewind", i + 1);
    }
    let (b, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_all(&b, &ts, 4, Duration::from_secs(30))).await.unwrap();
    let seqs: Vec<i64> = records.iter().filter(|r| r.key == a.to_string()).map(|r| r.sequence()).collect();
    assert_eq!(seqs, vec![1, 2, 1, 2], "published, then published again after the rewind");
}
