//! Broker outages longer than every timeout in the path (message timeout,
//! breaker open timeout, retry backoff cap), twice in one run, while 16
//! writers keep advancing order lifecycles: the relay pauses, /health and the
//! lag gauges say so, and after each outage it resumes in order by itself.

use super::*;

#[test]
fn soak_broker_outages_longer_than_every_timeout_keep_every_aggregate_in_order() {
    let kafka = PrivateKafka::start();
    let dir = kept_on_failure();
    let mut cfg = daemon_config(&kafka.brokers, dir.path());
    cfg.kafka.message_timeout_ms = 2000;
    let db = cfg.store.path.clone();
    let mut env = soak_env(&cfg, "at-least-once");
    env.push(("OUTBOX_RELAY__BREAKER__OPEN_TIMEOUT_MS", "1000".into()));
    let d = Daemon::start(&cfg, &env);
    let load = Load::start(vec![d.api], LoadSpec::default());
    let mut windows = Vec::new();
    for round in 1..=2 {
        sleep_ms(4000);
        let lo = checkpoint(&db, RELAY);
        kafka.stop();
        // 4x the message timeout, 8x the breaker's open timeout and backoff cap.
        sleep_ms(8000);
        let m = d.metrics();
        assert!(m.value("relay_lag_events", &[("role", "active")]) > 0.0, "lag shows the outage");
        assert!(m.value("relay_lag_seconds", &[("role", "active")]) > 1.0, "lag age grows during the outage");
        let (_, h) = d.health();
        let (status, detail) = component(&h, "kafka");
        assert_ne!(status, "healthy", "round {round}: /health says the broker is gone: {detail}");
        kafka.restart();
        windows.push(Window::new(format!("outage {round}"), lo, head(&db)));
    }
    sleep_ms(3000);
    let stats = load.stop();
    assert!(stats.ok() > 200, "the workload kept writing: {}", stats.line());
    windows.extend(unverified_windows(dir.path()));
    let v = settle_and_judge(&kafka.brokers, &cfg, &db, &windows);
    eprintln!("outage soak: {}; {}", stats.line(), v.summary());
    v.report_windows("outage soak", &windows);
    v.assert_sound("after two broker outages");
    assert_eq!(sqlite3(&db, "SELECT COUNT(*) FROM dead_letter_queue").trim(), "0", "nothing dead-lettered");
    assert_eq!(d.metrics().value("dlq_parked_aggregates", &[]), 0.0, "nothing parked");
    d.stop();
}
