//! Operator requests on the Scylla CDC relay (`relay::cdc::requests`) when
//! the CQL store fails in the middle of one, against real servers (the CQL
//! store on Apache Cassandra, `CASSANDRA_URI`, and the shared Kafka broker;
//! without either the case prints SKIPPED). The failures are the store's
//! fault seam (`store::faults`, armed per named operation) or, for the read
//! of the park rows, a column the table lacks for a while.
//!
//! Guarantee checked: each error leaves the request in a truthful state
//! (failed with the error in its result, or running until its outcome is
//! recorded, never done for work that was not), the park records and dead
//! letters as the outcome says, the topic holding what was confirmed, and
//! the same server carries out the next request correctly.

mod harness;

use harness::cdc_rig::*;
use harness::*;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use outboxd::relay::cdc::requests::CdcRequests;
use outboxd::relay::deliver::Deliverer;
use outboxd::shutdown::{Shutdown, Trigger};
use outboxd::store::cql::CqlStore;
use outboxd::store::faults::{StoreFaults, AGGREGATE_ROWS, DLQ_REMOVE, REQUEST_FINISH, UNPARK};
use outboxd::store::parking::ParkingStore;
use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus, RequestStore};
use outboxd::store::EventStore;

/// The rig, the request server over it (made after the parks `setup`
/// writes: its delivery call loads them) and the store's fault seam.
struct Case {
    rig: Rig,
    deliverer: Arc<Deliverer>,
    server: CdcRequests,
    faults: Arc<StoreFaults>,
    _trigger: Trigger,
    shutdown: Shutdown,
}

impl Case {
    /// `None` (SKIPPED) without the servers; `setup` writes events and parks.
    async fn start(what: &str, setup: impl AsyncFnOnce(&Arc<CqlStore>)) -> Option<Case> {
        let rig = Rig::start(what).await?;
        setup(&rig.store).await;
        let (deliverer, _, server) = request_server(&rig.cfg, &rig.store).await;
        let faults = rig.store.faults().expect("the CQL store has the fault seam");
        let trigger = Trigger::new();
        let shutdown = trigger.subscribe();
        Some(Case { rig, deliverer, server, faults, _trigger: trigger, shutdown })
    }

    /// Submits a request of `kind`, polls the server once, returns the row.
    async fn request(&mut self, kind: RequestKind) -> RelayRequest {
        let r = RelayRequest::new(RELAY, kind, "test");
        self.rig.store.request_submit(&r).await.expect("submit a request");
        self.server.poll(&mut self.shutdown).await;
        self.row(r.id).await
    }

    async fn row(&self, id: Uuid) -> RelayRequest {
        self.rig.store.request_get(id).await.expect("read the request").expect("the request row exists")
    }

    async fn parked(&self) -> Vec<String> {
        let parked = self.rig.store.parked(RELAY).await.expect("read the park records");
        parked.into_iter().map(|p| p.parked.aggregate_id).collect()
    }

    /// The records on the topics so far, as (key, sequence, ce_id).
    async fn published(&self) -> Vec<(String, i64, String)> {
        let (b, ts) = (self.rig.brokers.clone(), topics(&self.rig.cfg));
        let records = tokio::task::spawn_blocking(move || consume_to_end(&b, &ts, Duration::from_secs(30)))
            .await
            .expect("read the topics");
        records.iter().map(|r| (r.key.clone(), r.sequence(), r.event_id())).collect()
    }

    /// The sequences of `agg` on the topics, in order.
    async fn sequences(&self, agg: Uuid) -> Vec<i64> {
        self.published().await.into_iter().filter(|(k, ..)| *k == agg.to_string()).map(|(_, s, _)| s).collect()
    }
}

/// A failed request's error, with its row for the message when it is not one.
fn failed_with(r: &RelayRequest, wanted: &str) -> serde_json::Value {
    assert_eq!(r.status, RequestStatus::Failed, "{:?}", r.result);
    let result = r.result.clone().expect("a failed request has a result");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.contains(wanted), "wanted {wanted:?} in {result}");
    result
}

fn done(r: &RelayRequest) -> serde_json::Value {
    assert_eq!(r.status, RequestStatus::Done, "{:?}", r.result);
    r.result.clone().expect("a done request has a result")
}

/// Appends `n` events of a new order and parks it at `parked_at` (1-based),
/// a millisecond at least after the park before (parks go oldest first).
async fn parked_order(store: &Arc<CqlStore>, n: usize, parked_at: usize) -> Uuid {
    tokio::time::sleep(Duration::from_millis(2)).await;
    let a = Uuid::now_v7();
    let events = order_events(a, 0, n);
    store.append(a, 0, events.clone()).await.expect("append");
    let park = park_record(&events[parked_at - 1], "message too large (message_size_too_large)");
    store.park(&park).await.expect("park");
    a
}

fn replay(a: Uuid) -> RequestKind {
    RequestKind::ReplayAggregate { aggregate_id: a.to_string() }
}

/// The read of an aggregate's held rows fails: the replay fails naming the
/// aggregate before anything is published, and the aggregate stays parked;
/// a replay of every parked aggregate stops there (the store failing ends
/// it; the aggregate parked after it is not tried), and a discard fails
/// before its audit row. The same server then replays both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_read_of_held_rows_fails_the_request_and_keeps_the_parks() {
    let (mut a, mut b) = (Uuid::nil(), Uuid::nil());
    let setup = async |s: &Arc<CqlStore>| {
        a = parked_order(s, 4, 2).await;
        b = parked_order(s, 2, 1).await;
    };
    let Some(mut c) = Case::start("CDC request: held rows unreadable", setup).await else { return };

    c.faults.fail_next(AGGREGATE_ROWS, 1);
    let r = c.request(replay(a)).await;
    let result = failed_with(&r, "injected aggregate_rows failure");
    assert_eq!(result["aggregate_id"], a.to_string(), "{result}");
    assert_eq!(c.faults.armed(AGGREGATE_ROWS), 0, "the fault fired");
    assert_eq!(c.parked().await, vec![a.to_string(), b.to_string()], "both stay parked");
    assert!(c.deliverer.is_parked(&a.to_string()), "the relay still holds a");

    c.faults.fail_next(AGGREGATE_ROWS, 1);
    let r = c.request(RequestKind::ReplayAllParked).await;
    let result = failed_with(&r, "injected aggregate_rows failure");
    assert_eq!(result["aggregate_id"], a.to_string(), "{result}");
    assert_eq!(result["unparked"], serde_json::json!([]), "{result}");
    assert_eq!(c.parked().await.len(), 2, "b was not tried");

    let parks = c.rig.store.parked(RELAY).await.expect("read the park records");
    let b_park = parks.into_iter().find(|p| p.parked.aggregate_id == b.to_string()).expect("b is parked");
    let b_event = b_park.parked.event_id.expect("b's park record names its event");
    c.faults.fail_next(AGGREGATE_ROWS, 1);
    let r = c.request(RequestKind::Discard { event_id: b_event, reason: "bad".into() }).await;
    failed_with(&r, "injected aggregate_rows failure");
    assert!(c.rig.store.discards(10).await.expect("audit rows").is_empty(), "no audit row written");
    assert_eq!(c.parked().await.len(), 2);
    assert!(c.published().await.is_empty(), "nothing was published");

    // The fault spent: the same server replays both, each held event once.
    let result = done(&c.request(RequestKind::ReplayAllParked).await);
    assert_eq!(result["unparked"], serde_json::json!([a.to_string(), b.to_string()]), "{result}");
    assert_eq!(result["events"], 5, "{result}");
    assert_eq!(c.sequences(a).await, vec![2, 3, 4]);
    assert_eq!(c.sequences(b).await, vec![1, 2]);
    assert!(c.parked().await.is_empty(), "the park records are gone");
}

/// The park record cannot be removed after the held events were confirmed:
/// the unpark is retried (a store that answers on the third try: done), and
/// when it keeps failing the request fails saying the events were published
/// and the record stays; the aggregate stays parked (record and relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpark_that_keeps_failing_fails_the_replay_and_the_park_stays() {
    let mut a = Uuid::nil();
    let setup = async |s: &Arc<CqlStore>| a = parked_order(s, 3, 1).await;
    let Some(mut c) = Case::start("CDC request: unpark fails", setup).await else { return };

    c.faults.fail_next(UNPARK, 5);
    let r = c.request(replay(a)).await;
    let result = failed_with(&r, "published 3 events but cannot remove the park record");
    assert!(result["error"].as_str().unwrap_or_default().contains("injected unpark failure"), "{result}");
    assert_eq!(result["aggregate_id"], a.to_string(), "{result}");
    assert_eq!(c.faults.armed(UNPARK), 0, "every one of the 5 tries failed");
    assert_eq!(c.parked().await, vec![a.to_string()], "the park record stays");
    assert!(c.deliverer.is_parked(&a.to_string()), "the relay still holds the aggregate");
    assert_eq!(c.sequences(a).await, vec![1, 2, 3], "what was confirmed is on the topic");

    // Two failures, then the removal lands: done. The held events go out
    // again (the record said they were still held): duplicates by ce_id.
    c.faults.fail_next(UNPARK, 2);
    let result = done(&c.request(replay(a)).await);
    assert_eq!(result["events"], 3, "{result}");
    assert_eq!(c.faults.armed(UNPARK), 0, "retried past both failures");
    assert!(c.parked().await.is_empty(), "the park record is gone");
    assert!(!c.deliverer.is_parked(&a.to_string()));
    assert_eq!(c.sequences(a).await, vec![1, 2, 3, 1, 2, 3]);
}

/// A dead letter whose event was confirmed but which cannot be removed
/// stays in the queue (it may be replayed again, as logged); the request
/// goes on with the next letter and is done. A later replay of that letter
/// publishes it again and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_letter_that_cannot_be_removed_stays_and_the_rest_goes_on() {
    let Some(mut c) = Case::start("CDC request: dead letter removal fails", async |_| {}).await else { return };
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let (ea, eb) = (order_events(a, 0, 1), order_events(b, 0, 1));
    c.rig.store.append(a, 0, ea.clone()).await.expect("append");
    c.rig.store.append(b, 0, eb.clone()).await.expect("append");
    let (la, lb) = (dead_letter(&ea[0], None), dead_letter(&eb[0], None));
    c.rig.store.dlq_insert(la.clone()).await.expect("dead letter");
    c.rig.store.dlq_insert(lb.clone()).await.expect("dead letter");

    // Letters go in (aggregate, sequence) order: a's first, whose removal fails.
    c.faults.fail_next(DLQ_REMOVE, 1);
    let result = done(&c.request(RequestKind::ReplayDeadLetters { ids: Some(vec![la.id, lb.id]) }).await);
    assert_eq!(result["replayed"], 2, "{result}");
    assert_eq!(c.faults.armed(DLQ_REMOVE), 0, "the fault fired");
    let left: Vec<Uuid> = c.rig.store.dlq_list(10).await.expect("dead letters").iter().map(|l| l.id).collect();
    assert_eq!(left, vec![la.id], "a's letter stays, b's is removed");
    let ids: Vec<String> = c.published().await.into_iter().map(|(.., id)| id).collect();
    assert_eq!(ids, vec![la.event_id.to_string(), lb.event_id.to_string()]);

    let result = done(&c.request(RequestKind::ReplayDeadLetters { ids: Some(vec![la.id]) }).await);
    assert_eq!(result["replayed"], 1, "{result}");
    assert_eq!(c.rig.store.dlq_count().await.expect("dead letters"), 0, "removed this time");
    assert_eq!(c.sequences(a).await, vec![1, 1], "a's event went out again");
}

/// The store does not take a request's outcome (five tries): the request
/// stays running with its work done (the park record gone, the events on
/// the topic once), the next request of the same poll is carried out (its
/// outcome recorded on a retry), and the next poll records the kept
/// outcome instead of carrying the request out again. The serving loop
/// (`serve_requests`) then goes through the same failure and still stops
/// at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_the_store_does_not_take_is_recorded_later_never_carried_out_twice() {
    let (mut a, mut b, mut d) = (Uuid::nil(), Uuid::nil(), Uuid::nil());
    let setup = async |s: &Arc<CqlStore>| {
        a = parked_order(s, 2, 1).await;
        b = parked_order(s, 2, 1).await;
        d = parked_order(s, 2, 1).await;
    };
    let Some(mut c) = Case::start("CDC request: outcome not recorded", setup).await else { return };

    // Five failures for a's outcome, the sixth on b's first try.
    c.faults.fail_next(REQUEST_FINISH, 6);
    let (ra, rb) = (RelayRequest::new(RELAY, replay(a), "test"), RelayRequest::new(RELAY, replay(b), "test"));
    c.rig.store.request_submit(&ra).await.expect("submit");
    c.rig.store.request_submit(&rb).await.expect("submit");
    c.server.poll(&mut c.shutdown).await;
    let row = c.row(ra.id).await;
    assert_eq!((row.status, &row.result), (RequestStatus::Running, &None), "not recorded, not reported done");
    let result = done(&c.row(rb.id).await);
    assert_eq!(result["unparked"], serde_json::json!([b.to_string()]), "the next request went on: {result}");
    assert_eq!(c.faults.armed(REQUEST_FINISH), 0, "every failure fired");
    assert_eq!(c.parked().await, vec![d.to_string()], "a's replay was carried out");
    c.server.poll(&mut c.shutdown).await;
    let result = done(&c.row(ra.id).await);
    assert_eq!(result["unparked"], serde_json::json!([a.to_string()]), "the outcome kept: {result}");
    assert_eq!(c.sequences(a).await, vec![1, 2], "published once: not carried out again");
    assert_eq!(c.sequences(b).await, vec![1, 2]);

    // The loop itself: the same failure on d's replay, recorded at a later
    // poll; then shutdown ends the loop.
    let Case { rig, server, faults, .. } = c;
    faults.fail_next(REQUEST_FINISH, 5);
    let rd = RelayRequest::new(RELAY, replay(d), "test");
    rig.store.request_submit(&rd).await.expect("submit");
    let stop = Trigger::new();
    let serving = tokio::spawn(outboxd::relay::cdc::requests::serve_requests(
        server,
        Duration::from_millis(200),
        stop.subscribe(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let row = loop {
        let row = rig.store.request_get(rd.id).await.expect("read the request").expect("the request row exists");
        if row.status == RequestStatus::Done || std::time::Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(row.status, RequestStatus::Done, "the loop recorded d's outcome: {:?}", row.result);
    assert_eq!(faults.armed(REQUEST_FINISH), 0);
    assert!(rig.store.parked(RELAY).await.expect("read the park records").is_empty());
    stop.fire();
    let ended = tokio::time::timeout(Duration::from_secs(10), serving).await;
    ended.expect("the loop stops at shutdown").expect("the loop did not panic");
    let (bk, ts) = (rig.brokers.clone(), topics(&rig.cfg));
    let records = tokio::task::spawn_blocking(move || consume_to_end(&bk, &ts, Duration::from_secs(30)))
        .await
        .expect("read the topics");
    let seqs: Vec<i64> = records.iter().filter(|r| r.key == d.to_string()).map(|r| r.sequence()).collect();
    assert_eq!(seqs, vec![1, 2], "d published once");
}

/// The park rows cannot be read (here: the table lacks a column the read
/// names, an error of the cluster itself): a replay of every parked
/// aggregate, and of one, fails with the error; one taken over running
/// (whose former executor may have carried it out) stays running, to be
/// taken again; nothing is published and the park stays. Once the table
/// answers, the same server carries the taken-over replay out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_read_of_the_park_rows_fails_the_replay() {
    let mut a = Uuid::nil();
    let setup = async |s: &Arc<CqlStore>| a = parked_order(s, 2, 2).await;
    let Some(mut c) = Case::start("CDC request: park rows unreadable", setup).await else { return };
    let table = format!("{}.parked_aggregates", c.rig.store.keyspace());
    let alter = async |c: &Case, change: &str| {
        let q = format!("ALTER TABLE {table} {change}");
        c.rig.store.session().query_unpaged(q.clone(), ()).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    };

    alter(&c, "DROP error").await;
    let r = c.request(RequestKind::ReplayAllParked).await;
    failed_with(&r, "cannot read the parked aggregates");
    let r = c.request(replay(a)).await;
    let result = failed_with(&r, "list parked aggregates");
    assert_eq!(result["aggregate_id"], a.to_string(), "{result}");
    let taken = RelayRequest::new(RELAY, replay(a), "test");
    c.rig.store.request_submit(&taken).await.expect("submit");
    assert!(c.rig.store.request_claim(&taken, 0).await.expect("claim"), "claimed by a former executor");
    c.server.poll(&mut c.shutdown).await;
    let row = c.row(taken.id).await;
    assert_eq!((row.status, &row.result), (RequestStatus::Running, &None), "whether it was carried out is unknown");
    alter(&c, "ADD error text").await;

    assert_eq!(c.parked().await, vec![a.to_string()], "the park record stays");
    assert!(c.published().await.is_empty(), "nothing was published");
    c.server.poll(&mut c.shutdown).await;
    let result = done(&c.row(taken.id).await);
    assert_eq!(result["unparked"], serde_json::json!([a.to_string()]), "taken again and carried out: {result}");
    assert_eq!(c.sequences(a).await, vec![2]);
    assert!(c.parked().await.is_empty());
}
