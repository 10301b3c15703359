//! Runs the real `outboxd run` binary for the HTTP and actor tests, with a
//! tiny HTTP/1.1 client on `std::net::TcpStream` (so tests can send raw,
//! hostile bytes) and helpers to read /metrics and the SQLite store.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use outboxd::config::Config;

use crate::common::{config_env, free_port, test_config};

pub struct Daemon {
    pub child: Child,
    pub cfg: Config,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    pub extra_env: Vec<(String, String)>,
}

/// A database path in its own directory (so tests can remove the directory).
pub fn db_in(dir: &Path) -> PathBuf {
    let d = dir.join("store");
    std::fs::create_dir_all(&d).unwrap();
    d.join("outbox.db")
}

/// A test configuration on free ports.
pub fn daemon_config(brokers: &str, dir: &Path) -> Config {
    let mut c = test_config(brokers, &db_in(dir));
    c.http.listen = format!("127.0.0.1:{}", free_port());
    c.http.admin_listen = format!("127.0.0.1:{}", free_port());
    c
}

impl Daemon {
    /// Starts `outboxd run` and waits until /health/ready answers 200.
    pub fn start(cfg: &Config, extra_env: &[(&str, String)]) -> Daemon {
        let d = Daemon::spawn(cfg, extra_env);
        d.wait_ready(Duration::from_secs(60));
        d
    }

    /// Starts `outboxd run` without waiting.
    pub fn spawn(cfg: &Config, extra_env: &[(&str, String)]) -> Daemon {
        let dir = cfg.store.path.parent().unwrap().parent().unwrap().to_path_buf();
        let log = dir.join(format!("outboxd-{}.log", uuid::Uuid::now_v7().simple()));
        let extra: Vec<(String, String)> = extra_env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("run")
            .envs(config_env(cfg))
            .env("OUTBOX_HEALTH__INTERVAL_MS", "300")
            .env("RUST_LOG", "info,rdkafka=warn,librdkafka=warn,actix_server=warn")
            .env("RUST_BACKTRACE", "0")
            .env("NO_COLOR", "1")
            .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            cfg: cfg.clone(),
            api: cfg.http.listen.parse().unwrap(),
            admin: cfg.http.admin_listen.parse().unwrap(),
            log,
            extra_env: extra,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = try_request(self.admin, "GET", "/health/ready", &[], None) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "daemon not ready in {timeout:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn api(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        request(self.api, method, path, headers, body)
    }

    /// POST with a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        self.api("POST", path, &[("Content-Type", "application/json")], Some(&b))
    }

    pub fn admin(&self, method: &str, path: &str) -> Resp {
        request(self.admin, method, path, &[], None)
    }

    pub fn health(&self) -> (u16, serde_json::Value) {
        let r = self.admin("GET", "/health");
        (r.status, r.json())
    }

    pub fn metrics(&self) -> Metrics {
        let r = self.admin("GET", "/metrics");
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-type").unwrap_or_default().starts_with("text/plain; version=0.0.4"),
            "{:?}",
            r.headers
        );
        Metrics::parse(&r.text())
    }

    /// Injects a failure, retrying while the actor is still restarting.
    pub fn inject(&self, actor: &str, mode: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.admin("POST", &format!("/debug/fail/{actor}?mode={mode}"));
            if r.status == 202 {
                return;
            }
            assert_eq!(r.status, 409, "inject {actor}: {} {}", r.status, r.text());
            assert!(Instant::now() < deadline, "{actor} never became injectable");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn sigterm(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait; asserts exit code 0.
    pub fn stop(mut self) {
        self.sigterm();
        let s = self.wait_exit(Duration::from_secs(40)).expect("daemon exits after SIGTERM");
        assert_eq!(s.code(), Some(0), "exit status {s:?}; log:\n{}", self.log_text());
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().filter(|l| !l.contains("librdkafka")).collect();
            eprintln!("---- outboxd log (last 80 lines) ----\n{}", tail[tail.len().saturating_sub(80)..].join("\n"));
            let _ = try_request(self.admin, "GET", "/health", &[], None)
                .map(|r| eprintln!("---- /health ----\n{}", r.text()));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {} {:?}", self.status, self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(&name.to_ascii_lowercase()).cloned()
    }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    try_request(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`). The
/// body is written from a second thread while the response is read, so a
/// server that answers early (413) and closes is handled.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<Resp> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !has("content-length") && !has("transfer-encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
    }
    head.push_str("\r\n");
    raw(addr, head.as_bytes(), body.unwrap_or_default())
}

/// Sends raw bytes (head + body) and reads the whole response.
pub fn raw(addr: SocketAddr, head: &[u8], body: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    s.write_all(head)?;
    let writer = if body.is_empty() {
        None
    } else {
        let mut w = s.try_clone()?;
        let body = body.to_vec();
        Some(std::thread::spawn(move || {
            for chunk in body.chunks(64 * 1024) {
                if w.write_all(chunk).is_err() {
                    break;
                }
            }
        }))
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && response_complete(&buf) => break,
            Err(e) => return Err(e),
        }
        if response_complete(&buf) {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    if let Some(w) = writer {
        let _ = w.join();
    }
    parse_response(&buf)
        .ok_or_else(|| std::io::Error::other(format!("incomplete response: {:?}", String::from_utf8_lossy(&buf))))
}

fn split_head(buf: &[u8]) -> Option<(usize, &[u8])> {
    let i = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((i + 4, &buf[..i]))
}

fn response_complete(buf: &[u8]) -> bool {
    let Some((start, head)) = split_head(buf) else { return false };
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    match head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) => buf.len() >= start + n,
        None => false, // chunked or close-delimited: read to EOF
    }
}

fn parse_response(buf: &[u8]) -> Option<Resp> {
    let (start, head) = split_head(buf)?;
    let head = String::from_utf8_lossy(head).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let rest = &buf[start..];
    let body = if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(n) = headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest.get(..n)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some(Resp { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).split(';').next()?.trim(), 16).ok()?;
        b = &b[i + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A parsed /metrics page.
pub struct Metrics {
    pub scrape: prometheus_parse::Scrape,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("/metrics parses as Prometheus text");
        Metrics { scrape, text: text.to_string() }
    }

    /// Metric family names (histograms under their base name).
    pub fn names(&self) -> std::collections::HashSet<String> {
        self.scrape.samples.iter().map(|s| s.metric.clone()).collect()
    }

    /// Sum of the samples of `name` whose labels include all of `labels`
    /// (histograms: their count).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => h.iter().map(|c| c.count).fold(0.0, f64::max),
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }
}

/// Events in the store, read through a read-only SQLite connection.
pub fn count_events(db: &Path) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT COUNT(*) FROM event_store", [], |r| r.get(0)).unwrap()
}

/// Every stored event id with its correlation id, in feed order.
pub fn stored_events(db: &Path) -> Vec<(String, String, String)> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare("SELECT event_id, aggregate_id, correlation_id FROM event_store ORDER BY position").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

pub fn checkpoint(db: &Path, consumer: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT position FROM checkpoints WHERE consumer = ?1", [consumer], |r| r.get(0)).unwrap_or(0)
}

/// A valid order body.
pub fn order_body(customer: uuid::Uuid, sku: &str) -> serde_json::Value {
    serde_json::json!({"customer_id": customer, "items": [{"sku": sku, "quantity": 2, "unit_price": {"amount_minor": 1999, "currency": "EUR"}}]})
}

/// Reads the topics from the beginning until `done(records)` holds or no
/// more records arrive within `timeout` (copies re-sent under at-least-once
/// may fill any fixed count, so the count grows until `done`).
pub fn consume_until(
    brokers: &str,
    topics: &[String],
    at_least: usize,
    timeout: Duration,
    done: impl Fn(&[crate::common::Record]) -> bool,
) -> Vec<crate::common::Record> {
    let mut want = at_least.max(1);
    loop {
        let records = crate::common::consume_all(brokers, topics, want, timeout);
        if done(&records) || records.len() < want {
            return records;
        }
        want = records.len() + 1;
    }
}

pub fn topics(c: &Config) -> Vec<String> {
    outboxd::relay::topics::topic_names(c.kafka.per_event_type(), &c.kafka.topic_prefix)
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The environment variable that enables `POST /debug/fail/{actor}`.
pub fn fault_injection() -> (&'static str, String) {
    (outboxd::daemon::FAULT_INJECTION_ENV, "1".to_string())
}

/// POSTs an order for `customer`, retrying while an actor restarts (503).
pub fn create_order(d: &Daemon, customer: uuid::Uuid, sku: &str) -> uuid::Uuid {
    eventually(Duration::from_secs(30), "an order to be accepted", || {
        let r = d.post("/orders", &order_body(customer, sku));
        match r.status {
            201 => Some(uuid::Uuid::parse_str(r.json()["id"].as_str().unwrap()).unwrap()),
            503 => None,
            s => panic!("unexpected {s}: {}", r.text()),
        }
    })
}

/// `actor_restarts_total{actor}` from /metrics.
pub fn restarts(d: &Daemon, actor: &str) -> f64 {
    d.metrics().value("actor_restarts_total", &[("actor", actor)])
}

/// Status and detail of one /health component.
pub fn component(h: &serde_json::Value, name: &str) -> (String, String) {
    let c = &h["components"][name];
    (c["status"].as_str().unwrap_or_default().to_string(), c["detail"].as_str().unwrap_or_default().to_string())
}
