//! Benchmarks of this module (wired as `outboxd bench snapshots` and
//! `outboxd bench rebuild`): numbers measured side by side in one run.
//!
//! Guarantee: benchmarks only measure and report; nothing here is a pass/fail test.

use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::RebuildReport;
use crate::app::{CommandService, ServiceOptions};
use crate::domain::{Aggregate, Currency, Money, Order, OrderCommand, OrderItem, Sku};
use crate::envelope::{now_millis, EventEnvelope, Metadata};
use crate::store::sqlite::{SqliteOptions, SqliteStore, Synchronous};
use crate::store::{DynStore, EventStore, Snapshot};

/// Load times of one aggregate with and without snapshots.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SnapshotBench {
    pub events: usize,
    pub snapshot_every: i64,
    pub iterations: usize,
    /// Version of the snapshot used by the snapshot load.
    pub snapshot_version: i64,
    /// Median load time reading every event.
    pub without_ms: f64,
    /// Median load time reading the snapshot plus later events.
    pub with_ms: f64,
    /// `without_ms / with_ms`.
    pub ratio: f64,
}

impl std::fmt::Display for SnapshotBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bench snapshots: load one order with {} events (SQLite, median of {} loads each)",
            self.events, self.iterations
        )?;
        writeln!(
            f,
            "  without snapshots (snapshot_every=0):          {:>9.3} ms  (reads {} events)",
            self.without_ms, self.events
        )?;
        writeln!(
            f,
            "  with snapshots (snapshot_every={:<3}):           {:>9.3} ms  (snapshot at {} + {} events)",
            self.snapshot_every,
            self.with_ms,
            self.snapshot_version,
            self.events as i64 - self.snapshot_version
        )?;
        write!(f, "  speed-up: {:.1}x (goal >= 10x)", self.ratio)
    }
}

fn fresh_db(dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let p = dir.join(format!("{name}{suffix}"));
        if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(path)
}

fn fast_opts() -> SqliteOptions {
    SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() }
}

/// The events of one order: a create, then `n - 1` item updates.
fn one_order(id: Uuid, n: usize) -> anyhow::Result<(Vec<EventEnvelope>, Vec<Order>)> {
    let eur = Currency::new("EUR")?;
    let meta = Metadata::default();
    let at = now_millis();
    let mut order = Order::default();
    let mut envs = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    for seq in 1..=n as i64 {
        let items = (0..3)
            .map(|k| OrderItem::new(Sku::new(format!("SKU-{k}"))?, 1 + (seq + k) % 7, Money::new(999 + k * 100, eur)?))
            .collect::<Result<Vec<_>, _>>()?;
        let cmd = if seq == 1 {
            OrderCommand::Create { customer_id: Uuid::from_u128(7), items }
        } else {
            OrderCommand::UpdateItems { items }
        };
        let e =
            order.handle(&cmd)?.into_iter().next().ok_or_else(|| anyhow::anyhow!("command {seq} decided nothing"))?;
        order.apply(&e);
        envs.push(EventEnvelope::new::<Order>(id, seq, &e, &meta, at)?);
        states.push(order.clone());
    }
    Ok((envs, states))
}

/// Measures `CommandService::load::<Order>` of one order with `events`
/// events, snapshots off vs on (every `snapshot_every` events).
pub async fn measure_snapshots(
    dir: &Path,
    events: usize,
    snapshot_every: i64,
    iterations: usize,
) -> anyhow::Result<SnapshotBench> {
    anyhow::ensure!(events >= 1 && snapshot_every >= 1, "events and snapshot_every must be >= 1");
    let store: DynStore = SqliteStore::open(fresh_db(dir, "snapshots.db")?, fast_opts()).await?;
    let id = Uuid::now_v7();
    let (envs, states) = one_order(id, events)?;
    // Append as the service would have, one chunk per snapshot interval,
    // saving the snapshot the service saves at every multiple of N.
    let mut version = 0i64;
    for chunk in envs.chunks(snapshot_every as usize) {
        store.append(id, version, chunk.to_vec()).await?;
        version += chunk.len() as i64;
        if version % snapshot_every == 0 {
            let state = serde_json::to_value(&states[version as usize - 1])?;
            store
                .save_snapshot(Snapshot {
                    aggregate_id: id,
                    aggregate_type: Order::TYPE.into(),
                    version,
                    state_schema: Order::STATE_SCHEMA,
                    state,
                    created_at: now_millis(),
                })
                .await?;
        }
    }
    let snapshot_version = store.load_snapshot(id).await?.map(|s| s.version).unwrap_or(0);
    let off = CommandService::new(store.clone(), ServiceOptions { snapshot_every: 0, ..ServiceOptions::default() });
    let on = CommandService::new(store.clone(), ServiceOptions { snapshot_every, ..ServiceOptions::default() });
    let expected = states.last().cloned().unwrap_or_default();
    let mut t_off = Vec::with_capacity(iterations);
    let mut t_on = Vec::with_capacity(iterations);
    // One warm-up each, then alternate so both see the same cache state.
    for i in 0..=iterations.max(1) {
        let t = Instant::now();
        let a = off.load::<Order>(id).await?;
        let d_off = t.elapsed();
        let t = Instant::now();
        let b = on.load::<Order>(id).await?;
        let d_on = t.elapsed();
        anyhow::ensure!(
            a.version == events as i64 && b.version == events as i64,
            "loaded versions {} / {}, expected {events}",
            a.version,
            b.version
        );
        anyhow::ensure!(a.state == expected && b.state == expected, "snapshot load and full load disagree");
        if i > 0 {
            t_off.push(d_off);
            t_on.push(d_on);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let (without_ms, with_ms) = (median(&mut t_off), median(&mut t_on));
    Ok(SnapshotBench {
        events,
        snapshot_every,
        iterations: t_off.len(),
        snapshot_version,
        without_ms,
        with_ms,
        ratio: without_ms / with_ms.max(1e-9),
    })
}

/// `outboxd bench snapshots`: an order with `events` events (10 000 in the
/// issue) loaded without and with snapshots (every 100 events); returns the
/// figures (their `Display` is the report to print).
pub async fn bench_snapshots(dir: &Path, events: usize) -> anyhow::Result<SnapshotBench> {
    measure_snapshots(dir, events, 100, 7).await
}

/// The figures of `outboxd bench rebuild` (its JSON `rebuild`): the
/// rebuild's report and what the text prints beside it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildBench {
    pub orders: usize,
    /// Events appended before the rebuild.
    pub appended: usize,
    pub synchronous: Synchronous,
    #[serde(flatten)]
    pub report: RebuildReport,
    /// Rows in the read models after the rebuild.
    pub read_model_rows: usize,
    /// The rebuild's wall-clock time per event read, in microseconds.
    pub us_per_event: f64,
}

/// `outboxd bench rebuild`: `orders` full order lifecycles (5 events each)
/// across 1 000 customers, then a read-model rebuild from event 0; returns
/// the report to print and the rebuild's figures.
pub async fn bench_rebuild(dir: &Path, orders: usize) -> anyhow::Result<(String, RebuildBench)> {
    let store = SqliteStore::open(fresh_db(dir, "rebuild.db")?, fast_opts()).await?;
    let eur = Currency::new("EUR")?;
    let at = now_millis();
    let mut work = Vec::with_capacity(orders);
    for i in 0..orders {
        let id = Uuid::now_v7();
        let items = (0..3)
            .map(|k| OrderItem::new(Sku::new(format!("SKU-{i}-{k}"))?, 1 + k, Money::new(1999, eur)?))
            .collect::<Result<Vec<_>, _>>()?;
        let cmds = [
            OrderCommand::Create { customer_id: Uuid::from_u128((i % 1000) as u128), items: items[..2].to_vec() },
            OrderCommand::UpdateItems { items },
            OrderCommand::Confirm,
            OrderCommand::Ship { tracking_number: format!("TRK{i}"), carrier: "DHL".into() },
            OrderCommand::Deliver { signature: "J. Doe".into() },
        ];
        let mut o = Order::default();
        let mut envs = Vec::with_capacity(cmds.len());
        for (seq, c) in cmds.iter().enumerate() {
            for e in o.handle(c)? {
                o.apply(&e);
                envs.push(EventEnvelope::new::<Order>(id, seq as i64 + 1, &e, &Metadata::default(), at)?);
            }
        }
        work.push((id, envs));
    }
    let total: usize = work.iter().map(|(_, e)| e.len()).sum();
    let mut tasks = Vec::new();
    let per = work.len().div_ceil(32).max(1);
    let mut work = work.into_iter();
    loop {
        let part: Vec<_> = work.by_ref().take(per).collect();
        if part.is_empty() {
            break;
        }
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for (id, envs) in part {
                s.append(id, 0, envs).await?;
            }
            Ok::<_, crate::store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let models: super::DynReadModels = store.clone();
    let report = super::rebuild(store.clone(), models.clone(), "EUR", false).await?;
    let rows = models.dump().await?.len();
    let us_per_event = report.seconds * 1e6 / (report.events.max(1) as f64);
    let synchronous = fast_opts().synchronous;
    let text = format!(
        "bench rebuild: {orders} orders, {total} events (SQLite, synchronous={})\n  {report}\n  {rows} read-model rows; {us_per_event:.1} us per event",
        synchronous.pragma().to_lowercase()
    );
    Ok((text, RebuildBench { orders, appended: total, synchronous, report, read_model_rows: rows, us_per_event }))
}
