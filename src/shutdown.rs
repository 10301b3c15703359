//! One shutdown signal, fanned out to every task (mini-redis style).
//!
//! Guarantee: `Trigger::fire` is observed by every `Shutdown` clone, even one
//! created after the signal; tasks finish their in-flight work and drop
//! their `Shutdown`, and `Trigger::wait_drained` tells when all have. A task
//! tied to its owner's lifetime instead ([`AbortOnDrop`]) stops when the
//! owner drops its handle, by whatever path the owner ends.

use tokio::sync::{mpsc, watch};

#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
}

pub struct Trigger {
    tx: watch::Sender<bool>,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

impl Trigger {
    pub fn new() -> Trigger {
        let (tx, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Trigger { tx, done_tx: Some(done_tx), done_rx }
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown { rx: self.tx.subscribe(), _done: self.done_tx.clone().expect("subscribe before wait_drained") }
    }

    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_fired(&self) -> bool {
        *self.tx.borrow()
    }

    /// Waits until every `Shutdown` handed out has been dropped.
    pub async fn wait_drained(&mut self) {
        self.done_tx.take();
        let _ = self.done_rx.recv().await;
    }
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger::new()
    }
}

impl Shutdown {
    /// A shutdown that never fires (for work that must finish once started).
    pub fn never() -> Shutdown {
        static NEVER: std::sync::OnceLock<Trigger> = std::sync::OnceLock::new();
        NEVER.get_or_init(Trigger::new).subscribe()
    }

    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has been signalled.
    pub async fn recv(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }

    /// Sleeps for `d` unless shutdown comes first; returns false on shutdown.
    pub async fn sleep(&mut self, d: std::time::Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.is_shutdown(),
            _ = self.recv() => false,
        }
    }
}

/// A spawned task that is aborted when this handle is dropped: a helper task
/// of a term (a watch, a periodic recount) never outlives the term, whether
/// it ends by shutdown, an error, or its future being dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Spawns `task` on the current runtime.
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> AbortOnDrop {
        AbortOnDrop(tokio::spawn(task))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
