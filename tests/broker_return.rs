//! After a broker outage the relay probes the broker as soon as the broker
//! watch sees it answer again, not after the circuit breaker's whole open
//! timeout: here 10 minutes, so a relay that waited it out would not catch
//! up within the test's bounds. Writes go on through the outage; every
//! event stored reaches the topic afterwards.

mod harness;

use harness::*;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[test]
fn the_relay_resumes_when_the_broker_answers_again_not_after_the_open_timeout() {
    let kafka = PrivateKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(&kafka.brokers, dir.path());
    cfg.kafka.message_timeout_ms = 2_000;
    let env = [("OUTBOX_RELAY__BREAKER__OPEN_TIMEOUT_MS", "600000".to_string())];
    let d = Daemon::start(&cfg, &env);
    create_order(&d, Uuid::now_v7(), "UP-1");
    caught_up(&d);

    kafka.stop();
    eventually(Duration::from_secs(90), "the circuit breaker to open", || {
        create_order(&d, Uuid::now_v7(), "DOWN-1");
        (d.health().1["relay"]["breaker"] == "open").then_some(())
    });
    // Writes go on while it is open.
    for i in 0..5 {
        create_order(&d, Uuid::now_v7(), &format!("OPEN-{i}"));
    }
    kafka.restart();
    let back = Instant::now();
    // The open timeout is 10 minutes: only the broker watch can end it here.
    eventually(Duration::from_secs(90), "the relay to catch up after the broker returned", || {
        let head = count_events(&d.cfg.store.path);
        let h = d.health().1;
        (h["relay"]["checkpoint"].as_i64() == Some(head) && h["relay"]["breaker"] == "closed").then_some(())
    });
    eprintln!("caught up {:?} after the broker returned", back.elapsed());
    assert_all_on_topic(&kafka.brokers, &d);
    let log = d.log_text();
    assert!(log.contains("the broker answers again: probing it"), "{log}");
    assert!(d.metrics().value("circuit_breaker_transitions_total", &[("from", "open"), ("to", "half_open")]) >= 1.0);
    d.stop();
}
