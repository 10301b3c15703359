//! Operator requests in exactly-once mode, carried out between batches by
//! the lease holder: replay (unpark) an aggregate, replay dead letters,
//! discard (with marker), rewind.
//!
//! Guarantees: a request is claimed under the holder's epoch before it is
//! carried out; a replayed aggregate's held events commit in order in
//! transactions like any batch, and its park record is removed only after
//! they committed; a rewind is a progress record of its own, committed
//! before the term ends and the next term starts there; every transaction of
//! a replay names the request and how far it has committed (the progress
//! record's `replay`), so a term that finds that request still open (the
//! former one crashed between the commit and the store's part) skips what
//! committed and only does the store's part: no event is published twice.

use super::{Outcome, Txn};
use crate::relay::parking::count_parked;
use crate::relay::pipeline::{Exit, Item, RelayError};
use crate::relay::plan::{plan, Plan, PlanCtx};
use crate::relay::progress::LETTERS;
use crate::relay::requests::kind_label;
use crate::relay::window::Fenced;
use crate::shutdown::Shutdown;
use crate::store::requests::RequestStatus;
use crate::store::StoreError;

/// The crash point between a replay's commit and the store's part of it (tests).
pub const CRASH_AFTER_REPLAY: &str = "after_replay_commit";

/// Rounds of requests a term tries to plan a resumed replay whose store
/// reads fail before it ends with the error.
const RESUME_PLAN_TRIES: u32 = 5;

impl Txn {
    /// Carries out operator requests between batches.
    pub(super) async fn requests(&mut self) -> Result<Option<Exit>, RelayError> {
        self.relay.status.flush();
        let consumer = self.relay.cfg.consumer_name.clone();
        let mut open = match self.relay.store.requests_open(&consumer, self.epoch).await {
            Ok(open) => open,
            // The CLI's single round must not end as if it were done.
            Err(e) if self.relay.requests_only => {
                return Err(RelayError::Store(format!("cannot read the relay requests: {e}")))
            }
            Err(_) => return Ok(None),
        };
        if self.resumed.as_ref().is_some_and(|m| !open.iter().any(|r| r.id == m.request)) {
            // Its request is finished: the mark need not be carried on.
            self.resumed = None;
        }
        // The replay being resumed goes first, and nothing goes before it is
        // taken: another request's progress record would drop its mark (a
        // crash right after that commit, and the replay published what it
        // had committed again). Oldest first by `created_at` is not enough:
        // another host's clock may stamp a later request earlier.
        if let Some(m) = &self.resumed {
            open.sort_by_key(|r| r.id != m.request);
        }
        for r in open {
            if !self.requests.take(&r).await {
                if self.resumed.as_ref().is_some_and(|m| m.request == r.id) {
                    return Ok(None); // taken again at the next round
                }
                continue;
            }
            if crate::relay::operator::starts_anew(&r) {
                self.relay.metrics.relay_requests.with_label_values(&[kind_label(&r.kind)]).inc();
            }
            let resuming = self.resumed.as_ref().is_some_and(|m| m.request == r.id);
            let ctx = PlanCtx {
                store: &*self.relay.store,
                metrics: &self.relay.metrics,
                consumer: &consumer,
                parked: self.parked.keys().cloned().collect(),
                last_pushed: self.last_read,
                checkpoint: self.position,
                positions: true,
                discards: &self.discards,
                resuming,
            };
            let before = match r.status == RequestStatus::Running && !resuming {
                true => crate::relay::plan::carried_out_before(&ctx, &r).await,
                false => Ok(false),
            };
            if let Err(e) = &before {
                // Whether it was carried out is unknown: taken again at the next round.
                tracing::warn!(request = %r.id, error = %e, "cannot tell whether a taken-over request was carried out; trying again at the next round");
                self.requests.release(r.id);
                continue;
            }
            if before.unwrap_or(false) {
                // Taken over without a mark: its former executor did the
                // store's part and stopped before recording the outcome.
                tracing::info!(request = %r.id, "a request its former executor carried out; recorded as done");
                let result = crate::relay::plan::carried_out_result();
                self.finish(r.id, RequestStatus::Done, result).await;
                continue;
            }
            let mut plans = match plan(&ctx, &r).await {
                Ok(p) => p,
                // The store did not answer: whether the former term did the
                // store's part of this replay is unknown. It stays claimed
                // and is taken again at the next round of requests; the
                // requests after it wait (their progress records would drop
                // its mark). After a few rounds (and at once for the CLI's
                // single round) the term ends with the error: the runner's
                // backoff applies, /health shows it, the next term resumes it.
                Err(RelayError::Store(e)) if resuming => {
                    let why = format!("cannot plan the replay being resumed (request {}): {e}", r.id);
                    self.relay.status.error(why.clone());
                    let tries = self.requests.release(r.id);
                    if self.relay.requests_only || tries >= RESUME_PLAN_TRIES {
                        return Err(RelayError::Store(why));
                    }
                    tracing::warn!(request = %r.id, error = %e, tries, "cannot plan the replay being resumed; trying again at the next round of requests");
                    return Ok(None);
                }
                // The former term committed this replay and did the store's
                // part (nothing is parked or left to replay), then stopped
                // before recording the outcome. (Ending the term instead, on
                // a refusal that is not that, fails every later term the same
                // way: a dead letter already removed, a discard carried out.)
                Err(e) if resuming => {
                    self.resumed = None;
                    tracing::info!(request = %r.id, reason = %e, "a replay the former term carried out; recorded as done");
                    let result = crate::relay::plan::carried_out_result();
                    self.finish(r.id, RequestStatus::Done, result).await;
                    continue;
                }
                Err(e) => {
                    self.finish(r.id, RequestStatus::Failed, serde_json::json!({ "error": e.to_string() })).await;
                    continue;
                }
            };
            // The part the former term was in the middle of goes first: once
            // another part commits, the progress record no longer names it.
            if let Some(mark) = self.resumed.as_ref().filter(|m| m.request == r.id) {
                plans.sort_by_key(|p| !mark.covers(r.id, &plan_part(p)));
            }
            let mut result = serde_json::json!({ "events": 0 });
            let mut status = RequestStatus::Done;
            // The letters (or aggregates) it could not replay, whatever ends it.
            let mut failed: Vec<serde_json::Value> = Vec::new();
            self.replayed = 0;
            for p in plans {
                let part = plan_part(&p);
                match p {
                    Plan::Done(v) => result = v,
                    Plan::MarkerAhead { position, discarded } => self.discards.insert(position, discarded),
                    Plan::Rewind { position } => {
                        // Progress moves back in a transaction of its own; the next term starts there.
                        match self.transaction(&[], position).await {
                            // The request stays running: the next holder takes it over.
                            Outcome::Fenced(_) => return Ok(Some(Exit::LeaseLost)),
                            // Whether it committed is unknown: the next term (a new
                            // producer, the progress read again) takes it over.
                            Outcome::Fatal(m) => return Err(RelayError::ProducerFatal(m)),
                            Outcome::Committed => {
                                // The checkpoint too, before it is done: a term
                                // starts from the checkpoint when it is past the
                                // progress record. Not written: the request stays
                                // open and the next term rewinds again (nothing
                                // was published from the rewound progress yet).
                                match self.relay.write_checkpoint(position).await {
                                    Ok(()) => {}
                                    Err(StoreError::Fenced { .. }) => return Ok(Some(Exit::LeaseLost)),
                                    Err(e) => {
                                        return Err(RelayError::Store(format!(
                                            "the rewind's progress committed but the checkpoint could not be moved back: {e}"
                                        )))
                                    }
                                }
                                let result =
                                    serde_json::json!({ "rewound_from": self.position, "rewound_to": position });
                                self.finish(r.id, RequestStatus::Done, result).await;
                                self.relay.metrics.relay_rewinds.inc();
                                return Ok(Some(Exit::Rewound(position)));
                            }
                            _ => {
                                status = RequestStatus::Failed;
                                result = serde_json::json!({ "error": "the progress record could not be committed" });
                            }
                        }
                    }
                    Plan::Unpark { agg, items } => {
                        self.parked.remove(&agg);
                        if let Some(exit) = self.publish_replay(r.id, part, items).await? {
                            return Ok(Some(exit));
                        }
                        if self.parked.contains_key(&agg) {
                            // Counted before the replay and again by its park.
                            count_parked(&self.relay.metrics, &self.relay.status, false);
                            status = RequestStatus::Failed;
                            result = serde_json::json!({ "aggregate_id": agg.to_string(), "error": "an event failed again; parked again" });
                            // The replay goes on with the other parts: each
                            // one parked again is named in `failed`.
                            failed.push(result.clone());
                            continue;
                        }
                        match crate::relay::operator::unpark(&self.relay.store, &consumer, &agg, self.epoch).await {
                            Ok(_) => count_parked(&self.relay.metrics, &self.relay.status, false),
                            Err(StoreError::Fenced { .. }) => return Ok(Some(Exit::LeaseLost)),
                            // The term ends here, while the last progress
                            // record still names this part: the next term
                            // (same lease: it takes the request over) skips
                            // the committed events and only removes the record.
                            Err(e) => {
                                return Err(RelayError::Store(format!(
                                "the held events of {agg} were committed but its park record could not be removed: {e}"
                            )))
                            }
                        }
                    }
                    Plan::Letters { mut items, bad } => {
                        failed.extend(bad);
                        // In feed order, so "committed through a position" is a prefix.
                        items.sort_by_key(|(i, _)| i.position());
                        let positions: Vec<(i64, uuid::Uuid)> =
                            items.iter().map(|(i, id)| (i.position(), *id)).collect();
                        let events: Vec<Item> = items.into_iter().map(|(i, _)| i).collect();
                        if let Some(exit) = self.publish_replay(r.id, part, events).await? {
                            return Ok(Some(exit));
                        }
                        // Committed: the letters before a failed one (all without one).
                        let letter_failed = self.letter_failed.take();
                        let stop = letter_failed.as_ref().map_or(i64::MAX, |(p, _)| *p);
                        for &(_, id) in positions.iter().filter(|(p, _)| *p < stop) {
                            // Removal failed: the term ends while the progress record
                            // still names this part; the next one skips what committed.
                            let (store, metrics) = (&self.relay.store, &self.relay.metrics);
                            if let Err(e) = crate::relay::operator::remove_replayed(store, metrics, id).await {
                                return Err(RelayError::Store(format!(
                                    "replayed dead letter {id} committed but could not be removed: {e}"
                                )));
                            }
                        }
                        if let Some((p, e)) = letter_failed {
                            let id = positions.iter().find(|(q, _)| *q == p).map(|(_, id)| *id);
                            let error = format!("{} ({})", e.message, e.kind);
                            tracing::error!(letter = ?id, error = %error, "a replayed dead letter failed for good again; it stays in dead_letter_queue");
                            status = RequestStatus::Failed;
                            result = serde_json::json!({ "id": id, "error": error });
                            failed.push(result.clone());
                        }
                    }
                }
            }
            if self.resumed.as_ref().is_some_and(|m| m.request == r.id) {
                // Its part was finished by the former term (not in the plans).
                self.resumed = None;
            }
            let result = outcome(result, status, self.replayed, failed);
            self.finish(r.id, status, result).await;
        }
        Ok(None)
    }

    /// Publishes the events of request `id`'s replay (in feed order), each
    /// transaction's progress record naming the request. Carried to its end
    /// (the task's shutdown deadline bounds it); a term that stops after a
    /// partial commit leaves the mark in the progress record, and the next
    /// one skips what committed (OPERATIONS.md, "Exactly-once delivery").
    async fn publish_replay(
        &mut self,
        id: uuid::Uuid,
        part: String,
        mut items: Vec<Item>,
    ) -> Result<Option<Exit>, RelayError> {
        self.skip_committed(id, &part, &mut items);
        let mut never = Shutdown::never();
        let letters = part == LETTERS;
        self.replaying = Some((id, part));
        // In transactions of at most `transaction_max_events`, as the feed's
        // (one of a large backlog would outlast `transaction.timeout.ms`):
        // each chunk is a prefix, like a split's, and its progress record
        // marks it committed.
        let max = self.relay.cfg.transaction_max_events.max(1);
        let mut rest = items.into_iter().peekable();
        // Once at least. An empty chunk commits nothing (no transaction, no
        // mark): a term that stops after the store's part of such a request
        // (the unpark) and before its outcome leaves it to be planned again,
        // which then finds nothing parked and reports it failed.
        loop {
            // After a re-park (or a failed letter) in an earlier chunk, as
            // within one: the parked aggregate's later events stay held.
            let chunk: Vec<Item> =
                rest.by_ref().filter(|i| letters || !self.holds(i.aggregate(), i.position())).take(max).collect();
            if let Some(exit) = self.publish(chunk, self.position, &mut never).await? {
                return Ok(Some(exit));
            }
            if self.letter_failed.is_some() || rest.peek().is_none() {
                break;
            }
        }
        self.replaying = None;
        self.relay.pause.crash_point(CRASH_AFTER_REPLAY);
        Ok(None)
    }

    /// Drops from `items` what a former term already committed for `part`
    /// of request `id` (its last progress record said so); used once. The
    /// other parts of a replay-all are not touched: their held events
    /// interleave with this one's in the feed.
    fn skip_committed(&mut self, id: uuid::Uuid, part: &str, items: &mut Vec<Item>) {
        if !self.resumed.as_ref().is_some_and(|m| m.covers(id, part)) {
            return;
        }
        let Some(mark) = self.resumed.take() else { return };
        let before = items.len();
        items.retain(|i| i.position() > mark.through);
        tracing::info!(
            request = %id,
            part,
            through = mark.through,
            skipped = before - items.len(),
            "resuming a replay the former term committed through this position: those events are not published again"
        );
    }

    /// Records a request's outcome at this term's epoch (retried; see `operator::finish`).
    async fn finish(&self, id: uuid::Uuid, status: RequestStatus, result: serde_json::Value) {
        self.requests.finish(id, status, result, &self.backoff).await
    }
}

/// A request's recorded result: on a finished replay, `events` is what
/// this term committed for it (as the at-least-once relay reports it);
/// every letter or aggregate it could not replay is named in `failed`,
/// whatever ended it (a part parked again, a letter failed again).
fn outcome(
    mut result: serde_json::Value,
    status: RequestStatus,
    events: usize,
    failed: Vec<serde_json::Value>,
) -> serde_json::Value {
    if status == RequestStatus::Done && result.get("events").is_some() {
        result["events"] = serde_json::json!(events);
    }
    if !failed.is_empty() && result.is_object() {
        result["failed"] = serde_json::json!(failed);
    }
    result
}

/// The `ReplayMark::part` a plan's transactions carry ("" for a plan that publishes nothing).
fn plan_part(p: &Plan) -> String {
    match p {
        Plan::Unpark { agg, .. } => agg.to_string(),
        Plan::Letters { .. } => LETTERS.to_string(),
        Plan::Rewind { .. } | Plan::MarkerAhead { .. } | Plan::Done(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::outcome;
    use crate::store::requests::RequestStatus;
    use serde_json::json;

    /// Review findings: the result said `{"events": 0}` whatever the replay
    /// committed; a replay-all kept only the last aggregate it could not
    /// replay (`failed` assigned, not extended), and one parked again
    /// dropped the list.
    #[test]
    fn a_result_counts_the_events_and_names_every_failure() {
        let bad = vec![json!({ "aggregate_id": "a" }), json!({ "aggregate_id": "b" })];
        let done = outcome(json!({ "events": 0 }), RequestStatus::Done, 3, bad.clone());
        assert_eq!(done, json!({ "events": 3, "failed": bad }));
        let again = json!({ "aggregate_id": "c", "error": "an event failed again; parked again" });
        let failed = outcome(again.clone(), RequestStatus::Failed, 1, bad.clone());
        assert_eq!(failed["failed"], json!(bad), "{failed}");
        assert_eq!(failed["aggregate_id"], "c");
        assert!(failed.get("events").is_none(), "a failed replay's result is its error, as at least once");
        let nothing = outcome(json!({ "replayed_aggregates": 0 }), RequestStatus::Done, 0, Vec::new());
        assert_eq!(nothing, json!({ "replayed_aggregates": 0 }));
    }
}
