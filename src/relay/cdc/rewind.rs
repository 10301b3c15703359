//! An operator's rewind of the Scylla CDC relay (`outboxd relay rewind
//! --to-time T`, `POST /relay/rewind {"to_time": T}`): every stream
//! published past T goes back to T, so the changes after T are published
//! again (same `ce_id`; consumers see duplicates, as after the position
//! relay's rewind).
//!
//! Guarantees:
//! - Checked against the streams' progress or, while the current generation
//!   has none (right after a rewind into it), its floor
//!   (`ProgressState::rewind_range`): a second rewind need not wait for
//!   progress.
//! - Refused with the reason, nothing changed ([`check`]): no progress saved
//!   yet, T in the future, T older than the CDC log TTL (the log no longer
//!   holds those changes), T before the current CDC generation began when
//!   the generation in effect then cannot be read or none had begun, or T
//!   not behind any stream's progress (nothing to do).
//! - T in an earlier generation (looked up as scylla-cdc does,
//!   `generations::in_effect_at`) goes into it: scylla-cdc resumes only the
//!   last generation saved, so that one is saved again, read from T, and
//!   the later generation's rows are deleted (it is read from its start when
//!   the reader gets there; `LeaseCheckpointSaver::rewind`).
//! - Carried out only while no reader of the consumer runs, since a running
//!   reader would save its progress over the rewind: by the CLI when no
//!   relay runs ([`rewind_progress`] on a saver it opens under the lease it
//!   took), or by the relay's runner between two reader runs (a [`Rewind`]
//!   sent through [`RewindTx`]: the reader is stopped as at shutdown, its
//!   progress saved, the rewind written, then what the process remembers
//!   having published forgotten, and the reader starts again from the
//!   rewound progress; a rewind refused or not written forgets nothing).
//! - Written like any progress: fenced by the lease epoch (a former holder's
//!   rewind is refused), the generation row's floor first, so a stream
//!   without a row resumes at T too.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

use super::generations::{in_effect_at, within_limit, TIMESTAMPS_TABLE};
use super::saver::{Flushed, LeaseCheckpointSaver};

/// A rewind for the relay's runner to carry out between two reader runs.
pub struct Rewind {
    pub to_ms: i64,
    /// Run once the rewind is written, before the reader starts again (the
    /// reconciling sink forgets what it published).
    pub while_stopped: Box<dyn FnOnce() + Send>,
    /// The request's result (`rewound_from`: the newest progress before,
    /// `rewound_to`, `streams`: how many went back), or why not.
    pub done: oneshot::Sender<Result<Value, String>>,
}

/// The request server's side of the channel to the runner.
#[derive(Clone)]
pub struct RewindTx(mpsc::Sender<Rewind>);

/// The runner's side.
pub type RewindRx = mpsc::Receiver<Rewind>;

/// A channel from the request server to the runner.
pub fn channel() -> (RewindTx, RewindRx) {
    let (tx, rx) = mpsc::channel(1);
    (RewindTx(tx), rx)
}

impl RewindTx {
    /// Hands the rewind to the runner and waits for its outcome (`None`:
    /// the runner ended first, e.g. shutdown or a lost lease).
    pub async fn rewind(&self, to_ms: i64, while_stopped: Box<dyn FnOnce() + Send>) -> Option<Result<Value, String>> {
        let (done, outcome) = oneshot::channel();
        self.0.send(Rewind { to_ms, while_stopped, done }).await.ok()?;
        outcome.await.ok()
    }
}

/// The next rewind, or never when there is no channel (or it closed).
pub async fn next(rx: &mut Option<RewindRx>) -> Rewind {
    match rx {
        Some(r) => match r.recv().await {
            Some(rw) => rw,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// What the rewind is checked against.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub now_ms: i64,
    pub log_ttl: Duration,
    /// The current generation's start (ms), if saved.
    pub generation_ms: Option<i64>,
    /// The oldest and newest per-stream progress (ms), if any.
    pub oldest_ms: Option<i64>,
    pub newest_ms: Option<i64>,
    /// When T is before the current generation: the generation in effect at
    /// T (`None`: none had begun), or why it cannot be read.
    pub earlier: Option<Result<Option<i64>, String>>,
}

impl Bounds {
    /// The earlier generation a rewind to `to_ms` goes into, if it does.
    pub fn into_generation(&self, to_ms: i64) -> Option<i64> {
        self.generation_ms.filter(|g| to_ms < *g)?;
        self.earlier.as_ref()?.as_ref().ok().copied().flatten()
    }
}

/// Why a rewind to `to_ms` cannot be carried out, if it cannot.
pub fn check(to_ms: i64, b: &Bounds) -> Result<(), String> {
    let to = rfc3339(to_ms);
    let (Some(oldest), Some(newest)) = (b.oldest_ms, b.newest_ms) else {
        return Err("the relay has saved no CDC progress yet: nothing to rewind".into());
    };
    if to_ms > b.now_ms {
        return Err(format!("cannot rewind to {to}: it is in the future"));
    }
    let ttl_floor = b.now_ms.saturating_sub(b.log_ttl.as_millis() as i64);
    if to_ms < ttl_floor {
        return Err(format!(
            "cannot rewind to {to}: it is older than the CDC log TTL ({} s), so the log no longer holds those changes; the earliest time is {}",
            b.log_ttl.as_secs(),
            rfc3339(ttl_floor)
        ));
    }
    if let Some(g) = b.generation_ms.filter(|g| to_ms < *g) {
        let why = match &b.earlier {
            Some(Ok(Some(_))) => None,
            Some(Ok(None)) => Some("no earlier generation had begun by then".to_string()),
            Some(Err(e)) => Some(format!("the generation in effect then cannot be read: {e}")),
            None => Some("the generation in effect then was not looked up".to_string()),
        };
        if let Some(why) = why {
            return Err(format!(
                "cannot rewind to {to}: it is before the current CDC generation, which began at {}, and {why}",
                rfc3339(g)
            ));
        }
    }
    if to_ms >= newest {
        let progress = if oldest == newest {
            format!("progress is at {}", rfc3339(oldest))
        } else {
            format!("progress is between {} and {}", rfc3339(oldest), rfc3339(newest))
        };
        return Err(format!("cannot rewind to {to}: no stream has been published past it ({progress})"));
    }
    Ok(())
}

/// [`check`] against `saver`'s progress now: the bounds it passed. A time
/// before the current generation is looked up in `timestamps` (Scylla's
/// [`TIMESTAMPS_TABLE`], or a table of its shape).
pub async fn precheck(
    saver: &LeaseCheckpointSaver,
    to_ms: i64,
    log_ttl: Duration,
    timestamps: &str,
) -> Result<Bounds, String> {
    let state = saver.progress();
    let now_ms = Utc::now().timestamp_millis();
    let (generation_ms, range) = (state.generation(), state.rewind_range());
    let (oldest_ms, newest_ms) = (range.map(|r| r.0), range.map(|r| r.1));
    let mut bounds = Bounds { now_ms, log_ttl, generation_ms, oldest_ms, newest_ms, earlier: None };
    if generation_ms.is_some_and(|g| to_ms < g) && oldest_ms.is_some() {
        let (session, keyspace) = saver.cql();
        bounds.earlier = Some(within_limit(in_effect_at(session, keyspace, timestamps, to_ms)).await);
    }
    check(to_ms, &bounds).map(|()| bounds)
}

/// Checks and writes the rewind on `saver` (no reader of it may run):
/// the request's result, or why it was not done.
pub async fn rewind_progress(saver: &LeaseCheckpointSaver, to_ms: i64, log_ttl: Duration) -> Result<Value, String> {
    rewind_progress_with(saver, to_ms, log_ttl, TIMESTAMPS_TABLE).await
}

/// [`rewind_progress`], an earlier generation looked up in `timestamps`.
pub async fn rewind_progress_with(
    saver: &LeaseCheckpointSaver,
    to_ms: i64,
    log_ttl: Duration,
    timestamps: &str,
) -> Result<Value, String> {
    let before = precheck(saver, to_ms, log_ttl, timestamps).await?;
    let into = before.into_generation(to_ms);
    let streams = match saver.rewind(to_ms, into).await {
        Ok((n, Flushed::Saved(_))) => n,
        Ok((_, Flushed::Fenced { .. })) => return Err("another instance holds the relay lease".into()),
        Err(e) => {
            return Err(format!(
                "cannot write the rewound CDC progress ({e}): not rewound (rows already written at the time make a restart publish their changes after it again)"
            ))
        }
    };
    tracing::warn!(consumer = saver.name(), from_ms = ?before.newest_ms, to_ms, streams, generation_ms = ?into,
        "CDC progress rewound on an operator's request: the changes after it are published again (same ce_id)");
    // From: the furthest any stream had been published (the position
    // relay's checkpoint, in its terms).
    let mut result = json!({
        "rewound_from": before.newest_ms.map(rfc3339),
        "rewound_to": rfc3339(to_ms),
        "streams": streams,
    });
    if let Some(g) = into {
        result["generation"] = json!(rfc3339(g));
    }
    Ok(result)
}

impl Rewind {
    /// The runner's part, once its reader stopped: writes the rewind on
    /// `saver`, then (only if written) runs `while_stopped`, and answers.
    /// True when it was written.
    pub async fn carry_out(self, saver: &LeaseCheckpointSaver, log_ttl: Duration) -> bool {
        let outcome = rewind_progress(saver, self.to_ms, log_ttl).await;
        let written = outcome.is_ok();
        if written {
            (self.while_stopped)();
        }
        let _ = self.done.send(outcome);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn bounds() -> Bounds {
        Bounds {
            now_ms: 100 * H,
            log_ttl: Duration::from_secs(24 * 3600),
            generation_ms: Some(90 * H),
            oldest_ms: Some(98 * H),
            newest_ms: Some(99 * H),
            earlier: None,
        }
    }

    #[test]
    fn a_time_behind_some_stream_within_the_generation_and_the_ttl_is_accepted() {
        assert_eq!(check(95 * H, &bounds()), Ok(()));
        assert_eq!(check(98 * H + 1, &bounds()), Ok(()), "between the oldest and the newest progress");
        assert_eq!(check(90 * H, &bounds()), Ok(()), "the generation's own start");
    }

    #[test]
    fn a_time_in_an_earlier_generation_goes_into_it() {
        let b = Bounds { earlier: Some(Ok(Some(70 * H))), ..bounds() };
        assert_eq!(check(80 * H, &b), Ok(()));
        assert_eq!(b.into_generation(80 * H), Some(70 * H));
        assert_eq!(b.into_generation(95 * H), None, "within the current generation");
        assert_eq!(bounds().into_generation(80 * H), None, "not looked up");
        let e = check(75 * H, &Bounds { log_ttl: Duration::from_secs(20 * 3600), ..b }).unwrap_err();
        assert!(e.contains("older than the CDC log TTL"), "the TTL still bounds it: {e}");
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let err = |to, b: Bounds| check(to, &b).unwrap_err();
        assert!(err(101 * H, bounds()).contains("in the future"));
        let old = Bounds { generation_ms: Some(10 * H), ..bounds() };
        let e = err(70 * H, old);
        assert!(e.contains("older than the CDC log TTL (86400 s)") && e.contains("1970-01-04T04:00:00.000Z"), "{e}");
        let before = "before the current CDC generation, which began at 1970-01-04T18:00:00.000Z, and";
        let e = err(80 * H, bounds());
        assert!(e.contains(before) && e.contains("not looked up"), "{e}");
        let e = err(80 * H, Bounds { earlier: Some(Ok(None)), ..bounds() });
        assert!(e.contains(before) && e.contains("no earlier generation had begun by then"), "{e}");
        let e = err(80 * H, Bounds { earlier: Some(Err("unconfigured table".into())), ..bounds() });
        assert!(e.contains("the generation in effect then cannot be read: unconfigured table"), "{e}");
        let e = err(99 * H, bounds());
        assert!(e.contains("no stream has been published past it (progress is between"), "{e}");
        let at_floor = Bounds { oldest_ms: Some(96 * H), newest_ms: Some(96 * H), ..bounds() };
        let e = err(96 * H, at_floor);
        assert!(e.contains("(progress is at 1970-01-05T00:00:00.000Z)"), "{e}");
        let none = Bounds { oldest_ms: None, newest_ms: None, ..bounds() };
        assert!(err(95 * H, none).contains("no CDC progress yet"));
    }

    #[test]
    fn the_runner_side_waits_forever_without_a_channel_and_after_it_closed() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let wait = |rx| async move {
                let mut rx = rx;
                tokio::time::timeout(Duration::from_millis(20), next(&mut rx)).await.is_err()
            };
            assert!(wait(None).await);
            let (tx, rx) = channel();
            drop(tx);
            assert!(wait(Some(rx)).await, "a closed channel is no rewind");
            let (tx, rx) = channel();
            let sent = tokio::spawn(async move { tx.rewind(7, Box::new(|| {})).await });
            let mut rx = Some(rx);
            let rw = next(&mut rx).await;
            assert_eq!(rw.to_ms, 7);
            (rw.while_stopped)();
            rw.done.send(Ok(json!({ "streams": 1 }))).unwrap();
            assert_eq!(sent.await.unwrap(), Some(Ok(json!({ "streams": 1 }))));
        });
    }
}
