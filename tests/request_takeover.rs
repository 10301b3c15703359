//! Operator requests left running by a former relay term of the same lease
//! holder (a term that ended on a store or producer error in the middle of
//! one; the next term runs under the same epoch): the running term takes
//! them over and carries them out, in both delivery modes, instead of
//! leaving them `running` until the lease changes hands. A real `outboxd
//! run` against real Kafka; the orphan is the row such a term leaves,
//! written with `sqlite3` at the holder's epoch.

mod harness;

use harness::*;
use std::time::Duration;
use uuid::Uuid;

fn orphan_is_taken_over(delivery: &str) {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&brokers, dir.path());
    let mut env = vec![("OUTBOX_RELAY__DELIVERY", delivery.to_string())];
    if delivery == "exactly-once" {
        env.push(("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)));
    }
    let d = Daemon::start(&cfg, &env);
    create_order(&d, Uuid::now_v7(), "TAKEOVER-1");
    caught_up(&d);
    let db = &cfg.store.path;
    let lease = sqlite3(db, "SELECT epoch || '|' || name FROM relay_leases WHERE name = 'kafka-relay'");
    let (epoch, consumer) = lease.trim().split_once('|').expect("the relay holds its lease");
    let request = |kind: &str, status: &str| {
        let id = Uuid::now_v7();
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // As `outboxd dlq`/`relay` submit one (pending, unclaimed) or as a term leaves it.
        let claimed = if status == "pending" { "NULL" } else { epoch };
        sqlite3(
            db,
            &format!(
                "INSERT INTO relay_requests (id, consumer, kind, status, requested_by, created_at, claimed_epoch) \
                 VALUES ('{id}', '{consumer}', '{kind}', '{status}', 'a former term', '{at}', {claimed})"
            ),
        );
        eventually(Duration::from_secs(20), "the running term to take the request over", || {
            let v = d.admin("GET", &format!("/relay/requests/{id}")).json()["request"].clone();
            (v["status"] != "running" && v["status"] != "pending").then_some(v)
        })
    };
    let orphan = |kind: &str| request(kind, "running");
    let done = orphan(r#"{"kind":"replay_all_parked"}"#);
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["claimed_epoch"].as_i64(), epoch.parse().ok(), "under the same epoch: {done}");
    assert_eq!(done["result"]["replayed_aggregates"], 0, "{done}");
    // Review finding: a replay (or discard) whose former executor removed
    // the park record and stopped before recording the outcome was failed
    // ("not parked") for work that was done; exactly-once recorded it done.
    let gone = Uuid::now_v7();
    let done = orphan(&format!(r#"{{"kind":"replay_aggregate","aggregate_id":"{gone}"}}"#));
    assert_eq!(
        (&done["status"], &done["result"]["note"]),
        (&"done".into(), &"carried out before a restart".into()),
        "{done}"
    );
    // A discard counts as carried out only with its audit row written (and
    // nothing parked behind its event); without one it never was: failed.
    let never = orphan(&format!(r#"{{"kind":"discard","event_id":"{}","reason":"bad import"}}"#, Uuid::now_v7()));
    assert_eq!(never["status"], "failed", "{never}");
    let discarded = Uuid::now_v7();
    sqlite3(
        db,
        &format!(
            "INSERT INTO discarded_events (consumer, event_id, aggregate_id, error, reason, discarded_at) \
             VALUES ('{consumer}', '{discarded}', '{}', 'too large', 'bad import', '2026-12-07T00:00:00.000Z')",
            Uuid::now_v7()
        ),
    );
    let done = orphan(&format!(r#"{{"kind":"discard","event_id":"{discarded}","reason":"bad import"}}"#));
    assert_eq!(
        (&done["status"], &done["result"]["note"]),
        (&"done".into(), &"carried out before a restart".into()),
        "{done}"
    );
    // Review finding: a request taken over running was counted again in
    // `relay_requests_total` (its first executor counted it), so a sum
    // over instances counted it twice. Only a request started anew counts.
    let counted = |kind: &str| d.metrics().sample("relay_requests_total", &[("kind", kind)]);
    for kind in ["replay_all_parked", "replay_aggregate", "discard"] {
        assert_eq!(counted(kind), 0.0, "{kind}: the orphans were started by a former term");
    }
    let done = request(r#"{"kind":"replay_all_parked"}"#, "pending");
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(counted("replay_all_parked"), 1.0, "a request this term started");
    d.stop();
}

#[test]
fn a_request_left_running_by_a_former_term_is_taken_over_at_least_once() {
    orphan_is_taken_over("at-least-once");
}

#[test]
fn a_request_left_running_by_a_former_term_is_taken_over_exactly_once() {
    orphan_is_taken_over("exactly-once");
}

/// A rewind carried out whose outcome the store would not take (five tries
/// by the request server, then one at each poll), then the relay actor
/// restarts (its task ended; the lease keeper, which outlives restarts,
/// keeps the epoch): the restarted relay records the kept outcome instead
/// of carrying the request out again. Each spawn made its own empty
/// `Unsaved`, so the request, still running at that epoch, was claimed and
/// the whole feed re-published a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_kept_across_a_relay_restart_is_recorded_not_carried_out_again() {
    use outboxd::actors::{ActorDeps, Leases, RelayBody, TaskBody};
    use outboxd::store::faults::REQUEST_FINISH;
    use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus};
    use outboxd::store::sqlite::SqliteStore;
    use outboxd::store::DynStore;
    use std::sync::Arc;
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let consumer = c.relay.consumer_name.clone();
    let sqlite = SqliteStore::open(&c.store.path, c.store.sqlite.clone()).await.unwrap();
    let store: DynStore = sqlite.clone();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    store.append(a, 0, order_events(a, 0, 2)).await.unwrap();
    store.append(b, 0, order_events(b, 0, 1)).await.unwrap();
    let trigger = outboxd::shutdown::Trigger::new();
    let metrics = outboxd::metrics::Metrics::new();
    let keeper = outboxd::lease::keeper::spawn(
        sqlite.clone(),
        &consumer,
        "restarting-instance",
        Duration::from_secs(30),
        metrics.clone(),
        Default::default(),
        trigger.subscribe(),
    );
    let deps = ActorDeps::new(c.clone(), store.clone(), metrics.clone(), tokio::runtime::Handle::current())
        .with_leases(Leases { relay: Some(keeper), ..Leases::default() });
    let mut body = RelayBody::new(Arc::new(store.clone()));
    let task = tokio::spawn(body.spawn(&deps, trigger.subscribe()).unwrap());
    let caught_up = || async {
        tokio::time::timeout(Duration::from_secs(60), async {
            while store.get_checkpoint(&consumer).await.unwrap().unwrap_or(0) < 3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the relay reaches the head");
    };
    caught_up().await;
    let faults = store.faults().expect("the SQLite store has the fault seam");
    // Refused until the restart: five tries by the request server, then one
    // per poll by the terms after the rewind's.
    faults.fail_next(REQUEST_FINISH, 1_000);
    let rewind = RelayRequest::new(&consumer, RequestKind::RewindToPosition { position: 0 }, "test");
    store.request_submit(&rewind).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        while faults.armed(REQUEST_FINISH) > 1_000 - 6 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the rewind was carried out and its outcome refused six times");
    // Re-published (an abort before would re-send the unconfirmed ones).
    caught_up().await;
    // The actor restarts: the task ends, the body spawns the next one.
    task.abort();
    if let Err(e) = task.await {
        assert!(e.is_cancelled(), "the relay task panicked before the restart: {e}");
    }
    faults.fail_next(REQUEST_FINISH, 0);
    let row = store.request_get(rewind.id).await.unwrap().unwrap();
    assert_eq!(row.status, RequestStatus::Running, "not recorded before the restart: {row:?}");
    let task = tokio::spawn(body.spawn(&deps, trigger.subscribe()).unwrap());
    let finished = request_finished(&store, rewind.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    assert_eq!(finished.claimed_epoch, row.claimed_epoch, "recorded at the same epoch");
    caught_up().await;
    // Each event on the topic twice: its first delivery and the one rewind.
    let records = consume_all(&brokers, &topics(&c), usize::MAX, Duration::from_secs(8));
    let mut copies = std::collections::HashMap::<String, usize>::new();
    for r in &records {
        *copies.entry(r.event_id()).or_default() += 1;
    }
    assert_eq!(copies.len(), 3, "{copies:?}");
    assert!(copies.values().all(|n| *n == 2), "one rewind, not two: {copies:?}");
    assert_eq!(metrics.relay_rewinds.get(), 1, "carried out once");
    trigger.fire();
    let end = tokio::time::timeout(Duration::from_secs(30), task).await.expect("the relay task ends at shutdown");
    end.expect("the relay task did not panic").expect("the relay term ends cleanly at shutdown");
}
