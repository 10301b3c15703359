//! End-to-end latency for `bench relay`: append at a steady rate while a
//! relay runs, consume `read_committed`, measure append -> consumed per event
//! (matched by `ce_id`).
//!
//! Guarantee: only measures; returns (p50 ms, p99 ms, max ms, samples).

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::config::Config;
use crate::envelope::EventEnvelope;
use crate::store::DynStore;

pub async fn e2e(
    cfg: &Config,
    store: &DynStore,
    topic: &str,
    size: usize,
    rate: u64,
    seconds: u64,
    event: fn(usize) -> EventEnvelope,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let consumer: StreamConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("bench-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "latest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    // Wait for the assignment before producing.
    let warm = Instant::now();
    while consumer.assignment()?.count() == 0 && warm.elapsed() < Duration::from_secs(20) {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = (rate * seconds) as usize;
    let (s2, st) = (sent.clone(), store.clone());
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
        if let Some(t0) = id.and_then(|id| sent.lock().ok().and_then(|m| m.get(&id).copied())) {
            hist.record(t0.elapsed().as_micros() as u64)?;
        }
    }
    producer_task.await?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok((ms(0.5), ms(0.99), hist.max() as f64 / 1000.0, hist.len()))
}
