//! Operator requests on the Scylla CDC relay (`relay::cdc::requests`),
//! against real servers: the CQL store on Apache Cassandra (`CASSANDRA_URI`;
//! requests, park records and the event table are ordinary tables) and the
//! shared Kafka broker. The reader itself needs ScyllaDB; here the request
//! server drives the same delivery call and reconciling sink it uses.
//! Without either server the case prints SKIPPED. Rewinds: `cdc_rewind.rs`.

mod harness;

use harness::cdc_rig::*;
use harness::*;
use std::time::Duration;
use uuid::Uuid;

use outboxd::relay::cdc::reconciler::Handled;
use outboxd::shutdown::Trigger;
use outboxd::store::parking::ParkingStore;
use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus, RequestStore};
use outboxd::store::{DeadLetter, EventStore};

/// A dead letter holding `env`, as the relay writes one (no positions on CQL).
fn letter(env: &outboxd::envelope::EventEnvelope) -> DeadLetter {
    dead_letter(env, None)
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
    let park = park_record(&events[1], "message too large (message_size_too_large)");
    store.park(&park).await.unwrap();

    let (deliverer, rsink, mut server) = request_server(&cfg, &store).await;
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

    // Each read here follows a finished request (what it published was
    // confirmed): it goes to the topics' ends, so a copy published after the
    // originals shows in the sequences.
    let (b, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_to_end(&b, &ts, Duration::from_secs(30))).await.unwrap();
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
    store.park(&park_record(&b_events[0], &park.error)).await.unwrap();
    cli_request_done(&cfg, &cql, &["dlq", "replay", "--aggregate", &b.to_string()]).await;
    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_to_end(&bk, &ts, Duration::from_secs(30))).await.unwrap();
    let seqs: Vec<i64> = records.iter().filter(|r| r.key == b.to_string()).map(|r| r.sequence()).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert!(store.parked(RELAY).await.unwrap().is_empty());

    // A held row event_store cannot decode either: the replay fails naming
    // it before anything is published, and the aggregate stays parked.
    let c = Uuid::now_v7();
    let c_events = order_events(c, 0, 3);
    store.append(c, 0, c_events.clone()).await.unwrap();
    corrupt_payload(&store, c, 3).await;
    store.park(&park_record(&c_events[1], &park.error)).await.unwrap();
    let bad = RelayRequest::new(RELAY, RequestKind::ReplayAggregate { aggregate_id: c.to_string() }, "test");
    store.request_submit(&bad).await.unwrap();
    server.poll(&mut shutdown).await;
    let r = store.request_get(bad.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Failed);
    let why = r.result.unwrap()["error"].as_str().unwrap().to_string();
    assert!(why.contains(&format!("event {c}#3 cannot be decoded")) && why.contains("repair the row"), "{why}");
    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_to_end(&bk, &ts, Duration::from_secs(30))).await.unwrap();
    assert!(records.iter().all(|r| r.key != c.to_string()), "nothing of c was published");
    assert_eq!(store.parked(RELAY).await.unwrap().len(), 1, "c stays parked");

    // Review finding: a replay of every parked aggregate stopped at the
    // first one it could not replay (c, parked first), so d, parked after
    // it and replayable, was never tried, at every retry. d goes out now,
    // and c is named under `failed` (it stays parked), as on the position relay.
    let d = Uuid::now_v7();
    let d_events = order_events(d, 0, 2);
    store.append(d, 0, d_events.clone()).await.unwrap();
    store.park(&park_record(&d_events[0], &park.error)).await.unwrap();
    let all = RelayRequest::new(RELAY, RequestKind::ReplayAllParked, "test");
    store.request_submit(&all).await.unwrap();
    server.poll(&mut shutdown).await;
    let r = store.request_get(all.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Done, "{:?}", r.result);
    let result = r.result.unwrap();
    assert_eq!(result["unparked"], serde_json::json!([d.to_string()]), "{result}");
    assert_eq!(result["failed"][0]["aggregate_id"], c.to_string(), "{result}");
    assert!(result["failed"][0]["error"].as_str().unwrap().contains("cannot be decoded"), "{result}");
    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_to_end(&bk, &ts, Duration::from_secs(30))).await.unwrap();
    let seqs: Vec<i64> = records.iter().filter(|r| r.key == d.to_string()).map(|r| r.sequence()).collect();
    assert_eq!(seqs, vec![1, 2]);
    let parked: Vec<String> = store.parked(RELAY).await.unwrap().into_iter().map(|p| p.parked.aggregate_id).collect();
    assert_eq!(parked, vec![c.to_string()], "c alone stays parked");
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
    let (deliverer, _, mut server) = request_server(&cfg, &store).await;
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
    let records = tokio::task::spawn_blocking(move || consume_to_end(&bk, &ts, Duration::from_secs(30))).await.unwrap();
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
    let records = tokio::task::spawn_blocking(move || consume_to_end(&bk, &ts, Duration::from_secs(30))).await.unwrap();
    let c_seqs: Vec<i64> = records.iter().filter(|r| r.key == c.to_string()).map(|r| r.sequence()).collect();
    assert_eq!(c_seqs, vec![1, 2]);
    assert_eq!(store.dlq_count().await.unwrap(), 0);

    // A letter whose event still cannot be published (larger than the
    // broker takes) stays, and the request fails naming it.
    let d = Uuid::now_v7();
    let mut huge = order_events(d, 0, 1).remove(0);
    huge.payload = serde_json::json!({ "blob": "x".repeat(1_100_000) });
    let stuck = DeadLetter { error_message: "the first failure".into(), ..letter(&huge) };
    store.dlq_insert(stuck.clone()).await.unwrap();
    let again = RelayRequest::new(RELAY, RequestKind::ReplayDeadLetters { ids: Some(vec![stuck.id]) }, "test");
    store.request_submit(&again).await.unwrap();
    server.poll(&mut shutdown).await;
    let r = store.request_get(again.id).await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Failed, "{:?}", r.result);
    let result = r.result.unwrap();
    assert_eq!(result["id"], stuck.id.to_string(), "{result}");
    let left = store.dlq_list(10).await.unwrap();
    let kept = left.iter().find(|l| l.id == stuck.id).expect("the letter stays");
    assert!(kept.failure_count > stuck.failure_count, "its failures counted: {}", kept.failure_count);
    assert_ne!(kept.error_message, stuck.error_message, "its error is the new one");
    // Whatever the policy (park here), its aggregate is not parked: its
    // later events went out long ago and would be held behind an old one.
    assert!(store.parked(RELAY).await.unwrap().is_empty(), "nothing parked");
    assert!(!deliverer.is_parked(&d.to_string()));
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
    corrupt_payload(&store, e, 2).await;
    let poison = events[1].event_id.to_string();
    store.park(&park_record(&events[1], "unreadable: payload is not JSON")).await.unwrap();
    cli_request_done(&cfg, &cql, &["dlq", "discard", "--id", &poison, "--reason", "corrupt row, approved by ops"])
        .await;

    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_to_end(&bk, &ts, Duration::from_secs(30))).await.unwrap();
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
    let (_, _, mut server) = request_server(&cfg, &store).await;
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

/// A discard interrupted after its audit row (the marker never confirmed,
/// the request withdrawn): the aggregate stays parked at the event. A later
/// replay of the aggregate publishes the marker in the event's place, then
/// the held events; it published the discarded event as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_after_an_interrupted_discard_publishes_the_marker() {
    let Some(Rig { brokers, cfg, store, .. }) = Rig::start("CDC replay after an interrupted discard").await else {
        return;
    };
    let e = Uuid::now_v7();
    let events = order_events(e, 0, 3);
    store.append(e, 0, events.clone()).await.unwrap();
    let p = park_record(&events[1], "message too large (message_size_too_large)");
    store.park(&p).await.unwrap();
    let (record, _) = outboxd::relay::plan::discard_of(RELAY, &p, None, &events[1].event_id.to_string(), "bad");
    store.record_discard(&record).await.unwrap();

    let (_, _, mut server) = request_server(&cfg, &store).await;
    let trigger = Trigger::new();
    let replay = RelayRequest::new(RELAY, RequestKind::ReplayAggregate { aggregate_id: e.to_string() }, "test");
    store.request_submit(&replay).await.unwrap();
    server.poll(&mut trigger.subscribe()).await;
    let done = store.request_get(replay.id).await.unwrap().unwrap();
    assert_eq!(done.status, RequestStatus::Done, "{:?}", done.result);

    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_to_end(&bk, &ts, Duration::from_secs(10))).await.unwrap();
    let mine: Vec<_> = records.iter().filter(|r| r.key == e.to_string()).collect();
    let types: Vec<(i64, &str)> = mine.iter().map(|r| (r.sequence(), r.headers["ce_type"].as_str())).collect();
    assert_eq!(types.len(), 2, "{types:?}");
    assert_eq!(types[0], (2, "outboxd.EventDiscarded"), "the marker, not the discarded event");
    assert_eq!(types[1].0, 3);
    assert!(store.parked(RELAY).await.unwrap().is_empty(), "the park record is gone");
}

/// A replay of named dead letters taken over from an executor that
/// replayed and removed the first one: the second is replayed and the
/// request done (it failed, "some of the given dead letters do not exist").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_over_replay_of_named_letters_finishes_the_rest() {
    let Some(Rig { brokers, cfg, store, .. }) = Rig::start("CDC taken-over letter replay").await else { return };
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let (a1, b1) = (order_events(a, 0, 1), order_events(b, 0, 1));
    store.append(a, 0, a1.clone()).await.unwrap();
    store.append(b, 0, b1.clone()).await.unwrap();
    let (la, lb) = (letter(&a1[0]), letter(&b1[0]));
    store.dlq_insert(la.clone()).await.unwrap();
    store.dlq_insert(lb.clone()).await.unwrap();
    let replay = RelayRequest::new(RELAY, RequestKind::ReplayDeadLetters { ids: Some(vec![la.id, lb.id]) }, "t");
    store.request_submit(&replay).await.unwrap();
    assert!(store.request_claim(&replay, 0).await.unwrap(), "claimed by the former executor");
    assert!(store.dlq_remove(la.id).await.unwrap(), "which replayed the first letter");
    let (_, _, mut server) = request_server(&cfg, &store).await;
    let trigger = Trigger::new();
    server.poll(&mut trigger.subscribe()).await;
    let done = store.request_get(replay.id).await.unwrap().unwrap();
    assert_eq!(done.status, RequestStatus::Done, "{:?}", done.result);
    assert_eq!(store.dlq_count().await.unwrap(), 0, "the second letter was replayed and removed");
    let (bk, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_to_end(&bk, &ts, Duration::from_secs(10))).await.unwrap();
    assert_eq!(records.iter().map(|r| r.event_id()).collect::<Vec<_>>(), vec![lb.event_id.to_string()]);
}

/// A request already running under this server's epoch (its claim landed
/// but the answer was lost, or a former server at this epoch stopped) is
/// claimed again and carried out at the next poll, not left running until
/// the lease moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_running_at_this_epoch_is_carried_out() {
    let Some(Rig { cfg, store, .. }) = Rig::start("CDC request left running at this epoch").await else { return };
    let (_, _, mut server) = request_server(&cfg, &store).await;
    let trigger = Trigger::new();
    let mut shutdown = trigger.subscribe();
    let r = RelayRequest::new(RELAY, RequestKind::RewindToPosition { position: 0 }, "test");
    store.request_submit(&r).await.unwrap();
    assert!(store.request_claim(&r, 0).await.unwrap(), "the claim landed; its server never heard");
    server.poll(&mut shutdown).await;
    let row = store.request_get(r.id).await.unwrap().unwrap();
    assert_eq!(row.status, RequestStatus::Failed, "{:?}", row.result);
    let why = row.result.unwrap()["error"].as_str().unwrap().to_string();
    assert!(why.starts_with("--to-position rewinds a position feed"), "{why}");
    // Review finding: a replay or discard whose former executor removed the
    // park record and stopped before recording the outcome was failed for
    // work that was done ("not parked"): recorded done.
    let gone = Uuid::now_v7().to_string();
    let discarded = order_events(Uuid::now_v7(), 0, 1).remove(0);
    let audit = outboxd::store::parking::DiscardRecord {
        consumer: RELAY.into(),
        event_id: discarded.event_id.to_string(),
        aggregate_id: discarded.aggregate_id.to_string(),
        aggregate_type: Some("order".into()),
        sequence: Some(1),
        position: None,
        event_type: Some(discarded.event_type.clone()),
        payload: None,
        error: "too large".into(),
        reason: "bad import".into(),
        discarded_at: chrono::Utc::now(),
    };
    store.record_discard(&audit).await.unwrap();
    let kinds = [
        RequestKind::ReplayAggregate { aggregate_id: gone },
        RequestKind::Discard { event_id: discarded.event_id.to_string(), reason: "bad import".into() },
    ];
    for kind in kinds {
        let r = RelayRequest::new(RELAY, kind, "test");
        store.request_submit(&r).await.unwrap();
        assert!(store.request_claim(&r, 0).await.unwrap());
        server.poll(&mut shutdown).await;
        let row = store.request_get(r.id).await.unwrap().unwrap();
        assert_eq!(row.status, RequestStatus::Done, "{:?}", row.result);
        assert_eq!(row.result.unwrap()["note"], "carried out before a restart");
    }
    // A discard with no audit row never was: carried out now, it fails (nothing parked behind it).
    let never = RelayRequest::new(
        RELAY,
        RequestKind::Discard { event_id: Uuid::now_v7().to_string(), reason: "bad import".into() },
        "test",
    );
    store.request_submit(&never).await.unwrap();
    assert!(store.request_claim(&never, 0).await.unwrap());
    server.poll(&mut shutdown).await;
    let row = store.request_get(never.id).await.unwrap().unwrap();
    assert_eq!(row.status, RequestStatus::Failed, "{:?}", row.result);
}

/// The CLI carrying a request out on the CDC relay (no relay running) loses
/// the relay lease to another instance in the middle of it, while its broker
/// does not answer: its delivery, retrying, ends with the lease; it neither
/// withdraws the request nor gives up, but leaves it to the new holder,
/// which re-claims it and carries it out; and the CLI reports that outcome
/// (exit 0). The held events reach the topic once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_leaves_a_request_to_the_instance_that_took_its_lease() {
    use outboxd::store::lease::{Lease, LeaseCas, LeaseStore};
    let Some(Rig { brokers, cfg, cql, store, .. }) = Rig::start("CDC request: the CLI loses its lease").await else {
        return;
    };
    let a = Uuid::now_v7();
    let events = order_events(a, 0, 3);
    store.append(a, 0, events.clone()).await.unwrap();
    store.park(&park_record(&events[0], "message too large (message_size_too_large)")).await.unwrap();

    let mut down = cfg.clone();
    down.kafka.brokers = format!("127.0.0.1:{}", free_port());
    let args = ["dlq", "replay", "--aggregate", &a.to_string(), "--timeout", "90"];
    let mut cmd = cli_command(&down, &cql, &args);
    cmd.env("OUTBOX_RELAY__LEASE_TTL_MS", "3000");
    let cli = tokio::task::spawn_blocking(move || cmd.output().unwrap());

    // The CLI holds the lease and has claimed the request under it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (lease, request) = loop {
        let lease = store.lease_get(RELAY).await.unwrap().filter(|l| !l.holder.is_empty());
        let running = store.requests_open(RELAY, i64::MAX).await.unwrap();
        if let (Some(l), Some(r)) = (lease, running.into_iter().find(|r| r.status == RequestStatus::Running)) {
            assert_eq!(r.claimed_epoch, Some(l.epoch), "claimed under the CLI's lease");
            break (l, r);
        }
        assert!(std::time::Instant::now() < deadline, "the CLI never claimed the request");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Another instance takes the lease over (as after the CLI's TTL ran out).
    let mut seen = lease;
    let epoch = loop {
        let new = Lease { holder: "another-instance".into(), epoch: seen.epoch + 1, counter: 0, ..seen.clone() };
        if store.lease_cas(&LeaseCas { expected: Some((seen.epoch, seen.counter)), new }).await.unwrap() {
            break seen.epoch + 1;
        }
        seen = store.lease_get(RELAY).await.unwrap().unwrap(); // renewed meanwhile
    };
    let taken_at = std::time::Instant::now();
    let trigger = Trigger::new();
    outboxd::relay::cdc::requests::serve_once(store.clone(), &cfg, epoch, trigger.subscribe()).await.unwrap();
    let r = store.request_get(request.id).await.unwrap().unwrap();
    assert_eq!((r.status, r.claimed_epoch), (RequestStatus::Done, Some(epoch)), "{:?}", r.result);

    let out = cli.await.unwrap();
    // Its delivery ended with the lease (a TTL), not at its --timeout.
    assert!(taken_at.elapsed() < Duration::from_secs(60), "the CLI ran on after losing its lease");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("\"status\":\"done\"") && !said.contains("withdrawn"), "{said}");
    let (b, ts) = (brokers.clone(), topics(&cfg));
    let records = tokio::task::spawn_blocking(move || consume_to_end(&b, &ts, Duration::from_secs(30))).await.unwrap();
    let seqs: Vec<i64> = records.iter().filter(|r| r.key == a.to_string()).map(|r| r.sequence()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert!(store.parked(RELAY).await.unwrap().is_empty(), "the park record is gone");
}
