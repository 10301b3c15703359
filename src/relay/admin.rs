//! Topic administration for the relay: creates the event topics (and the
//! exactly-once progress topic) that are missing; deletes the topics of a
//! prefix a caller generated (the bench's own, at its end).
//!
//! Guarantees: an existing topic is left as it is (partitions and configs
//! are the operator's); a refused topic name is a permanent error naming
//! the topic; an unreachable broker is a transient error (the caller
//! retries). The progress topic is created compacted with one partition, so
//! the last record per consumer is the one that counts.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::time::Duration;

use crate::config::KafkaConfig;
use crate::relay::error::PublishError;
use crate::relay::off_runtime::DropOffRuntime;
use crate::relay::producer::{producer_config, Delivery};

/// An admin client with the relay's connection settings (security included).
fn admin_client(cfg: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, PublishError> {
    producer_config(cfg, &Delivery::AtLeastOnce)
        .create()
        .map_err(|e| PublishError::permanent("config", format!("cannot create Kafka admin client: {e}")))
}

/// Creates `topics` (with the configured partitions) where missing.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[String], timeout: Duration) -> Result<(), PublishError> {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, cfg.partitions, TopicReplication::Fixed(cfg.replication_factor)))
        .collect();
    create(cfg, &new, timeout).await.map(|_| ())
}

/// Creates the exactly-once progress topic (compacted, one partition) where
/// missing: true when this call created it (so it is compacted, as asked),
/// false when it existed (and may predate that; see [`progress_topic_problem`]).
pub async fn ensure_progress_topic(cfg: &KafkaConfig, topic: &str, timeout: Duration) -> Result<bool, PublishError> {
    let t = NewTopic::new(topic, 1, TopicReplication::Fixed(cfg.replication_factor)).set("cleanup.policy", "compact");
    create(cfg, &[t], timeout).await.map(|created| created == 1)
}

/// Why an existing progress topic is not what exactly-once mode needs (not
/// compacted: it keeps every transaction's record for the whole retention,
/// and each term start reads it all), or `None` when it is. Versions before
/// 2026-12-04 created it like an event topic.
pub async fn progress_topic_problem(
    cfg: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Option<String>, PublishError> {
    use rdkafka::admin::ResourceSpecifier;
    let admin = admin_client(cfg)?;
    let admin = DropOffRuntime::new(admin);
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let described = tokio::time::timeout(
        timeout + Duration::from_secs(1),
        admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts),
    )
    .await
    .map_err(|_| PublishError::transient("timeout", format!("broker did not describe {topic} within {timeout:?}")))?
    .map_err(|e| PublishError::from_kafka(&e))?;
    let policy = match described.into_iter().next() {
        Some(Ok(r)) => r.get("cleanup.policy").and_then(|e| e.value.clone()).unwrap_or_default(),
        Some(Err(code)) => return Err(PublishError::from_kafka(&KafkaError::AdminOp(code))),
        None => return Ok(None),
    };
    Ok((!policy.split(',').any(|p| p.trim() == "compact")).then(|| {
        format!(
            "progress topic {topic} has cleanup.policy={policy}, not compact: it grows by one record per transaction and every relay start reads it all; fix it with: kafka-configs.sh --bootstrap-server {} --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact",
            cfg.brokers
        )
    }))
}

/// Deletes every topic whose name starts with `prefix`; returns their
/// names. Only for a prefix the caller generated for itself (the bench's
/// `bench<uuid>.`): an empty prefix, which would name every topic, is refused.
pub async fn delete_prefixed(cfg: &KafkaConfig, prefix: &str, timeout: Duration) -> Result<Vec<String>, PublishError> {
    if prefix.is_empty() {
        return Err(PublishError::permanent("config", "refusing to delete topics of an empty prefix"));
    }
    let admin = admin_client(cfg)?;
    // Metadata is a blocking call: on the blocking pool, admin client and all.
    let (admin, listed) = tokio::task::spawn_blocking(move || {
        let listed = admin
            .inner()
            .fetch_metadata(None, timeout)
            .map(|md| md.topics().iter().map(|t| t.name().to_string()).collect::<Vec<_>>());
        (admin, listed)
    })
    .await
    .map_err(|e| PublishError::transient("join", e.to_string()))?;
    let admin = DropOffRuntime::new(admin);
    let names: Vec<String> =
        listed.map_err(|e| PublishError::from_kafka(&e))?.into_iter().filter(|t| t.starts_with(prefix)).collect();
    if names.is_empty() {
        return Ok(names);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = tokio::time::timeout(timeout + Duration::from_secs(1), admin.delete_topics(&refs, &opts))
        .await
        .map_err(|_| PublishError::transient("timeout", format!("broker did not delete {prefix}* within {timeout:?}")))?
        .map_err(|e| PublishError::from_kafka(&e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((t, code)) => {
                let mut e = PublishError::from_kafka(&KafkaError::AdminOp(code));
                e.message = format!("deleting topic {t}: {}", e.message);
                return Err(e);
            }
        }
    }
    Ok(names)
}

/// Creates `topics` where missing; returns how many this call created.
async fn create(cfg: &KafkaConfig, topics: &[NewTopic<'_>], timeout: Duration) -> Result<usize, PublishError> {
    let admin = admin_client(cfg)?;
    // Its drop joins a polling thread (up to 100 ms): not on this worker.
    let admin = DropOffRuntime::new(admin);
    let opts = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = tokio::time::timeout(timeout + Duration::from_secs(1), admin.create_topics(topics, &opts))
        .await
        .map_err(|_| {
            PublishError::transient(
                "timeout",
                format!("broker {} did not answer topic creation within {timeout:?}", cfg.brokers),
            )
        })?
        .map_err(|e| PublishError::from_kafka(&e))?;
    let mut created = 0;
    for r in results {
        match r {
            Ok(_) => created += 1,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, RDKafkaErrorCode::InvalidTopic)) => {
                return Err(PublishError::permanent("invalid_topic", format!("broker refused topic name {t:?}")))
            }
            Err((t, code)) => {
                let mut e = PublishError::from_kafka(&KafkaError::AdminOp(code));
                e.message = format!("topic {t}: {}", e.message);
                return Err(e);
            }
        }
    }
    Ok(created)
}
