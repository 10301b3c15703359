//! The `Deliverer`'s delivery reports: each is handed to the call waiting
//! for it (by token), and a call that ends before its record was handed
//! over removes its own entry. Guarantee: no waiter entry outlives its call
//! unless its record is with the producer (whose report removes it).

use tokio::sync::mpsc;

use super::Waiters;
use crate::relay::producer::Completion;

/// A delivery call's waiter entry, removed when the call ends before its
/// record was handed over (a refusal, or the call dropped while it waited
/// its turn: a term that ended); a handed-over record's entry is removed by
/// its delivery report.
pub(super) struct Waiter<'a> {
    pub(super) waiters: &'a Waiters,
    pub(super) token: usize,
    pub(super) handed_over: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.token);
        }
    }
}

/// Hands each delivery report to the caller waiting for it.
pub(super) async fn route(mut completions: mpsc::UnboundedReceiver<Completion>, waiters: Waiters) {
    while let Some(c) = completions.recv().await {
        let w = waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.token);
        if let Some(tx) = w {
            let _ = tx.send(c.result);
        }
    }
}
