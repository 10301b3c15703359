//! Dead-letter replay: re-publish dead letters and remove them once Kafka
//! confirmed them.
//!
//! Guarantee: a row is deleted only after its delivery was confirmed; a
//! replay that fails leaves the row (with its error) in place.

use std::time::Duration;
use uuid::Uuid;

use crate::envelope::EventEnvelope;
use crate::relay::publisher::KafkaPublisher;
use crate::store::{DeadLetter, DynStore, StoreError};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplayReport {
    pub replayed: Vec<Uuid>,
    pub failed: Vec<(Uuid, String)>,
}

/// Re-publishes `letters` in order; removes each delivered one.
pub async fn replay(
    store: &DynStore,
    publisher: &KafkaPublisher,
    letters: Vec<DeadLetter>,
    default_currency: &str,
) -> Result<ReplayReport, StoreError> {
    let mut report = ReplayReport::default();
    for l in letters {
        let env: EventEnvelope = match serde_json::from_str::<EventEnvelope>(&l.payload)
            .map_err(|e| e.to_string())
            .and_then(|e| e.upcast(default_currency).map_err(|e| e.to_string()))
        {
            Ok(e) => e,
            Err(e) => {
                report.failed.push((l.id, format!("stored payload is not a valid event: {e}")));
                continue;
            }
        };
        let res = match publisher.send(&env).await {
            Ok(p) => tokio::time::timeout(Duration::from_millis(publisher.config().message_timeout_ms + 5_000), p)
                .await
                .unwrap_or_else(|_| {
                    Err(crate::relay::PublishError::transient("timeout", "no delivery report in time"))
                }),
            Err(e) => Err(e),
        };
        match res {
            Ok(_) => {
                store.dlq_remove(l.id).await?;
                report.replayed.push(l.id);
            }
            Err(e) => report.failed.push((l.id, e.message)),
        }
    }
    Ok(report)
}
