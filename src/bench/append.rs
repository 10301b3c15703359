//! `bench append`: the SQLite store's append against a raw batched INSERT of
//! the same rows, same machine, same run.
//!
//! Guarantee: only measures and prints.

use std::time::Instant;

use super::{sample_events, tempdir};
use crate::config::Config;
use crate::envelope::EventEnvelope;
use crate::store::sqlite::{SqliteStore, SCHEMA_V1};
use crate::store::EventStore;

pub(super) async fn bench_append(
    cfg: &Config,
    n: usize,
    k: usize,
    concurrency: usize,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let tmp = tempdir(dir)?;
    let events = sample_events(n, k);
    let total = n * k;
    println!("bench append: {n} aggregates x {k} events = {total} events, one append per event, {concurrency} concurrent appenders, synchronous={:?}", cfg.store.sqlite.synchronous);

    // Baseline: raw rusqlite INSERTs of the same rows, batched in transactions of 256 appends.
    let raw_path = tmp.join("raw.db");
    let rows = events.clone();
    let sync = cfg.store.sqlite.synchronous;
    let raw_secs = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let mut c = rusqlite::Connection::open(&raw_path)?;
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
        Ok(start.elapsed().as_secs_f64())
    })
    .await??;

    // The store: every event is its own compare-and-set append.
    let store = SqliteStore::open(tmp.join("store.db"), cfg.store.sqlite.clone()).await?;
    let start = Instant::now();
    let mut per_worker: Vec<Vec<Vec<EventEnvelope>>> = (0..concurrency.max(1)).map(|_| Vec::new()).collect();
    for (i, agg) in events.into_iter().enumerate() {
        per_worker[i % concurrency.max(1)].push(agg);
    }
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
    let store_secs = start.elapsed().as_secs_f64();
    let stored = store.head_position().await?;
    anyhow::ensure!(stored as usize == total, "store holds {stored} events, expected {total}");
    let raw_rate = total as f64 / raw_secs;
    let store_rate = total as f64 / store_secs;
    println!("raw batched insert : {raw_rate:>10.0} events/s ({raw_secs:.3} s)");
    println!("store append (CAS) : {store_rate:>10.0} events/s ({store_secs:.3} s)");
    println!("ratio store/raw    : {:.2}x (goal >= 0.8x)", store_rate / raw_rate);
    Ok(())
}
