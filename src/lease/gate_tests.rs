//! `while_active_prepared` with the lease state driven by the test: each
//! term's resource is made before the lease is waited for, one per term, the
//! next after a term ends (not after shutdown), and a resource that cannot
//! be made ends the loop with its error instead of waiting on without one.
//! `wait_held` returns the epoch once held, every state seen on the way
//! reported, and None (never a hang) on shutdown or a keeper gone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use super::{wait_held, while_active_prepared};
use crate::lease::keeper::{LeaseHandle, LeaseState};
use crate::shutdown::Trigger;

const WAIT: Duration = Duration::from_secs(5);

/// Each term's epoch and the resource it was given.
type Terms = mpsc::UnboundedReceiver<(Option<i64>, usize)>;

/// Runs the gate over `states`: every prepare counted in `made` (failing
/// from the `fail_from`-th on), every term's (epoch, resource) sent on the
/// returned channel; a term lasts until its shutdown.
fn gate(
    states: watch::Receiver<LeaseState>,
    shutdown: &Trigger,
    made: Arc<AtomicUsize>,
    fail_from: usize,
) -> (Terms, tokio::task::JoinHandle<Result<(), String>>) {
    let (tx, terms) = mpsc::unbounded_channel();
    let lease = LeaseHandle::following(states);
    let shutdown = shutdown.subscribe();
    let task = tokio::spawn(async move {
        let prepare = || {
            let n = made.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= fail_from {
                return Err(format!("resource {n} cannot be made"));
            }
            Ok(n)
        };
        while_active_prepared(
            Some(&lease),
            shutdown,
            |_| {},
            prepare,
            |epoch, n, mut term| {
                let tx = tx.clone();
                async move {
                    tx.send((epoch, n)).unwrap();
                    term.recv().await;
                    Ok(())
                }
            },
        )
        .await
    });
    (terms, task)
}

/// Runs the gate with `run(epoch, term, states)` as each term (no
/// resource); each term's epoch is sent on the returned channel first.
fn gate_with<F, Fut>(
    states: watch::Receiver<LeaseState>,
    shutdown: &Trigger,
    run: F,
) -> (mpsc::UnboundedReceiver<Option<i64>>, tokio::task::JoinHandle<Result<(), String>>)
where
    F: Fn(Option<i64>, crate::shutdown::Shutdown, watch::Receiver<LeaseState>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let (tx, terms) = mpsc::unbounded_channel();
    let lease = LeaseHandle::following(states.clone());
    let sub = shutdown.subscribe();
    let task = tokio::spawn(async move {
        while_active_prepared(
            Some(&lease),
            sub,
            |_| {},
            || Ok::<_, String>(()),
            |epoch, (), term| {
                tx.send(epoch).unwrap();
                run(epoch, term, states.clone())
            },
        )
        .await
    });
    (terms, task)
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

#[tokio::test]
async fn each_term_gets_a_resource_made_before_the_lease_came() {
    let (state, states) = watch::channel(LeaseState::Standby { holder: "other".into(), epoch: 1, ttl_ms: 3000 });
    let shutdown = Trigger::new();
    let made = Arc::new(AtomicUsize::new(0));
    let (mut terms, task) = gate(states, &shutdown, made.clone(), usize::MAX);

    until("the first resource is made while standing by", || made.load(Ordering::SeqCst) == 1).await;
    assert!(terms.try_recv().is_err(), "no term without the lease");
    state.send(LeaseState::active(2)).unwrap();
    assert_eq!(tokio::time::timeout(WAIT, terms.recv()).await.unwrap(), Some((Some(2), 1)));
    assert_eq!(made.load(Ordering::SeqCst), 1, "the term took the resource made before it");

    // The lease goes: the term ends and the next term's resource is made at once.
    state.send(LeaseState::Lost { epoch: 2 }).unwrap();
    until("the next resource is made after the term", || made.load(Ordering::SeqCst) == 2).await;
    assert!(terms.try_recv().is_err(), "no term without the lease");
    state.send(LeaseState::active(3)).unwrap();
    assert_eq!(tokio::time::timeout(WAIT, terms.recv()).await.unwrap(), Some((Some(3), 2)));

    // Shutdown ends the term and the loop; nothing more is made.
    shutdown.fire();
    assert_eq!(tokio::time::timeout(WAIT, task).await.unwrap().unwrap(), Ok(()));
    assert_eq!(made.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_resource_that_cannot_be_made_ends_the_loop_with_its_error() {
    let (state, states) = watch::channel(LeaseState::active(1));
    let shutdown = Trigger::new();
    let made = Arc::new(AtomicUsize::new(0));
    let (mut terms, task) = gate(states, &shutdown, made.clone(), 2);
    assert_eq!(tokio::time::timeout(WAIT, terms.recv()).await.unwrap(), Some((Some(1), 1)));
    state.send(LeaseState::Standby { holder: "other".into(), epoch: 2, ttl_ms: 3000 }).unwrap();
    let end = tokio::time::timeout(WAIT, task).await.expect("the loop ends instead of waiting without a resource");
    assert_eq!(end.unwrap(), Err("resource 2 cannot be made".to_string()));
    assert!(terms.try_recv().is_err(), "no term without its resource");
}

/// Review finding: a renewal late enough to publish `Lost`, then winning
/// its compare-and-set anyway, brings the lease back at the same epoch. A
/// run still finishing the term the gate ended then returned into
/// `Active{same epoch}`, which read as "ended on its own": the supervisor
/// counted a crash (five in a minute stopped the daemon).
#[tokio::test]
async fn a_term_the_gate_ended_is_followed_by_another_when_the_lease_returns_at_the_same_epoch() {
    let (state, states) = watch::channel(LeaseState::active(3));
    let shutdown = Trigger::new();
    let (mut terms, task) = gate_with(states, &shutdown, |_, mut term, mut states| async move {
        term.recv().await;
        // Still finishing when the lease comes back.
        let _ = states.wait_for(|s| s.active_epoch() == Some(3)).await;
        Ok(())
    });
    assert_eq!(tokio::time::timeout(WAIT, terms.recv()).await.unwrap(), Some(Some(3)));
    state.send(LeaseState::Lost { epoch: 3 }).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    state.send(LeaseState::active(3)).unwrap();
    assert_eq!(tokio::time::timeout(WAIT, terms.recv()).await.expect("a new term").unwrap(), Some(3));
    assert!(!task.is_finished(), "the gate waits on, it did not hand the end to the supervisor");
    shutdown.fire();
    assert_eq!(tokio::time::timeout(WAIT, task).await.unwrap().unwrap(), Ok(()));
}

/// Review finding: with the keeper gone while its last state was Active,
/// the gate (ending the term as the lease "went") looped, and `wait_held`
/// returned the stale epoch at once: terms back to back, a resource each.
#[tokio::test]
async fn a_keeper_gone_while_active_ends_the_loop_after_its_term() {
    let (state, states) = watch::channel(LeaseState::active(5));
    let shutdown = Trigger::new();
    let made = Arc::new(AtomicUsize::new(0));
    let (mut terms, task) = gate(states, &shutdown, made.clone(), usize::MAX);
    assert_eq!(tokio::time::timeout(WAIT, terms.recv()).await.unwrap(), Some((Some(5), 1)));
    drop(state);
    let end = tokio::time::timeout(WAIT, task).await.expect("the loop ends instead of running terms back to back");
    assert_eq!(end.unwrap(), Ok(()));
    assert!(made.load(Ordering::SeqCst) <= 2, "no resource per spin: {}", made.load(Ordering::SeqCst));
    assert!(terms.try_recv().is_err(), "one term");
}

#[tokio::test]
async fn without_a_lease_one_unfenced_term_runs_with_its_resource() {
    let shutdown = Trigger::new();
    let (tx, mut terms) = mpsc::unbounded_channel();
    let mut made = 0;
    let end = while_active_prepared(
        None,
        shutdown.subscribe(),
        |_| {},
        || {
            made += 1;
            Ok::<_, String>(made)
        },
        |epoch, n, _term| {
            tx.send((epoch, n)).unwrap();
            async { Ok(()) }
        },
    )
    .await;
    assert_eq!(end, Ok(()));
    assert_eq!(terms.try_recv().unwrap(), (None, 1));
    assert!(terms.try_recv().is_err(), "one term");
}

#[tokio::test]
async fn wait_held_reports_each_role_and_ends_on_the_lease_shutdown_or_a_keeper_gone() {
    // Standby, then held: the epoch, with both states reported.
    let (state, mut rx) = watch::channel(LeaseState::Unknown);
    let shutdown = Trigger::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let waiter = {
        let seen = seen.clone();
        let mut shutdown = shutdown.subscribe();
        tokio::spawn(async move {
            let epoch = wait_held(&mut rx, &mut shutdown, |s| seen.lock().unwrap().push(s.clone())).await;
            (epoch, rx)
        })
    };
    until("the first state is reported", || seen.lock().unwrap().len() == 1).await;
    state.send(LeaseState::Standby { holder: "other".into(), epoch: 4, ttl_ms: 3000 }).unwrap();
    until("standby is reported", || seen.lock().unwrap().len() == 2).await;
    state.send(LeaseState::active(5)).unwrap();
    let (epoch, mut rx) = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(epoch, Some(5));
    let roles: Vec<_> = seen.lock().unwrap().iter().map(|s| s.active_epoch()).collect();
    assert_eq!(roles, vec![None, None, Some(5)]);
    assert!(!rx.has_changed().unwrap(), "the returned receiver has seen the state it returned on");

    // Shutdown while standing by: None.
    state.send(LeaseState::Lost { epoch: 5 }).unwrap();
    let mut sub = shutdown.subscribe();
    let waiting = tokio::spawn(async move { wait_held(&mut rx, &mut sub, |_| {}).await });
    shutdown.fire();
    assert_eq!(tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap(), None);

    // The keeper gone (its channel closed) while standing by: None, not a hang.
    let (state, mut rx) = watch::channel(LeaseState::Standby { holder: "other".into(), epoch: 1, ttl_ms: 3000 });
    let live = Trigger::new();
    let mut sub = live.subscribe();
    let waiting = tokio::spawn(async move { wait_held(&mut rx, &mut sub, |_| {}).await });
    drop(state);
    assert_eq!(tokio::time::timeout(WAIT, waiting).await.expect("no hang").unwrap(), None);
}

/// Review finding: on the CQL feed a term that the gate ended because the
/// lease went fails its last fenced write (the new holder's epoch refuses
/// it) and returned that error: the gate handed it to the supervisor as a
/// crash, a failover spending the restart budget. Now it stands by; a term
/// that fails on its own, lease still held, is still the supervisor's.
#[tokio::test]
async fn a_term_failing_after_the_lease_went_is_a_failover_not_a_crash() {
    let (state, states) = watch::channel(LeaseState::active(3));
    let shutdown = Trigger::new();
    let (mut terms, task) = gate_with(states, &shutdown, |epoch, mut term, _| async move {
        if epoch == Some(7) {
            return Err("the term's own failure".to_string());
        }
        term.recv().await;
        Err(format!("fenced: epoch {epoch:?} refused"))
    });
    assert_eq!(tokio::time::timeout(WAIT, terms.recv()).await.unwrap(), Some(Some(3)));
    state.send(LeaseState::Standby { holder: "other".into(), epoch: 4, ttl_ms: 3000 }).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished(), "standing by, not ended with the term's error");
    state.send(LeaseState::active(7)).unwrap();
    assert_eq!(tokio::time::timeout(WAIT, terms.recv()).await.unwrap(), Some(Some(7)));
    let end = tokio::time::timeout(WAIT, task).await.expect("a term's own failure ends the loop").unwrap();
    assert_eq!(end, Err("the term's own failure".to_string()));
}

/// Review finding: with the keeper gone while its last state was Active,
/// `wait_held` returned that stale epoch at once: the position-feed runner
/// started term after term, a producer each, with no lease behind them.
#[tokio::test]
async fn wait_held_with_the_keeper_gone_while_active_is_none() {
    let (state, mut rx) = watch::channel(LeaseState::active(5));
    drop(state);
    let live = Trigger::new();
    let mut sub = live.subscribe();
    let got = tokio::time::timeout(WAIT, wait_held(&mut rx, &mut sub, |_| {})).await.expect("no hang");
    assert_eq!(got, None);
}
