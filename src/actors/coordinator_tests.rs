//! The coordinator's exit code when a shutdown request arrives after the
//! system already stopped itself (a child used up its restart budget).

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
