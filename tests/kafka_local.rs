//! `scripts/kafka-local.sh`, which starts every broker of `make test` and
//! `make dev`: a fresh directory gets a cluster id, and one that starts
//! with '-' (1 in 64 of the URL-safe base64 ids) must still format and
//! start (it used to read as an option: "argument --cluster-id/-t: expected
//! one argument", failing a soak test's private broker at random).

mod harness;

use harness::*;

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
