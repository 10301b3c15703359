//! `scripts/kafka-local.sh`, which starts every broker of `make test` and
//! `make dev`: a fresh directory gets a cluster id, and one that starts
//! with '-' (1 in 64 of the URL-safe base64 ids) must still format and
//! start (it used to read as an option: "argument --cluster-id/-t: expected
//! one argument", failing a soak test's private broker at random); a broker
//! started for a process (`KAFKA_OWNER_PID`, which the harness passes) stops
//! once that process is gone, though nothing ran its `stop`.

mod harness;

use harness::*;
use std::time::{Duration, Instant};

#[test]
fn a_cluster_id_starting_with_a_dash_formats_and_the_broker_serves() {
    // Same requirement as every Kafka test: the distribution `make test` installs.
    if harness::shared_brokers().is_none() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("outboxd-kafka-").tempdir().unwrap();
    let id = "-Zx7kTqRk0mP2bW9yVn4eA";
    std::fs::write(dir.path().join("cluster-id"), format!("{id}\n")).unwrap();
    let kafka = PrivateKafka::start_in(dir);
    let topic = format!("dash-{}", uuid::Uuid::now_v7().simple());
    create_topic(&kafka.brokers, &topic, 1, &[]);
    let meta = std::fs::read_to_string(kafka.dir.path().join("data/meta.properties")).unwrap();
    assert!(meta.contains(&format!("cluster.id={id}")), "the broker runs with the given id: {meta}");
    kafka.stop();
}

/// An interrupted `make test` left its private brokers running (their test
/// binary died before its drops stopped them: 512 MB each, until reboot).
/// Now the script stops a broker once its owner process is gone.
#[test]
fn a_broker_whose_owner_died_without_stopping_it_stops() {
    if harness::shared_brokers().is_none() {
        return;
    }
    let _slot = harness::kafka::private_broker_slot();
    let script = harness::repo_root().join("scripts/kafka-local.sh");
    let dir = tempfile::Builder::new().prefix("outboxd-kafka-owner-").tempdir().unwrap();
    let run = |action: &str, owner: &str| {
        std::process::Command::new("bash")
            .arg(&script)
            .arg(action)
            .env("KAFKA_LOCAL_DIR", dir.path())
            .env("KAFKA_OWNER_PID", owner)
            .output()
            .unwrap()
    };
    let bad = run("start", "12x");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("KAFKA_OWNER_PID must be a process id, got '12x'"),
        "{bad:?}"
    );

    let mut owner = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    let started = run("start", &owner.id().to_string());
    assert!(started.status.success(), "{started:?}");
    let status = || run("status", "").status.code();
    assert_eq!(status(), Some(0), "running");
    // Restarted while the owner lives: still running, one watcher.
    assert!(run("start", &owner.id().to_string()).status.success());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(), Some(0), "the owner lives: the broker keeps running");

    owner.kill().unwrap();
    owner.wait().unwrap(); // reaped, as the test binary's parent (cargo) does
    let deadline = Instant::now() + Duration::from_secs(60);
    while status() == Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(dir.path().join("owner-watch.log")).unwrap_or_default();
    let result = run("status", "");
    assert_eq!(result.status.code(), Some(3), "stopped after its owner died: {result:?}; watcher log: {log}");
    assert_eq!(log.matches("is gone: stopping the broker").count(), 1, "one watcher: {log}");
    let kafka_log = std::fs::read_to_string(dir.path().join("kafka.log")).unwrap();
    assert!(kafka_log.to_lowercase().contains("shutting down"), "stopped by its SIGTERM (a controlled shutdown)");
}
