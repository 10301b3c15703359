//! How the relay reads a transactional producer's refusal, against a real
//! broker: a producer fenced by a newer one with the same transactional id
//! is recognised as fenced (the term stands by), not as a fatal producer
//! error (a failed term, restarted with a growing backoff, /health error).

mod harness;

use harness::*;
use std::time::Duration;

use outboxd::relay::producer::{TxnError, TxnErrorKind};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn transactional(brokers: &str, id: &str) -> ThreadedProducer<DefaultProducerContext> {
    rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).set("transactional.id", id).create().unwrap()
}

/// Review finding: librdkafka reports the broker's fencing as its own
/// `__FENCED` code; only `PRODUCER_FENCED` and `INVALID_PRODUCER_EPOCH` were
/// matched, so a fenced zombie took the fatal path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_fenced_by_a_newer_one_is_recognised_as_fenced() {
    let Some(brokers) = shared_brokers() else { return };
    let topic = format!("t{}.fencing", uuid::Uuid::now_v7().simple());
    let id = format!("outboxd-fencing-{}", uuid::Uuid::now_v7().simple());
    let (b, t) = (brokers.clone(), topic.clone());
    let kind = tokio::task::spawn_blocking(move || {
        create_topic(&b, &t, 1, &[]);
        let old = transactional(&b, &id);
        old.init_transactions(Duration::from_secs(30)).unwrap();
        old.begin_transaction().unwrap();
        old.send(BaseRecord::to(&t).key("k").payload("old")).map_err(|(e, _)| e).unwrap();
        let new = transactional(&b, &id);
        new.init_transactions(Duration::from_secs(30)).unwrap();
        let refused = old.commit_transaction(Duration::from_secs(30)).expect_err("the old producer is fenced");
        TxnError::from_kafka(&refused).kind
    })
    .await
    .unwrap();
    assert_eq!(kind, TxnErrorKind::Fenced);
}
