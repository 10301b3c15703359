//! Operator requests from the CLI when no relay runs (the CLI carries them
//! out itself under the relay lease): one it gives up on, interrupted by
//! SIGINT or past its `--timeout` while Kafka is unreachable, is withdrawn
//! (recorded failed, "cancelled: ...") before the lease is released, so no
//! relay carries it out later; the next request, with Kafka back, is done.
//! One still pending when its `--timeout` runs out beside a lease whose
//! holder died is withdrawn too. One that names nothing parked is refused
//! before it is written.
//! `dlq replay --all`'s two requests share one `--timeout`. A replay done
//! without replaying all it chose exits 1 and names what it left.

mod harness;

use harness::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn rows(db: &Path) -> Vec<(String, String)> {
    let out = sqlite3(db, "SELECT status || '|' || COALESCE(result, '') FROM relay_requests ORDER BY created_at");
    out.lines().map(|l| l.split_once('|').map(|(a, b)| (a.to_string(), b.to_string())).unwrap()).collect()
}

fn lease_holder(db: &Path) -> Option<String> {
    let out = sqlite3(db, "SELECT holder FROM relay_leases WHERE name = 'kafka-relay'");
    out.lines().next().map(str::to_string)
}

#[test]
fn a_request_the_cli_gives_up_on_is_withdrawn_and_never_carried_out_later() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let up = test_config(&brokers, &db);
    // Nothing listens there: topic creation retries for as long as it runs.
    let mut down = up.clone();
    down.kafka.brokers = format!("127.0.0.1:{}", free_port());
    assert_eq!(cli(&up, &["schema"]).0, 0);

    // 1. Interrupted (SIGINT) while it retries: exit 130, withdrawn, lease released.
    let child = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["relay", "rewind", "--to-position", "0"])
        .envs(config_env(&down))
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "the CLI to take the relay lease", || {
        lease_holder(&db).filter(|h| h.starts_with("cli@"))
    });
    std::thread::sleep(Duration::from_secs(1)); // into the retry loop
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted: request") && err.contains("withdrawn"), "{err}");
    assert_eq!(rows(&db), vec![("failed".into(), r#"{"error":"cancelled: the CLI was interrupted"}"#.into())]);
    assert_eq!(lease_holder(&db).as_deref(), Some(""), "the lease is released");

    // 2. Past --timeout: exit 1, withdrawn.
    let (code, _, err) = cli(&down, &["relay", "rewind", "--to-position", "0", "--timeout", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("out of time: request") && err.contains("withdrawn"), "{err}");
    let r = rows(&db);
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].0, "failed");
    assert!(r[1].1.contains("cancelled: not done within the CLI's --timeout (2s)"), "{r:?}");

    // 3. Kafka back: the next request is carried out (the checkpoint moves
    // back: the CLI's own term recorded the rewind done without moving it);
    // the withdrawn ones stay failed.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("INSERT OR REPLACE INTO checkpoints (consumer, position, updated_at) VALUES ('kafka-relay', 5, '2026-12-06T00:00:00Z')", [])
        .unwrap();
    let (code, out, err) = cli(&up, &["relay", "rewind", "--to-position", "0"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""status":"done""#), "{out}");
    assert_eq!(checkpoint(&db, "kafka-relay"), 0, "the checkpoint moved back");
    let r = rows(&db);
    assert_eq!(r.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), vec!["failed", "failed", "done"], "{r:?}");

    // 4. A replay or discard of nothing parked: exit 2 naming the flag, no request written.
    for (args, needle) in [
        (
            vec!["dlq", "replay", "--aggregate", "notauuid", "--no-progress"],
            "--aggregate: \"notauuid\" is not a parked aggregate",
        ),
        (vec!["dlq", "discard", "--id", "x", "--reason", "bad row"], "--id: \"x\" is not the first held event"),
    ] {
        let (code, _, err) = cli(&up, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle) && err.trim().lines().count() == 1, "{args:?}: {err}");
    }
    assert_eq!(rows(&db).len(), 3, "nothing written");
}

/// Review finding: a request still pending when `--timeout` ran out was
/// left pending when the lease row named a holder (a daemon killed -9,
/// its lease not expired): no relay claimed it, the CLI exited 1, and the
/// next `outboxd run`, maybe days later, rewound (or discarded) what the
/// operator had given up on. It is withdrawn, as on an interrupt.
#[test]
fn a_request_no_relay_claims_within_the_timeout_is_withdrawn() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let cfg = test_config(&brokers, &db);
    assert_eq!(cli(&cfg, &["schema"]).0, 0);
    // A holder that died a moment ago: its lease runs for another 10 s.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    sqlite3(
        &db,
        &format!("INSERT INTO relay_leases (name, holder, epoch, counter, ttl_ms, renewed_at) VALUES ('kafka-relay', 'dead:1:1', 1, 1, 10000, '{now}')"),
    );
    let (code, _, err) = cli(&cfg, &["relay", "rewind", "--to-position", "0", "--timeout", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("out of time: request") && err.contains("withdrawn"), "{err}");
    let r = rows(&db);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, "failed", "{r:?}");
    assert!(r[0].1.contains("cancelled: not done within the CLI's --timeout (2s)"), "{r:?}");
}

/// Review finding: `dlq replay --all` gave each of its two requests the
/// whole `--timeout`: out of time on the first (Kafka unreachable), it
/// waited as long again on the second. One deadline covers both: the first
/// is withdrawn when it passes, the second is never submitted. The CLI says
/// that it could not reach the brokers (it only said "withdrawn").
#[test]
fn dlq_replay_all_waits_at_most_its_timeout_for_both_requests() {
    use outboxd::store::DeadLetter;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    // Nothing listens there: the CLI's relay term retries until it gives up.
    let down = test_config(&format!("127.0.0.1:{}", free_port()), &db);
    assert_eq!(cli(&down, &["schema"]).0, 0);
    // One parked aggregate and one dead letter: both requests have work.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = open_store(&down).await;
        let order = uuid::Uuid::now_v7();
        let events = order_events(order, 0, 2);
        store.append(order, 0, events.clone()).await.unwrap();
        let mut parked = order_parked_at(&down.relay.consumer_name, order, 2);
        parked.aggregate_type = Some(events[1].aggregate_type.clone());
        store.park(&parked).await.unwrap();
        let now = chrono::Utc::now();
        let letter = DeadLetter {
            id: uuid::Uuid::now_v7(),
            position: Some(1),
            event_id: events[0].event_id,
            aggregate_id: order,
            event_type: events[0].event_type.clone(),
            payload: serde_json::to_string(&events[0]).unwrap(),
            error_message: "refused".into(),
            failure_count: 1,
            first_failed_at: now,
            last_failed_at: now,
            created_at: now,
        };
        store.dlq_insert(letter).await.unwrap();
    });
    let (code, _, err) = cli(&down, &["dlq", "replay", "--all", "--no-progress", "--timeout", "3"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("out of time: request") && err.contains("withdrawn"), "{err}");
    assert!(err.contains("--timeout (3s) ran out before the dead letters' replay was submitted"), "{err}");
    assert!(err.contains(&format!("could not publish to kafka.brokers ({})", down.kafka.brokers)), "{err}");
    let r = rows(&db);
    assert_eq!(r.len(), 1, "only the first request was written: {r:?}");
    assert!(r[0].1.contains("cancelled: not done within the CLI's --timeout (3s)"), "{r:?}");
}

/// Walkthrough finding: `dlq replay --all` with nothing parked and no dead
/// letter, no relay running and the brokers unreachable, submitted both
/// requests and waited its whole `--timeout` (600 s by default) to end
/// "withdrawn", exit 1. It submits nothing and exits 0 (a submitted request
/// would wait out the 30 s here and exit 1).
#[test]
fn dlq_replay_all_with_nothing_to_replay_submits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let down = test_config(&format!("127.0.0.1:{}", free_port()), &db);
    assert_eq!(cli(&down, &["schema"]).0, 0);
    let (code, _, err) = cli(&down, &["dlq", "replay", "--all", "--no-progress", "--timeout", "30"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("0 parked aggregates (0 held events) and 0 dead letters before"), "{err}");
    assert!(rows(&db).is_empty(), "no request written: {:?}", rows(&db));
}

/// Review finding: the CLI's own relay term (no relay running) can end
/// before reaching its request: here an older rewind, left running by a
/// relay that died, is taken over first and ends the term (a rewind moves
/// the checkpoint back at the term's end). The CLI then waited its whole
/// `--timeout` on its pending request with no relay, and withdrew it. It
/// runs another term while its request is still pending.
#[test]
fn the_cli_carries_its_request_out_after_a_term_an_older_request_ended() {
    use outboxd::store::requests::{RelayRequest, RequestKind};
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let cfg = test_config(&brokers, &db);
    let order = uuid::Uuid::now_v7();
    let consumer = cfg.relay.consumer_name.clone();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = open_store(&cfg).await;
        let events = order_events(order, 0, 2);
        store.append(order, 0, events.clone()).await.unwrap();
        let mut parked = order_parked_at(&consumer, order, 2);
        parked.aggregate_type = Some(events[1].aggregate_type.clone());
        store.park(&parked).await.unwrap();
        store.set_checkpoint(&consumer, 2).await.unwrap();
        let rewind = RelayRequest::new(&consumer, RequestKind::RewindToPosition { position: 1 }, "a dead relay");
        store.request_submit(&rewind).await.unwrap();
        assert!(store.request_claim(&rewind, 1).await.unwrap(), "left running by the relay at epoch 1");
    });
    let (code, out, err) =
        cli(&cfg, &["dlq", "replay", "--aggregate", &order.to_string(), "--no-progress", "--timeout", "30"]);
    assert_eq!(code, 0, "{out}{err}");
    let r = rows(&db);
    assert_eq!(r.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["done", "done"], "{r:?}");
    let parked = sqlite3(&db, "SELECT COUNT(*) FROM parked_aggregates");
    assert_eq!(parked.trim(), "0", "the aggregate was replayed");
}

/// Review finding: `dlq replay --id` of a dead letter whose stored payload
/// is not an event was recorded done having replayed nothing, and the CLI
/// printed "done" and exited 0. It exits 1, stderr naming the letter.
#[test]
fn a_replay_done_without_replaying_its_letter_exits_1_and_names_it() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let cfg = test_config(&brokers, &db);
    let letters = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = open_store(&cfg).await;
        seeded_letters(&store, true).await
    });
    let broken = letters[1].id.to_string();
    let (code, out, err) = cli(&cfg, &["dlq", "replay", "--id", &broken, "--no-progress", "--timeout", "30"]);
    assert_eq!(code, 1, "{out}{err}");
    let done: serde_json::Value = serde_json::from_str(out.trim()).expect("the outcome on stdout is JSON");
    assert_eq!(done["status"], "done", "{done}");
    assert!(err.contains("done, but not all of it: 1 not replayed") && err.contains(&broken), "{err}");
    let (code, out, err) = cli(&cfg, &["dlq", "replay", "--id", &letters[0].id.to_string(), "--no-progress"]);
    assert_eq!(code, 0, "the good letter is replayed: {out}{err}");
}

/// Operator walkthrough: `relay rewind --to-position` past the last stored
/// event wrote a request the relay then failed ("must be between 0 and the
/// checkpoint"). It is refused before anything is written, exit 2.
#[test]
fn a_rewind_past_the_last_event_is_refused_before_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let down = test_config(&format!("127.0.0.1:{}", free_port()), &db);
    assert_eq!(cli(&down, &["customer", "register", "--name", "Ada", "--email", "ada@example.com"]).0, 0);
    let (code, _, err) = cli(&down, &["relay", "rewind", "--to-position", "2", "--timeout", "30"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--to-position 2: beyond the last event in the store (position 1)"), "{err}");
    assert!(rows(&db).is_empty(), "no request written: {:?}", rows(&db));
}
