//! `bench http`: POST /orders from N keep-alive clients against a real
//! `outboxd run` child process (a fresh one per round), the same orders
//! placed through the command service in this process (decide, encode, CAS
//! append: no HTTP, no actor, no relay, no read models), and the bare store
//! append rate with the same concurrency, 3 interleaved rounds in one run.
//! The middle subject splits the gap between the API and bare appends into
//! the command path and everything the daemon does around it. Each daemon
//! is timed once /health reports its relay running and its clients have
//! sent untimed requests; the in-process sides are warmed up before round
//! 1, and each waits for its store's writer thread to end (SQLite's final
//! checkpoint) before the next pass starts.
//!
//! Guarantee: only measures and prints.
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use uuid::Uuid;

use super::daemon::{request, Daemon, Stopped};
use super::Report;
use crate::app::{CommandService, ServiceOptions};
use crate::config::Config;
use crate::domain::{Currency, Money, Order, OrderCommand, OrderItem, Sku};
use crate::envelope::Metadata;
use crate::store::sqlite::SqliteStore;

/// Untimed POST /orders before each timed pass of the command API, spread
/// over its clients, on the connections that pass then times; and the size
/// of the in-process sides' warm-up before round 1.
const WARMUP_REQUESTS: usize = 256;

/// How long a fresh daemon may take until /health reports its relay running.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// `n` POST /orders of client `c` on `conn`, SKUs tagged `tag`; returns the
/// latencies in us and how many were answered 201 Created.
async fn post_orders(
    conn: &mut BufReader<TcpStream>,
    token: Option<&str>,
    c: usize,
    tag: &str,
    n: usize,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let mut lat = Vec::with_capacity(n);
    let mut ok = 0usize;
    for i in 0..n {
        let body = format!(
            r#"{{"customer_id":"{}","items":[{{"sku":"SKU-{tag}{c}-{i}","quantity":2,"unit_price":{{"amount_minor":1999,"currency":"EUR"}}}}]}}"#,
            Uuid::from_u128(c as u128)
        );
        let t = Instant::now();
        let (status, _) = request(conn, "POST", "/orders", &body, token).await?;
        lat.push(t.elapsed().as_micros().max(1) as u64);
        ok += usize::from(status == 201);
    }
    Ok((lat, ok))
}

/// One pass of the command API: a fresh daemon, waited for until its relay
/// runs, `clients` keep-alive clients warmed up, then posting `per_client`
/// orders each (timed); returns (requests/s, created, latencies in us, how
/// the daemon stopped). The daemon is stopped (its topics deleted) however
/// the pass ends.
async fn api_pass(
    base: &Config,
    config_file: Option<&std::path::Path>,
    dir: &std::path::Path,
    round: usize,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<(f64, usize, Vec<u64>, Stopped)> {
    let daemon = Daemon::start(&dir.join(format!("http-{round}.db")), &base.kafka, config_file).await?;
    // The daemon's token (config file or OUTBOX_HTTP__API_TOKEN), if set.
    let timed = drive(&daemon, base.http.api_token.clone(), clients, per_client).await;
    let stopped = daemon.stop().await;
    match timed {
        Ok((rate, created, lat)) => Ok((rate, created, lat, stopped)),
        Err(e) => Err(e.context(format!("round {round}: {stopped}"))),
    }
}

/// `api_pass` on a started daemon: its relay running, `WARMUP_REQUESTS`
/// untimed requests over the clients' connections, then the timed ones.
async fn drive(
    daemon: &Daemon,
    token: Option<String>,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<(f64, usize, Vec<u64>)> {
    daemon.relay_running(READY_WITHIN).await?;
    let (api, warm) = (daemon.api, WARMUP_REQUESTS.div_ceil(clients));
    let mut warming = Vec::new();
    for c in 0..clients {
        let token = token.clone();
        warming.push(tokio::spawn(async move {
            let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", api)).await?);
            let (_, ok) = post_orders(&mut conn, token.as_deref(), c, "w", warm).await?;
            anyhow::ensure!(ok == warm, "warm-up: {ok}/{warm} requests answered 201 Created");
            anyhow::Ok(conn)
        }));
    }
    let mut conns = Vec::new();
    for t in warming {
        conns.push(t.await??);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        let token = token.clone();
        tasks.push(tokio::spawn(async move { post_orders(&mut conn, token.as_deref(), c, "", per_client).await }));
    }
    let (mut all, mut created) = (Vec::new(), 0);
    for t in tasks {
        let (lat, ok) = t.await??;
        created += ok;
        all.extend(lat);
    }
    let rate = (clients * per_client) as f64 / start.elapsed().as_secs_f64();
    Ok((rate, created, all))
}

/// The orders of `api_pass` placed through `CommandService::execute` on a
/// fresh file by `clients` tasks; returns (commands/s, created).
async fn service_pass(
    base: &Config,
    dir: &std::path::Path,
    round: usize,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<(f64, usize)> {
    let store = SqliteStore::open(dir.join(format!("service-{round}.db")), base.store.sqlite.clone()).await?;
    let svc = CommandService::new(store.clone(), ServiceOptions::from(&base.service));
    let eur = Currency::new("EUR")?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0usize;
            for i in 0..per_client {
                let item = OrderItem::new(Sku::new(format!("SKU-{c}-{i}"))?, 2, Money::new(1999, eur)?)?;
                let cmd = OrderCommand::Create { customer_id: Uuid::from_u128(c as u128), items: vec![item] };
                let out = svc.execute::<Order>(Uuid::now_v7(), &cmd, Metadata::default(), None).await?;
                ok += usize::from(out.version == 1);
            }
            anyhow::Ok(ok)
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await??;
    }
    let rate = (clients * per_client) as f64 / start.elapsed().as_secs_f64();
    // Its writer's close (the final checkpoint) ends before the next pass.
    drop(svc);
    super::close(store).await?;
    Ok((rate, created))
}

/// The bare store append rate at the same concurrency (same event shape), fresh file.
async fn bare_pass(
    base: &Config,
    dir: &std::path::Path,
    round: usize,
    clients: usize,
    total: usize,
) -> anyhow::Result<f64> {
    let store = SqliteStore::open(dir.join(format!("bare-{round}.db")), base.store.sqlite.clone()).await?;
    let mut per: Vec<Vec<_>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, e) in super::sample_events(total, 1).into_iter().enumerate() {
        per[i % clients].push(e);
    }
    let start = Instant::now();
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
    let rate = total as f64 / start.elapsed().as_secs_f64();
    super::close(store).await?;
    Ok(rate)
}

pub async fn run(
    r: &mut Report,
    base: &Config,
    config_file: Option<&std::path::Path>,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<()> {
    let dir = super::tempdir(None)?;
    let total = clients * per_client;
    let warm = WARMUP_REQUESTS.div_ceil(clients) * clients;
    r.say(format!("bench http: {clients} keep-alive clients x {per_client} POST /orders = {total} requests per round (a fresh daemon with relay to {} each round, timed once its relay runs and {warm} untimed requests warmed its clients up), 3 interleaved rounds with the command service in process and the bare append (both warmed up with {warm} before round 1)", base.kafka.brokers));
    r.set("clients", clients);
    r.set("requests_per_client", per_client);
    r.set("brokers", &base.kafka.brokers);
    r.set("warmup_requests", warm);
    // Warm-up (untimed) of the in-process sides: the process's first
    // SQLite work is in neither's figures (each daemon warms up its own).
    let (_, ok) = service_pass(base, &dir, 0, clients, warm / clients).await?;
    anyhow::ensure!(ok == warm, "warm-up: {ok}/{warm} orders placed through the command service");
    bare_pass(base, &dir, 0, clients, warm).await?;
    let (mut api, mut service, mut bare, mut hist, mut created, mut placed, mut stops) =
        (vec![], vec![], vec![], hdrhistogram::Histogram::<u64>::new(3)?, 0, 0, vec![]);
    for round in 1..=3 {
        let (rate, ok, lat, stopped) = api_pass(base, config_file, &dir, round, clients, per_client).await?;
        // A rate of refusals (401 without the token, 503) is no measurement.
        anyhow::ensure!(
            ok == total,
            "round {round}: {ok}/{total} requests answered 201 Created; the rate would count refusals"
        );
        api.push(rate);
        created += ok;
        for l in lat {
            hist.record(l)?;
        }
        stops.push(stopped);
        let (rate, ok) = service_pass(base, &dir, round, clients, per_client).await?;
        anyhow::ensure!(ok == total, "round {round}: {ok}/{total} orders placed through the command service");
        service.push(rate);
        placed += ok;
        bare.push(bare_pass(base, &dir, round, clients, total).await?);
    }
    r.rates("api", "command API (POST /orders)", "requests/s", &api, Some(&bare));
    r.rates("service", "command service, in process", "commands/s", &service, Some(&bare));
    r.rates("bare", "bare append, same concurrency", "appends/s", &bare, None);
    r.ratio("api_over_service", "command API / command service", &api, &service);
    r.set("service_created", placed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let (p50, p99, max) = (ms(0.5), ms(0.99), hist.max() as f64 / 1000.0);
    r.say(format!("API latency over all rounds: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms; {created}/{} created (goal: API >= 0.5x of bare)", 3 * total));
    r.set("latency_ms", serde_json::json!({ "p50": p50, "p99": p99, "max": max }));
    r.set("created", created);
    r.set("requests", 3 * total);
    for s in &stops {
        r.say(s);
    }
    r.set("topics_deleted", stops.iter().flat_map(|s| s.topics_deleted.clone()).collect::<Vec<_>>());
    // Each daemon's own: how it ended, its topics deleted, or why not.
    r.set("daemon_stops", &stops);
    Ok(())
}
