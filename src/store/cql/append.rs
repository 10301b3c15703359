//! The conditional append of the CQL store, and its unknown-outcome resolution.
//!
//! Guarantees:
//! - ONE single-partition conditional LOGGED batch (a Paxos lightweight
//!   transaction): `UPDATE event_store SET version = <new> WHERE aggregate_id
//!   = ? IF version = <expected>` (`IF version = null` for a new aggregate;
//!   `version` is a STATIC column) plus one INSERT per event. All events are
//!   written or none, and only if the aggregate is exactly at the expected
//!   version; when the condition fails, the LWT answer carries the current
//!   `version`, which becomes `StoreError::Conflict { actual }` (0 when null).
//! - Unknown outcomes are resolved, never guessed: a CAS write timeout (or a
//!   client timeout / broken connection, or `Unavailable`, which the commit
//!   phase can answer after a quorum accepted) means the batch may or may
//!   not have been applied. The append then re-proposes the *same* batch (safe: the
//!   condition lets at most one of the attempts apply, and Paxos never
//!   completes a proposal older than a later commit). If the re-proposal
//!   fails its condition, the row at `expected + 1` is read with SERIAL
//!   consistency: our `event_id` there means an earlier attempt landed
//!   (success), anything else is a `Conflict`. If the attempts run out while
//!   the outcome is still unknown, the error is `OutcomeUnknown` (never
//!   success, never the retryable `Unavailable`: a blind retry could write
//!   the command twice).
//! - An append whose outcome stays unknown is recorded there too before its
//!   `OutcomeUnknown` returns (tried twice; rows expiring after 7 days): it
//!   may land later (the aggregate's next conditional write completes an
//!   accepted proposal, with the original ballot's time), and the relay
//!   publishes it then, or publishes whatever event took its sequences.
//! - An append resolved as applied after an unknown outcome is recorded in
//!   `append_reconciliation` (one row per event) before it returns Ok: its
//!   CDC rows may carry the original ballot's time and land behind the
//!   relay's reading position; the relay publishes them from there
//!   (`relay::cdc::reconciler`). If that record cannot be written after a
//!   few tries, the append still returns Ok, because its events are stored
//!   and an error would invite the caller to write the command again; the
//!   failure is logged as an error naming the aggregate and the sequences
//!   (the relay may then publish them only when a later event of the
//!   aggregate fills the gap while it remembers the aggregate; after a
//!   restart they are not published: docs/OPERATIONS.md says what to do).
//! - The batch goes through a [`BatchExecutor`]: the driver session in
//!   production ([`SessionBatches`]); the tests plug in one that loses
//!   requests or replies, so the resolution is exercised against a real server.

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::MaybeUnset;
use std::time::Duration;
use uuid::Uuid;

use super::reconcile::ReconcileTable;
use super::rows::{as_bigint, lwt_answer};
use super::schema::Statements;
use super::{codec, exec_err, CqlStore};
use crate::envelope::EventEnvelope;
use crate::store::{check_batch, Appended, EventStore, StoreError};

/// How often an append with an unknown outcome (CAS timeout) is re-proposed.
const MAX_APPEND_ATTEMPTS: u32 = 6;

/// How often the reconciliation record of a resolved append is tried.
const RECORD_ATTEMPTS: u32 = 5;

/// The values of one batch, one row per statement.
pub type BatchValues = Vec<Box<dyn SerializeRow + Send + Sync>>;

/// Sends the conditional batch of an append.
#[async_trait]
pub trait BatchExecutor: Send + Sync + 'static {
    async fn execute(
        &self,
        session: &Session,
        batch: &Batch,
        values: BatchValues,
    ) -> Result<QueryResult, ExecutionError>;
}

/// The production executor: the driver session.
pub struct SessionBatches;

#[async_trait]
impl BatchExecutor for SessionBatches {
    async fn execute(
        &self,
        session: &Session,
        batch: &Batch,
        values: BatchValues,
    ) -> Result<QueryResult, ExecutionError> {
        session.batch(batch, values).await
    }
}

enum Attempt {
    Applied,
    /// The condition failed; the aggregate's current version.
    Rejected(i64),
    Failed(Box<ExecutionError>),
    /// The server answered, but the answer cannot be read: the batch may
    /// have been applied (resolved like an unknown outcome).
    Unreadable(StoreError),
}

/// Too few live replicas: the commit phase can answer it after a quorum
/// accepted the proposal (the next round completes it; see `retry`), so an
/// append resolves it like a timeout. The lease and request writes keep it a
/// plain error their callers retry: a SERIAL read that finds their row
/// unchanged would answer "refused" (a holder stepping down, a request left
/// to the next leader) for a write that never happened.
pub(super) fn unavailable_after_accept(e: &ExecutionError) -> bool {
    matches!(e, ExecutionError::LastAttemptError(a) if super::retry::unavailable(a))
}

/// True when an error leaves the outcome of a (conditional) write unknown:
/// the request may have reached the coordinator and been applied.
pub(super) fn outcome_unknown(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(a) => match a {
            RequestAttemptError::BrokenConnectionError(_) => true,
            // Sent, and answered with something the driver cannot read:
            // the write may have been applied.
            RequestAttemptError::CqlResultParseError(_)
            | RequestAttemptError::CqlErrorParseError(_)
            | RequestAttemptError::BodyExtensionsParseError(_)
            | RequestAttemptError::UnexpectedResponse(_) => true,
            RequestAttemptError::DbError(db, _) => matches!(
                db,
                // CAS write timeouts (contention or Paxos timeouts), commit-phase
                // write timeouts, and timeouts of the Paxos read phase; a
                // replica's failure in either phase (a proposal a quorum
                // accepted is completed by the next round on the partition:
                // stored after all), a server error, Cassandra's
                // CAS_WRITE_UNKNOWN (0x1700), and a rate limit met past the
                // coordinator (it may have reached a replica).
                DbError::WriteTimeout { .. }
                    | DbError::ReadTimeout { .. }
                    | DbError::WriteFailure { .. }
                    | DbError::ReadFailure { .. }
                    | DbError::ServerError
                    | DbError::Other(0x1700)
                    | DbError::RateLimitReached { rejected_by_coordinator: false, .. }
                    | DbError::Overloaded
                    | DbError::IsBootstrapping
            ),
            _ => false,
        },
        _ => false,
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(5);
    Duration::from_millis(base + rand::random::<u64>() % (base + 1))
}

impl CqlStore {
    /// One attempt of the conditional batch.
    async fn try_append(
        &self,
        s: &Statements,
        aggregate_id: Uuid,
        expected: i64,
        events: &[EventEnvelope],
    ) -> Result<Attempt, StoreError> {
        let new_version = expected + events.len() as i64;
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::with_capacity(events.len() + 1);
        if expected == 0 {
            batch.append_statement(s.cas_new.clone());
            values.push(Box::new((new_version, aggregate_id)));
        } else {
            batch.append_statement(s.cas_existing.clone());
            values.push(Box::new((new_version, aggregate_id, expected)));
        }
        for e in events {
            batch.append_statement(s.insert_event.clone());
            let payload = serde_json::to_string(&e.payload).map_err(codec)?;
            let causation = match e.causation_id {
                Some(c) => MaybeUnset::Set(c),
                None => MaybeUnset::Unset,
            };
            values.push(Box::new((
                aggregate_id,
                e.sequence,
                e.event_id,
                e.aggregate_type.clone(),
                e.event_type.clone(),
                e.schema_version,
                payload,
                causation,
                e.correlation_id,
                e.timestamp,
                match &e.trace {
                    Some(t) => MaybeUnset::Set(t.traceparent.clone()),
                    None => MaybeUnset::Unset,
                },
                match e.trace.as_ref().and_then(|t| t.tracestate.clone()) {
                    Some(ts) => MaybeUnset::Set(ts),
                    None => MaybeUnset::Unset,
                },
            )));
        }
        let res = match self.batches.execute(&self.session, &batch, values).await {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Failed(Box::new(e))),
        };
        let answer = lwt_answer(res, "version").and_then(|(applied, v)| Ok((applied, as_bigint(v)?)));
        Ok(match answer {
            Ok((true, _)) => Attempt::Applied,
            Ok((false, v)) => Attempt::Rejected(v.unwrap_or(0)),
            Err(e) => Attempt::Unreadable(e),
        })
    }

    /// SERIAL read: the event id stored at `sequence` of `aggregate_id`.
    async fn event_id_at(&self, s: &Statements, aggregate_id: Uuid, sequence: i64) -> Result<Option<Uuid>, StoreError> {
        let res = self
            .session
            .execute_unpaged(&s.event_id_at, (aggregate_id, sequence))
            .await
            .map_err(|e| exec_err("serial read of the appended event", e))?;
        let rows = res.into_rows_result().map_err(codec)?;
        let row = rows.maybe_first_row::<(Option<Uuid>,)>().map_err(codec)?;
        Ok(row.and_then(|r| r.0))
    }

    /// Records an append whose outcome was unknown (see the module doc):
    /// `applied` when it was resolved as applied (tried a few times), else
    /// one that stayed unknown (tried twice: its caller waits for its
    /// error, and the relay drops the rows if the sequence goes to another
    /// append). A record that cannot be written is logged as an error.
    async fn record_pending(&self, aggregate_id: Uuid, events: &[EventEnvelope], applied: bool) {
        let rows: Vec<(i64, Uuid)> = events.iter().map(|e| (e.sequence, e.event_id)).collect();
        let attempts = if applied { RECORD_ATTEMPTS } else { 2 };
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt + 2)).await;
            }
            let table = match self
                .reconcile
                .get_or_try_init(|| ReconcileTable::open(self.session.clone(), &self.keyspace))
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let now = chrono::Utc::now();
            let written = if applied {
                table.record(aggregate_id, &rows, now).await
            } else {
                table.record_unresolved(aggregate_id, &rows, now).await
            };
            match written {
                Ok(()) if applied => {
                    tracing::info!(%aggregate_id, events = rows.len(), "append with an unknown outcome resolved as applied; recorded for reconciliation");
                    return;
                }
                Ok(()) => {
                    tracing::info!(%aggregate_id, events = rows.len(), "append outcome still unknown; recorded for reconciliation in case it lands later");
                    return;
                }
                Err(e) => last = Some(e),
            }
        }
        let sequences: Vec<i64> = rows.iter().map(|(s, _)| *s).collect();
        let error = last.map(|e| e.to_string()).unwrap_or_default();
        if applied {
            tracing::error!(%aggregate_id, ?sequences, %error,
                "append applied after an unknown outcome, but its reconciliation record could not be written: if its CDC rows landed behind the relay's reading position, the relay publishes them only when a later event of this aggregate fills the gap");
        } else {
            tracing::error!(%aggregate_id, ?sequences, %error,
                "append outcome unknown, and its reconciliation record could not be written: if it lands later (completed by the aggregate's next write), its CDC rows may lie behind the relay's reading position and are published only when a later event of this aggregate fills the gap");
        }
    }

    /// `EventStore::append` (see the module doc).
    pub(super) async fn append_events(
        &self,
        aggregate_id: Uuid,
        expected_version: i64,
        events: Vec<EventEnvelope>,
    ) -> Result<Appended, StoreError> {
        check_batch(aggregate_id, expected_version, &events)?;
        let s = self.stmts().await?;
        let done = Appended { version: expected_version + events.len() as i64, last_position: None };
        let conflict = |actual| StoreError::Conflict { aggregate_id, expected: expected_version, actual };
        let mut uncertain: Option<String> = None;
        for attempt in 0..MAX_APPEND_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let tried = match self.try_append(s, aggregate_id, expected_version, &events).await {
                Ok(tried) => tried,
                // After an unknown outcome, an answer that cannot be read
                // leaves it unknown (it is no proof of anything either way).
                Err(e) if uncertain.is_some() => {
                    uncertain = Some(e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            match tried {
                Attempt::Applied => return Ok(done),
                Attempt::Rejected(actual) => {
                    if uncertain.is_some() && actual >= done.version {
                        // An earlier attempt of ours may be the one that landed.
                        match self.event_id_at(s, aggregate_id, expected_version + 1).await {
                            Ok(id) if id == Some(events[0].event_id) => {
                                tracing::debug!(%aggregate_id, expected_version, "append with an unknown outcome had been applied");
                                self.record_pending(aggregate_id, &events, true).await;
                                return Ok(done);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                // Cannot tell yet; the next round asks again.
                                uncertain = Some(e.to_string());
                                continue;
                            }
                        }
                    }
                    return Err(conflict(actual));
                }
                Attempt::Unreadable(e) => {
                    tracing::warn!(%aggregate_id, expected_version, attempt, error = %e, "conditional append answered unreadably; re-proposing to learn its outcome");
                    uncertain = Some(e.to_string());
                }
                Attempt::Failed(e) if outcome_unknown(&e) || unavailable_after_accept(&e) => {
                    tracing::debug!(%aggregate_id, expected_version, attempt, error = %e, "conditional append outcome unknown; re-proposing");
                    uncertain = Some(e.to_string());
                }
                Attempt::Failed(e) => {
                    if uncertain.is_none() {
                        return Err(exec_err("append failed", *e));
                    }
                    // Still unknown; keep trying to resolve it.
                    uncertain = Some(e.to_string());
                }
            }
        }
        // Attempts exhausted with the outcome unknown: report success only if
        // the events are provably there.
        if let Ok(Some(id)) = self.event_id_at(s, aggregate_id, expected_version + 1).await {
            if id == events[0].event_id {
                self.record_pending(aggregate_id, &events, true).await;
                return Ok(done);
            }
            let actual = match self.load_after(aggregate_id, expected_version).await {
                Ok(evs) => evs.last().map(|e| e.sequence).unwrap_or(expected_version),
                Err(_) => expected_version + 1,
            };
            return Err(conflict(actual));
        }
        // It may still land: a proposal a replica accepted is completed by
        // the aggregate's next conditional write (or SERIAL read), with the
        // original ballot's time, so its CDC rows may lie behind the relay.
        self.record_pending(aggregate_id, &events, false).await;
        Err(StoreError::OutcomeUnknown(format!(
            "append to aggregate {aggregate_id} at version {expected_version}: outcome unknown after {MAX_APPEND_ATTEMPTS} attempts (the events may or may not have been written; reload the aggregate): {}",
            uncertain.unwrap_or_default()
        )))
    }
}

#[cfg(test)]
#[path = "append_tests.rs"]
mod tests;
