//! One store test suite, run against every backend: embedded SQLite always,
//! CQL (Apache Cassandra in `make test`, ScyllaDB in `make integration-test`)
//! when `CASSANDRA_URI` or `SCYLLA_URI` points at a server. Without one the
//! CQL cases print why they are skipped.
//!
//! Each test uses its own database file / keyspace.

mod harness;
use harness::order_events;
use std::sync::{Arc, Barrier};
use uuid::Uuid;

use outboxd::config::CqlConfig;
use outboxd::domain::{Aggregate, Customer, CustomerCommand, Email};
use outboxd::envelope::now_millis;
use outboxd::store::sqlite::{SqliteOptions, SqliteStore};
use outboxd::store::{DeadLetter, DynStore, EventStore, Snapshot, StoreError};

async fn sqlite() -> Option<(DynStore, Box<dyn std::any::Any + Send>)> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db"), SqliteOptions::default()).await.unwrap();
    Some((store, Box::new(dir)))
}

pub fn cql_uri() -> Option<String> {
    std::env::var("CASSANDRA_URI").ok().or_else(|| std::env::var("SCYLLA_URI").ok()).filter(|s| !s.is_empty())
}

async fn cql() -> Option<(DynStore, Box<dyn std::any::Any + Send>)> {
    let Some(uri) = cql_uri() else {
        crate::harness::skipped(true, "CQL store case: set CASSANDRA_URI (make test starts Cassandra) or SCYLLA_URI");
        return None;
    };
    let cfg = CqlConfig { uri, keyspace: format!("t_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
    let store = outboxd::store::cql::CqlStore::connect(&cfg).await.expect("connect to CQL");
    store.migrate().await.expect("create keyspace and tables");
    Some((store, Box::new(())))
}

async fn append_and_load(s: DynStore) {
    let id = Uuid::now_v7();
    let events = order_events(id, 0, 3);
    let a = s.append(id, 0, events.clone()).await.unwrap();
    assert_eq!(a.version, 3);
    assert_eq!(s.load(id).await.unwrap(), events);
    assert_eq!(s.load_after(id, 2).await.unwrap(), events[2..].to_vec());
    assert!(s.load(Uuid::now_v7()).await.unwrap().is_empty());
    let more = order_events(id, 3, 2);
    assert_eq!(s.append(id, 3, more.clone()).await.unwrap().version, 5);
    assert_eq!(s.load(id).await.unwrap().len(), 5);
}

async fn conflict_on_stale_version(s: DynStore) {
    let id = Uuid::now_v7();
    s.append(id, 0, order_events(id, 0, 2)).await.unwrap();
    let err = s.append(id, 1, order_events(id, 1, 1)).await.unwrap_err();
    assert_eq!(err, StoreError::Conflict { aggregate_id: id, expected: 1, actual: 2 });
    let err = s.append(id, 0, order_events(id, 0, 1)).await.unwrap_err();
    assert_eq!(err, StoreError::Conflict { aggregate_id: id, expected: 0, actual: 2 });
    assert_eq!(s.load(id).await.unwrap().len(), 2, "a conflicting append wrote nothing");
}

async fn conflict_on_too_high_version(s: DynStore) {
    let id = Uuid::now_v7();
    let err = s.append(id, 4, order_events(id, 4, 1)).await.unwrap_err();
    assert_eq!(err, StoreError::Conflict { aggregate_id: id, expected: 4, actual: 0 });
    s.append(id, 0, order_events(id, 0, 1)).await.unwrap();
    let err = s.append(id, 3, order_events(id, 3, 1)).await.unwrap_err();
    assert_eq!(err, StoreError::Conflict { aggregate_id: id, expected: 3, actual: 1 });
    assert_eq!(s.load(id).await.unwrap().len(), 1, "no gap was created");
}

async fn invalid_batches_are_refused(s: DynStore) {
    let id = Uuid::now_v7();
    assert!(matches!(s.append(id, 0, vec![]).await, Err(StoreError::InvalidAppend(_))));
    let mut ev = order_events(id, 0, 2);
    ev[1].sequence = 5;
    assert!(matches!(s.append(id, 0, ev).await, Err(StoreError::InvalidAppend(_))));
    let other = order_events(Uuid::now_v7(), 0, 1);
    assert!(matches!(s.append(id, 0, other).await, Err(StoreError::InvalidAppend(_))));
    assert!(s.load(id).await.unwrap().is_empty());
}

async fn failed_append_leaves_no_partial_rows(s: DynStore) {
    let a = Uuid::now_v7();
    let first = order_events(a, 0, 1);
    s.append(a, 0, first.clone()).await.unwrap();
    // Second aggregate: three events, the last one reusing an existing event id.
    let b = Uuid::now_v7();
    let mut ev = order_events(b, 0, 3);
    ev[2].event_id = first[0].event_id;
    let r = s.append(b, 0, ev).await;
    if s.backend() == "sqlite" {
        assert!(r.is_err(), "duplicate event id must fail the whole append");
        assert!(s.load(b).await.unwrap().is_empty(), "no partial rows after a failed append");
    } else {
        // CQL has no cross-partition unique key on event_id; the batch itself is atomic.
        assert!(r.is_ok());
        assert_eq!(s.load(b).await.unwrap().len(), 3);
    }
}

async fn eight_concurrent_writers(s: DynStore) {
    let rounds = if s.backend() == "sqlite" { 60 } else { 15 };
    let id = Uuid::now_v7();
    let barrier = Arc::new(Barrier::new(8));
    let handle = tokio::runtime::Handle::current();
    let mut threads = Vec::new();
    for _ in 0..8 {
        let (s, barrier, handle) = (s.clone(), barrier.clone(), handle.clone());
        threads.push(std::thread::spawn(move || {
            let mut results = Vec::new();
            for round in 0..rounds {
                barrier.wait();
                let version = round as i64;
                let ev = order_events(id, version, 1);
                let r = handle.block_on(s.append(id, version, ev));
                results.push((round, r));
                barrier.wait();
            }
            results
        }));
    }
    let all: Vec<_> =
        tokio::task::spawn_blocking(move || threads.into_iter().flat_map(|t| t.join().unwrap()).collect())
            .await
            .unwrap();
    for round in 0..rounds {
        let in_round: Vec<_> = all.iter().filter(|(r, _)| *r == round).collect();
        assert_eq!(in_round.len(), 8);
        let winners = in_round.iter().filter(|(_, r)| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: exactly one writer wins");
        for (_, r) in in_round.iter().filter(|(_, r)| r.is_err()) {
            assert_eq!(
                r.as_ref().unwrap_err(),
                &StoreError::Conflict { aggregate_id: id, expected: round as i64, actual: round as i64 + 1 }
            );
        }
    }
    let seqs: Vec<i64> = s.load(id).await.unwrap().iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=rounds as i64).collect::<Vec<_>>(), "no gaps, no duplicates");
}

async fn checkpoints(s: DynStore) {
    let name = format!("c-{}", Uuid::now_v7());
    assert_eq!(s.get_checkpoint(&name).await.unwrap(), None);
    s.set_checkpoint(&name, 5).await.unwrap();
    assert_eq!(s.get_checkpoint(&name).await.unwrap(), Some(5));
    s.set_checkpoint(&name, 9).await.unwrap();
    assert_eq!(s.get_checkpoint(&name).await.unwrap(), Some(9));
}

async fn dead_letters(s: DynStore) {
    let env = order_events(Uuid::now_v7(), 0, 1).remove(0);
    let now = now_millis();
    let letter = DeadLetter {
        id: Uuid::now_v7(),
        position: Some(7),
        event_id: env.event_id,
        aggregate_id: env.aggregate_id,
        event_type: env.event_type.clone(),
        payload: serde_json::to_string(&env).unwrap(),
        error_message: "Message size too large".into(),
        failure_count: 5,
        first_failed_at: now,
        last_failed_at: now,
        created_at: now,
    };
    assert_eq!(s.dlq_count().await.unwrap(), 0);
    s.dlq_insert(letter.clone()).await.unwrap();
    let listed = s.dlq_list(10).await.unwrap();
    assert_eq!(listed, vec![letter.clone()]);
    assert_eq!(s.dlq_count().await.unwrap(), 1);
    // The same event failing again bumps the count instead of adding a row.
    let again = DeadLetter { id: Uuid::now_v7(), failure_count: 5, ..letter.clone() };
    s.dlq_insert(again.clone()).await.unwrap();
    let listed = s.dlq_list(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].failure_count, 10);
    // A letter written again (the relay's retry after a write whose outcome
    // it could not know) counts once: the first one and the last one added.
    s.dlq_insert(letter.clone()).await.unwrap();
    s.dlq_insert(again.clone()).await.unwrap();
    let listed = s.dlq_list(10).await.unwrap();
    assert_eq!((listed.len(), listed[0].failure_count), (1, 10), "{listed:?}");
    assert_eq!(listed[0].id, letter.id, "the row keeps its first letter's id");
    let third = DeadLetter { id: Uuid::now_v7(), failure_count: 2, ..letter.clone() };
    s.dlq_insert(third.clone()).await.unwrap();
    s.dlq_insert(third).await.unwrap();
    let listed = s.dlq_list(10).await.unwrap();
    assert_eq!(listed[0].failure_count, 12);
    // By id: the named one (once, however often named), none for an unknown id.
    let got = s.dlq_get(&[Uuid::now_v7(), letter.id, letter.id]).await.unwrap();
    assert_eq!(got, listed);
    assert!(s.dlq_get(&[Uuid::now_v7()]).await.unwrap().is_empty());
    assert!(s.dlq_remove(listed[0].id).await.unwrap());
    assert!(!s.dlq_remove(listed[0].id).await.unwrap());
    assert_eq!(s.dlq_count().await.unwrap(), 0);
}

async fn snapshots(s: DynStore) {
    let id = Uuid::now_v7();
    assert_eq!(s.load_snapshot(id).await.unwrap(), None);
    let mut c = Customer::default();
    for e in c
        .handle(&CustomerCommand::Register { name: "A".into(), email: Email::new("a@b.co").unwrap(), phone: None })
        .unwrap()
    {
        c.apply(&e);
    }
    let snap = Snapshot {
        aggregate_id: id,
        aggregate_type: "customer".into(),
        version: 10,
        state_schema: 1,
        state: serde_json::to_value(&c).unwrap(),
        created_at: now_millis(),
    };
    s.save_snapshot(snap.clone()).await.unwrap();
    assert_eq!(s.load_snapshot(id).await.unwrap(), Some(snap.clone()));
    let older = Snapshot { version: 5, ..snap.clone() };
    s.save_snapshot(older).await.unwrap();
    assert_eq!(s.load_snapshot(id).await.unwrap().unwrap().version, 10, "an older snapshot never replaces a newer one");

    // Loading reads the snapshot and the events after it (all without one).
    let order = Uuid::now_v7();
    let events = order_events(order, 0, 5);
    s.append(order, 0, events.clone()).await.unwrap();
    assert_eq!(s.load_from_snapshot(order).await.unwrap(), (None, events.clone()));
    let at3 = Snapshot { aggregate_id: order, aggregate_type: "order".into(), version: 3, ..snap.clone() };
    s.save_snapshot(at3.clone()).await.unwrap();
    assert_eq!(s.load_from_snapshot(order).await.unwrap(), (Some(at3), events[3..].to_vec()));
}

/// Park records change only at the caller's lease epoch: after a takeover
/// the old holder can neither remove nor add one (it would release or hold
/// the new leader's events behind its back).
async fn fenced_parking(s: DynStore) {
    use outboxd::store::lease::{Lease, LeaseCas};
    use outboxd::store::parking::Parked;
    let name = "kafka-relay";
    let lease =
        |epoch: i64, holder: &str| Lease { name: name.into(), holder: holder.into(), epoch, counter: 0, ttl_ms: 3000 };
    assert!(s.lease_cas(&LeaseCas { expected: None, new: lease(1, "a") }).await.unwrap());
    let park = |agg: String| Parked {
        consumer: name.into(),
        aggregate_id: agg,
        aggregate_type: Some("Order".into()),
        position: Some(1),
        sequence: Some(1),
        event_id: None,
        event_type: None,
        error: "refused by the broker".into(),
        parked_at: chrono::Utc::now(),
    };
    let agg = Uuid::now_v7().to_string();
    s.park_fenced(&park(agg.clone()), 1).await.unwrap();
    let parked = |s: DynStore| async move {
        s.parked(name).await.unwrap().into_iter().map(|p| p.parked.aggregate_id).collect::<Vec<_>>()
    };
    assert_eq!(parked(s.clone()).await, vec![agg.clone()]);
    // What the projector reads before every page: the same parks, no counts.
    assert_eq!(s.parked_positions(name).await.unwrap(), vec![(agg.clone(), Some(1))]);
    // The same aggregates and positions as `parked` (CQL reads only the park
    // rows for them, not `parked`'s held count per park), also without one.
    let second = Parked { position: None, sequence: Some(3), ..park(Uuid::now_v7().to_string()) };
    s.park_fenced(&second, 1).await.unwrap();
    let mut positions = s.parked_positions(name).await.unwrap();
    let mut of_parked: Vec<_> =
        s.parked(name).await.unwrap().into_iter().map(|p| (p.parked.aggregate_id, p.parked.position)).collect();
    positions.sort();
    of_parked.sort();
    assert_eq!(positions, of_parked);
    let mut expected = vec![(agg.clone(), Some(1)), (second.aggregate_id.clone(), None)];
    expected.sort();
    assert_eq!(positions, expected);
    assert!(s.unpark_fenced(name, &second.aggregate_id, 1).await.unwrap());

    // "b" takes the lease over: epoch 2.
    assert!(s.lease_cas(&LeaseCas { expected: Some((1, 0)), new: lease(2, "b") }).await.unwrap());
    match s.unpark_fenced(name, &agg, 1).await {
        Err(StoreError::Fenced { epoch: 1, current: Some(2), .. }) => {}
        other => panic!("the old holder's unpark must be fenced: {other:?}"),
    }
    match s.park_fenced(&park(Uuid::now_v7().to_string()), 1).await {
        Err(StoreError::Fenced { epoch: 1, current: Some(2), .. }) => {}
        other => panic!("the old holder's park must be fenced: {other:?}"),
    }
    assert_eq!(parked(s.clone()).await, vec![agg.clone()], "nothing changed");
    assert!(s.unpark_fenced(name, &agg, 2).await.unwrap(), "the holder unparks");
    assert!(parked(s.clone()).await.is_empty());
    assert!(s.parked_positions(name).await.unwrap().is_empty());
}

/// Operator requests are claimed and finished only at the lease's epoch: a
/// former leader can neither claim a request after a takeover nor report
/// one done that the new leader then carries out (re-claims) itself.
async fn fenced_requests(s: DynStore) {
    use outboxd::store::lease::{Lease, LeaseCas};
    use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus};
    let name = "kafka-relay";
    let lease =
        |epoch: i64, holder: &str| Lease { name: name.into(), holder: holder.into(), epoch, counter: 0, ttl_ms: 3000 };
    assert!(s.lease_cas(&LeaseCas { expected: None, new: lease(1, "a") }).await.unwrap());
    let rewind = RelayRequest::new(name, RequestKind::RewindToPosition { position: 5 }, "test");
    let replay = RelayRequest::new(name, RequestKind::ReplayAllParked, "test");
    s.request_submit(&rewind).await.unwrap();
    s.request_submit(&replay).await.unwrap();
    assert!(s.request_claim(&rewind, 1).await.unwrap(), "the holder claims");

    // "b" takes the lease over: epoch 2.
    assert!(s.lease_cas(&LeaseCas { expected: Some((1, 0)), new: lease(2, "b") }).await.unwrap());
    let done = serde_json::json!({ "rewound_to": 5 });
    assert!(
        !s.request_finish(name, rewind.id, 1, RequestStatus::Done, done.clone()).await.unwrap(),
        "a's outcome is refused"
    );
    assert!(!s.request_claim(&replay, 1).await.unwrap(), "a's late claim is refused");
    let r = s.request_get(rewind.id).await.unwrap().unwrap();
    assert_eq!((r.status, r.claimed_epoch), (RequestStatus::Running, Some(1)), "nothing recorded for a");

    let open = s.requests_open(name, 2).await.unwrap();
    assert_eq!(open.len(), 2, "b sees both: the one a claimed and the pending one");
    let mine = open.iter().find(|r| r.id == rewind.id).unwrap();
    assert!(s.request_claim(mine, 2).await.unwrap(), "b re-claims a's request");
    assert!(s.request_finish(name, rewind.id, 2, RequestStatus::Done, done).await.unwrap());
    let r = s.request_get(rewind.id).await.unwrap().unwrap();
    assert_eq!((r.status, r.claimed_epoch), (RequestStatus::Done, Some(2)));

    // A request left running by a former term of the same holder (epoch 2)
    // is open to the next term at epoch 2, which takes it over.
    assert!(s.request_claim(&replay, 2).await.unwrap());
    let left = s.requests_open(name, 2).await.unwrap().into_iter().find(|r| r.id == replay.id);
    let left = left.expect("a request running at the holder's own epoch is open to its next term");
    assert_eq!((left.status, left.claimed_epoch), (RequestStatus::Running, Some(2)));
    assert!(s.request_claim(&left, 2).await.unwrap(), "the next term of the same holder takes it over");
    assert!(s.request_finish(name, replay.id, 2, RequestStatus::Done, serde_json::json!({})).await.unwrap());
    assert!(!s.requests_open(name, 2).await.unwrap().iter().any(|r| r.id == replay.id), "done: no longer open");

    // Requests written in the same millisecond come out in id order (v7 ids
    // increase within a process): `{"all": true}` writes its two at once.
    let at = chrono::Utc::now();
    let mut same: Vec<RelayRequest> = (0..4)
        .map(|_| RelayRequest { created_at: at, ..RelayRequest::new(name, RequestKind::ReplayAllParked, "test") })
        .collect();
    for r in same.iter().rev() {
        s.request_submit(r).await.unwrap();
    }
    same.sort_by_key(|r| r.id);
    let open: Vec<Uuid> = s.requests_open(name, 2).await.unwrap().iter().map(|r| r.id).collect();
    let tied: Vec<Uuid> = open.into_iter().filter(|id| same.iter().any(|r| r.id == *id)).collect();
    assert_eq!(tied, same.iter().map(|r| r.id).collect::<Vec<_>>(), "ties by id, whatever the order written");
}

/// A discard's audit row is written once per (consumer, event id): a
/// discard carried out again after a crash keeps the first row; it is
/// found by (consumer, event id).
async fn discard_audit_row_once(s: DynStore) {
    use outboxd::store::parking::DiscardRecord;
    let event_id = Uuid::now_v7().to_string();
    let row = |reason: &str| DiscardRecord {
        consumer: "kafka-relay".into(),
        event_id: event_id.clone(),
        aggregate_id: Uuid::now_v7().to_string(),
        aggregate_type: Some("order".into()),
        sequence: Some(2),
        position: Some(7),
        event_type: Some("ItemsAdded".into()),
        payload: Some("{}".into()),
        error: "refused by the broker".into(),
        reason: reason.into(),
        discarded_at: chrono::Utc::now(),
    };
    s.record_discard(&row("first")).await.unwrap();
    s.record_discard(&row("again")).await.unwrap();
    let mut other = row("another consumer");
    other.consumer = "kafka-relay-2".into();
    s.record_discard(&other).await.unwrap();
    let rows = s.discards(100).await.unwrap();
    let mine: Vec<_> =
        rows.iter().filter(|d| d.event_id == event_id).map(|d| (d.consumer.as_str(), d.reason.as_str())).collect();
    assert_eq!(mine.len(), 2, "one row per consumer: {mine:?}");
    assert!(
        mine.contains(&("kafka-relay", "first")) && mine.contains(&("kafka-relay-2", "another consumer")),
        "{mine:?}"
    );
    // Read by consumer (a term's start), and by consumer and event id (a
    // taken-over discard), whatever other consumers' rows there are.
    let mut earlier = row("an earlier event");
    earlier.event_id = Uuid::now_v7().to_string();
    earlier.discarded_at -= chrono::Duration::seconds(5);
    s.record_discard(&earlier).await.unwrap();
    let of = |consumer: &'static str, event: Option<String>| {
        let s = s.clone();
        async move {
            let rows = s.discards_of(consumer, event.as_deref()).await.unwrap();
            rows.into_iter().map(|d| (d.consumer, d.reason)).collect::<Vec<_>>()
        }
    };
    let mine = |reason: &str| ("kafka-relay".to_string(), reason.to_string());
    assert_eq!(of("kafka-relay", None).await, vec![mine("first"), mine("an earlier event")], "newest first");
    assert_eq!(of("kafka-relay", Some(event_id.clone())).await, vec![mine("first")]);
    assert_eq!(of("kafka-relay-2", Some(event_id.clone())).await.len(), 1);
    assert!(of("kafka-relay-3", Some(event_id.clone())).await.is_empty(), "another consumer's discard");
    assert!(of("kafka-relay", Some(Uuid::now_v7().to_string())).await.is_empty(), "another event");
}

/// The backlog's age is the commit time of the oldest held event, not when
/// its aggregate was parked (CQL gave the park time: a relay an hour behind
/// when it parked reported an hour less lag).
async fn backlog_age_is_the_oldest_held_events_commit_time(s: DynStore) {
    use outboxd::store::parking::Parked;
    let consumer = format!("age-{}", Uuid::now_v7().simple());
    let agg = Uuid::now_v7();
    let committed = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut e = order_events(agg, 0, 1).remove(0);
    e.timestamp = committed;
    s.append(agg, 0, vec![e.clone()]).await.unwrap();
    let position = s.head_position().await.ok();
    s.park(&Parked {
        consumer: consumer.clone(),
        aggregate_id: agg.to_string(),
        aggregate_type: Some("Order".into()),
        position,
        sequence: Some(1),
        event_id: Some(e.event_id.to_string()),
        event_type: Some(e.event_type.clone()),
        error: "refused by the broker".into(),
        parked_at: chrono::Utc::now(),
    })
    .await
    .unwrap();
    let oldest = s.backlog(&consumer).await.unwrap().oldest.expect("a held event");
    assert_eq!(oldest.timestamp_millis(), committed.timestamp_millis(), "commit time, not park time");
}

/// A request read by (consumer, id), as the waiting admin routes and CLI
/// read it (CQL: one row of the consumer's partition; it scanned every
/// consumer's with ALLOW FILTERING, ten times a second per waiting client).
async fn request_read_by_consumer_and_id(s: DynStore) {
    use outboxd::store::requests::{RelayRequest, RequestKind};
    let consumer = format!("reqs-{}", Uuid::now_v7().simple());
    let r = RelayRequest::new(&consumer, RequestKind::ReplayAllParked, "test");
    s.request_submit(&r).await.unwrap();
    let got = s.request_get_of(&consumer, r.id).await.unwrap().expect("the row");
    assert_eq!((got.id, got.kind), (r.id, RequestKind::ReplayAllParked));
    assert!(s.request_get_of("another-consumer", r.id).await.unwrap().is_none(), "not another consumer's");
    assert!(s.request_get_of(&consumer, Uuid::now_v7()).await.unwrap().is_none());
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let Some((store, _guard)) = super::$backend().await else { return };
                        super::$name(store).await;
                    }
                };
            }
            case!(append_and_load);
            case!(conflict_on_stale_version);
            case!(conflict_on_too_high_version);
            case!(invalid_batches_are_refused);
            case!(failed_append_leaves_no_partial_rows);
            case!(eight_concurrent_writers);
            case!(checkpoints);
            case!(dead_letters);
            case!(snapshots);
            case!(fenced_parking);
            case!(fenced_requests);
            case!(discard_audit_row_once);
            case!(backlog_age_is_the_oldest_held_events_commit_time);
            case!(request_read_by_consumer_and_id);
        }
    };
}

suite!(sqlite);
suite!(cql);

// ---- SQLite-only properties ----

#[path = "store_suite/sqlite_only.rs"]
mod sqlite_only;
