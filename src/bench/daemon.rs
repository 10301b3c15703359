//! A real `outboxd run` child for the benchmarks that measure the daemon
//! (`http`, `backlog`): spawned from this binary on free ports, waited for
//! until `/health/live` answers (and, on request, until /health reports its
//! relay running), stopped with SIGTERM; plain HTTP/1.1 on a keep-alive
//! connection; the child's memory read from /proc.
//!
//! Guarantee: the child is killed when dropped (never left running); its
//! topics (a fresh `bench<uuid>.` prefix) are deleted when it is stopped.

use std::path::Path;

use crate::config::KafkaConfig;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use uuid::Uuid;

/// Two free ports, distinct: both are held while the second is chosen (one
/// at a time, the kernel may hand out the same port twice).
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// One HTTP/1.1 request on a keep-alive connection (with `token` as its
/// bearer token, if any); returns the status and body.
pub async fn request(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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
    Ok((status, buf))
}

/// A running `outboxd run` child.
pub struct Daemon {
    child: tokio::process::Child,
    pub api: u16,
    /// Its admin server (/health).
    admin: u16,
    /// The bench's Kafka settings under the child's own topic prefix.
    kafka: KafkaConfig,
}

/// How a child ended, and the topics of its prefix deleted after it.
#[derive(Debug, serde::Serialize)]
pub struct Stopped {
    pub how: String,
    pub topics_deleted: Vec<String>,
    /// Why its topics could not be deleted (they are left on the brokers).
    pub cleanup_error: Option<String>,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cleanup_error {
            None => write!(f, "{}; its {} topics deleted", self.how, self.topics_deleted.len()),
            Some(e) => write!(f, "{}; its topics were not deleted: {e}", self.how),
        }
    }
}

impl Daemon {
    /// Starts `outboxd run` on the SQLite file `db`, relaying to `kafka`'s
    /// brokers under a fresh topic prefix, and waits until it is live;
    /// `config`: the bench's `--config` file, read by the child too (these
    /// settings win).
    pub async fn start(db: &Path, kafka: &KafkaConfig, config: Option<&Path>) -> anyhow::Result<Daemon> {
        let (api, admin) = free_ports()?;
        let mut kafka = kafka.clone();
        kafka.topic_prefix = format!("bench{}.", Uuid::now_v7().simple());
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        if let Some(file) = config {
            cmd.env("OUTBOX_CONFIG", file);
        }
        let child = cmd
            .arg("run")
            // The bench's own SQLite file, whatever backend the file names.
            .env("OUTBOX_STORE__BACKEND", "sqlite")
            .env("OUTBOX_STORE__PATH", db)
            .env("OUTBOX_KAFKA__BROKERS", &kafka.brokers)
            .env("OUTBOX_KAFKA__TOPIC_PREFIX", &kafka.topic_prefix)
            .env("OUTBOX_HTTP__LISTEN", format!("127.0.0.1:{api}"))
            .env("OUTBOX_HTTP__ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        let d = Daemon { child, api, admin, kafka };
        let up = Instant::now();
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", admin)).await {
                let mut c = BufReader::new(s);
                if request(&mut c, "GET", "/health/live", "", None).await.is_ok_and(|(s, _)| s == 200) {
                    return Ok(d);
                }
            }
            anyhow::ensure!(up.elapsed() < Duration::from_secs(30), "daemon did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits, up to `within`, until the child's /health reports its relay
    /// running (`relay.running`: lease read, topics created, feed opened;
    /// the health check reruns at once when that changes), so a pass timed
    /// next does not share the machine with the relay's start.
    pub async fn relay_running(&self, within: Duration) -> anyhow::Result<()> {
        let up = Instant::now();
        let mut last = String::from("no answer");
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.admin)).await {
                if let Ok((_, body)) = request(&mut BufReader::new(s), "GET", "/health", "", None).await {
                    let health: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if health["relay"]["running"] == true {
                        return Ok(());
                    }
                    last = health["components"]["cdc_processor"]["detail"].to_string();
                }
            }
            anyhow::ensure!(
                up.elapsed() < within,
                "the daemon's relay did not report running within {} s (last: {last})",
                within.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
    pub fn memory_kb(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// SIGTERM, then waits up to 30 s (killed after); then deletes the
    /// topics of its prefix. Returns how it ended, for the report.
    pub async fn stop(mut self) -> Stopped {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        let how = match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(s)) => format!("daemon stopped by SIGTERM: {s}"),
            _ => {
                // Its topics are deleted next: it must not write to them any more.
                let _ = self.child.kill().await;
                "daemon did not stop within 30 s (killed)".into()
            }
        };
        let p = &self.kafka.topic_prefix;
        match crate::relay::admin::delete_prefixed(&self.kafka, p, Duration::from_secs(30)).await {
            Ok(topics_deleted) => Stopped { how, topics_deleted, cleanup_error: None },
            Err(e) => Stopped { how, topics_deleted: vec![], cleanup_error: Some(format!("{p}*: {}", e.message)) },
        }
    }
}
