//! The keeper's error paths against a store that stops answering: the loss
//! is published at the renewal deadline, and the loop keeps its pace (a
//! deadline in the past once turned it into a busy spin); one failed renewal
//! is retried soon enough that the holder keeps the lease; a release after a
//! renewal whose reply was lost still gives the lease back.
//!
//! The keeper's deadlines are on `std::time::Instant` (this instance's
//! monotonic clock), which tokio's paused clock does not move: these run on
//! the real clock, and assert the order of events (which call the keeper
//! gave up, whether the loss was out by then) or a lower bound on the time
//! between calls (a timer never fires early), never an upper bound on
//! elapsed time, which a slow machine breaks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::keeper::{spawn, LeaseHandle, LeaseState};
use super::pause::PauseHook;
use crate::metrics::Metrics;
use crate::shutdown::Trigger;
use crate::store::lease::{Lease, LeaseCas, LeaseInfo, LeaseStore};
use crate::store::StoreError;
use tokio::sync::watch;

/// A lease table in memory that hangs (never answers) once `hang` is set,
/// and fails the next `fail_cas` writes (a busy store).
#[derive(Default)]
struct Hanging {
    row: Mutex<Option<Lease>>,
    hang: AtomicBool,
    /// When each call began, in order.
    starts: Mutex<Vec<Instant>>,
    /// Each call that never answered and was given up (dropped) by the
    /// keeper: whether its loss was published by then.
    given_up: Mutex<Vec<bool>>,
    /// The keeper's state channel, once it runs.
    keeper: OnceLock<watch::Receiver<LeaseState>>,
    fail_cas: AtomicUsize,
    /// Reads hang when they start this long after the last write that
    /// succeeded began (`renewed`).
    hang_reads_after: Mutex<Option<Duration>>,
    renewed: Mutex<Option<Instant>>,
    /// The next `lost_reply` writes apply, then answer an error 100 ms
    /// later (the reply was lost); `applied` is notified when one applied.
    lost_reply: AtomicUsize,
    applied: tokio::sync::Notify,
    /// What `lease_epoch_floor` answers (the CQL fences' highest epoch).
    floor: std::sync::atomic::AtomicI64,
}

impl Hanging {
    async fn gate(&self) {
        self.starts.lock().unwrap().push(Instant::now());
        if self.hang.load(Ordering::Relaxed) {
            self.never_answer().await;
        }
    }

    /// A call that never answers; when the keeper gives it up, whether the
    /// loss was out by then is recorded (`given_up`).
    async fn never_answer(&self) {
        let _recorded_when_given_up = Unanswered(self);
        std::future::pending::<()>().await;
    }

    fn calls(&self) -> usize {
        self.starts.lock().unwrap().len()
    }
}

struct Unanswered<'a>(&'a Hanging);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let lost = self.0.keeper.get().is_some_and(|rx| matches!(*rx.borrow(), LeaseState::Lost { .. }));
        self.0.given_up.lock().unwrap().push(lost);
    }
}

#[async_trait]
impl LeaseStore for Hanging {
    async fn lease_get(&self, _: &str) -> Result<Option<Lease>, StoreError> {
        self.gate().await;
        let after = *self.hang_reads_after.lock().unwrap();
        let renewed = *self.renewed.lock().unwrap();
        if after.zip(renewed).is_some_and(|(after, renewed)| renewed.elapsed() >= after) {
            self.never_answer().await;
        }
        Ok(self.row.lock().unwrap().clone())
    }
    async fn lease_cas(&self, cas: &LeaseCas) -> Result<bool, StoreError> {
        let began = Instant::now();
        self.gate().await;
        if self.fail_cas.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Unavailable("database is locked".into()));
        }
        {
            let mut row = self.row.lock().unwrap();
            if row.as_ref().map(|r| (r.epoch, r.counter)) != cas.expected {
                return Ok(false);
            }
            *row = Some(cas.new.clone());
        }
        *self.renewed.lock().unwrap() = Some(began);
        if self.lost_reply.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            self.applied.notify_one();
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(StoreError::Unavailable("the reply was lost".into()));
        }
        Ok(true)
    }
    async fn lease_list(&self) -> Result<Vec<LeaseInfo>, StoreError> {
        Ok(vec![])
    }
    async fn set_checkpoint_fenced(&self, _: &str, _: i64, _: i64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn lease_epoch_floor(&self, _: &str) -> Result<i64, StoreError> {
        self.gate().await;
        Ok(self.floor.load(Ordering::SeqCst))
    }
}

/// A keeper over a fresh `Hanging` store, once it holds the lease.
async fn active_keeper(ttl: Duration) -> (Arc<Hanging>, Trigger, LeaseHandle, watch::Receiver<LeaseState>) {
    active_keeper_with(ttl, PauseHook::default()).await
}

async fn active_keeper_with(
    ttl: Duration,
    pause: PauseHook,
) -> (Arc<Hanging>, Trigger, LeaseHandle, watch::Receiver<LeaseState>) {
    let store = Arc::new(Hanging::default());
    let stop = Trigger::new();
    let handle = spawn(store.clone(), "relay", "me", ttl, Metrics::new(), pause, stop.subscribe());
    store.keeper.set(handle.state()).unwrap();
    let mut rx = handle.state();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.active_epoch().is_some())).await.unwrap().unwrap();
    (store, stop, handle, rx)
}

/// Review finding: a process frozen past its renewal deadline (a VM pause)
/// woke with the keeper's last `Active` still on the channel; a relay polled
/// before the keeper handed new events to the producer while a standby had
/// taken over. The state itself now answers "not held" past its deadline,
/// before the keeper has run again.
#[tokio::test]
async fn a_keeper_frozen_past_its_deadline_leaves_a_state_that_is_not_held() {
    let pause = PauseHook::default();
    let (_store, stop, handle, _rx) = active_keeper_with(Duration::from_millis(1500), pause.clone()).await;
    let epoch = handle.current().active_epoch().expect("active");
    pause.pause_for(Duration::from_secs(4));
    // The deadline (2/3 TTL = 1 s after the last renewal) passes while the
    // keeper sleeps: nothing was published since.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        matches!(handle.current(), LeaseState::Active { epoch: e, .. } if e == epoch),
        "the frozen keeper published nothing: {:?}",
        handle.current()
    );
    assert_eq!(handle.current().active_epoch(), None, "past its deadline, the held state is not held");
    stop.fire();
}

/// TTL 1.5 s: renewals every 500 ms, deadline 1 s after the last one. The
/// store hangs while the keeper sleeps after a renewal: its next call (the
/// read at 500 ms) never answers, and the keeper gives it up at its deadline
/// and publishes the loss; then it goes on calling at its pace.
#[tokio::test]
async fn a_store_that_stops_answering_loses_the_lease_at_the_deadline_without_spinning() {
    let ttl = Duration::from_millis(1500);
    let renew_every = ttl / 3;
    let (store, stop, handle, mut rx) = active_keeper(ttl).await;

    // The keeper just published Active and sleeps (one thread: it has not
    // run since): every call from its next one on hangs.
    store.hang.store(true, Ordering::Relaxed);
    let hung_from = store.calls();
    let renewed = store.renewed.lock().unwrap().expect("the write that made it active");
    // A TTL after that write began, a standby may take over: the loss is out
    // before. Checked by order, not by a duration: the keeper's deadline
    // timer is due a third of the TTL before this one and fires first,
    // however late both fire.
    tokio::select! {
        biased;
        lost = rx.wait_for(|s| matches!(s, LeaseState::Lost { .. })) => { lost.unwrap(); }
        _ = tokio::time::sleep_until((renewed + ttl).into()) => {
            panic!("{:?} a TTL after the last renewal began: a standby may take over", handle.current())
        }
    }
    // No call answered: the loss came from the keeper's deadline, not from
    // an answer it waited for, and before a second call (a late loss).
    assert_eq!(store.calls() - hung_from, 1, "calls since the store hung, at the loss");

    // It keeps trying, at its pace: each call that does not answer holds it
    // `renew_every` before the next starts, so calls two apart start at
    // least `renew_every` apart however slow the machine (a timer never
    // fires early). The spin made hundreds of thousands of calls a second.
    let from = store.calls();
    let three_more = async {
        while store.calls() < from + 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), three_more).await.expect("the keeper keeps trying");
    let starts = store.starts.lock().unwrap()[from..].to_vec();
    for w in starts.windows(3) {
        let apart = w[2].duration_since(w[0]);
        assert!(apart >= renew_every, "calls two apart started {apart:?} apart (< {renew_every:?}): the keeper spins");
    }
    stop.fire();
}

#[tokio::test]
async fn one_failed_renewal_is_retried_before_the_deadline_and_the_holder_stays_active() {
    // Renewal every 1 s, deadline 2 s: with the plain pause after a failure,
    // the next renewal would come exactly at the deadline.
    let (store, stop, handle, mut rx) = active_keeper(Duration::from_millis(3000)).await;
    let counter = || store.row.lock().unwrap().as_ref().map(|r| (r.epoch, r.counter)).unwrap();
    let (epoch, before) = counter();

    store.fail_cas.store(1, Ordering::SeqCst);
    let lost = tokio::time::timeout(Duration::from_secs(4), rx.wait_for(|s| !matches!(s, LeaseState::Active { .. })));
    assert!(lost.await.is_err(), "the holder stepped down after one failed renewal: {:?}", handle.current());
    assert_eq!(store.fail_cas.load(Ordering::SeqCst), 0, "the failing renewal was attempted");
    let (now_epoch, after) = counter();
    assert_eq!(now_epoch, epoch, "same epoch: no takeover, no re-election");
    assert!(after >= before + 3, "renewals went on: counter {before} -> {after}");
    stop.fire();
}

/// Renewals fail, and the read of the cycle that starts at the renewal
/// deadline hangs: the loss is published at the deadline (2 s after the
/// last renewal began, TTL 3 s), not once that read gave up a `renew_every`
/// later: the holder published Active past the TTL a standby waits. Checked
/// by order: the keeper gives up the read that hangs only after the loss is
/// out (it gave it up with Active still published, then published Lost).
#[tokio::test]
async fn the_loss_is_published_at_the_deadline_when_the_next_read_hangs() {
    let (store, stop, _handle, mut rx) = active_keeper(Duration::from_millis(3000)).await;
    *store.hang_reads_after.lock().unwrap() = Some(Duration::from_millis(2000));
    store.fail_cas.store(1_000, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| matches!(s, LeaseState::Lost { .. })))
        .await
        .expect("the loss is published")
        .unwrap();
    let a_read_given_up = async {
        while store.given_up.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), a_read_given_up).await.expect("the keeper gives up the hung read");
    let given_up = store.given_up.lock().unwrap().clone();
    assert!(given_up.iter().all(|lost| *lost), "a hung read given up before the loss was out: {given_up:?}");
    stop.fire();
}

/// Review finding: a renewal that applied but whose reply was lost leaves
/// the keeper's counter one behind the row; a shutdown before the next read
/// then released with the stale counter, was refused, said nothing, and the
/// standby waited a whole TTL. The release now re-reads a refused row and
/// releases what is still its own.
#[tokio::test]
async fn a_release_after_a_renewal_whose_reply_was_lost_still_gives_the_lease_back() {
    let (store, mut stop, _handle, _rx) = active_keeper(Duration::from_millis(3000)).await;
    store.lost_reply.store(1, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(5), store.applied.notified()).await.expect("a renewal applied");
    stop.fire();
    tokio::time::timeout(Duration::from_secs(5), stop.wait_drained()).await.expect("the keeper stops");
    let row = store.row.lock().unwrap().clone().unwrap();
    assert_eq!(row.holder, "", "released: {row:?}");
}

/// Review finding: a takeover or creation whose reply was lost, then a
/// shutdown before the next read adopted it: the keeper, not active as far
/// as it knew, released nothing, and the row named a stopped process for a
/// whole TTL. It reads the row back and releases it.
#[tokio::test]
async fn a_shutdown_after_a_creation_whose_reply_was_lost_gives_the_lease_back() {
    let store = Arc::new(Hanging::default());
    store.lost_reply.store(1, Ordering::SeqCst);
    let mut stop = Trigger::new();
    let handle = spawn(
        store.clone(),
        "relay",
        "me",
        Duration::from_millis(3000),
        Metrics::new(),
        PauseHook::default(),
        stop.subscribe(),
    );
    tokio::time::timeout(Duration::from_secs(5), store.applied.notified()).await.expect("the creation applied");
    stop.fire();
    tokio::time::timeout(Duration::from_secs(5), stop.wait_drained()).await.expect("the keeper stops");
    assert_eq!(handle.current().active_epoch(), None, "never published active");
    let row = store.row.lock().unwrap().clone().unwrap();
    assert_eq!((row.holder.as_str(), row.epoch), ("", 1), "released: {row:?}");
}

/// The creation write applies but its reply is lost: the next read shows
/// this keeper's own row, which it adopts (epoch 1). It took the row for
/// another holder's, waited a whole TTL on it, and took itself over at
/// epoch 2 (counted as a takeover, `standby` of itself meanwhile).
#[tokio::test]
async fn a_creation_whose_reply_was_lost_is_adopted_not_taken_over() {
    let store = Arc::new(Hanging::default());
    store.lost_reply.store(1, Ordering::SeqCst);
    let stop = Trigger::new();
    let metrics = Metrics::new();
    let ttl = Duration::from_millis(3000);
    let handle = spawn(store.clone(), "relay", "me", ttl, metrics.clone(), PauseHook::default(), stop.subscribe());
    let mut rx = handle.state();
    let active = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.active_epoch().is_some()))
        .await
        .expect("the keeper becomes active")
        .unwrap()
        .active_epoch();
    assert_eq!(active, Some(1), "its own row adopted, not taken over");
    assert_eq!(metrics.relay_lease_takeovers.with_label_values(&["relay"]).get(), 0);
    stop.fire();
}

/// Review finding (CQL): with the lease row deleted while every instance
/// was stopped, the first to start created epoch 1 under fences the
/// earlier terms had raised to 7; every fenced write of its terms was
/// refused, and the relay held the lease and never published. A keeper
/// that finds no row reads the store's epoch floor first: it creates the
/// row above it, and only after one TTL (a term of that epoch may still act).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_row_is_created_above_the_stores_fences_after_a_ttl() {
    let ttl = Duration::from_millis(600);
    let store = Arc::new(Hanging::default());
    store.floor.store(7, Ordering::SeqCst);
    let stop = Trigger::new();
    let began = Instant::now();
    let handle = spawn(store.clone(), "relay", "me", ttl, Metrics::new(), PauseHook::default(), stop.subscribe());
    let mut rx = handle.state();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.active_epoch().is_some())).await.unwrap().unwrap();
    assert_eq!(rx.borrow().active_epoch(), Some(8));
    assert!(began.elapsed() >= ttl, "created before a TTL of absence: {:?}", began.elapsed());
    assert_eq!(store.row.lock().unwrap().as_ref().map(|r| r.epoch), Some(8));
    stop.fire();
}

/// With no fence anywhere (a fresh store, SQLite), the first row is still
/// created at once, at epoch 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_store_without_fences_gets_epoch_one() {
    let (store, stop, _handle, rx) = active_keeper(Duration::from_secs(30)).await;
    assert_eq!(rx.borrow().active_epoch(), Some(1));
    assert_eq!(store.row.lock().unwrap().as_ref().map(|r| r.epoch), Some(1));
    stop.fire();
}

/// Review finding: a holder whose renewals were failing when it stopped
/// (past its renewal deadline) skipped the release, and the standby waited
/// a whole TTL. The release is a compare-and-set on its own row: still
/// tried, and it lands when no one took the lease over.
#[tokio::test]
async fn a_holder_past_its_deadline_still_gives_the_lease_back_on_shutdown() {
    let (store, mut stop, handle, mut rx) = active_keeper(Duration::from_millis(3000)).await;
    // Every read from now on hangs: no renewal, the loss at the deadline.
    *store.hang_reads_after.lock().unwrap() = Some(Duration::ZERO);
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| matches!(s, LeaseState::Lost { .. })))
        .await
        .expect("the loss at the deadline")
        .unwrap();
    stop.fire();
    tokio::time::timeout(Duration::from_secs(10), stop.wait_drained()).await.expect("the keeper stops");
    assert_eq!(handle.current().active_epoch(), None);
    let row = store.row.lock().unwrap().clone().unwrap();
    assert_eq!(row.holder, "", "released: {row:?}");
}
