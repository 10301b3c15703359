//! The dead-letter queue of the CQL store.
//!
//! Guarantee: one dead letter per event: `dead_letter_by_event` (event_id ->
//! id, written with `IF NOT EXISTS`) finds the existing row of an event; its
//! `failure_count` is bumped with a compare-and-set (`IF failure_count = ?`),
//! so concurrent failures of one event add up exactly (the letter keeps the
//! earliest first failure and the latest last one, with its message, in
//! whatever order they are counted); a letter written again (its `id` is
//! the row's, or the row's `last_letter`: a retry after an LWT whose
//! outcome was unknown) is not counted twice. Two first failures
//! racing (one writer's row landing after the other took the mapping over)
//! can leave an orphan row for a moment; the writers' SERIAL checks after
//! their writes find it and fold its count into the event's letter. All DLQ
//! writes are LWTs (never mixed with plain writes on the same cells).

use chrono::{DateTime, Utc};
use scylla::value::CqlValue;
use uuid::Uuid;

use super::rows::{lwt_answer, LetterRow};
use super::{codec, exec_err, unavailable, CqlStore, MAX_CAS_ROUNDS};
use crate::store::{DeadLetter, StoreError};

impl CqlStore {
    pub(super) async fn insert_letter(&self, l: DeadLetter) -> Result<(), StoreError> {
        // An error before this failure is stored is the caller's to retry.
        // Once it is stored, nothing may make the caller record it again:
        // folding orphans (see `settle`) only moves counts already stored,
        // and a fold that fails puts the orphan back (a second letter for
        // the event, its count kept) rather than losing it.
        let mut pending = self.insert_once(l).await?;
        let mut rounds = 0;
        while let Some(orphan) = pending.pop() {
            rounds += 1;
            let folded = if rounds > MAX_CAS_ROUNDS {
                Err(unavailable("too much contention folding letters"))
            } else {
                self.insert_once(orphan.clone()).await
            };
            match folded {
                Ok(more) => pending.extend(more),
                Err(e) => {
                    tracing::warn!(event_id = %orphan.event_id, error = %e, "cannot fold a dead letter into its event's letter; kept as a letter of its own");
                    if let Err(e) = self.write_row(&orphan).await {
                        tracing::error!(event_id = %orphan.event_id, failures = orphan.failure_count, error = %e, "a folded dead letter could not be put back; its failure count is lost");
                    }
                }
            }
        }
        Ok(())
    }

    /// One failure recorded on the event's letter; what it returns are
    /// orphaned letters taken out of the table whose counts still have to
    /// be added (a failed check after the write leaves them for the next
    /// writer: never an error once the failure is stored).
    async fn insert_once(&self, l: DeadLetter) -> Result<Vec<DeadLetter>, StoreError> {
        let s = self.stmts().await?;
        for _ in 0..MAX_CAS_ROUNDS {
            let claim = self
                .session
                .execute_unpaged(&s.dlq_claim, (l.event_id, l.id))
                .await
                .map_err(|e| exec_err("dead letter lookup", e))?;
            let (claimed, existing) = lwt_answer(claim, "id")?;
            let id = if claimed {
                l.id
            } else {
                match existing {
                    Some(CqlValue::Uuid(u)) => u,
                    other => return Err(codec(format!("dead_letter_by_event.id is not a uuid: {other:?}"))),
                }
            };
            match self.letter_serial(id).await? {
                None => {
                    // No row under the mapped id: a first failure, or a row
                    // removed (its mapping goes next) or not written yet (a
                    // writer that died, or one still on its way). A row is
                    // only ever written under a mapping this call owns: a
                    // stale mapping is taken over first (`IF id = <old>`), so
                    // a removal's unclaim, which is conditioned on the old
                    // id, cannot orphan the new row.
                    if !claimed {
                        let res = self
                            .session
                            .execute_unpaged(&s.dlq_reclaim, (l.id, l.event_id, id))
                            .await
                            .map_err(|e| exec_err("dead letter lookup", e))?;
                        if !lwt_answer(res, "id")?.0 {
                            continue;
                        }
                    }
                    if self.write_row(&l).await? {
                        return Ok(self.settle(l.event_id, l.id, (!claimed).then_some(id)).await.unwrap_or_else(|e| {
                            tracing::warn!(event_id = %l.event_id, error = %e, "dead letter written; checking it against racing writers failed");
                            Vec::new()
                        }));
                    }
                }
                Some(row) if row.id == l.id => {
                    // This letter is the row (written again after an
                    // unknown outcome): its failures are counted; only the
                    // racing-writer check of the first write may be owed.
                    return Ok(self.settle(l.event_id, l.id, None).await.unwrap_or_else(|e| {
                        tracing::warn!(event_id = %l.event_id, error = %e, "dead letter written before; checking it against racing writers failed");
                        Vec::new()
                    }));
                }
                Some(row) if row.last_letter == Some(l.id) => return Ok(Vec::new()), // added already
                Some(row) => {
                    let count = row.failure_count;
                    let (error, first, last) = merged_times(&row, &l);
                    let res = self
                        .session
                        .execute_unpaged(
                            &s.dlq_bump,
                            (count.unwrap_or(0) + l.failure_count, error, first, last, l.id, id, count),
                        )
                        .await
                        .map_err(|e| exec_err("update dead letter", e))?;
                    if lwt_answer(res, "failure_count")?.0 {
                        return Ok(Vec::new());
                    }
                }
            }
        }
        Err(unavailable(format!("dead letter of event {}: too much contention updating failure_count", l.event_id)))
    }

    /// The letter's row written if no row has its id (an LWT); whether it was.
    pub(super) async fn write_row(&self, l: &DeadLetter) -> Result<bool, StoreError> {
        let s = self.stmts().await?;
        let values = (
            l.id,
            l.position,
            l.event_id,
            l.aggregate_id,
            &l.event_type,
            &l.payload,
            &l.error_message,
            l.failure_count,
            l.first_failed_at,
            l.last_failed_at,
            l.created_at,
            l.id,
        );
        let res =
            self.session.execute_unpaged(&s.dlq_insert, values).await.map_err(|e| exec_err("write dead letter", e))?;
        Ok(lwt_answer(res, "id")?.0)
    }

    /// After a row was written under `mine`: writers of a first failure
    /// race. Writer A claims the mapping (event -> A) and is about to write
    /// row A; writer B finds the mapping with no row, takes it over (-> B)
    /// and writes row B; A's row lands late, orphaned. Whichever of the two
    /// checks below runs second sees the orphan (SERIAL reads; A's check
    /// follows its write, B's check follows its takeover): A finds the
    /// mapping no longer its own, B finds the row it displaced written after
    /// all. A taker checks both (a third writer may have taken the mapping
    /// over from it before its own row landed). The orphans are taken out
    /// and returned to be counted on the event's letter. `displaced` is the
    /// mapping this write took over.
    pub(super) async fn settle(
        &self,
        event_id: Uuid,
        mine: Uuid,
        displaced: Option<Uuid>,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut orphans = Vec::new();
        if let Some(old) = displaced {
            orphans.extend(self.take_orphan(old).await?);
        }
        let s = self.stmts().await?;
        let res = self
            .session
            .execute_unpaged(&s.dlq_mapping, (event_id,))
            .await
            .map_err(|e| exec_err("dead letter lookup", e))?;
        let mapped = res.into_rows_result().map_err(codec)?.maybe_first_row::<(Option<Uuid>,)>().map_err(codec)?;
        if mapped != Some((Some(mine),)) {
            orphans.extend(self.take_orphan(mine).await?);
        }
        Ok(orphans)
    }

    /// The letter `id` deleted (if it is there) and returned with the
    /// failures counted on it at the moment of the delete.
    async fn take_orphan(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        let s = self.stmts().await?;
        for _ in 0..MAX_CAS_ROUNDS {
            let Some(row) = self.letter_serial(id).await? else { return Ok(None) };
            let count = row.failure_count;
            let letter = row.into_letter()?;
            let res = self
                .session
                .execute_unpaged(&s.dlq_fold, (id, count))
                .await
                .map_err(|e| exec_err("fold dead letter", e))?;
            if lwt_answer(res, "failure_count")?.0 {
                let failure_count = count.unwrap_or(0);
                return Ok(Some(DeadLetter { id: Uuid::now_v7(), failure_count, ..letter }));
            }
        }
        Err(unavailable(format!("dead letter {id}: too much contention folding it")))
    }

    /// The letter `id` read SERIAL (every LWT on it decided first); `None`:
    /// no row. Its `failure_count` is null on a row written by hand.
    async fn letter_serial(&self, id: Uuid) -> Result<Option<LetterRow>, StoreError> {
        let s = self.stmts().await?;
        Ok(self.select_rows::<LetterRow>(&s.dlq_serial_get, (id,), "read dead letter").await?.pop())
    }

    pub(super) async fn list_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let s = self.stmts().await?;
        // The DLQ is small by design; a full scan sorted here is the only way
        // to order a CQL table by something other than its key.
        let rows: Vec<LetterRow> = self.select_rows(&s.dlq_list, (), "list dead letters").await?;
        let mut out = rows.into_iter().map(LetterRow::into_letter).collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|l| (l.created_at, l.position, l.id));
        out.truncate(limit.clamp(1, 100_000));
        Ok(out)
    }

    /// The letters with these ids, one partition read each (the same id
    /// twice is one letter).
    pub(super) async fn get_letters(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        let s = self.stmts().await?;
        let mut out: Vec<DeadLetter> = Vec::new();
        for id in ids {
            if out.iter().any(|l| l.id == *id) {
                continue;
            }
            let rows: Vec<LetterRow> = self.select_rows(&s.dlq_get, (*id,), "read dead letter").await?;
            for row in rows {
                out.push(row.into_letter()?);
            }
        }
        Ok(out)
    }

    pub(super) async fn remove_letter(&self, id: Uuid) -> Result<bool, StoreError> {
        let s = self.stmts().await?;
        let res =
            self.session.execute_unpaged(&s.dlq_event_of, (id,)).await.map_err(|e| exec_err("read dead letter", e))?;
        let Some((event_id,)) =
            res.into_rows_result().map_err(codec)?.maybe_first_row::<(Option<Uuid>,)>().map_err(codec)?
        else {
            return Ok(false);
        };
        let res =
            self.session.execute_unpaged(&s.dlq_delete, (id,)).await.map_err(|e| exec_err("delete dead letter", e))?;
        let (deleted, _) = lwt_answer(res, "id")?;
        if let Some(event_id) = event_id {
            // A later failure of this event starts a new dead letter.
            self.session
                .execute_unpaged(&s.dlq_unclaim, (event_id, id))
                .await
                .map_err(|e| exec_err("delete dead letter lookup", e))?;
        }
        Ok(deleted)
    }

    pub(super) async fn count_letters(&self) -> Result<u64, StoreError> {
        let s = self.stmts().await?;
        let res =
            self.session.execute_unpaged(&s.dlq_count, ()).await.map_err(|e| exec_err("count dead letters", e))?;
        let (n,) = res.into_rows_result().map_err(codec)?.first_row::<(i64,)>().map_err(codec)?;
        Ok(n.max(0) as u64)
    }
}

/// What a failure `l` counted on the stored letter `row` leaves in its
/// message and times: the earlier first failure, the later last one and
/// that one's message. A folded orphan is older than the letter it joins:
/// its times must not move the letter's back.
fn merged_times<'a>(row: &'a LetterRow, l: &'a DeadLetter) -> (&'a str, DateTime<Utc>, DateTime<Utc>) {
    let first = row.first_failed_at.map_or(l.first_failed_at, |f| f.min(l.first_failed_at));
    match row.last_failed_at {
        Some(last) if last > l.last_failed_at => (row.error_message.as_deref().unwrap_or_default(), first, last),
        _ => (l.error_message.as_str(), first, l.last_failed_at),
    }
}

#[cfg(test)]
#[path = "dlq_tests.rs"]
mod tests;
