//! Exactly-once parking against a real Kafka broker, the relay library run
//! in the test process: a batch in which an aggregate's first event is
//! refused by the broker (over the topic's `max.message.bytes`) and its
//! second fails at once in the client (over the producer's
//! `message.max.bytes`) parks the aggregate at its first event, never the
//! second; a page of held events only is not counted as a transaction; the
//! operator's replay then publishes every held event once, in order, and
//! reports how many it committed; a replay of every parked aggregate names
//! each one parked again. Own topics (prefix), consumer and store.

mod harness;

use harness::*;
use std::time::Duration;
use uuid::Uuid;

use outboxd::store::requests::RequestStatus;

/// An order event of `agg` at `seq` whose payload carries `pad` bytes more.
fn padded(agg: Uuid, seq: i64, pad: usize) -> outboxd::envelope::EventEnvelope {
    let mut env = order_events(agg, seq - 1, 1).remove(0);
    if pad > 0 {
        env.payload["note"] = serde_json::Value::String("x".repeat(pad));
    }
    env
}

/// `relay_transactions_total{outcome="committed"}`.
fn committed(relay: &RunningRelay) -> u64 {
    relay.metrics.relay_transactions.with_label_values(&["committed"]).get()
}

/// Review finding: the client's refusal of B2 (Permanent([B2]) at its send)
/// committed the prefix, where the broker refused B1 and B was parked at
/// B1; then B2 was resent alone anyway and parked, and the park moved
/// forward to B2: B1 was never published, a replay started at B2.
/// Review finding too: a page of held events only (no Kafka transaction)
/// counted as a committed transaction, and the replay's result said
/// `{"events": 0}` whatever it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_later_refusal_never_moves_the_park_forward() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The order topic takes records up to 6000 bytes; the producer up to 20 000.
    let (mut c, topic, store) = exactly_once_small_topic(&brokers, dir.path()).await;
    c.kafka.extra.insert("message.max.bytes".into(), "20000".into());
    c.kafka.extra.insert("batch.size".into(), "20000".into());
    let (a, b, d) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store.append(a, 0, vec![padded(a, 1, 0)]).await.unwrap();
    // B1 ~10 KB: refused by the broker; B2 ~30 KB: refused by the client.
    store.append(b, 0, vec![padded(b, 1, 10_000)]).await.unwrap();
    let b1 = store.head_position().await.unwrap();
    store.append(b, 1, vec![padded(b, 2, 30_000)]).await.unwrap();
    store.append(b, 2, vec![padded(b, 3, 0)]).await.unwrap();
    store.append(d, 0, vec![padded(d, 1, 0)]).await.unwrap();
    let head = store.head_position().await.unwrap();

    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    let parked = store.parked(&c.relay.consumer_name).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].parked.aggregate_id, b.to_string());
    assert_eq!(parked[0].parked.position, Some(b1), "parked at B1, the first event never published: {parked:?}");

    // A page of B's events only: held, the checkpoint moves, no transaction.
    let before = committed(&relay);
    store.append(b, 3, vec![padded(b, 4, 0)]).await.unwrap();
    let head = store.head_position().await.unwrap();
    relay.wait_checkpoint(head, Duration::from_secs(30)).await;
    assert_eq!(committed(&relay), before, "a page of held events only is not a committed transaction");
    relay.stop().await;

    // Limits raised: the operator's replay publishes B1..B4, once, in order.
    let (bk, t) = (brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || alter_topic(&bk, &t, "max.message.bytes", "100000")).await.unwrap();
    c.kafka.extra.insert("message.max.bytes".into(), "100000".into());
    c.kafka.extra.insert("batch.size".into(), "100000".into());
    let relay = start_relay(&c, store.clone());
    let replay = replay_of(&c.relay.consumer_name, b);
    store.request_submit(&replay).await.unwrap();
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Done, "{:?}", finished.result);
    assert_eq!(finished.result.as_ref().unwrap()["events"], 4, "the replay's committed events: {:?}", finished.result);
    assert!(store.parked(&c.relay.consumer_name).await.unwrap().is_empty(), "unparked");
    relay.stop().await;

    let records = tokio::task::spawn_blocking(move || {
        consume_until(&brokers, std::slice::from_ref(&topic), 6, Duration::from_secs(5), |_| false)
    })
    .await
    .unwrap();
    assert_eq!(sequences_of(&records, b), ["1", "2", "3", "4"], "B's events once each, in order (read_committed)");
    assert_eq!(sequences_of(&records, a), ["1"]);
    assert_eq!(sequences_of(&records, d), ["1"]);
}

/// Review finding: an exactly-once replay of every parked aggregate goes on
/// past one parked again, but its result named only the last of them. Two
/// aggregates whose first events the broker still refuses are both parked
/// again, and the failed request names both under `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_of_all_names_every_aggregate_parked_again() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (c, _topic, store) = exactly_once_small_topic(&brokers, dir.path()).await;
    let (b, e) = (Uuid::now_v7(), Uuid::now_v7());
    for agg in [b, e] {
        store.append(agg, 0, vec![padded(agg, 1, 10_000)]).await.unwrap();
        store.append(agg, 1, vec![padded(agg, 2, 0)]).await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    let mut relay = start_relay(&c, store.clone());
    relay.wait_checkpoint(head, Duration::from_secs(60)).await;
    assert_eq!(store.parked(&c.relay.consumer_name).await.unwrap().len(), 2);

    // The limits stay: both are refused again.
    use outboxd::store::requests::{RelayRequest, RequestKind};
    let replay = RelayRequest::new(&c.relay.consumer_name, RequestKind::ReplayAllParked, "test");
    store.request_submit(&replay).await.unwrap();
    let finished = request_finished(&store, replay.id).await;
    assert_eq!(finished.status, RequestStatus::Failed, "{:?}", finished.result);
    let result = finished.result.expect("a result");
    let named: Vec<String> = result["failed"]
        .as_array()
        .unwrap_or_else(|| panic!("a failed list: {result}"))
        .iter()
        .filter_map(|f| f["aggregate_id"].as_str().map(String::from))
        .collect();
    for agg in [b, e] {
        assert!(named.contains(&agg.to_string()), "{agg} named in {result}");
    }
    assert_eq!(store.parked(&c.relay.consumer_name).await.unwrap().len(), 2, "both parked again");
    relay.stop().await;
}
