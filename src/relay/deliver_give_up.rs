//! How a [`Deliverer`] gives up on an event that can never be published
//! as it is (or a log row that is no event at all): under the
//! permanent-failure policy it parks the aggregate or dead-letters the
//! event, and only then reports `Parked` / `DeadLettered`.
//!
//! Guarantee: the park record or dead letter is durable before the caller
//! hears the outcome (store errors retry behind the backoff until shutdown;
//! a fenced write stops the relay: another instance holds the lease), so the
//! CDC progress never passes an event that is neither published nor kept.

use crate::config::PermanentFailurePolicy;
use crate::relay::error::PublishError;
use crate::relay::parking::{count_parked, dead_letter_of, park_at, parked_record};
use crate::relay::pipeline::Item;
use crate::relay::window::Fenced;
use crate::shutdown::Shutdown;
use crate::store::feed::Unreadable;
use crate::store::StoreError;

use super::{Delivered, Deliverer};

impl Deliverer {
    /// A log row that is not a readable event: parked or dead-lettered under
    /// the permanent-failure policy (held when its aggregate is parked), as
    /// the position feed does, so one bad row never stops the relay.
    pub async fn give_up_unreadable(&self, row: Unreadable, shutdown: &mut Shutdown) -> Delivered {
        if self.holds(&row.aggregate_key, row.sequence) {
            return Delivered::Held;
        }
        let err = PublishError::permanent("unreadable", row.error.clone());
        let event_type = row.event_type.as_deref().unwrap_or("unknown");
        self.metrics.cdc_events_failed.with_label_values(&[event_type, &err.kind]).inc();
        self.give_up(&Item::Unreadable(row), err, self.policy, 1, shutdown).await
    }

    pub(super) async fn give_up(
        &self,
        item: &Item,
        err: PublishError,
        policy: PermanentFailurePolicy,
        attempts: u32,
        shutdown: &mut Shutdown,
    ) -> Delivered {
        let (event_id, event_type, sequence) = match item {
            Item::Event(e) => (e.event_id.to_string(), e.event_type.clone(), Some(e.sequence)),
            Item::Unreadable(u) => {
                (u.event_id.clone().unwrap_or_default(), u.event_type.clone().unwrap_or_default(), u.sequence)
            }
            Item::Marker { discarded, .. } => {
                (discarded.event_id.to_string(), discarded.event_type.clone(), Some(discarded.sequence))
            }
        };
        let aggregate = item.aggregate().clone();
        // Built once: a write retried after an error whose outcome is
        // unknown is the same letter, which the store counts once.
        let letter = match policy {
            PermanentFailurePolicy::Skip => dead_letter_of(item, &err, attempts),
            PermanentFailurePolicy::ParkAggregate => None,
        };
        let mut tries = 0;
        loop {
            let res = match policy {
                PermanentFailurePolicy::ParkAggregate => {
                    park_at(&self.store, &parked_record(&self.consumer, item, &err), self.epoch).await
                }
                PermanentFailurePolicy::Skip => match &letter {
                    Some(l) => self.sink.dead_letter(l.clone()).await,
                    None => Ok(()),
                },
            };
            match res {
                Ok(()) => break,
                Err(StoreError::Fenced { name, epoch, current }) => {
                    tracing::warn!(%name, epoch, ?current, "park record refused: another instance holds the relay lease; stopping");
                    return Delivered::Fenced;
                }
                Err(store_err) => {
                    tries += 1;
                    tracing::warn!(error = %store_err, "cannot record the failed event durably yet; retrying");
                    if !shutdown.sleep(self.backoff.delay(tries.min(10))).await {
                        return Delivered::Shutdown;
                    }
                }
            }
        }
        match policy {
            PermanentFailurePolicy::ParkAggregate => {
                let from = super::held_from(sequence);
                if self.parked.lock().unwrap_or_else(|p| p.into_inner()).insert(aggregate.clone(), from).is_none() {
                    count_parked(&self.metrics, &self.status, true);
                }
                tracing::error!(%event_id, %aggregate, ?sequence, error = %err, "event can never be published as it is; its aggregate is parked from it on");
                Delivered::Parked
            }
            // A marker has no dead letter to become (none was written).
            PermanentFailurePolicy::Skip if matches!(item, Item::Marker { .. }) => {
                tracing::error!(%event_id, %aggregate, ?sequence, error = %err, "the marker of a discarded event can never be published; skipped (the discard audit row has the event)");
                Delivered::DeadLettered
            }
            PermanentFailurePolicy::Skip => {
                self.metrics.dlq_messages.inc();
                self.metrics.dlq_messages_by_event_type.with_label_values(&[&event_type]).inc();
                self.metrics.dlq_depth.inc();
                self.status.update(|s| {
                    s.dead_lettered += 1;
                    true
                });
                tracing::error!(%event_id, %aggregate, ?sequence, error = %err, "event can never be published as it is; moved to dead_letter_queue");
                Delivered::DeadLettered
            }
        }
    }
}
