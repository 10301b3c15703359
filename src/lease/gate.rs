//! Runs a consumer only while this instance holds its lease.
//!
//! Guarantee: `while_active` starts `run(epoch, term)` only with the lease
//! held at `epoch`, and fires `term` (the run's own shutdown) at once when
//! the keeper withdraws the lease or when `shutdown` fires; after the run
//! returns it waits for the lease again (also when the lease came back at
//! the same epoch while the run was finishing: that end was the gate's, not
//! the run's; and a run that fails after the gate ended its term for the
//! lease's loss is logged, not handed on: a failover, not a crash). Without a lease (`None`) it runs
//! once, unfenced (single-instance use). `while_active_prepared` also makes
//! each term's resource (`prepare`) before it waits for the lease, so the
//! term starts with it ready (the Scylla CDC relay's producer); a resource
//! that cannot be made ends the loop with that error. `wait_held` is the
//! wait itself, for a caller that runs its terms its own way (the Kafka
//! relay's runner).

use std::future::Future;

use tokio::sync::watch;

use super::keeper::{LeaseHandle, LeaseState};
use crate::shutdown::{Shutdown, Trigger};

/// Calls `on_role` with every role change while waiting, and `run` for every term.
pub async fn while_active<F, Fut, E>(
    lease: Option<&LeaseHandle>,
    shutdown: Shutdown,
    on_role: impl FnMut(&LeaseState),
    mut run: F,
) -> Result<(), E>
where
    F: FnMut(Option<i64>, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    while_active_prepared(lease, shutdown, on_role, || Ok(()), |epoch, (), term| run(epoch, term)).await
}

/// As [`while_active`], and `prepare` makes each term's resource before the
/// lease is waited for; `run` gets it with the term. One resource per term:
/// the next is made when a term has ended (not after shutdown).
pub async fn while_active_prepared<P, F, Fut, E>(
    lease: Option<&LeaseHandle>,
    mut shutdown: Shutdown,
    mut on_role: impl FnMut(&LeaseState),
    mut prepare: impl FnMut() -> Result<P, E>,
    mut run: F,
) -> Result<(), E>
where
    F: FnMut(Option<i64>, P, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Some(lease) = lease else {
        return run(None, prepare()?, shutdown).await;
    };
    let mut rx = lease.state();
    loop {
        let ready = prepare()?;
        let Some(epoch) = wait_held(&mut rx, &mut shutdown, &mut on_role).await else {
            return Ok(());
        };
        // Run one term; end it when the lease goes or shutdown comes.
        let term = Trigger::new();
        let term_shutdown = term.subscribe();
        let ended_here = term.subscribe();
        let mut watch = rx.clone();
        let mut outer = shutdown.clone();
        let watcher = tokio::spawn(async move {
            tokio::select! {
                _ = watch.wait_for(|s| s.active_epoch() != Some(epoch)) => {}
                _ = outer.recv() => {}
            }
            term.fire();
        });
        let res = run(Some(epoch), ready, term_shutdown).await;
        watcher.abort();
        if shutdown.is_shutdown() {
            return res;
        }
        if let Err(e) = res {
            if !ended_here.is_shutdown() {
                return Err(e);
            }
            // The gate ended this term because the lease went: a run that
            // then fails its last fenced write (another instance holds the
            // lease now) ended as a failover does, not as a crash.
            tracing::warn!(error = %e, epoch, "a term ended by the lease's loss returned an error; standing by");
        }
        if rx.has_changed().is_err() {
            // The keeper is gone (its channel closed): no lease will come;
            // its last state must not start another term at once.
            return Ok(());
        }
        // A term this gate ended (the lease went) waits for the lease again,
        // even if it came back at the same epoch while the run was finishing
        // (a late renewal that still won its compare-and-set).
        if !ended_here.is_shutdown() && rx.borrow().active_epoch() == Some(epoch) {
            // The run ended on its own while still holding the lease: the caller's
            // supervisor decides (an unrequested end is a failure there).
            return Ok(());
        }
    }
}

/// Waits until this instance holds the lease and returns its epoch; calls
/// `on_role` with every state seen meanwhile. None when shutdown comes or
/// the keeper is gone (its channel closed, whatever it said last).
pub async fn wait_held(
    rx: &mut watch::Receiver<LeaseState>,
    shutdown: &mut Shutdown,
    mut on_role: impl FnMut(&LeaseState),
) -> Option<i64> {
    loop {
        let state = rx.borrow_and_update().clone();
        on_role(&state);
        if rx.has_changed().is_err() {
            // The keeper is gone: its last state (even Active) is stale.
            return None;
        }
        if let Some(e) = state.active_epoch() {
            return Some(e);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return None },
            _ = shutdown.recv() => return None,
        }
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
