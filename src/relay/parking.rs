//! What the relay does with an event that can never be published as it is
//! (`relay.on_permanent_failure`).
//!
//! - `park-aggregate` (default): the aggregate is parked from that event
//!   on: a durable `parked_aggregates` row first, then the window holds the
//!   event and every later event of the aggregate; all other aggregates keep
//!   flowing and the checkpoint moves past the held events (they stay in
//!   `event_store`, covered by the park record). An operator replays
//!   (`outboxd dlq replay --aggregate`) or discards (`outboxd dlq discard`).
//! - `skip` (the old behaviour): the event goes to `dead_letter_queue` and
//!   its aggregate moves on; consumers see a gap in `ce_sequence`.
//!
//! A replayed dead letter that fails for good again is neither: its letter
//! stays and the replay fails naming it.
//!
//! Guarantee: an event leaves the window as held or skipped only after the
//! park record / dead letter is durable; if the store refuses, the event
//! stays failed (the watermark cannot pass it) and the write is retried.

use chrono::Utc;
use std::time::Instant;
use uuid::Uuid;

use crate::config::PermanentFailurePolicy;
use crate::metrics::Metrics;
use crate::relay::error::PublishError;
use crate::relay::pipeline::Item;
use crate::relay::run::Run;
use crate::relay::status::StatusTx;
use crate::relay::window::{Slot, Window};
use crate::store::parking::Parked;
use crate::store::{DeadLetter, DynStore, StoreError};

impl Run {
    /// `slot` failed for good: park its aggregate or skip it, per policy.
    pub(super) async fn give_up(&mut self, slot: Slot, e: PublishError) {
        let Some(item) = self.window.get(slot).cloned() else { return };
        if let Some(letter) = self.letter_slots.get(&slot).copied() {
            return self.letter_failed_again(slot, letter, &item, &e).await;
        }
        let transient = e.transient;
        let policy = if transient { PermanentFailurePolicy::Skip } else { self.relay.cfg.on_permanent_failure };
        let ok = match policy {
            PermanentFailurePolicy::ParkAggregate => self.park(slot, &item, &e).await,
            PermanentFailurePolicy::Skip => self.skip(slot, &item, &e).await,
        };
        if !ok {
            // Not durable yet (or not failed: see `skip`): keep it a suspect and try again after a backoff.
            self.suspects.insert(slot, e);
            self.solo_not_before = Instant::now() + self.backoff.delay(3);
        }
    }

    async fn park(&mut self, slot: Slot, item: &Item, e: &PublishError) -> bool {
        let p = parked_record(&self.relay.cfg.consumer_name, item, e);
        if let Err(err) = self.relay.park_record(&p).await {
            if matches!(err, StoreError::Fenced { .. }) {
                tracing::warn!(aggregate = %p.aggregate_id, "park refused: another instance holds the relay lease; stepping down");
                self.step_down();
                return false;
            }
            tracing::warn!(error = %err, aggregate = %p.aggregate_id, "cannot record the parked aggregate yet; retrying");
            self.relay.status.error(format!("cannot record a parked aggregate: {err}"));
            return false;
        }
        let agg = crate::relay::window::Fenced::aggregate(item).clone();
        // A replay in progress left it counted (its park record stands until
        // the replay ends, or until its pending removal lands): parked
        // again, it is not counted twice.
        let replaying = self.replays.keys().any(|(_, a)| *a == agg) || self.unpark_later.iter().any(|(_, a)| *a == agg);
        let newly = !self.window.is_parked(&agg) && !replaying;
        let held = self.window.park(&agg, p.position.unwrap_or(i64::MIN));
        self.retries.retain(|(_, s)| self.window.get(*s).is_some());
        self.suspects.retain(|s, _| self.window.get(*s).is_some());
        self.resent_alone.retain(|s| self.window.get(*s).is_some());
        self.unwritten_letters.retain(|s, _| self.window.get(*s).is_some());
        self.replay_failed(&agg, &p.error).await;
        self.replays_gone(&p.error).await;
        self.parked_again(&agg, &p.error).await;
        if newly {
            count_parked(&self.relay.metrics, &self.relay.status, true);
        }
        tracing::error!(aggregate = %p.aggregate_id, position = ?p.position, sequence = ?p.sequence, event_id = ?p.event_id, error = %p.error, held = held.len(), slot,
            "event can never be published as it is; its aggregate is parked from it on (outboxd dlq list / replay --aggregate / discard)");
        true
    }

    /// A replayed dead letter whose event failed for good again, whatever
    /// the policy: the letter stays (its error and failure count updated)
    /// and the requests replaying it fail naming it. Parking its aggregate
    /// there would hold events long published behind an old one; skipping
    /// it removed the letter, so the event was on no topic and in no table.
    async fn letter_failed_again(&mut self, slot: Slot, letter: Uuid, item: &Item, e: &PublishError) {
        if let Some(again) = dead_letter_of(item, e, self.window.attempts(slot)) {
            if let Err(err) = self.relay.sink.dead_letter(again).await {
                tracing::warn!(error = %err, %letter, "cannot update the dead letter's error; it stays as it was");
            }
        }
        self.letter_slots.remove(&slot);
        self.window.skip(slot);
        let error = format!("{} ({})", e.message, e.kind);
        tracing::error!(%letter, error = %error, "a replayed dead letter failed for good again; it stays in dead_letter_queue");
        self.replay_slot_failed(slot, letter, &error).await;
    }

    async fn skip(&mut self, slot: Slot, item: &Item, e: &PublishError) -> bool {
        let letter = match skip_letter(&self.window, slot, item, e) {
            Skip::NotFailed => {
                // Not a failed head (a resend refused by a full queue left it
                // ready): `Window::skip` would leave it to be published, so no
                // dead letter; it stays a suspect for a solo resend.
                tracing::warn!(
                    slot,
                    "not skipping an event whose last delivery did not fail; resending it alone first"
                );
                return false;
            }
            Skip::Marker => {
                // A marker that cannot be published: nothing to keep, the discard audit row has the event.
                self.window.skip(slot);
                self.replay_progress(slot).await;
                return true;
            }
            Skip::Letter(mut letter) => {
                // A write that failed may have been stored after all (its
                // outcome unknown): the retry goes under the same letter
                // id, which the store counts once.
                if let Some(id) = self.unwritten_letters.get(&slot) {
                    letter.id = *id;
                }
                letter
            }
        };
        let (position, event_id, event_type, id) =
            (letter.position, letter.event_id, letter.event_type.clone(), letter.id);
        if let Err(err) = self.relay.sink.dead_letter(letter).await {
            tracing::warn!(error = %err, "cannot write the dead letter yet; retrying");
            self.unwritten_letters.insert(slot, id);
            return false;
        }
        self.unwritten_letters.remove(&slot);
        self.window.skip(slot);
        let m = &self.relay.metrics;
        m.dlq_messages.inc();
        m.dlq_messages_by_event_type.with_label_values(&[&event_type]).inc();
        m.dlq_depth.inc();
        self.relay.status.update(|s| {
            s.dead_lettered += 1;
            true
        });
        tracing::error!(?position, %event_id, %event_type, error = %e, "event can never be published as it is; moved to dead_letter_queue (relay.on_permanent_failure = skip)");
        self.replay_progress(slot).await;
        true
    }
}

/// What skipping `slot` (holding `item`) takes.
#[derive(Debug)]
enum Skip {
    /// `slot` is not a failed head: it cannot be skipped, nothing is written.
    NotFailed,
    /// A discard marker: skipped with no dead letter.
    Marker,
    /// Written first, then the slot is skipped.
    Letter(DeadLetter),
}

fn skip_letter(window: &Window<Item>, slot: Slot, item: &Item, e: &PublishError) -> Skip {
    if !window.is_failed(slot) {
        return Skip::NotFailed;
    }
    match dead_letter_of(item, e, window.attempts(slot)) {
        Some(letter) => Skip::Letter(letter),
        None => Skip::Marker,
    }
}

/// Writes park record `p`, conditional on lease `epoch` when the relay
/// holds one (`StoreError::Fenced` when another instance does): the one park
/// write of every relay path (position feed, exactly-once, CDC).
pub async fn park_at(store: &DynStore, p: &Parked, epoch: Option<i64>) -> Result<(), StoreError> {
    match epoch {
        Some(e) => store.park_fenced(p, e).await,
        None => store.park(p).await,
    }
}

/// One more (`parked`) or one fewer parked aggregate in
/// `dlq_parked_aggregates` and the relay status: the one count of every
/// relay path.
pub fn count_parked(metrics: &Metrics, status: &StatusTx, parked: bool) {
    if parked {
        metrics.dlq_parked_aggregates.inc();
    } else {
        metrics.dlq_parked_aggregates.dec();
    }
    status.update(|s| {
        s.parked_aggregates = if parked { s.parked_aggregates + 1 } else { s.parked_aggregates.saturating_sub(1) };
        true
    });
}

/// The park record of `item`, which failed for good with `e`.
pub fn parked_record(consumer: &str, item: &Item, e: &PublishError) -> Parked {
    let consumer = consumer.to_string();
    let error = format!("{} ({})", e.message, e.kind);
    match item {
        Item::Event(ev) => Parked {
            consumer,
            aggregate_id: ev.aggregate_key.to_string(),
            aggregate_type: Some(ev.aggregate_type.clone()),
            position: Some(ev.position),
            sequence: Some(ev.sequence),
            event_id: Some(ev.event_id.to_string()),
            event_type: Some(ev.event_type.clone()),
            error,
            parked_at: Utc::now(),
        },
        Item::Marker { position, discarded } => Parked {
            consumer,
            aggregate_id: discarded.aggregate_key.to_string(),
            aggregate_type: Some(discarded.aggregate_type.clone()),
            position: Some(*position),
            sequence: Some(discarded.sequence),
            event_id: Some(discarded.event_id.to_string()),
            event_type: Some(crate::relay::encode::DISCARDED_TYPE.to_string()),
            error,
            parked_at: Utc::now(),
        },
        Item::Unreadable(u) => Parked {
            consumer,
            aggregate_id: u.aggregate_key.to_string(),
            aggregate_type: u.aggregate_type.clone(),
            position: Some(u.position),
            sequence: u.sequence,
            event_id: u.event_id.clone(),
            event_type: u.event_type.clone(),
            error,
            parked_at: Utc::now(),
        },
    }
}

/// The event id a dead letter of an unreadable row without a readable
/// `event_id` goes under: one per row, stable across retries. From its
/// feed position (SQLite); a CDC row has none (0), so from its aggregate
/// and sequence, else every such row would share one letter.
fn unreadable_id(u: &crate::store::feed::Unreadable) -> Uuid {
    let of = crate::store::feed::uuid_of;
    match (u.position, u.sequence) {
        (p, _) if p > 0 => of(&format!("outboxd-position-{p}")),
        (_, Some(seq)) => of(&format!("outboxd-row-{}#{seq}", u.aggregate_key)),
        (p, None) => of(&format!("outboxd-position-{p}-{}", u.aggregate_key)),
    }
}

/// The dead letter of `item` (policy "skip"); None for a discard marker.
pub fn dead_letter_of(item: &Item, e: &PublishError, attempts: u32) -> Option<DeadLetter> {
    let now = Utc::now();
    let (event_id, aggregate_id, event_type, payload, position) = match item {
        Item::Event(ev) => {
            // The envelope with the stored payload text spliced in, as the
            // record would have been published: never parsed and re-encoded
            // (key order, big numbers kept; `plan::letter_event` reads it back).
            let payload = crate::relay::encode::envelope_text(ev);
            (ev.event_id, ev.aggregate_id, ev.event_type.clone(), payload, Some(ev.position))
        }
        Item::Marker { .. } => return None,
        Item::Unreadable(u) => {
            let id = u.event_id.as_deref().and_then(|s| Uuid::parse_str(s).ok()).unwrap_or_else(|| unreadable_id(u));
            let agg = Uuid::parse_str(&u.aggregate_key).unwrap_or(Uuid::nil());
            (id, agg, u.event_type.clone().unwrap_or_default(), String::new(), Some(u.position))
        }
    };
    Some(DeadLetter {
        id: Uuid::now_v7(),
        position: position.filter(|p| *p > 0),
        event_id,
        aggregate_id,
        event_type,
        payload,
        error_message: format!("{} ({})", e.message, e.kind),
        failure_count: attempts.max(1) as i32,
        first_failed_at: now,
        last_failed_at: now,
        created_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::feed::RawEvent;

    /// Review finding: give-up under policy `skip` of a slot that was not
    /// failed (a solo resend refused by a full queue left it ready) wrote the
    /// dead letter, then `Window::skip` did nothing: the event was both
    /// dead-lettered and published later.
    #[test]
    fn skipping_a_slot_that_is_not_failed_writes_no_dead_letter() {
        let env = crate::envelope::test_events(Uuid::now_v7(), 0, 1).remove(0);
        let item = Item::Event(RawEvent::from_envelope(&env, 1).unwrap());
        let e = PublishError::permanent("MessageSizeTooLarge", "too large");
        let mut w = Window::new(0, 10);
        w.push(item.clone());
        let (slot, _) = w.take_ready().unwrap();
        assert!(matches!(skip_letter(&w, slot, &item, &e), Skip::NotFailed), "in flight");
        assert!(w.requeue(slot), "the queue was full");
        assert!(matches!(skip_letter(&w, slot, &item, &e), Skip::NotFailed), "ready");
        assert!(w.skip(slot).is_none(), "and the window would not skip it");
        assert!(w.take(slot).is_some() && w.fail(slot));
        let Skip::Letter(letter) = skip_letter(&w, slot, &item, &e) else { panic!("a failed head is dead-lettered") };
        assert_eq!((letter.event_id, letter.failure_count), (env.event_id, 1));
        assert!(w.skip(slot).is_some());
    }

    /// Review finding: a CDC row that cannot be read and has no readable
    /// `event_id` got its dead letter's event id from its feed position,
    /// which is 0 for every CDC row: under policy `skip` all such rows
    /// shared one letter (the second only bumped the first's count; its
    /// aggregate was recorded nowhere).
    #[test]
    fn unreadable_cdc_rows_get_a_letter_each() {
        let row = |agg: Uuid, seq: i64, position: i64| {
            Item::Unreadable(crate::store::feed::Unreadable {
                position,
                aggregate_key: agg.to_string().into(),
                sequence: Some(seq),
                event_id: None,
                event_type: None,
                aggregate_type: None,
                error: "null event_id".into(),
            })
        };
        let e = PublishError::permanent("Unreadable", "cannot read the row");
        let id = |item: &Item| dead_letter_of(item, &e, 1).unwrap().event_id;
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_ne!(id(&row(a, 3, 0)), id(&row(b, 7, 0)), "two CDC rows, two letters");
        assert_ne!(id(&row(a, 3, 0)), id(&row(a, 4, 0)));
        assert_eq!(id(&row(a, 3, 0)), id(&row(a, 3, 0)), "the same row, the same letter, on every retry");
        // The feed's rows keep their position-based ids (letters already stored).
        assert_eq!(id(&row(a, 3, 42)), crate::store::feed::uuid_of("outboxd-position-42"));
        assert_ne!(id(&row(a, 3, 42)), id(&row(a, 3, 43)));
    }
}
