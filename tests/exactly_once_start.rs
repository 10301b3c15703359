//! Exactly-once against a real Kafka broker and a SQLite store, the relay
//! library run in the test process: the start of a term (the progress read,
//! the store checkpoint it resumes with) and the per-record metrics of its
//! transactions. Own topics (prefix), consumer and store.

mod harness;

use harness::*;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::{Duration, Instant};
use uuid::Uuid;

use outboxd::relay::progress::{read_last, Progress};

/// A producer of the test's own records (not the relay's).
fn producer(brokers: &str, extra: &[(&str, &str)]) -> BaseProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

/// Appends progress records of `consumer` at positions `from..from + n` to `topic`.
fn fill(brokers: &str, topic: &str, consumer: &str, from: i64, n: i64) {
    // Large batches: the reader's kilobyte fetches below each bring one
    // whole batch, then wait librdkafka's fetch.queue.backoff.ms (1 s) as
    // its queue is over the limit: about one batch a second, whatever the
    // machine's speed, and the read moves at every fetch.
    let p = producer(
        brokers,
        &[("compression.type", "lz4"), ("linger.ms", "50"), ("batch.size", "1000000"), ("acks", "all")],
    );
    for position in from..from + n {
        let value = Progress { position, epoch: 1, committed_at: chrono::Utc::now(), cdc: None, replay: None };
        let bytes = value.to_bytes();
        let mut record = BaseRecord::to(topic).key(consumer).payload(&bytes);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// `read_last` of `topic`: its answer and how long it took.
async fn timed_read(
    k: &outboxd::config::KafkaConfig,
    topic: &str,
    consumer: &str,
    stall: Duration,
) -> (Result<Option<Progress>, outboxd::relay::PublishError>, Duration) {
    let t = Instant::now();
    let r = read_last(k, topic, consumer, stall).await;
    (r, t.elapsed())
}

/// Review finding: the progress read had a deadline for the whole read, and
/// each retry started again at offset 0: a progress topic that took longer
/// than that to read failed every attempt, and the exactly-once term never
/// started. A read that keeps moving is never cut off, however long it
/// takes in all; its bound is a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_progress_read_that_keeps_moving_is_not_cut_off() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(&brokers, &dir.path().join("s.db"));
    // Uncompacted (as versions before 2026-12-04 made it): every record stays.
    let topic = format!("{}progress", c.kafka.topic_prefix);
    let consumer = format!("eos-{}", Uuid::now_v7().simple());
    let (b, t) = (brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || create_topic(&b, &t, 1, &[])).await.unwrap();
    // The reader fetches a kilobyte at a time (as a slow link or a large
    // topic would make it): a modest topic takes seconds to read, every
    // fetch moving its position. Filled until a read takes over twice the
    // stall bound below (a machine much faster than this one needs more).
    let mut k = c.kafka.clone();
    for (key, value) in [("queued.max.messages.kbytes", "1"), ("max.partition.fetch.bytes", "1024")] {
        k.extra.insert(key.into(), value.into());
    }
    let stall = Duration::from_secs(5);
    let (mut written, mut took) = (0i64, Duration::ZERO);
    while took <= stall * 2 {
        assert!(written < 2_000_000, "{written} records still read in {took:?}");
        let n = if written == 0 { 20_000 } else { written };
        let (b, t, key) = (brokers.clone(), topic.clone(), consumer.clone());
        tokio::task::spawn_blocking(move || fill(&b, &t, &key, written + 1, n)).await.unwrap();
        written += n;
        let (r, elapsed) = timed_read(&k, &topic, &consumer, Duration::from_secs(120)).await;
        assert_eq!(r.unwrap().map(|p| p.position), Some(written));
        took = elapsed;
        eprintln!("{written} progress records read in {took:?}");
    }
    // With a stall bound of 5 s, the same read (over 10 s in all) succeeds:
    // it never stands still that long. Before, a deadline for the whole
    // read failed it, and every retry, the same way.
    let (r, elapsed) = timed_read(&k, &topic, &consumer, stall).await;
    let last = r.unwrap_or_else(|e| panic!("a read of {elapsed:?} that kept moving, stall bound {stall:?}: {e}"));
    assert_eq!(last.map(|p| p.position), Some(written), "the last record");
    eprintln!("read in {elapsed:?} with a stall bound of {stall:?}");
}

/// A read that stands still fails within its bound: a broker that hangs
/// (SIGSTOP: connections open, nothing answered) in the middle of the read,
/// and a broker that is not there. An open transaction of another writer
/// holds nothing back: read_committed, the end is its last stable offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_progress_read_that_stands_still_fails_within_its_bound() {
    let kafka = PrivateKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(&kafka.brokers, &dir.path().join("s.db"));
    let topic = format!("{}progress", c.kafka.topic_prefix);
    let consumer = format!("eos-{}", Uuid::now_v7().simple());
    let (b, t, k) = (kafka.brokers.clone(), topic.clone(), consumer.clone());
    let open = tokio::task::spawn_blocking(move || {
        create_topic(&b, &t, 1, &[]);
        // Small batches, so the reader below must fetch all along.
        let p = producer(&b, &[("batch.size", "2000"), ("linger.ms", "5")]);
        for position in 1..=50_000 {
            let v = Progress { position, epoch: 1, committed_at: chrono::Utc::now(), cdc: None, replay: None };
            let bytes = v.to_bytes();
            while p.send(BaseRecord::to(&t).key(&k).payload(&bytes)).is_err() {
                p.poll(Duration::from_millis(10));
            }
        }
        p.flush(Duration::from_secs(60)).unwrap();
        let txn = producer(&b, &[("transactional.id", &format!("open-{}", Uuid::now_v7())), ("linger.ms", "0")]);
        txn.init_transactions(Duration::from_secs(30)).unwrap();
        txn.begin_transaction().unwrap();
        txn.send(BaseRecord::to(&t).key("another").payload("open")).map_err(|(e, _)| e).unwrap();
        txn.flush(Duration::from_secs(30)).unwrap();
        txn
    })
    .await
    .unwrap();
    let stall = Duration::from_secs(2);
    let (r, _) = timed_read(&c.kafka, &topic, &consumer, Duration::from_secs(60)).await;
    assert_eq!(r.unwrap().map(|p| p.position), Some(50_000), "read to the open transaction");
    drop(open);

    // The reader fetches a kilobyte at a time; the broker hangs mid-read.
    for (key, value) in [("queued.max.messages.kbytes", "1"), ("max.partition.fetch.bytes", "1024")] {
        c.kafka.extra.insert(key.into(), value.into());
    }
    let read = tokio::spawn({
        let (k, topic, consumer) = (c.kafka.clone(), topic.clone(), consumer.clone());
        async move { timed_read(&k, &topic, &consumer, stall).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hung = kafka.hang();
    let hung_at = Instant::now();
    let (r, elapsed) = read.await.unwrap();
    let after = hung_at.elapsed();
    drop(hung);
    assert!(r.is_err(), "a read whose broker hangs after {elapsed:?}: {r:?}");
    // It ends (a bound on not hanging, generous for a loaded machine).
    assert!(after < stall + Duration::from_secs(60), "failed {after:?} after the broker hung, bound {stall:?}");

    let mut gone = c.kafka.clone();
    gone.brokers = "127.0.0.1:9".into();
    let (r, elapsed) = timed_read(&gone, &topic, &consumer, stall).await;
    assert!(r.is_err(), "no broker: {r:?}");
    assert!(elapsed < stall + Duration::from_secs(60), "failed after {elapsed:?}, bound {stall:?}");
}

/// Review finding: a term resumed from the committed progress but left the
/// store checkpoint where it was: after a commit whose checkpoint write was
/// lost (a crash right after it), the lag, the checkpoint gauge and /health
/// counted published events until the next commit, and a switch to
/// at-least-once published them again. A term moves it up at its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_term_moves_the_store_checkpoint_up_to_its_progress() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, store) = exactly_once_quick(&brokers, dir.path()).await;
    let name = c.relay.consumer_name.clone();
    for _ in 0..4 {
        let id = Uuid::now_v7();
        store.append(id, 0, order_events(id, 0, 5)).await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    relay.stop().await;
    assert_eq!(store.get_checkpoint(&name).await.unwrap(), Some(head));

    // The checkpoint write of the last commits lost; no new events.
    store.set_checkpoint(&name, 0).await.unwrap();
    let relay = start_relay(&c, store.clone());
    let until = Instant::now() + Duration::from_secs(60);
    while store.get_checkpoint(&name).await.unwrap() != Some(head) {
        assert!(
            Instant::now() < until,
            "store checkpoint {:?} 60 s after the start, progress {head}: {:?}",
            store.get_checkpoint(&name).await.unwrap(),
            *relay.status.borrow()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.metrics.relay_checkpoint_position.get(), head);
    assert_eq!(relay.status.borrow().checkpoint, Some(head));
    relay.stop().await;
    // Nothing was published again.
    let records = consume_all(&brokers, &topics(&c), head as usize + 1, Duration::from_secs(5));
    assert_eq!(records.len() as i64, head, "each event once");
}

/// The metrics of a relay's registry, parsed.
fn scrape(relay: &RunningRelay) -> harness::metrics::Metrics {
    harness::metrics::Metrics::parse(&relay.metrics.encode())
}

/// Review finding: exactly-once dropped the topic of each send, so
/// `messages_sent_total` ("messages handed to the Kafka producer") never
/// moved in that mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_counts_the_messages_it_hands_to_the_producer() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, store) = exactly_once_quick(&brokers, dir.path()).await;
    for _ in 0..6 {
        let id = Uuid::now_v7();
        store.append(id, 0, order_events(id, 0, 5)).await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    let m = scrape(&relay);
    let topic = format!("{}order-events", c.kafka.topic_prefix);
    assert!(m.value("messages_sent_total", &[]) >= head as f64, "{}", m.text);
    assert!(m.value("messages_sent_total", &[("topic", &topic)]) >= head as f64, "by its topic: {}", m.text);
    assert_eq!(m.value("messages_sent_total", &[("topic", &c.relay.progress_topic)]), 0.0, "not the progress records");
    relay.stop().await;
}

/// Review finding: exactly-once counted no failed publish attempt nor any
/// retry: a record the broker refuses (over the topic's
/// `max.message.bytes`) is resent alone and parked, and
/// `cdc_events_failed_total` and the retry counters say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_counts_a_refused_record_as_failed_and_retried() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, _topic, store) = exactly_once_small_topic(&brokers, dir.path()).await;
    let (big, small) = (Uuid::now_v7(), Uuid::now_v7());
    let mut env = order_events(big, 0, 1).remove(0);
    env.payload["note"] = serde_json::Value::String("x".repeat(10_000));
    store.append(big, 0, vec![env]).await.unwrap();
    store.append(small, 0, order_events(small, 0, 3)).await.unwrap();
    let head = store.head_position().await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    assert_eq!(store.parked(&c.relay.consumer_name).await.unwrap().len(), 1);
    let m = scrape(&relay);
    assert!(m.value("cdc_events_failed_total", &[("event_type", "OrderCreated")]) >= 1.0, "{}", m.text);
    let publish = [("operation", "publish")];
    assert!(m.value("retry_attempts_total", &publish) >= 1.0, "resent alone: {}", m.text);
    assert!(m.value("retry_failure_total", &publish) >= 1.0, "parked after its attempts: {}", m.text);
    assert!(m.value("messages_sent_total", &[]) >= 4.0, "{}", m.text);
    relay.stop().await;
}
