//! Broker outages longer than every timeout in the path (message timeout,
//! breaker open timeout, retry backoff cap, lease TTL), three in one run,
//! while 16 writers keep advancing order lifecycles: twice the broker is
//! stopped (connections refused), once it hangs (SIGSTOP: connections open,
//! requests unanswered until SIGCONT). The relay pauses, /health and the lag
//! gauges say so, and after each outage it resumes in order by itself.

use super::*;

/// How long each outage lasts: over twice the longest timeout of the path.
const OUTAGE_MS: u64 = 8000;
const _: () = assert!(OUTAGE_MS > 2 * LONGEST_TIMEOUT_MS);

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
        let hung = (round == 2).then(|| kafka.hang());
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
    assert_eq!(d.metrics().sample("dlq_parked_aggregates", &[]), 0.0, "nothing parked");
    d.stop();
}
