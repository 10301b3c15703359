//! `bench append`: the SQLite store's append against a raw batched INSERT of
//! the same rows, same machine, same run: 3 interleaved rounds (raw, store)
//! on fresh files, median with min/max.
//!
//! Guarantee: only measures and prints.

use std::time::Instant;

use super::{sample_events, tempdir, Report};
use crate::config::Config;
use crate::envelope::EventEnvelope;
use crate::store::sqlite::{SqliteStore, SCHEMA_V1};
use crate::store::EventStore;

/// Raw rusqlite INSERTs of the same rows in transactions of 256; events/s.
async fn raw_pass(cfg: &Config, path: std::path::PathBuf, rows: Vec<Vec<EventEnvelope>>) -> anyhow::Result<f64> {
    let sync = cfg.store.sqlite.synchronous;
    tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let mut c = rusqlite::Connection::open(&path)?;
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        c.execute_batch(&format!("PRAGMA synchronous={};", if sync == crate::store::sqlite::Synchronous::Full { "FULL" } else { "NORMAL" }))?;
        c.execute_batch(SCHEMA_V1)?;
        let flat: Vec<&EventEnvelope> = rows.iter().flatten().collect();
        let start = Instant::now();
        for chunk in flat.chunks(256) {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached("INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)")?;
                for e in chunk {
                    st.execute(rusqlite::params![e.event_id.to_string(), e.aggregate_type, e.aggregate_id.to_string(), e.sequence, e.event_type, e.schema_version,
                        serde_json::to_string(&e.payload)?, e.causation_id.map(|c| c.to_string()), e.correlation_id.to_string(), crate::store::sqlite::ts(&e.timestamp)])?;
                }
            }
            tx.commit()?;
        }
        Ok(flat.len() as f64 / start.elapsed().as_secs_f64())
    })
    .await?
}

/// The store: every event its own compare-and-set append, `concurrency` appenders; events/s.
async fn store_pass(
    cfg: &Config,
    path: std::path::PathBuf,
    events: Vec<Vec<EventEnvelope>>,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let total: usize = events.iter().map(Vec::len).sum();
    let store = SqliteStore::open(path, cfg.store.sqlite.clone()).await?;
    let mut per_worker: Vec<Vec<Vec<EventEnvelope>>> = (0..concurrency.max(1)).map(|_| Vec::new()).collect();
    for (i, agg) in events.into_iter().enumerate() {
        per_worker[i % concurrency.max(1)].push(agg);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for work in per_worker {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for agg in work {
                for (i, e) in agg.into_iter().enumerate() {
                    s.append(e.aggregate_id, i as i64, vec![e]).await?;
                }
            }
            Ok::<_, crate::store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let stored = store.head_position().await?;
    anyhow::ensure!(stored as usize == total, "store holds {stored} events, expected {total}");
    Ok(rate)
}

pub(super) async fn bench_append(
    r: &mut Report,
    cfg: &Config,
    n: usize,
    k: usize,
    concurrency: usize,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let tmp = tempdir(dir)?;
    let total = n * k;
    r.say(format!("bench append: {n} aggregates x {k} events = {total} events, one append per event, {concurrency} concurrent appenders, synchronous={:?}; 3 interleaved rounds", cfg.store.sqlite.synchronous));
    r.set("events", total);
    r.set("concurrency", concurrency);
    let (mut raw, mut store) = (vec![], vec![]);
    for round in 1..=3 {
        let events = sample_events(n, k);
        raw.push(raw_pass(cfg, tmp.join(format!("raw-{round}.db")), events.clone()).await?);
        store.push(store_pass(cfg, tmp.join(format!("store-{round}.db")), events, concurrency).await?);
    }
    r.rates("raw", "raw batched insert", "events/s", &raw, None);
    r.rates("store", "store append (CAS)", "events/s", &store, Some(&raw));
    r.say("(goal: store >= 0.8x of raw)");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
