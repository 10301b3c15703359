//! `make dev` and `make stop` exactly as README.md shows them, on the path a
//! machine without a Docker engine takes (the embedded SQLite store plus a
//! local Kafka, `outboxd run` in the background, the demo orders), in a git
//! worktree of this repository's HEAD: its own `.local/` (its own Kafka,
//! store and daemon), so the suite's servers are never touched. An
//! independent consumer then finds every stored event on the topics, in
//! order per aggregate, and `make stop` stops the daemon and the Kafka that
//! `make dev` started; a second `make dev` whose daemon cannot listen (its
//! port taken) fails with the daemon's log. With a Docker engine `make dev` would start the
//! compose stack instead (`make integration-test`'s ground): SKIPPED here.
//!
//! The build inside shares this suite's target directory (only the
//! worktree's own crate compiles again) and so replaces its
//! `debug/outboxd` with the worktree's build for a while: the test keeps a
//! copy and puts it back, and it is named `soak_*` so `make test` runs it
//! in the soak phase, one test at a time, when no other test spawns that
//! binary.

mod harness;
use harness::check::stored_rows;
use harness::kafka::consume_until;
use harness::repo_root;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The suite's target directory (this test binary is `<target>/debug/deps/make_dev-<hash>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).expect("<target>/debug/deps/<test>").to_path_buf()
}

/// `make <target>` in `dir`, with a fresh machine's environment for the
/// demo: none of this suite's server variables, the suite's target dir.
fn make(dir: &Path, target: &str) -> (bool, String) {
    let mut cmd = Command::new("make");
    cmd.arg(target).current_dir(dir).env("CARGO_TARGET_DIR", target_dir());
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTBOX_") || k.starts_with("KAFKA_") || k.starts_with("CASSANDRA_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("make {target}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A worktree of HEAD, stopped (`make stop`) and removed however the test
/// ends, and the suite's own binary put back (`saved`: its copy).
struct Worktree {
    dir: PathBuf,
    saved: Option<PathBuf>,
}

impl Drop for Worktree {
    fn drop(&mut self) {
        let _ = make(&self.dir, "stop");
        let _ = Command::new("git")
            .args(["worktree", "remove", "--force"])
            .arg(&self.dir)
            .current_dir(repo_root())
            .output();
        if let Some(copy) = &self.saved {
            let _ = std::fs::rename(copy, target_dir().join("debug/outboxd"));
        }
    }
}

fn alive(pid: &str) -> bool {
    let probe = Command::new("kill").args(["-0", pid.trim()]).stderr(std::process::Stdio::null()).status();
    probe.is_ok_and(|s| s.success())
}

#[test]
fn soak_make_dev_runs_the_demo_and_make_stop_stops_it() {
    if Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        crate::harness::skipped(true, "make dev: a Docker engine answers, so make dev would start the compose stack (make integration-test covers it)");
        return;
    }
    // Review finding: with the developer's own `make dev` daemon running
    // (the README's order: `make dev`, then `make test`), the worktree's
    // daemon found its default ports taken and this test failed.
    let taken: Vec<_> =
        ["127.0.0.1:8080", "127.0.0.1:9090"].into_iter().filter(|a| std::net::TcpListener::bind(a).is_err()).collect();
    if !taken.is_empty() {
        let why = format!("make dev: its default ports {taken:?} are in use here (a `make dev` daemon still running? `make stop` stops it)");
        crate::harness::skipped(true, &why);
        return;
    }
    // A fixed path: the worktree's crate compiles to the same artifacts
    // every run (a new path each time would leave a new binary behind in
    // the persistent target directory).
    let wt = target_dir().join("make-dev/outboxd");
    let _ = Command::new("git").args(["worktree", "remove", "--force"]).arg(&wt).current_dir(repo_root()).output();
    let _ = std::fs::remove_dir_all(&wt);
    let _ = Command::new("git").args(["worktree", "prune"]).current_dir(repo_root()).output();
    let added = Command::new("git")
        .args(["worktree", "add", "--detach"])
        .arg(&wt)
        .arg("HEAD")
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(added.status.success(), "git worktree add: {}", String::from_utf8_lossy(&added.stderr));
    let bin = target_dir().join("debug/outboxd");
    let copy = target_dir().join("debug/outboxd.before-make-dev");
    let saved = std::fs::copy(&bin, &copy).is_ok().then_some(copy);
    let wt = Worktree { dir: wt, saved };

    let (ok, out) = make(&wt.dir, "dev");
    assert!(ok, "make dev failed:\n{out}");
    assert!(out.contains("dev: no Docker engine: embedded SQLite store + a local Kafka"), "{out}");
    let brokers = out
        .lines()
        .find_map(|l| l.strip_prefix("dev: Kafka at "))
        .unwrap_or_else(|| panic!("make dev names its broker:\n{out}"))
        .trim()
        .to_string();
    let pid = std::fs::read_to_string(wt.dir.join(".local/outboxd.pid")).expect("make dev records the daemon's pid");
    assert!(alive(&pid), "the dev daemon runs:\n{out}");

    // Every event the demo stored reaches the topics, in order per aggregate.
    let stored = stored_rows(&wt.dir.join(".local/dev/outbox.db"));
    assert!(stored.len() >= 20, "the demo stored its orders: {} events", stored.len());
    let topics = vec!["order-events".to_string(), "customer-events".to_string()];
    // Until every stored event arrived (or 60 s pass with none): the demo
    // relays at-least-once with no checkpoint to wait for here, and a copy
    // re-sent early would make a fixed count stop short of an original.
    let ids: HashSet<&str> = stored.iter().map(|r| r.event_id.as_str()).collect();
    let records = consume_until(&brokers, &topics, stored.len(), Duration::from_secs(60), |rs| {
        let seen: HashSet<String> = rs.iter().map(|r| r.event_id()).collect();
        ids.iter().all(|id| seen.contains(*id))
    });
    for row in &stored {
        // First arrivals only (a copy re-sent under at-least-once may follow).
        let mut on_topic: Vec<i64> = Vec::new();
        for r in records.iter().filter(|r| r.key == row.aggregate_id) {
            if !on_topic.contains(&r.sequence()) {
                on_topic.push(r.sequence());
            }
        }
        assert!(
            records.iter().any(|r| r.event_id() == row.event_id),
            "event {} ({}#{}) is on the topic; {} of {} arrived",
            row.event_id,
            row.aggregate_id,
            row.sequence,
            records.len(),
            stored.len()
        );
        assert!(on_topic.windows(2).all(|w| w[0] < w[1]), "{}: sequences in order {on_topic:?}", row.aggregate_id);
    }

    let (ok, stopped) = make(&wt.dir, "stop");
    assert!(ok, "make stop failed:\n{stopped}");
    harness::eventually(Duration::from_secs(30), "the dev daemon to exit after make stop", || {
        (!alive(&pid)).then_some(())
    });
    let status = Command::new("bash")
        .args(["scripts/kafka-local.sh", "status"])
        .current_dir(&wt.dir)
        .env_remove("KAFKA_LOCAL_DIR")
        .status()
        .unwrap();
    assert!(!status.success(), "make stop stopped the worktree's Kafka");

    // Review finding: a daemon that exited at once (here: its API port
    // taken) was still reported "started", and make dev exited 0. It now
    // fails, showing the daemon's log.
    let taken = std::net::TcpListener::bind("127.0.0.1:8080");
    if taken.is_err() {
        crate::harness::skipped(false, "make dev with its port taken: 127.0.0.1:8080 is in use by something else here");
        return;
    }
    let (ok, out) = make(&wt.dir, "dev");
    assert!(!ok, "make dev with the API port taken succeeded:\n{out}");
    assert!(out.contains("dev: outboxd run exited") && out.contains("http.listen"), "{out}");
    assert!(!wt.dir.join(".local/outboxd.pid").exists(), "no pid of a daemon that is gone");
}
