//! `bench relay`: the relay against a bare producer, then e2e latency.
//!
//! Guarantee: only measures and prints.
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{Aggregate, Customer, CustomerCommand, Email};
use crate::envelope::{now_millis, EventEnvelope, Metadata};
use crate::metrics::Metrics;
use crate::relay::encode::Encoder;
use crate::relay::producer::{producer_config, Delivery};
use crate::relay::topics::{topic_names, topic_of};
use crate::relay::Relay;
use crate::shutdown::Trigger;
use crate::store::feed::RawEvent;
use crate::store::sqlite::SqliteStore;
use crate::store::DynStore;

/// A customer registration whose JSON envelope is about `size` bytes.
fn event(size: usize) -> EventEnvelope {
    let c = Customer::default();
    let pad = size.saturating_sub(420).clamp(1, 199);
    let cmd = CustomerCommand::Register {
        name: "x".repeat(pad),
        email: Email::new("bench@example.com").expect("email"),
        phone: None,
    };
    let e = c.handle(&cmd).expect("valid").remove(0);
    let mut env =
        EventEnvelope::new::<Customer>(Uuid::now_v7(), 1, &e, &Metadata::default(), now_millis()).expect("encodable");
    // Top up to the requested size with an extra field consumers ignore.
    let len = serde_json::to_vec(&env).map(|v| v.len()).unwrap_or(0);
    if len < size {
        if let Some(o) = env.payload.as_object_mut() {
            o.insert("padding".into(), serde_json::Value::String("p".repeat(size - len - 12)));
        }
    }
    env
}

pub async fn run(base: &Config, n: usize, size: usize, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let dir = super::tempdir(None)?;
    let mut cfg = base.clone();
    cfg.store.path = dir.join("relay.db");
    cfg.kafka.topic_prefix = format!("bench{}.", Uuid::now_v7().simple());
    let store: DynStore = SqliteStore::open(&cfg.store.path, cfg.store.sqlite.clone()).await?;
    let sample = serde_json::to_vec(&event(size))?.len();
    println!(
        "bench relay: {n} events of ~{sample} bytes, brokers {}, compression {}, acks=all, idempotent",
        cfg.kafka.brokers,
        cfg.kafka.compression.as_str()
    );
    let events: Vec<EventEnvelope> = (0..n).map(|_| event(size)).collect();
    for chunk in events.chunks(1) {
        store.append(chunk[0].aggregate_id, 0, chunk.to_vec()).await?;
    }

    // Topics exist before either side is timed.
    let topics: Vec<String> = topic_names(cfg.kafka.per_event_type(), &cfg.kafka.topic_prefix);
    crate::relay::admin::ensure_topics(&cfg.kafka, &topics, Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;

    // Baseline: a bare FutureProducer with the same settings, same records, all in flight.
    let producer: FutureProducer = producer_config(&cfg.kafka, &Delivery::AtLeastOnce).create()?;
    let mut encoder = Encoder::from_config(&cfg.kafka);
    let prepared: Vec<(String, String, Vec<u8>, OwnedHeaders)> = events
        .iter()
        .map(|e| {
            let raw = RawEvent::from_envelope(e, 0).expect("encodable");
            let mut value = Vec::new();
            encoder.value(&raw, &mut value);
            (
                topic_of(cfg.kafka.per_event_type(), &cfg.kafka.topic_prefix, e).replace("-events", "-baseline"),
                e.aggregate_id.to_string(),
                value,
                encoder.headers(&raw),
            )
        })
        .collect();
    let base_topics: Vec<String> = topics.iter().map(|t| t.replace("-events", "-baseline")).collect();
    crate::relay::admin::ensure_topics(&cfg.kafka, &base_topics, Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    for (t, k, v, h) in &prepared {
        loop {
            match producer.send_result(FutureRecord::to(t).key(k).payload(v).headers(h.clone())) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    if let Some(r) = pending.next().await {
                        anyhow::ensure!(matches!(r, Ok(Ok(_))), "baseline delivery failed");
                    }
                }
                Err((e, _)) => anyhow::bail!("baseline send failed: {e}"),
            }
        }
    }
    while let Some(r) = pending.next().await {
        anyhow::ensure!(matches!(r, Ok(Ok(_))), "baseline delivery failed");
    }
    let base_secs = start.elapsed().as_secs_f64();

    // The relay: from the store, with checkpoints, until the checkpoint reaches the head.
    let metrics = Metrics::new();
    let (tx, mut status) = tokio::sync::watch::channel(crate::relay::RelayStatus::default());
    let relay = Relay::new(Arc::new(cfg.clone()), store.clone(), metrics.clone(), crate::relay::StatusTx::new(tx));
    let mut trigger = Trigger::new();
    let sd = trigger.subscribe();
    let head = store.head_position().await?;
    let start = Instant::now();
    let task = tokio::spawn(relay.run(sd));
    status.wait_for(|s| s.checkpoint.unwrap_or(0) >= head).await?;
    let relay_secs = start.elapsed().as_secs_f64();
    let base_rate = n as f64 / base_secs;
    let relay_rate = n as f64 / relay_secs;
    println!("bare producer   : {base_rate:>10.0} events/s ({base_secs:.2} s)");
    println!("relay (store->kafka, checkpointed): {relay_rate:>10.0} events/s ({relay_secs:.2} s)");
    println!("ratio relay/bare: {:.2}x (goal >= 0.8x)", relay_rate / base_rate);

    // Latency: append at `rate`/s, consume, measure append -> consumed.
    let consumer: StreamConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("bench-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "5")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topics[1].as_str()])?;
    // Wait for the assignment before producing.
    let warm = Instant::now();
    while consumer.assignment()?.count() == 0 && warm.elapsed() < Duration::from_secs(20) {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = (rate * seconds) as usize;
    let s2 = sent.clone();
    let st = store.clone();
    let producer_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        for _ in 0..total {
            tick.tick().await;
            let e = event(size);
            s2.lock().map(|mut m| m.insert(e.event_id.to_string(), Instant::now())).ok();
            let _ = st.append(e.aggregate_id, 0, vec![e]).await;
        }
    });
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    while (hist.len() as usize) < total && Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else { continue };
        let id = m.headers().and_then(|h| {
            h.iter().find(|h| h.key == "ce_id").and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).to_string()))
        });
        if let Some(id) = id {
            if let Some(t0) = sent.lock().ok().and_then(|m| m.get(&id).copied()) {
                hist.record(t0.elapsed().as_micros() as u64)?;
            }
        }
    }
    producer_task.await?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!("e2e append -> consumed at {rate} events/s for {seconds} s ({} samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal p50 < 10 ms, p99 < 50 ms)", hist.len(), ms(0.5), ms(0.99), hist.max() as f64 / 1000.0);
    trigger.fire();
    let _ = task.await;
    trigger.wait_drained().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
