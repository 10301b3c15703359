//! The end of `outboxd run` (`daemon::wait_for_exit`) driven by a fake
//! actor thread: the exit code past the deadline, the bounded waits, the
//! lease release. Time is paused: the deadlines pass instantly.

use super::{wait_for_exit, Channels, Exit};
use crate::shutdown::Trigger;
use std::future::{pending, ready};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

const GRACE: Duration = Duration::from_secs(7);
/// Fails a test whose wait would otherwise never end.
const HANG: Duration = Duration::from_secs(3600);

/// The daemon's ends of the channels, and the fake actor thread's.
struct Fake {
    channels: Channels,
    exit: oneshot::Sender<u8>,
    actors_stopped: oneshot::Sender<u8>,
    stop: oneshot::Receiver<()>,
}

fn fake() -> Fake {
    let (exit_tx, exit) = oneshot::channel();
    let (stopped_tx, actors_stopped) = oneshot::channel();
    let (stop, stop_rx) = oneshot::channel();
    Fake { channels: Channels { exit, actors_stopped, stop }, exit: exit_tx, actors_stopped: stopped_tx, stop: stop_rx }
}

/// A lease keeper: returns the trigger and when the keeper saw it fire.
fn keeper() -> (Option<Trigger>, oneshot::Receiver<Instant>) {
    let trigger = Trigger::new();
    let mut sub = trigger.subscribe();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        sub.recv().await;
        let _ = tx.send(Instant::now());
    });
    (Some(trigger), rx)
}

/// The review's case: the coordinator shuts down with 70 (a child gave up),
/// a SIGTERM arrives meanwhile, the actors stop with 70 but the servers
/// outlast the deadline (an admin request waiting). The exit code is 70,
/// not 0.
#[tokio::test(start_paused = true)]
async fn signal_during_restart_budget_shutdown_still_exits_70_past_the_deadline() {
    let Fake { channels, exit, actors_stopped, stop } = fake();
    let fake_thread = tokio::spawn(async move {
        let _servers_hold = exit; // the servers never stop: no exit code
        let _ = stop.await;
        let _ = actors_stopped.send(70);
        pending::<()>().await
    });
    let (mut leases, released) = keeper();
    let start = Instant::now();
    let mut signal_taken = false;
    let out = tokio::time::timeout(
        HANG,
        wait_for_exit(channels, ready(()), false, GRACE, || signal_taken = true, &mut leases),
    )
    .await
    .expect("the wait ends by the deadline");
    assert!(signal_taken);
    assert_eq!(out, Exit::TimedOut(Some(70)));
    assert_eq!(out.exit_code(), Some(70));
    assert_eq!(start.elapsed(), GRACE);
    assert!(leases.is_none());
    assert_eq!(released.await.unwrap(), start, "leases go once the actors stopped");
    fake_thread.abort();
}

/// The restart-budget path (no signal): the actors stop with 70, the
/// servers never finish; the wait ends at the deadline with 70 and the
/// leases went at once.
#[tokio::test(start_paused = true)]
async fn restart_budget_wait_is_bounded_by_the_deadline() {
    let Fake { channels, exit, actors_stopped, stop } = fake();
    let (mut leases, released) = keeper();
    let start = Instant::now();
    actors_stopped.send(70).unwrap();
    let out = tokio::time::timeout(
        HANG,
        wait_for_exit(channels, pending(), false, GRACE, || panic!("no signal"), &mut leases),
    )
    .await
    .expect("the restart-budget wait is bounded");
    assert_eq!(out, Exit::TimedOut(Some(70)));
    assert_eq!(out.exit_code(), Some(70));
    assert_eq!(start.elapsed(), GRACE);
    assert_eq!(released.await.unwrap(), start);
    drop((exit, stop));
}

/// A shutdown that finishes in time keeps the thread's code: 70 on the
/// restart-budget path, 0 on a signal.
#[tokio::test(start_paused = true)]
async fn timely_exits_keep_their_codes() {
    let Fake { channels, exit, actors_stopped, stop } = fake();
    actors_stopped.send(70).unwrap();
    exit.send(70).unwrap();
    let (mut leases, _released) = keeper();
    let out = wait_for_exit(channels, pending(), false, GRACE, || panic!("no signal"), &mut leases).await;
    assert_eq!(out, Exit::Code(70));
    drop(stop);

    let Fake { channels, exit, actors_stopped, stop } = fake();
    tokio::spawn(async move {
        let _ = stop.await;
        let _ = actors_stopped.send(0);
        let _ = exit.send(0);
    });
    let (mut leases, released) = keeper();
    let start = Instant::now();
    let out = wait_for_exit(channels, ready(()), false, GRACE, || {}, &mut leases).await;
    assert_eq!(out, Exit::Code(0));
    assert!(start.elapsed() < GRACE);
    assert!(released.await.is_ok());
}

/// Actors that never stop after a signal (already taken at startup): the
/// documented exit past the deadline, 0 with a warning.
#[tokio::test(start_paused = true)]
async fn signal_with_actors_stuck_exits_0_at_the_deadline() {
    let Fake { channels, exit, actors_stopped, stop } = fake();
    let (mut leases, _released) = keeper();
    let start = Instant::now();
    let mut signal_taken = false;
    let out = tokio::time::timeout(
        HANG,
        wait_for_exit(channels, pending(), true, GRACE, || signal_taken = true, &mut leases),
    )
    .await
    .unwrap();
    assert!(signal_taken);
    assert_eq!(out, Exit::TimedOut(None));
    assert_eq!(out.exit_code(), Some(0));
    assert_eq!(start.elapsed(), GRACE);
    assert!(stop.await.is_ok(), "the stop request was sent");
    drop((exit, actors_stopped));
}

/// A thread that dies without a code is an error, not a clean exit.
#[tokio::test(start_paused = true)]
async fn lost_thread_is_reported() {
    let Fake { channels, exit, actors_stopped, stop } = fake();
    drop((exit, actors_stopped, stop));
    let out = wait_for_exit(channels, pending(), false, GRACE, || {}, &mut None).await;
    assert_eq!(out, Exit::Lost);
    assert_eq!(out.exit_code(), None);
}
