//! Exactly-once, a real `outboxd run` against a real Kafka broker: a record
//! refused for good (over the topic's size limit) at the head of a large
//! transaction. The broker's refusal puts the transaction in an abortable
//! state while the rest is still being handed to the producer, so a later
//! send fails with an error that looks transient; the refused record must
//! still be found (its delivery report) and its aggregate parked, and the
//! rest published once, never the whole batch retried for ever.

mod harness;

use harness::*;
use std::time::Duration;
use uuid::Uuid;

/// Review finding: the send failure after the abortable state was taken as
/// a transient failure of the whole batch: the batch was retried after a
/// backoff, lost the same race each time, and the relay stalled with its
/// breaker flapping; the refused event was never found or parked.
#[test]
fn a_refused_record_at_the_head_of_a_large_transaction_is_parked() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(&brokers, dir.path());
    cfg.kafka.compression = outboxd::config::Compression::None;
    let topic = format!("{}order-events", cfg.kafka.topic_prefix);
    // Records up to 100 000 bytes, and batches at most half that (a batch
    // over the topic's limit is refused as a whole, whatever its records).
    create_topic(&brokers, &topic, cfg.kafka.partitions, &[("max.message.bytes", "100000")]);
    let file = dir.path().join("outboxd.toml");
    std::fs::write(&file, "[kafka.extra]\n\"batch.size\" = \"50000\"\n").unwrap();
    // The refused record first, then 20 000 small ones (200 orders x 100
    // events), all in one transaction.
    let big = Uuid::now_v7();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let head = rt.block_on(async {
        let store = open_store(&cfg).await;
        let mut env = order_events(big, 0, 1).remove(0);
        env.payload["note"] = serde_json::Value::String("x".repeat(150_000));
        store.append(big, 0, vec![env]).await.unwrap();
        for _ in 0..200 {
            let id = Uuid::now_v7();
            store.append(id, 0, order_events(id, 0, 100)).await.unwrap();
        }
        store.head_position().await.unwrap()
    });
    let consumer = format!("eos-{}", Uuid::now_v7().simple());
    let env = vec![
        ("OUTBOX_CONFIG", file.display().to_string()),
        ("OUTBOX_RELAY__DELIVERY", "exactly-once".to_string()),
        ("OUTBOX_RELAY__CONSUMER_NAME", consumer.clone()),
        ("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)),
        ("OUTBOX_RELAY__BATCH_SIZE", "25000".to_string()),
        ("OUTBOX_RELAY__TRANSACTION_MAX_EVENTS", "25000".to_string()),
        ("OUTBOX_RELAY__TRANSACTION_MAX_MS", "10000".to_string()),
        ("OUTBOX_RELAY__RETRY__INITIAL_BACKOFF_MS", "10".to_string()),
        ("OUTBOX_RELAY__RETRY__MAX_BACKOFF_MS", "50".to_string()),
        ("OUTBOX_KAFKA__LINGER_MS", "0".to_string()),
    ];
    let d = Daemon::start(&cfg, &env);
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while checkpoint(&cfg.store.path, &consumer) < head {
        if std::time::Instant::now() > until {
            let log = d.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            panic!(
                "checkpoint {} of {head} after 120 s; {} warnings, the last:\n{tail}",
                checkpoint(&cfg.store.path, &consumer),
                lines.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let parked =
        sqlite3(&cfg.store.path, &format!("SELECT aggregate_id FROM parked_aggregates WHERE consumer = '{consumer}'"));
    assert_eq!(parked.trim(), big.to_string(), "only the refused record's order is parked");
    // The checkpoint is at the head: read to the topic's end, so a copy
    // published after the originals is counted too.
    let records = consume_to_end(&brokers, std::slice::from_ref(&topic), Duration::from_secs(60));
    let mut ids: Vec<String> = records.iter().map(|r| r.event_id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((records.len(), ids.len()), (20_000, 20_000), "every other event, once");
    d.stop();
}
