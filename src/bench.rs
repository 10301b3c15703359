//! `outboxd bench ...`: throughput and latency measured against a baseline
//! in the same run, printed as ratios (see docs/BENCHMARKS.md).
//!
//! Guarantee: benchmarks only print numbers; nothing here is a pass/fail test.

use clap::Subcommand;
use std::time::Instant;
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{Aggregate, Currency, Money, Order, OrderCommand, OrderItem, Sku};
use crate::envelope::{now_millis, EventEnvelope, Metadata};
use crate::store::sqlite::{SqliteStore, SCHEMA_V1};
use crate::store::EventStore;

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCmd {
    /// SQLite store append vs a raw batched INSERT of the same rows.
    Append {
        /// Aggregates (each gets `events_per_aggregate` events, one append per event).
        #[arg(long, default_value_t = 20_000)]
        aggregates: usize,
        #[arg(long, default_value_t = 5)]
        events_per_aggregate: usize,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Directory for the benchmark databases (default: a temp dir).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Relay throughput vs a bare rdkafka producer with identical settings,
    /// then append -> consumed latency at a moderate rate.
    Relay {
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Approximate size of each event's JSON in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Events per second for the latency phase.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Seconds of the latency phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The command API under concurrent clients (a real `outboxd run` child
    /// with relay to kafka.brokers) next to the bare store append rate.
    Http {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 300)]
        requests_per_client: usize,
    },
    /// Loading one aggregate of N events with and without snapshots.
    Snapshots {
        #[arg(long, default_value_t = 10_000)]
        events: usize,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Read-model rebuild throughput.
    Rebuild {
        #[arg(long, default_value_t = 20_000)]
        orders: usize,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// CQL store append vs a raw single-partition conditional insert, same
    /// server (store.cql.uri), same concurrency.
    Cql {
        #[arg(long, default_value_t = 3_000)]
        events: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

pub async fn run(cfg: &Config, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Append { aggregates, events_per_aggregate, concurrency, dir } => {
            bench_append(cfg, aggregates, events_per_aggregate, concurrency, dir).await
        }
        BenchCmd::Relay { events, size, rate, seconds } => relay_bench::run(cfg, events, size, rate, seconds).await,
        BenchCmd::Cql { events, concurrency } => cql_bench(cfg, events, concurrency).await,
        BenchCmd::Http { clients, requests_per_client } => http_bench::run(cfg, clients, requests_per_client).await,
        BenchCmd::Snapshots { events, dir } => {
            let d = tempdir(dir)?;
            println!("{}", crate::projection::bench::bench_snapshots(&d, events).await?);
            let _ = std::fs::remove_dir_all(&d);
            Ok(())
        }
        BenchCmd::Rebuild { orders, dir } => {
            let d = tempdir(dir)?;
            println!("{}", crate::projection::bench::bench_rebuild(&d, orders).await?);
            let _ = std::fs::remove_dir_all(&d);
            Ok(())
        }
    }
}

/// Envelopes for `n` orders with `k` events each (created + updates).
pub fn sample_events(n: usize, k: usize) -> Vec<Vec<EventEnvelope>> {
    let eur = Currency::new("EUR").expect("EUR");
    let meta = Metadata::default();
    let at = now_millis();
    (0..n)
        .map(|i| {
            let id = Uuid::now_v7();
            let mut order = Order::default();
            let mut out = Vec::with_capacity(k);
            for seq in 1..=k as i64 {
                let items = vec![OrderItem::new(
                    Sku::new(format!("SKU-{i}-{seq}")).expect("sku"),
                    seq,
                    Money::new(1999, eur).expect("money"),
                )
                .expect("item")];
                let cmd = if seq == 1 {
                    OrderCommand::Create { customer_id: Uuid::from_u128(i as u128), items }
                } else {
                    OrderCommand::UpdateItems { items }
                };
                let e = order.handle(&cmd).expect("valid command").remove(0);
                order.apply(&e);
                out.push(EventEnvelope::new::<Order>(id, seq, &e, &meta, at).expect("encodable"));
            }
            out
        })
        .collect()
}

async fn bench_append(
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

pub(crate) fn tempdir(dir: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    let base = dir.unwrap_or_else(std::env::temp_dir);
    let p = base.join(format!("outboxd-bench-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

mod relay_bench {
    //! `bench relay`: the relay against a bare producer, then e2e latency.
    use futures::stream::{FuturesUnordered, StreamExt};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use uuid::Uuid;

    use crate::config::Config;
    use crate::domain::{Aggregate, Customer, CustomerCommand, Email};
    use crate::envelope::{now_millis, EventEnvelope, Metadata};
    use crate::metrics::Metrics;
    use crate::relay::publisher::{headers_for, producer_config};
    use crate::relay::topics::{topic_names, topic_of};
    use crate::relay::Relay;
    use crate::shutdown::Trigger;
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
        let mut env = EventEnvelope::new::<Customer>(Uuid::now_v7(), 1, &e, &Metadata::default(), now_millis())
            .expect("encodable");
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
        let publisher = crate::relay::KafkaPublisher::new(&cfg.kafka).map_err(|e| anyhow::anyhow!(e.message))?;
        let topics: Vec<String> = topic_names(cfg.kafka.per_event_type(), &cfg.kafka.topic_prefix);
        publisher.ensure_topics(&topics, Duration::from_secs(30)).await.map_err(|e| anyhow::anyhow!(e.message))?;

        // Baseline: a bare FutureProducer with the same settings, same records, all in flight.
        let producer: FutureProducer = producer_config(&cfg.kafka).create()?;
        let prepared: Vec<(String, String, Vec<u8>, OwnedHeaders)> = events
            .iter()
            .map(|e| {
                let mut h = OwnedHeaders::new();
                for (k, v) in headers_for(e, &cfg.kafka.source) {
                    h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
                }
                (
                    topic_of(cfg.kafka.per_event_type(), &cfg.kafka.topic_prefix, e).replace("-events", "-baseline"),
                    e.aggregate_id.to_string(),
                    serde_json::to_vec(e).unwrap_or_default(),
                    h,
                )
            })
            .collect();
        let base_topics: Vec<String> = topics.iter().map(|t| t.replace("-events", "-baseline")).collect();
        publisher.ensure_topics(&base_topics, Duration::from_secs(30)).await.map_err(|e| anyhow::anyhow!(e.message))?;
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
        let relay = Relay::new(&cfg, store.clone(), metrics.clone())?;
        let mut status = relay.status();
        let mut trigger = Trigger::new();
        let sd = trigger.subscribe();
        let head = store.head_position().await?;
        let start = Instant::now();
        let task = tokio::spawn(relay.run(sd));
        status.wait_for(|s| s.checkpoint >= head).await?;
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
                h.iter()
                    .find(|h| h.key == "ce_id")
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).to_string()))
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
}

/// Each of `concurrency` workers appends single events to its own aggregates
/// (one conditional batch each); the baseline inserts the same rows with
/// `INSERT ... IF NOT EXISTS` (one LWT each) through the same session.
async fn cql_bench(cfg: &Config, n: usize, concurrency: usize) -> anyhow::Result<()> {
    use crate::store::cql::CqlStore;
    let mut c = cfg.store.cql.clone();
    c.keyspace = format!("bench_{}", Uuid::now_v7().simple());
    let store = CqlStore::connect(&c).await?;
    store.migrate().await?;
    let session = store.session();
    let ks = store.keyspace().to_string();
    let per_agg = 5;
    let events = sample_events(n.div_ceil(per_agg), per_agg);
    let total: usize = events.iter().map(Vec::len).sum();
    println!(
        "bench cql: {total} events ({per_agg} per aggregate, one append each), {concurrency} concurrent writers, {}",
        c.uri
    );

    let insert = session
        .prepare(format!(
            "INSERT INTO {ks}.event_store (aggregate_id, sequence_number, event_id, aggregate_type, event_type, event_version, payload, causation_id, correlation_id, timestamp) VALUES (?,?,?,?,?,?,?,?,?,?) IF NOT EXISTS"
        ))
        .await?;
    let split = |evs: &Vec<Vec<EventEnvelope>>| {
        let mut w: Vec<Vec<Vec<EventEnvelope>>> = (0..concurrency.max(1)).map(|_| Vec::new()).collect();
        for (i, a) in evs.iter().enumerate() {
            w[i % concurrency.max(1)].push(a.clone());
        }
        w
    };
    // Warm-up (untimed): the JVM's JIT and Paxos paths, so neither side pays for them.
    let warm = sample_events(200, 5);
    for agg in &warm {
        for (i, e) in agg.iter().enumerate() {
            store.append(e.aggregate_id, i as i64, vec![e.clone()]).await?;
        }
    }
    // Baseline: raw conditional inserts of fresh copies (new aggregate ids).
    let raw: Vec<Vec<EventEnvelope>> = events
        .iter()
        .map(|a| {
            let id = Uuid::now_v7();
            a.iter()
                .cloned()
                .map(|mut e| {
                    e.aggregate_id = id;
                    e
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for work in split(&raw) {
        let (session, insert) = (session.clone(), insert.clone());
        tasks.push(tokio::spawn(async move {
            for agg in work {
                for e in agg {
                    let payload = serde_json::to_string(&e.payload)?;
                    session
                        .execute_unpaged(
                            &insert,
                            (
                                e.aggregate_id,
                                e.sequence,
                                e.event_id,
                                e.aggregate_type,
                                e.event_type,
                                e.schema_version,
                                payload,
                                e.causation_id,
                                e.correlation_id,
                                e.timestamp,
                            ),
                        )
                        .await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let raw_secs = start.elapsed().as_secs_f64();

    let dyn_store: crate::store::DynStore = store.clone();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for work in split(&events) {
        let s = dyn_store.clone();
        tasks.push(tokio::spawn(async move {
            for agg in work {
                for (i, e) in agg.into_iter().enumerate() {
                    s.append(e.aggregate_id, i as i64, vec![e]).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let store_secs = start.elapsed().as_secs_f64();
    let (raw_rate, store_rate) = (total as f64 / raw_secs, total as f64 / store_secs);
    println!("raw conditional insert (LWT)  : {raw_rate:>8.0} events/s ({raw_secs:.2} s)");
    println!("store append (LWT batch + CAS): {store_rate:>8.0} events/s ({store_secs:.2} s)");
    println!("ratio store/raw: {:.2}x (goal >= 0.7x)", store_rate / raw_rate);
    let _ = session.query_unpaged(format!("DROP KEYSPACE {ks}"), ()).await;
    Ok(())
}

mod http_bench {
    //! `bench http`: POST /orders from N keep-alive clients against a real
    //! `outboxd run` child process, and the bare store append rate with the
    //! same concurrency in the same run.
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use uuid::Uuid;

    use crate::config::Config;
    use crate::store::sqlite::SqliteStore;

    fn free_port() -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    }

    /// One HTTP/1.1 request on a keep-alive connection; returns the status.
    async fn request(conn: &mut BufReader<TcpStream>, method: &str, path: &str, body: &str) -> anyhow::Result<u16> {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        conn.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut buf = vec![0; len];
        conn.read_exact(&mut buf).await?;
        Ok(status)
    }

    pub async fn run(base: &Config, clients: usize, per_client: usize) -> anyhow::Result<()> {
        let dir = super::tempdir(None)?;
        let (api, admin) = (free_port()?, free_port()?);
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("run")
            .env("OUTBOX_STORE__PATH", dir.join("http.db"))
            .env("OUTBOX_KAFKA__BROKERS", &base.kafka.brokers)
            .env("OUTBOX_KAFKA__TOPIC_PREFIX", format!("bench{}.", Uuid::now_v7().simple()))
            .env("OUTBOX_HTTP__LISTEN", format!("127.0.0.1:{api}"))
            .env("OUTBOX_HTTP__ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        let up = Instant::now();
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", admin)).await {
                let mut c = BufReader::new(s);
                if request(&mut c, "GET", "/health/live", "").await.is_ok_and(|s| s == 200) {
                    break;
                }
            }
            anyhow::ensure!(up.elapsed() < Duration::from_secs(30), "daemon did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let total = clients * per_client;
        println!("bench http: {clients} keep-alive clients x {per_client} POST /orders = {total} requests (daemon with relay to {})", base.kafka.brokers);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            tasks.push(tokio::spawn(async move {
                let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", api)).await?);
                let mut lat = Vec::with_capacity(per_client);
                let mut ok = 0usize;
                for i in 0..per_client {
                    let body = format!(
                        r#"{{"customer_id":"{}","items":[{{"sku":"SKU-{c}-{i}","quantity":2,"unit_price":{{"amount_minor":1999,"currency":"EUR"}}}}]}}"#,
                        Uuid::from_u128(c as u128)
                    );
                    let t = Instant::now();
                    let status = request(&mut conn, "POST", "/orders", &body).await?;
                    lat.push(t.elapsed().as_micros() as u64);
                    ok += usize::from(status == 201);
                }
                anyhow::Ok((lat, ok))
            }));
        }
        let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
        let mut created = 0;
        for t in tasks {
            let (lat, ok) = t.await??;
            created += ok;
            for l in lat {
                hist.record(l.max(1))?;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;

        // Baseline: the bare store append rate at the same concurrency (same event shape).
        let store = SqliteStore::open(dir.join("bare.db"), base.store.sqlite.clone()).await?;
        let events = super::sample_events(total, 1);
        let mut per: Vec<Vec<_>> = (0..clients).map(|_| Vec::new()).collect();
        for (i, e) in events.into_iter().enumerate() {
            per[i % clients].push(e);
        }
        let bstart = Instant::now();
        let mut tasks = Vec::new();
        for work in per {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                for mut agg in work {
                    let e = agg.remove(0);
                    crate::store::EventStore::append(&*s, e.aggregate_id, 0, vec![e]).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let bsecs = bstart.elapsed().as_secs_f64();
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        println!("command API   : {:>8.0} requests/s ({created}/{total} created, {secs:.2} s), latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", total as f64 / secs, ms(0.5), ms(0.99), hist.max() as f64 / 1000.0);
        println!("bare append   : {:>8.0} appends/s ({bsecs:.2} s, {clients} concurrent)", total as f64 / bsecs);
        println!("ratio API/bare: {:.2}x", (total as f64 / secs) / (total as f64 / bsecs));
        match exit {
            Ok(Ok(s)) => println!("daemon stopped by SIGTERM: {s}"),
            _ => println!("daemon did not stop within 30 s"),
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
