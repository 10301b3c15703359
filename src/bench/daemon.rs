//! A real `outboxd run` child for the benchmarks that measure the daemon
//! (`http`, `backlog`): spawned from this binary on free ports, waited for
//! until `/health/live` answers, stopped with SIGTERM; plain HTTP/1.1 on a
//! keep-alive connection; the child's memory read from /proc.
//!
//! Guarantee: the child is killed when dropped (never left running).

use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use uuid::Uuid;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
}

impl Daemon {
    /// Starts `outboxd run` on the SQLite file `db`, relaying to `brokers`
    /// under a fresh topic prefix, and waits until it is live; `config`: the
    /// bench's `--config` file, read by the child too (these settings win).
    pub async fn start(db: &Path, brokers: &str, config: Option<&Path>) -> anyhow::Result<Daemon> {
        let (api, admin) = (free_port()?, free_port()?);
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        if let Some(file) = config {
            cmd.env("OUTBOX_CONFIG", file);
        }
        let child = cmd
            .arg("run")
            // The bench's own SQLite file, whatever backend the file names.
            .env("OUTBOX_STORE__BACKEND", "sqlite")
            .env("OUTBOX_STORE__PATH", db)
            .env("OUTBOX_KAFKA__BROKERS", brokers)
            .env("OUTBOX_KAFKA__TOPIC_PREFIX", format!("bench{}.", Uuid::now_v7().simple()))
            .env("OUTBOX_HTTP__LISTEN", format!("127.0.0.1:{api}"))
            .env("OUTBOX_HTTP__ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        let d = Daemon { child, api };
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

    /// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
    pub fn memory_kb(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// SIGTERM, then waits up to 30 s; returns how it ended, for the report.
    pub async fn stop(mut self) -> String {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(s)) => format!("daemon stopped by SIGTERM: {s}"),
            _ => "daemon did not stop within 30 s".into(),
        }
    }
}
