//! `bench http`: POST /orders from N keep-alive clients against a real
//! `outboxd run` child process, and the bare store append rate with the
//! same concurrency in the same run.
//!
//! Guarantee: only measures and prints.
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
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
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
