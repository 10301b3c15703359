//! Broker outages longer than every timeout in the path (message timeout,
//! breaker open timeout, retry backoff cap, lease TTL), three in one run,
//! while 16 writers keep advancing order lifecycles: twice the broker is
//! stopped (connections refused), once it hangs (SIGSTOP: connections open,
//! requests unanswered until SIGCONT). The relay pauses, /health and the lag
//! gauges say so, and after each outage it resumes in order by itself.

use super::*;
use std::process::Command;

/// How long each outage lasts: over twice the longest timeout of the path.
const OUTAGE_MS: u64 = 8000;
const _: () = assert!(OUTAGE_MS > 2 * LONGEST_TIMEOUT_MS);

/// A hung broker: its process stopped (SIGSTOP) until this is dropped (SIGCONT).
struct Hung(String);

impl Hung {
    fn start(kafka: &PrivateKafka) -> Hung {
        // scripts/kafka-local.sh records the broker JVM's pid in its directory.
        let pid = std::fs::read_to_string(kafka.dir.path().join("kafka.pid")).expect("the broker's pid file");
        let pid = pid.trim().to_string();
        assert!(pid.parse::<u32>().is_ok(), "a pid: {pid:?}");
        signal(&pid, "STOP");
        Hung(pid)
    }
}

impl Drop for Hung {
    fn drop(&mut self) {
        signal(&self.0, "CONT");
    }
}

fn signal(pid: &str, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid).status().is_ok_and(|s| s.success());
    assert!(ok || std::thread::panicking(), "kill -{sig} {pid}");
}

#[test]
fn soak_broker_outages_longer_than_every_timeout_keep_every_aggregate_in_order() {
    let kafka = PrivateKafka::start();
    let dir = kept_on_failure();
    let cfg = soak_config(&kafka.brokers, dir.path());
    let db = cfg.store.path.clone();
    let d = Daemon::start(&cfg, &soak_env(&cfg, "at-least-once"));
    let load = Load::start(vec![d.api], LoadSpec::default());
    let mut windows = Vec::new();
    for round in 1..=3 {
        sleep_ms(4000);
        let lo = checkpoint(&db, RELAY);
        // Rounds 1 and 3: stopped; round 2: hung, between two clean outages.
        let hung = (round == 2).then(|| Hung::start(&kafka));
        if hung.is_none() {
            kafka.stop();
        }
        // 4x the message timeout, 8x the breaker's open timeout and backoff
        // cap, 2.6x the transaction timeout and lease TTL.
        sleep_ms(OUTAGE_MS);
        let m = d.metrics();
        assert!(m.value("relay_lag_events", &[("role", "active")]) > 0.0, "round {round}: lag shows the outage");
        assert!(m.value("relay_lag_seconds", &[("role", "active")]) > 1.0, "round {round}: lag age grows");
        let (_, h) = d.health();
        let (status, detail) = component(&h, "kafka");
        assert_ne!(status, "healthy", "round {round}: /health says the broker is gone: {detail}");
        match hung {
            Some(hung) => drop(hung),
            None => kafka.restart(),
        }
        let why = if round == 2 { "hang (SIGSTOP)" } else { "outage" };
        windows.push(Window::new(format!("{why} {round}"), lo, head(&db)));
    }
    sleep_ms(3000);
    let stats = load.stop();
    assert!(stats.ok() > 200, "the workload kept writing: {}", stats.line());
    windows.extend(unverified_windows(dir.path()));
    let v = settle_and_judge(&kafka.brokers, &cfg, &db, &windows);
    eprintln!("outage soak: {}; {}", stats.line(), v.summary());
    v.report_windows("outage soak", &windows);
    v.assert_sound("after two broker outages and a hang");
    assert_eq!(sqlite3(&db, "SELECT COUNT(*) FROM dead_letter_queue").trim(), "0", "nothing dead-lettered");
    assert_eq!(d.metrics().value("dlq_parked_aggregates", &[]), 0.0, "nothing parked");
    d.stop();
}
