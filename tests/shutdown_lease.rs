//! A daemon gives its relay lease back as soon as its actors have stopped,
//! not after the HTTP servers' grace: an admin request waiting for the relay
//! (30 s by default) no longer holds the lease through shutdown, whether a
//! signal stopped the daemon or an actor used up its restart budget (exit
//! 70). Meanwhile no instance published, and an orchestrator's SIGKILL at
//! its own grace left the lease for a whole TTL. A standby taking a
//! released lease says so at INFO; one taking a lapsed lease warns.

mod harness;

use harness::*;
use std::time::Duration;

/// A daemon whose relay never starts a term (nothing listens on its broker
/// address), holding the relay lease, with a rewind request waiting on its
/// admin server: (daemon, the lease holder's reader, the waiting client).
fn holding_with_a_waiting_request(
    dir: &std::path::Path,
    env: &[(&'static str, String)],
) -> (Daemon, impl Fn() -> String, std::thread::JoinHandle<std::io::Result<Resp>>) {
    let cfg = daemon_config(&format!("127.0.0.1:{}", free_port()), dir);
    let d = Daemon::start(&cfg, env);
    let db = cfg.store.path.clone();
    let holder = move || sqlite3(&db, "SELECT holder FROM relay_leases WHERE name = 'kafka-relay'");
    eventually(Duration::from_secs(30), "the relay lease to be held", || (!holder().trim().is_empty()).then_some(()));
    let admin = d.admin;
    let waiting = std::thread::spawn(move || {
        let json = [("Content-Type", "application/json")];
        try_request(admin, "POST", "/relay/rewind", &json, Some(br#"{"to_position": 0}"#))
    });
    eventually(Duration::from_secs(10), "the rewind request to be stored", || {
        (sqlite3(&cfg.store.path, "SELECT count(*) FROM relay_requests").trim() == "1").then_some(())
    });
    (d, holder, waiting)
}

#[test]
fn sigterm_gives_the_lease_back_while_an_admin_request_still_waits() {
    let Some(_) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = [("OUTBOX_SHUTDOWN_DEADLINE_MS", "20000".to_string())];
    let (mut d, holder, waiting) = holding_with_a_waiting_request(dir.path(), &env);
    d.sigterm();
    eventually(Duration::from_secs(15), "the relay lease given back", || holder().trim().is_empty().then_some(()));
    assert!(!waiting.is_finished(), "given back while the admin request still waits:\n{}", d.log_text());
    let status = d.wait_exit(Duration::from_secs(40)).expect("the daemon exits");
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    let _ = waiting.join();
}

/// Review finding (a last read of the fix above): a daemon that stopped
/// itself (a child used up its restart budget) still released its leases
/// only after the HTTP servers' grace.
#[test]
fn an_exhausted_restart_budget_gives_the_lease_back_while_an_admin_request_still_waits() {
    let Some(_) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        fault_injection(),
        ("OUTBOX_SHUTDOWN_DEADLINE_MS", "20000".to_string()),
        ("OUTBOX_SUPERVISION__MAX_RESTARTS", "2".to_string()),
    ];
    let (mut d, holder, waiting) = holding_with_a_waiting_request(dir.path(), &env);
    for _ in 0..3 {
        d.inject("order_actor", "stop");
    }
    eventually(Duration::from_secs(15), "the relay lease given back", || holder().trim().is_empty().then_some(()));
    assert!(!waiting.is_finished(), "given back while the admin request still waits:\n{}", d.log_text());
    let status = d.wait_exit(Duration::from_secs(40)).expect("the daemon exits");
    assert_eq!(status.code(), Some(70), "{}", d.log_text());
    let _ = waiting.join();
}

/// Walkthrough finding: an active relay stopped with its broker down and
/// events unpublished, and the log said nothing of them. It warns with the
/// count (a standby, whose backlog is not its own, does not).
#[test]
fn an_active_relay_stopping_with_events_unpublished_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&format!("127.0.0.1:{}", free_port()), dir.path());
    let d = Daemon::start(&cfg, &[]);
    let db = cfg.store.path.clone();
    let holder = || sqlite3(&db, "SELECT holder FROM relay_leases WHERE name = 'kafka-relay'");
    eventually(Duration::from_secs(30), "the relay lease to be held", || (!holder().trim().is_empty()).then_some(()));
    // A standby on the same store: its stop says nothing of a backlog that
    // is not its own.
    let standby = Daemon::start(&on_new_ports(&cfg), &[]);
    let c = uuid::Uuid::now_v7();
    for sku in ["A", "B"] {
        create_order(&d, c, sku);
    }
    let standby_log = standby.log.clone();
    eventually(Duration::from_secs(30), "the second instance to see itself standby", || {
        standby.log_text().contains("another instance holds the lease (standby)").then_some(())
    });
    standby.stop();
    let text = std::fs::read_to_string(&standby_log).unwrap();
    assert!(!text.contains("stopping with events not yet published"), "a standby does not warn: {text}");
    let log = d.log.clone();
    d.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let warn = text.lines().find(|l| l.contains("stopping with events not yet published")).unwrap_or_else(|| {
        panic!("no warning of the unpublished events; log:\n{text}");
    });
    assert!(warn.contains("WARN") && warn.contains("unpublished=2"), "{warn}");
}

/// Review finding: a standby that took over a lease its holder released on
/// a clean stop logged the WARN of a failed holder, so a rolling restart
/// looked like an incident. A release is told at INFO; a holder that
/// stopped renewing (killed) still warns, naming it.
#[test]
fn a_released_lease_is_taken_over_quietly_and_a_lapsed_one_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&format!("127.0.0.1:{}", free_port()), dir.path());
    let ttl = [("OUTBOX_RELAY__LEASE_TTL_MS", "3000".to_string())];
    let first = Daemon::start(&cfg, &ttl);
    let db = cfg.store.path.clone();
    let holder = || sqlite3(&db, "SELECT holder FROM relay_leases WHERE name = 'kafka-relay'").trim().to_string();
    eventually(Duration::from_secs(30), "the relay lease to be held", || (!holder().is_empty()).then_some(()));
    let first_holder = holder();
    let mut second = Daemon::start(&on_new_ports(&cfg), &ttl);
    eventually(Duration::from_secs(30), "the second instance to see itself standby", || {
        second.log_text().contains("another instance holds the lease (standby)").then_some(())
    });
    first.stop();
    eventually(Duration::from_secs(30), "the second instance to take the released lease", || {
        let h = holder();
        (!h.is_empty() && h != first_holder).then_some(())
    });
    let second_holder = holder();
    let taken = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("took the lease over") && l.contains("kafka-relay"))
            .map(str::to_string)
            .collect()
    };
    let lines = taken(&second.log_text());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("INFO") && lines[0].contains("its holder released it"), "{}", lines[0]);

    // Now the holder is killed: its lease lapses after a TTL, and the
    // instance that takes it warns and names it.
    let third = Daemon::start(&on_new_ports(&cfg), &ttl);
    eventually(Duration::from_secs(30), "the third instance to see itself standby", || {
        third.log_text().contains("another instance holds the lease (standby)").then_some(())
    });
    second.child.kill().unwrap();
    let _ = second.child.wait();
    eventually(Duration::from_secs(30), "the third instance to take the lapsed lease", || {
        taken(&third.log_text()).into_iter().next()
    });
    let line = taken(&third.log_text()).remove(0);
    assert!(line.contains("WARN") && line.contains("stopped renewing") && line.contains(&second_holder), "{line}");
    third.stop();
}
