//! Kafka over TLS, against a real broker with a TLS listener
//! (`KAFKA_TLS=1 scripts/kafka-local.sh start`: a CA made for it, the
//! broker's certificate for 127.0.0.1 signed by that CA):
//! - the relay publishes through the TLS listener with `kafka.extra`
//!   `"security.protocol" = "ssl"` and `"ssl.ca.location"` = the CA file,
//!   and every stored event is on the topic (read on the plain listener);
//! - a daemon that does not trust the broker's CA publishes nothing, keeps
//!   its checkpoint, and its log says why;
//! - a CA file that does not exist is refused at load (exit 2, one line
//!   naming the setting).

mod harness;

use harness::config_check::outboxd;
use harness::*;
use std::time::Duration;
use uuid::Uuid;

fn tls_config(dir: &std::path::Path, ca: Option<&std::path::Path>) -> std::path::PathBuf {
    let mut text = "[kafka.extra]\n\"security.protocol\" = \"ssl\"\n".to_string();
    if let Some(ca) = ca {
        text.push_str(&format!("\"ssl.ca.location\" = \"{}\"\n", ca.display()));
    }
    let file = dir.join("outboxd.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn the_relay_publishes_over_tls_and_nothing_to_a_broker_it_does_not_trust() {
    if harness::shared_brokers().is_none() {
        return; // prints SKIPPED with the reason
    }
    let kafka = PrivateKafka::start_tls();
    let (tls_brokers, ca) = kafka.tls.clone().expect("KAFKA_TLS=1 start prints the TLS listener and its CA");

    // Trusting the CA: every event reaches the topic.
    let dir = tempfile::tempdir().unwrap();
    let file = tls_config(dir.path(), Some(&ca));
    let cfg = daemon_config(&tls_brokers, dir.path());
    let d = Daemon::start(&cfg, &[("OUTBOX_CONFIG", file.display().to_string())]);
    let customer = Uuid::now_v7();
    for i in 0..5 {
        let id = create_order(&d, customer, &format!("TLS-{i}"));
        assert_eq!(d.post(&format!("/orders/{id}/confirm"), &serde_json::json!({})).status, 200);
    }
    assert_eq!(caught_up(&d), 10);
    assert_all_on_topic(&kafka.brokers, &d);
    d.stop();

    // Not trusting it (the system's CAs only): the handshake fails, nothing
    // is confirmed, and /health and the log name the certificate check.
    let dir = tempfile::tempdir().unwrap();
    let file = tls_config(dir.path(), None);
    let mut cfg = daemon_config(&tls_brokers, dir.path());
    cfg.kafka.topic_prefix = format!("untrusted-{}-", Uuid::now_v7().simple());
    let d = Daemon::start(&cfg, &[("OUTBOX_CONFIG", file.display().to_string())]);
    create_order(&d, customer, "UNTRUSTED-1");
    eventually(Duration::from_secs(60), "the log to name the failed certificate check", || {
        d.log_text().contains("certificate verify failed").then_some(())
    });
    let h = eventually(Duration::from_secs(30), "/health to name the failed certificate check", || {
        let (_, h) = d.health();
        component(&h, "kafka").1.contains("certificate verify failed").then_some(h)
    });
    assert_eq!((h["status"].as_str(), component(&h, "kafka").0.as_str()), (Some("degraded"), "degraded"), "{h}");
    assert_eq!(h["relay"]["delivered"].as_u64(), Some(0), "{h}");
    assert!(h["relay"]["checkpoint"].as_i64().unwrap_or(0) == 0, "nothing confirmed: {h}");
    d.stop();
}

#[test]
fn a_ca_file_that_does_not_exist_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let file = tls_config(dir.path(), Some(&missing));
    let out = outboxd(&["config"], &[("OUTBOX_CONFIG".into(), file.display().to_string())], dir.path());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("ssl.ca.location") && err.contains("kafka.extra"), "{err}");
}
