//! The real `outboxd run` binary as a child process: start, wait ready,
//! call its API and admin server, signal it, read its log.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use outboxd::config::Config;

use super::http::{request, try_request, Resp};
use super::kafka::{consume_until, topics};
use super::metrics::Metrics;
use super::sqlite::{count_events, stored_events};
use super::{config_env, free_port, test_config};

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
    on_new_ports(&test_config(brokers, &db_in(dir)))
}

/// `cfg` on new free ports: another instance on the same store and topics.
/// Two ports: the system may hand the one just released out again, and a
/// configuration with the same port twice is refused.
pub fn on_new_ports(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    let api = free_port();
    let admin = std::iter::repeat_with(free_port).find(|p| *p != api).expect("a second free port");
    c.http.listen = format!("127.0.0.1:{api}");
    c.http.admin_listen = format!("127.0.0.1:{admin}");
    c
}

impl Daemon {
    /// Starts `outboxd run` and waits until /health/ready answers 200. A
    /// port `free_port` picked can be taken (as another process's ephemeral
    /// port) before the daemon binds it: then it is started again on new
    /// ports (at most twice), and `cfg`'s listen addresses are the new ones.
    pub fn start(cfg: &Config, extra_env: &[(&str, String)]) -> Daemon {
        let mut cfg = cfg.clone();
        for _ in 0..2 {
            let mut d = Daemon::spawn(&cfg, extra_env);
            if d.ready_unless_exited(Duration::from_secs(60)) {
                return d;
            }
            if !d.log_text().contains("Address already in use") {
                panic!("outboxd run exited before it was ready; log:\n{}", d.log_text());
            }
            eprintln!("outboxd run could not bind a port picked for it (taken meanwhile); starting it on new ports");
            cfg = on_new_ports(&cfg);
        }
        let d = Daemon::spawn(&cfg, extra_env);
        d.wait_ready(Duration::from_secs(60));
        d
    }

    /// Waits until /health/ready answers 200 (true) or the process exits
    /// (false); fails after `timeout`.
    fn ready_unless_exited(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if try_request(self.admin, "GET", "/health/ready", &[], None).is_ok_and(|r| r.status == 200) {
                return true;
            }
            assert!(Instant::now() < deadline, "daemon not ready in {timeout:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
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

    /// POST a JSON body to the admin server.
    pub fn admin_post(&self, path: &str, body: &serde_json::Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        request(self.admin, "POST", path, &[("Content-Type", "application/json")], Some(&b))
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

/// A valid order body.
pub fn order_body(customer: uuid::Uuid, sku: &str) -> serde_json::Value {
    serde_json::json!({"customer_id": customer, "items": [{"sku": sku, "quantity": 2, "unit_price": {"amount_minor": 1999, "currency": "EUR"}}]})
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

/// Runs the `outboxd` CLI with `cfg` as OUTBOX_* variables; returns (exit code, stdout, stderr).
pub fn cli(cfg: &Config, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(args)
        .envs(config_env(cfg))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Waits until the relay has confirmed every stored event.
pub fn caught_up(d: &Daemon) -> i64 {
    eventually(Duration::from_secs(60), "the relay to catch up", || {
        let head = count_events(&d.cfg.store.path);
        let (_, h) = d.health();
        (h["relay"]["checkpoint"].as_i64() == Some(head) && head > 0).then_some(head)
    })
}

/// Every stored event id is on the topics (copies allowed: at-least-once).
pub fn assert_all_on_topic(brokers: &str, d: &Daemon) {
    let stored: HashSet<String> = stored_events(&d.cfg.store.path).into_iter().map(|(e, _, _)| e).collect();
    let records = consume_until(brokers, &topics(&d.cfg), stored.len(), Duration::from_secs(20), |rs| {
        let on_topic: HashSet<String> = rs.iter().map(|r| r.event_id()).collect();
        stored.is_subset(&on_topic)
    });
    let on_topic: HashSet<String> = records.iter().map(|r| r.event_id()).collect();
    let missing: Vec<_> = stored.difference(&on_topic).collect();
    assert!(
        missing.is_empty(),
        "{} of {} stored events missing from Kafka ({} records read): {missing:?}",
        missing.len(),
        stored.len(),
        records.len()
    );
    eprintln!("{} stored events on the topic as {} records", stored.len(), records.len());
}
