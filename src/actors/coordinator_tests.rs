//! The coordinator's exit code when a shutdown request arrives after the
//! system already stopped itself (a child used up its restart budget), and
//! how its shutdown deadline is shared.

use super::*;
use crate::config::Config;

/// Review finding: a signal whose stop request reached the coordinator
/// after the shutdown sequence a gave-up child had started was finished got
/// no answer (its waiter was pushed after the waiters were drained): the
/// daemon waited out the deadline and exited 0 instead of 70.
#[test]
fn a_shutdown_request_after_the_system_stopped_gets_the_first_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let system = System::new();
    system.block_on(async move {
        let mut cfg = Config { shutdown_deadline_ms: 2_000, ..Config::default() };
        cfg.store.path = dir.path().join("coordinator.db");
        let store = crate::store::sqlite::SqliteStore::open(&cfg.store.path, cfg.store.sqlite.clone()).await.unwrap();
        let deps = ActorDeps::new(cfg, store, crate::metrics::Metrics::new(), tokio::runtime::Handle::current());
        let (exit_tx, exit_rx) = oneshot::channel();
        let coordinator = CoordinatorActor::new(deps, exit_tx).start();
        coordinator.do_send(ChildGaveUp { actor: ActorName::Order, restarts: 5, last_error: "test".into() });
        let code = tokio::time::timeout(Duration::from_secs(20), exit_rx).await.expect("the system stops").unwrap();
        assert_eq!(code, super::super::EXIT_RESTART_BUDGET);
        let late = coordinator.send(ShutdownSystem { reason: "signal".into(), exit_code: 0 });
        let late = tokio::time::timeout(Duration::from_secs(5), late).await.expect("answered, not left waiting");
        assert_eq!(late.unwrap(), super::super::EXIT_RESTART_BUDGET);
    });
}

/// Review finding: the command drain was given all of the deadline and the
/// projector all of what was left; a drain held up (a store write-locked by
/// a backup) left the relay 50 ms: no settling, no checkpoint persisted.
#[test]
fn the_relay_keeps_a_share_of_the_shutdown_deadline_whatever_the_steps_before_it_take() {
    let t0 = Instant::now();
    let b = ShutdownBudget::new(Duration::from_secs(30), t0);
    assert_eq!(b.drain(t0), Duration::from_secs(15), "commands: half the deadline at most");
    // The drain used all of its share, the projector all of its own.
    let after_drain = t0 + Duration::from_secs(15);
    assert_eq!(b.before_relay(after_drain), Duration::from_millis(7_500));
    let after_projector = after_drain + Duration::from_millis(7_500);
    assert_eq!(b.remaining(after_projector), Duration::from_millis(7_500), "the relay's share");
    // Past the deadline every step still gets the floor.
    assert_eq!(b.drain(t0 + Duration::from_secs(60)), Duration::from_millis(100));
    assert_eq!(b.before_relay(t0 + Duration::from_secs(60)), Duration::from_millis(100));
}
