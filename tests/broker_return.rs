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
    resumes_when_the_broker_answers(&[]);
}

/// The exactly-once relay, same outage: a transaction that cannot even be
/// aborted with the broker gone ends its term (the breaker opens only on
/// transactions aborted cleanly, and then ends as above), and a new term
/// waits for the broker to create its topics. Either way it resumes once
/// the broker is back, with a 10-minute open timeout.
#[test]
fn the_exactly_once_relay_resumes_when_the_broker_answers_again() {
    resumes_when_the_broker_answers(&[("OUTBOX_RELAY__DELIVERY", "exactly-once")]);
}

fn resumes_when_the_broker_answers(extra: &[(&'static str, &str)]) {
    let eos = !extra.is_empty();
    let kafka = PrivateKafka::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = daemon_config(&kafka.brokers, dir.path());
    cfg.kafka.message_timeout_ms = 2_000;
    let mut env = vec![("OUTBOX_RELAY__BREAKER__OPEN_TIMEOUT_MS", "600000".to_string())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    if eos {
        env.push(("OUTBOX_RELAY__PROGRESS_TOPIC", format!("{}progress", cfg.kafka.topic_prefix)));
    }
    let d = Daemon::start(&cfg, &env);
    create_order(&d, Uuid::now_v7(), "UP-1");
    caught_up(&d);

    kafka.stop();
    let until = Instant::now() + Duration::from_secs(90);
    let stopped = |h: &serde_json::Value| h["relay"]["breaker"] == "open" || (eos && h["relay"]["running"] == false);
    while !stopped(&d.health().1) {
        assert!(Instant::now() < until, "the relay never stopped publishing; log:\n{}", d.log_text());
        create_order(&d, Uuid::now_v7(), "DOWN-1");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let opened = d.metrics().value("circuit_breaker_transitions_total", &[("from", "closed"), ("to", "open")]) >= 1.0;
    if opened {
        assert!(log.contains("the broker answers again: probing it"), "{log}");
        assert!(
            d.metrics().value("circuit_breaker_transitions_total", &[("from", "open"), ("to", "half_open")]) >= 1.0
        );
    } else {
        assert!(eos, "the at-least-once relay's breaker never opened: {log}");
    }
    d.stop();
}
