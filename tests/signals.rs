//! `daemon::Signals`: SIGINT and SIGTERM are caught from the moment it is
//! installed, before the daemon's slow startup (store connect, migrations)
//! first waits on it. SIGINT used to be registered only at that first wait,
//! so a Ctrl-C during startup killed the process by the default action (no
//! clean exit, the relay lease held until its TTL ran out). Its own test
//! binary: the signal goes to this whole process.

#![cfg(unix)]

use std::time::Duration;

fn signal_self(name: &str) {
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("kill").args([name, &pid]).status().expect("kill(1)");
    assert!(status.success());
}

#[tokio::test]
async fn a_signal_sent_before_the_first_wait_is_received() {
    for name in ["-INT", "-TERM"] {
        let mut signals = outboxd::daemon::Signals::install();
        signal_self(name);
        // Startup work before the first wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::time::timeout(Duration::from_secs(5), signals.recv())
            .await
            .unwrap_or_else(|_| panic!("SIG{} sent before the first wait was not received", &name[1..]));
    }
}
