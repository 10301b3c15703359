//! `relay rewind --to-time` on the Scylla CDC relay (`relay::cdc::rewind`),
//! against real servers: the relay's saved CDC progress lives in
//! `relay_leases`, an ordinary table, so Apache Cassandra (`CASSANDRA_URI`)
//! stands in; the shared Kafka broker takes what is published again. The
//! reader itself needs ScyllaDB (`tests/cdc_adapter.rs` has the end-to-end
//! case for `make integration-test`). Without either server the case
//! prints SKIPPED.

mod harness;

use harness::cdc_rig::*;
use harness::*;
use std::time::Duration;
use uuid::Uuid;

use outboxd::relay::cdc::reconciler::Handled;
use outboxd::relay::cdc::requests::Rewinder;
use outboxd::relay::cdc::rewind::{self, rewind_progress, rfc3339};
use outboxd::shutdown::Trigger;
use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus, RequestStore};
use outboxd::store::EventStore;

/// `outboxd relay rewind --to-time T` on the CQL backend with no relay
/// running: the CLI takes the lease and lowers every stream published past
/// T, and the generation's floor, to T (a reader started afterwards loads
/// them); a stream already behind T keeps its progress. A time before the
/// generation, in the future, past the CDC log TTL or behind no stream is
/// refused with the reason and changes nothing; so is a rewind by position;
/// and a former lease holder's rewind is fenced.
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
        (now - 25 * 60 * MIN, "older than the CDC log TTL (86400 s)"),
        (to, "no stream has been published past it"),
    ] {
        let (code, out) = cli_request(&cfg, &cql, &["relay", "rewind", "--to-time", &rfc3339(t)]).await;
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(why), "{why}: {out}");
    }
    let (code, out) = cli_request(&cfg, &cql, &["relay", "rewind", "--to-position", "0"]).await;
    assert_eq!(code, Some(2), "refused by the CLI at once, naming the flag: {out}");
    assert!(out.contains("use --to-time"), "{out}");
    assert_eq!(saved_times(&store, &[1, 2, 3]).await, after, "a refused rewind changes nothing");

    // The CLI held the lease at epoch >= 1: a saver of epoch 0 is a former holder's.
    let stale = progress_saver(&store, Some(0)).await;
    let err = rewind_progress(&stale, now - 55 * MIN, LOG_TTL).await.unwrap_err();
    assert_eq!(err, "another instance holds the relay lease");
    assert_eq!(stale.progress().loaded(&stream(1)), Some(to), "nor keeps it in memory");
    assert_eq!(saved_times(&store, &[1, 2, 3]).await, after, "a fenced rewind writes nothing");
}

/// A rewind to a time before the current CDC generation goes into the
/// generation in effect then (looked up as scylla-cdc looks it up; here in
/// a table of the shape of Scylla's `cdc_generation_timestamps`, which
/// Cassandra does not have): that generation is current again, read from T
/// (its floor), and the later generation's stream rows are deleted, so
/// scylla-cdc reads the later generation from its start when it gets there.
/// A reader started afterwards loads exactly that; a former lease holder's
/// rewind changes nothing. A second rewind, before any of that generation
/// is published again, is checked against its floor: within it, the floor
/// goes back; before it, into the generation before. Without the table
/// (Cassandra's own system tables) the CLI refuses it with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewind_into_an_earlier_generation_makes_it_current_from_then() {
    let Some(Rig { cfg, cql, store, .. }) = Rig::start("CDC relay rewind into an earlier generation").await else {
        return;
    };
    let now = chrono::Utc::now().timestamp_millis();
    let (g0, g1) = (now - 300 * MIN, now - 120 * MIN);
    seed_progress(&store, g1, g1, &[(1, now - 30 * MIN), (2, now - 20 * MIN)]).await;
    let to = now - 200 * MIN;
    let (code, out) = cli_request(&cfg, &cql, &["relay", "rewind", "--to-time", &rfc3339(to)]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("before the current CDC generation") && out.contains("cannot be read"), "{out}");

    let (session, ks) = (store.session(), store.keyspace().to_string());
    let table = format!("{ks}.cdc_generation_timestamps");
    let create = format!(
        "CREATE TABLE {table} (key text, time timestamp, expired timestamp, PRIMARY KEY (key, time)) \
         WITH CLUSTERING ORDER BY (time DESC)"
    );
    session.query_unpaged(create, ()).await.unwrap();
    for t in [now - 500 * MIN, g0, g1] {
        let insert = format!("INSERT INTO {table} (key, time) VALUES ('timestamps', ?)");
        session.query_unpaged(insert, (scylla::value::CqlTimestamp(t),)).await.unwrap();
    }
    // The CLI took the lease (epoch >= 1): a saver of epoch 0 is a former holder's.
    let stale = progress_saver(&store, Some(0)).await;
    let err = rewind::rewind_progress_with(&stale, to, LOG_TTL, &table).await.unwrap_err();
    assert_eq!(err, "another instance holds the relay lease");
    assert_eq!(stale.progress().generation(), Some(g1), "nor keeps it in memory");
    assert_eq!(saved_times(&store, &[1, 2]).await, (vec![Some(now - 30 * MIN), Some(now - 20 * MIN)], Some(g1)));

    let saver = progress_saver(&store, None).await;
    let done = rewind::rewind_progress_with(&saver, to, LOG_TTL, &table).await.unwrap();
    assert_eq!(done["streams"], 2, "{done}");
    assert_eq!(done["generation"], rfc3339(g0), "{done}");
    assert_eq!(done["rewound_from"], rfc3339(now - 20 * MIN), "{done}");
    assert_eq!(saved_times(&store, &[1, 2]).await, (vec![None, None], Some(to)), "rows gone, the floor at T");
    let reader = progress_saver(&store, None).await;
    assert_eq!((reader.generation_ms(), reader.floor_ms(), reader.oldest_progress_ms()), (Some(g0), Some(to), None));
    // Nothing of the earlier generation is published again yet: a rewind
    // is checked against its floor (no need to wait for progress).
    let err = rewind::rewind_progress_with(&saver, to, LOG_TTL, &table).await.unwrap_err();
    assert!(err.contains(&format!("no stream has been published past it (progress is at {})", rfc3339(to))), "{err}");
    // Further back within it, through the CLI as an operator would: the floor goes back.
    let to2 = now - 250 * MIN;
    let (code, out) = cli_request(&cfg, &cql, &["relay", "rewind", "--to-time", &rfc3339(to2)]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"streams\":0") && out.contains(&format!("\"rewound_from\":\"{}\"", rfc3339(to))), "{out}");
    assert!(!out.contains("\"generation\""), "within the generation: {out}");
    let reader = progress_saver(&store, None).await;
    assert_eq!((reader.generation_ms(), reader.floor_ms(), reader.oldest_progress_ms()), (Some(g0), Some(to2), None));
    // And into the generation before it.
    let to3 = now - 400 * MIN;
    let done = rewind::rewind_progress_with(&reader, to3, LOG_TTL, &table).await.unwrap();
    assert_eq!((done["streams"].clone(), done["generation"].clone()), (0.into(), rfc3339(now - 500 * MIN).into()));
    let reader = progress_saver(&store, None).await;
    assert_eq!((reader.generation_ms(), reader.floor_ms()), (Some(now - 500 * MIN), Some(to3)));
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
    server.rewind = Rewinder { saver: feed.clone(), log_ttl: LOG_TTL, runner: Some(tx) };
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
