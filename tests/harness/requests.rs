//! Relay requests and park records as a library test writes them and waits
//! for them through the store (the relay under test carries them out).

use std::time::Duration;
use uuid::Uuid;

use outboxd::store::parking::Parked;
use outboxd::store::requests::{RelayRequest, RequestStatus};
use outboxd::store::{DynStore, EventStore};

/// Request `id` once it is done or failed (panics after 60 s).
pub async fn request_finished(store: &DynStore, id: Uuid) -> RelayRequest {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let r = store.request_get(id).await.unwrap().expect("the request row");
            if matches!(r.status, RequestStatus::Done | RequestStatus::Failed) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("request {id} not finished after 60 s"))
}

/// Asks `consumer`'s relay to replay every dead letter; the request once finished.
pub async fn replay_all_letters(store: &DynStore, consumer: &str) -> RelayRequest {
    use outboxd::store::requests::RequestKind;
    let replay = RelayRequest::new(consumer, RequestKind::ReplayDeadLetters { ids: None }, "test");
    store.request_submit(&replay).await.unwrap();
    request_finished(store, replay.id).await
}

/// The park record of order `aggregate` at feed `position` (its sequence
/// the same), as a relay writes one.
pub fn order_parked_at(consumer: &str, aggregate: Uuid, position: i64) -> Parked {
    Parked {
        consumer: consumer.to_string(),
        aggregate_id: aggregate.to_string(),
        aggregate_type: Some("Order".into()),
        position: Some(position),
        sequence: Some(position),
        event_id: None,
        event_type: None,
        error: "parked by the test".into(),
        parked_at: chrono::Utc::now(),
    }
}

/// Two dead letters of events at positions 1 and 2 (one append each), as a
/// relay's `skip` policy leaves them; `empty`: the second one's payload is
/// empty (an unreadable row's letter, not an event).
pub async fn seeded_letters(store: &DynStore, empty: bool) -> Vec<outboxd::store::DeadLetter> {
    let mut letters = Vec::new();
    for position in 1..=2 {
        let id = Uuid::now_v7();
        let env = super::order_events(id, 0, 1).remove(0);
        store.append(id, 0, vec![env.clone()]).await.unwrap();
        let mut letter = super::dead_letter(&env, Some(position));
        if empty && position == 2 {
            letter.payload = String::new();
        }
        store.dlq_insert(letter.clone()).await.unwrap();
        letters.push(letter);
    }
    letters
}
