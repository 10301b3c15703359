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
//!   client timeout / broken connection) means the batch may or may not have
//!   been applied. The append then re-proposes the *same* batch (safe: the
//!   condition lets at most one of the attempts apply, and Paxos never
//!   completes a proposal older than a later commit). If the re-proposal
//!   fails its condition, the row at `expected + 1` is read with SERIAL
//!   consistency: our `event_id` there means an earlier attempt landed
//!   (success), anything else is a `Conflict`. If the attempts run out while
//!   the outcome is still unknown, the error is `Unavailable` (never success).
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

use super::rows::{as_bigint, lwt_answer};
use super::schema::Statements;
use super::{codec, exec_err, unavailable, CqlStore};
use crate::envelope::EventEnvelope;
use crate::store::{check_batch, Appended, EventStore, StoreError};

/// How often an append with an unknown outcome (CAS timeout) is re-proposed.
const MAX_APPEND_ATTEMPTS: u32 = 6;

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
}

/// True when an error leaves the outcome of a (conditional) write unknown:
/// the request may have reached the coordinator and been applied.
pub(super) fn outcome_unknown(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::RequestTimeout(_) => true,
        ExecutionError::LastAttemptError(a) => match a {
            RequestAttemptError::BrokenConnectionError(_) => true,
            RequestAttemptError::DbError(db, _) => matches!(
                db,
                // CAS write timeouts (contention or Paxos timeouts), commit-phase
                // write timeouts, and timeouts of the Paxos read phase.
                DbError::WriteTimeout { .. }
                    | DbError::ReadTimeout { .. }
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
        Ok(match lwt_answer(res, "version")? {
            (true, _) => Attempt::Applied,
            (false, v) => Attempt::Rejected(as_bigint(v)?.unwrap_or(0)),
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
            match self.try_append(s, aggregate_id, expected_version, &events).await? {
                Attempt::Applied => return Ok(done),
                Attempt::Rejected(actual) => {
                    if uncertain.is_some() && actual >= done.version {
                        // An earlier attempt of ours may be the one that landed.
                        match self.event_id_at(s, aggregate_id, expected_version + 1).await {
                            Ok(id) if id == Some(events[0].event_id) => {
                                tracing::debug!(%aggregate_id, expected_version, "append with an unknown outcome had been applied");
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
                Attempt::Failed(e) if outcome_unknown(&e) => {
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
                return Ok(done);
            }
            let actual = match self.load_after(aggregate_id, expected_version).await {
                Ok(evs) => evs.last().map(|e| e.sequence).unwrap_or(expected_version),
                Err(_) => expected_version + 1,
            };
            return Err(conflict(actual));
        }
        Err(unavailable(format!(
            "append to aggregate {aggregate_id} at version {expected_version}: outcome unknown after {MAX_APPEND_ATTEMPTS} attempts (the events may or may not have been written; reload the aggregate): {}",
            uncertain.unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CqlConfig;
    use scylla::statement::Consistency;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    /// A simulated CAS write timeout (the outcome-unknown case).
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Inject {
        /// The batch is not sent; the caller sees a CAS write timeout.
        LostRequest,
        /// The batch is applied; the caller sees a CAS write timeout.
        LostReply,
    }

    /// The driver session, except that queued faults hit the next batches;
    /// counts every batch attempt whose outcome was unknown.
    #[derive(Default)]
    struct FaultyBatches {
        queue: Mutex<VecDeque<Inject>>,
        unknown: AtomicU32,
    }

    impl FaultyBatches {
        fn inject(&self, faults: impl IntoIterator<Item = Inject>) {
            self.queue.lock().unwrap().extend(faults);
        }

        fn unknown_outcomes(&self) -> u32 {
            self.unknown.load(Ordering::Relaxed)
        }
    }

    fn cas_timeout() -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::WriteTimeout {
                consistency: Consistency::LocalQuorum,
                received: 0,
                required: 1,
                write_type: scylla::errors::WriteType::Cas,
            },
            "injected CAS write timeout".into(),
        ))
    }

    #[async_trait]
    impl BatchExecutor for FaultyBatches {
        async fn execute(
            &self,
            session: &Session,
            batch: &Batch,
            values: BatchValues,
        ) -> Result<QueryResult, ExecutionError> {
            let fault = self.queue.lock().unwrap().pop_front();
            let res = match fault {
                Some(Inject::LostRequest) => Err(cas_timeout()),
                Some(Inject::LostReply) => session.batch(batch, values).await.and(Err(cas_timeout())),
                None => session.batch(batch, values).await,
            };
            if res.as_ref().err().is_some_and(outcome_unknown) {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
            res
        }
    }

    /// A fresh keyspace on the server of `CASSANDRA_URI` / `SCYLLA_URI`, if set.
    async fn live() -> Option<(Arc<CqlStore>, Arc<FaultyBatches>)> {
        let uri =
            std::env::var("CASSANDRA_URI").ok().or_else(|| std::env::var("SCYLLA_URI").ok()).filter(|s| !s.is_empty());
        let Some(uri) = uri else {
            eprintln!("SKIPPED: set CASSANDRA_URI or SCYLLA_URI to run the CQL fault-injection cases");
            return None;
        };
        let cfg = CqlConfig { uri, keyspace: format!("u_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
        let faults = Arc::new(FaultyBatches::default());
        let store = CqlStore::connect_with(&cfg, faults.clone()).await.expect("connect");
        store.migrate().await.expect("migrate");
        Some((store, faults))
    }

    fn events(id: Uuid, from: i64, n: usize) -> Vec<EventEnvelope> {
        (0..n)
            .map(|i| EventEnvelope {
                event_id: Uuid::now_v7(),
                aggregate_type: "order".into(),
                aggregate_id: id,
                sequence: from + 1 + i as i64,
                event_type: "OrderCancelled".into(),
                schema_version: 1,
                payload: serde_json::json!({ "reason": format!("r{i}") }),
                causation_id: None,
                correlation_id: Uuid::now_v7(),
                timestamp: crate::envelope::now_millis(),
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cas_timeout_with_lost_reply_is_resolved_as_success() {
        let Some((s, faults)) = live().await else { return };
        let id = Uuid::now_v7();
        let ev = events(id, 0, 2);
        faults.inject([Inject::LostReply]);
        assert_eq!(
            s.append(id, 0, ev.clone()).await.unwrap().version,
            2,
            "the batch was applied; the retry finds our events"
        );
        assert_eq!(s.load(id).await.unwrap(), ev, "written exactly once");
        // Twice lost, then the retry: still exactly once.
        let more = events(id, 2, 1);
        faults.inject([Inject::LostReply, Inject::LostReply]);
        assert_eq!(s.append(id, 2, more.clone()).await.unwrap().version, 3);
        assert_eq!(s.load(id).await.unwrap().len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cas_timeout_with_lost_request_is_retried() {
        let Some((s, faults)) = live().await else { return };
        let id = Uuid::now_v7();
        let ev = events(id, 0, 1);
        faults.inject([Inject::LostRequest]);
        assert_eq!(s.append(id, 0, ev.clone()).await.unwrap().version, 1);
        assert_eq!(s.load(id).await.unwrap(), ev);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cas_timeout_while_another_writer_won_is_a_conflict() {
        let Some((s, faults)) = live().await else { return };
        let id = Uuid::now_v7();
        let winner = events(id, 0, 1);
        s.append(id, 0, winner.clone()).await.unwrap();
        // Our request at the same version is lost: the retry is rejected at
        // version 1, and the event there is not ours.
        faults.inject([Inject::LostRequest]);
        let err = s.append(id, 0, events(id, 0, 1)).await.unwrap_err();
        assert_eq!(err, StoreError::Conflict { aggregate_id: id, expected: 0, actual: 1 });
        // Same with a lost reply of a batch that was rejected anyway.
        faults.inject([Inject::LostReply]);
        let err = s.append(id, 0, events(id, 0, 1)).await.unwrap_err();
        assert_eq!(err, StoreError::Conflict { aggregate_id: id, expected: 0, actual: 1 });
        assert_eq!(s.load(id).await.unwrap(), winner, "only the winner's event is stored");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outcome_unknown_on_every_attempt_is_never_success() {
        let Some((s, faults)) = live().await else { return };
        let id = Uuid::now_v7();
        faults.inject(std::iter::repeat_n(Inject::LostRequest, MAX_APPEND_ATTEMPTS as usize));
        let err = s.append(id, 0, events(id, 0, 1)).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(ref m) if m.contains("outcome unknown")), "{err:?}");
        assert!(s.load(id).await.unwrap().is_empty());
    }

    /// Heavy LWT contention (real CAS timeouts happen here): per round exactly
    /// one writer wins, every other append is a Conflict or an honest
    /// "outcome unknown" Unavailable, and the stored sequence has no gaps.
    /// `cargo test --lib stress_contention -- --ignored` with CASSANDRA_URI set.
    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    #[ignore]
    async fn stress_contention() {
        let Some((s, _)) = live().await else { return };
        let writers = 32;
        let rounds = 20;
        let id = Uuid::now_v7();
        let mut unknown = 0;
        for round in 0..rounds {
            let mut tasks = Vec::new();
            for _ in 0..writers {
                let s = s.clone();
                let ev = events(id, round, 1);
                let mine = ev[0].event_id;
                tasks.push(tokio::spawn(async move { (mine, s.append(id, round, ev).await) }));
            }
            let mut winners = Vec::new();
            for t in tasks {
                let (mine, r) = t.await.unwrap();
                match r {
                    Ok(a) => {
                        assert_eq!(a.version, round + 1);
                        winners.push(mine);
                    }
                    Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, round + 1),
                    Err(StoreError::Unavailable(m)) if m.contains("outcome unknown") => unknown += 1,
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
            let stored = s.load(id).await.unwrap();
            assert_eq!(stored.len() as i64, round + 1, "round {round}: one event per round");
            let landed = stored.last().unwrap().event_id;
            assert!(winners.len() <= 1, "round {round}: {} winners", winners.len());
            if let Some(w) = winners.first() {
                assert_eq!(*w, landed, "round {round}: the reported winner's event is the stored one");
            }
        }
        eprintln!("stress: {writers} writers x {rounds} rounds, {unknown} unresolved outcomes");
    }

    /// Real unknown outcomes: a 5 ms client timeout gives up on most
    /// conditional batches while the server may still apply them. Every
    /// append must still end as exactly one winner per round, Conflicts for
    /// the rest (or an honest "outcome unknown"), and no gaps.
    /// `cargo test --lib stress_client_timeouts -- --ignored` with CASSANDRA_URI set.
    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    #[ignore]
    async fn stress_client_timeouts() {
        let Some((admin, _)) = live().await else { return };
        let uri = std::env::var("CASSANDRA_URI").or_else(|_| std::env::var("SCYLLA_URI")).unwrap();
        let cfg =
            CqlConfig { uri, keyspace: admin.keyspace().to_string(), request_timeout_ms: 5, ..CqlConfig::default() };
        let counted = Arc::new(FaultyBatches::default());
        let s = CqlStore::connect_with(&cfg, counted.clone()).await.unwrap();
        let id = Uuid::now_v7();
        let (mut won, mut lost, mut unknown) = (0, 0, 0);
        for _ in 0..20 {
            let v = admin.load(id).await.unwrap().len() as i64;
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let s = s.clone();
                let ev = events(id, v, 1);
                let mine = ev[0].event_id;
                tasks.push(tokio::spawn(async move { (mine, s.append(id, v, ev).await) }));
            }
            let mut winners = Vec::new();
            for t in tasks {
                let (mine, r) = t.await.unwrap();
                match r {
                    Ok(_) => winners.push(mine),
                    Err(StoreError::Conflict { actual, .. }) => {
                        assert!(actual > v);
                        lost += 1
                    }
                    Err(StoreError::Unavailable(m)) if m.contains("outcome unknown") => unknown += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            won += winners.len();
            // Let proposals the clients gave up on settle, then check.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let stored = admin.load(id).await.unwrap();
            assert!(winners.len() <= 1 && stored.len() as i64 <= v + 1);
            if let Some(w) = winners.first() {
                assert_eq!(stored.last().unwrap().event_id, *w, "the reported winner is the stored event");
            }
            let seqs: Vec<i64> = stored.iter().map(|e| e.sequence).collect();
            assert_eq!(seqs, (1..=stored.len() as i64).collect::<Vec<_>>(), "no gaps");
        }
        let attempts = counted.unknown_outcomes();
        eprintln!("client timeouts: {won} won, {lost} conflicts, {unknown} unresolved, {attempts} batch attempts with unknown outcome");
        assert!(attempts > 0, "the 5 ms timeout should have produced unknown outcomes");
    }
}
