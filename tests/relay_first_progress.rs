//! A relay term persists its first confirmed progress at once (later ones
//! every 200 ms while busy): a relay that dies soon after it took over (a
//! crash loop, a quick second failover) has still moved the checkpoint past
//! what it delivered, so its successor does not publish that backlog again.
//! Against the shared Kafka broker; the daemon is aborted at an armed crash
//! point (`OUTBOXD_ABORT_AT=after_first_progress`: the first persist call of
//! the term that finds confirmed progress, whether it wrote or not). An
//! exactly-once term never takes a progress topic that answers with an
//! error for one without a record.

mod harness;

use harness::sqlite::{checkpoint, head};
use harness::*;
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

#[test]
fn a_relay_that_dies_right_after_its_first_deliveries_has_moved_the_checkpoint() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&brokers, dir.path());
    let (db, consumer) = (cfg.store.path.clone(), cfg.relay.consumer_name.clone());

    // A backlog, stored while no broker answers: nothing is delivered.
    let mut offline = cfg.clone();
    offline.kafka.brokers = "127.0.0.1:1".into();
    let d = Daemon::start(&offline, &[]);
    for i in 0..30 {
        create_order(&d, Uuid::now_v7(), &format!("BACKLOG-{i}"));
    }
    d.stop();
    let stored_head = head(&db);
    assert_eq!((checkpoint(&db, &consumer), stored_head), (0, 30));

    // The relay takes over the backlog and dies at its first progress.
    let env = [fault_injection(), ("OUTBOXD_ABORT_AT", "after_first_progress".to_string())];
    let mut d = Daemon::spawn(&cfg, &env);
    let status = d.wait_exit(Duration::from_secs(60)).expect("the daemon aborts at the armed crash point");
    assert!(!status.success(), "{status:?}");
    assert!(d.log_text().contains("aborting at an armed crash point"), "{}", d.log_text());
    let moved = checkpoint(&db, &consumer);
    assert!(moved > 0 && moved <= stored_head, "the first progress is persisted: checkpoint {moved}");

    // What the checkpoint covers is on the topic.
    let covered: HashSet<String> = harness::sqlite::sqlite3(
        &db,
        &format!("SELECT event_id FROM event_store WHERE position <= {moved} ORDER BY position"),
    )
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(covered.len() as i64, moved);
    let records = consume_until(&brokers, &topics(&cfg), covered.len(), Duration::from_secs(20), |rs| {
        covered.is_subset(&rs.iter().map(|r| r.event_id()).collect())
    });
    let on_topic: HashSet<String> = records.iter().map(|r| r.event_id()).collect();
    assert!(covered.is_subset(&on_topic), "every event the checkpoint covers was delivered");

    // Without the crash point the next term goes on from there to the head.
    let d = Daemon::start(&cfg, &[]);
    assert_eq!(caught_up(&d), stored_head);
    assert_all_on_topic(&brokers, &d);
    d.stop();
}

/// Review finding: the progress topic answering with an error (unknown,
/// leader not available, not authorised: no partitions) was read as "no
/// progress record", so an exactly-once term started from the store's
/// checkpoint, which trails the progress, and published committed batches
/// again. It is no answer: the term retries the read.
#[tokio::test]
async fn a_progress_topic_that_answers_with_an_error_is_no_answer() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    let missing = format!("{}never-created-progress", c.kafka.topic_prefix);
    let read = outboxd::relay::progress::read_last(&c.kafka, &missing, "eos-x", Duration::from_secs(5)).await;
    assert!(read.as_ref().is_err_and(|e| e.transient), "{read:?}");
    // An existing topic without a record of this consumer is no record.
    let topic = format!("{}progress", c.kafka.topic_prefix);
    let (b, t) = (brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || create_topic(&b, &t, 1, &[])).await.unwrap();
    // (Right after its creation the topic may still have no leader: an
    // error, retried, as the relay does.)
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let read = loop {
        match outboxd::relay::progress::read_last(&c.kafka, &topic, "eos-x", Duration::from_secs(5)).await {
            Err(e) if e.transient && std::time::Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            read => break read,
        }
    };
    assert!(matches!(read, Ok(None)), "{read:?}");
}
