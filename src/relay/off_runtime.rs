//! A value whose drop blocks, dropped on tokio's blocking pool instead of
//! an async worker.
//!
//! rdkafka's clients block in `drop`: an `AdminClient` joins its polling
//! thread, which sleeps in 100 ms polls, and a `ThreadedProducer` purges,
//! flushes for up to 500 ms and joins its own. Dropped on a runtime worker,
//! that stalls every task on it (the relay's start waited ~105 ms on the
//! topic check's admin client). Guarantee: the wrapped value is dropped
//! exactly once, on a blocking thread when a tokio runtime is current,
//! otherwise where it is dropped.

use std::ops::Deref;

/// Owns `T`; derefs to it; drops it off the async runtime.
pub struct DropOffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> DropOffRuntime<T> {
    pub fn new(value: T) -> Self {
        DropOffRuntime(Some(value))
    }
}

impl<T: Send + 'static> Deref for DropOffRuntime<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for DropOffRuntime<T> {
    fn drop(&mut self) {
        let Some(value) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            // If the runtime is shutting down the closure is dropped unrun,
            // which drops the value with it.
            Ok(rt) => drop(rt.spawn_blocking(move || drop(value))),
            Err(_) => drop(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Reports the thread it was dropped on.
    struct Probe(mpsc::Sender<std::thread::ThreadId>);
    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_runtime_the_value_is_dropped_once_on_another_thread() {
        let (tx, rx) = mpsc::channel();
        drop(DropOffRuntime::new(Probe(tx)));
        let dropped_on = tokio::task::spawn_blocking(move || rx.recv().unwrap()).await.unwrap();
        assert_ne!(dropped_on, std::thread::current().id(), "not on the runtime's own thread");
    }

    #[test]
    fn without_a_runtime_the_value_is_dropped_in_place() {
        let (tx, rx) = mpsc::channel();
        let guard = DropOffRuntime::new(Probe(tx));
        assert_eq!(rx.try_recv().ok(), None, "alive while owned");
        drop(guard);
        assert_eq!(rx.try_recv().unwrap(), std::thread::current().id());
        assert!(rx.try_recv().is_err(), "dropped exactly once");
    }
}
