//! README.md's command blocks run as written (bash) against real Kafka and a
//! fresh SQLite file: the "Using it" block, with only its build line left
//! out (`$B` is the test's binary) and `$B run`, which serves until a
//! signal, given a SIGINT after 10 s; then the "by hand" sqlite3 queries of
//! "Watching the events" on the same file (its path in place of
//! `.local/dev/outbox.db`), OPERATIONS.md's read-model query, and the kcat
//! lines of both (the test's broker and topic in place of `<port>` and
//! `order-events`, `-e` to stop at the topic's end). The outcome is checked
//! on the broker and in the store, not only the exit codes.

mod harness;

use harness::*;
use std::process::Command;
use std::time::Duration;

/// The first ```bash block after the line `heading` in README.md.
fn block_after(heading: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let at = text.lines().position(|l| l == heading).unwrap_or_else(|| panic!("README.md has {heading:?}"));
    fenced_blocks(&text, "bash")
        .into_iter()
        .find(|(line, _)| *line > at)
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("a bash block after {heading:?}"))
}

/// Runs `script` with `bash -euo pipefail` and the config's variables; (ok, stdout + stderr).
fn bash(script: &str, cfg: &outboxd::config::Config) -> (bool, String) {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .envs(config_env(cfg))
        .env("NO_COLOR", "1")
        .output()
        .expect("bash runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_using_it_block_and_the_sqlite_queries_run_as_written() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(&brokers, dir.path());
    let mut script = String::new();
    for line in block_after("## Using it").lines() {
        if line.starts_with("cargo build") {
            continue;
        }
        if line.starts_with("B=") {
            script.push_str(&format!("B={}\n", env!("CARGO_BIN_EXE_outboxd")));
        } else if line.starts_with("$B run") {
            // Until SIGINT/SIGTERM: a SIGINT after 10 s (timeout's 124), the daemon relaying meanwhile.
            let command = line.split(" #").next().unwrap().trim_end();
            script.push_str(&format!("timeout -s INT 10 {command} || [ $? -eq 124 ]\n"));
        } else {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(script.contains("$B order deliver $O"), "the lifecycle is in the block:\n{script}");
    script.push_str("printf '\\nIDS %s %s\\n' \"$C\" \"$O\"\n");
    let (ok, out) = bash(&script, &cfg);
    assert!(ok, "the README block fails:\n{out}");
    let ids: Vec<String> =
        out.lines().find_map(|l| l.strip_prefix("IDS ")).unwrap().split(' ').map(str::to_string).collect();
    let (customer, order) = (&ids[0], &ids[1]);
    assert!(out.contains("\"delivered\""), "`order show` prints the delivered order:\n{out}");
    // `$B run` relayed every event: the order's five on the topic, in order.
    let records = consume_until(&brokers, &topics(&cfg), 1, Duration::from_secs(20), |rs| {
        rs.iter().filter(|r| &r.key == order).count() >= 5
    });
    let seqs: Vec<String> =
        records.iter().filter(|r| &r.key == order).map(|r| r.headers["ce_sequence"].clone()).collect();
    assert_eq!(seqs, ["1", "2", "3", "4", "5"], "the order's events on the topic");
    assert!(records.iter().any(|r| &r.key == customer), "the customer's event too");

    // "Watching the events", by hand: the sqlite3 queries on this file.
    let queries: String = block_after("### Watching the events")
        .lines()
        .chain(block_after("Without Docker, by hand (`make dev` prints the exact broker address):").lines())
        .filter(|l| l.starts_with("sqlite3 "))
        .map(|l| l.replace(".local/dev/outbox.db", &cfg.store.path.display().to_string()) + "\n")
        .collect();
    assert_eq!(queries.lines().count(), 2, "{queries}");
    let (ok, out) = bash(&queries, &cfg);
    assert!(ok, "the sqlite3 queries fail:\n{out}");
    assert!(out.contains(&format!("|{order}|5|OrderDelivered")), "the event_store query lists the order:\n{out}");
    assert!(out.contains("kafka-relay|"), "the checkpoints query lists the relay's:\n{out}");
    // OPERATIONS.md's read-model query, on the same file.
    let ops = std::fs::read_to_string(repo_root().join("docs/OPERATIONS.md")).unwrap();
    let rm: Vec<String> = ops
        .lines()
        .filter(|l| l.starts_with("sqlite3 data/outbox.db"))
        .map(|l| l.replace("data/outbox.db", &cfg.store.path.display().to_string()))
        .collect();
    assert_eq!(rm.len(), 1, "{rm:?}");
    let (ok, out) = bash(&rm[0], &cfg);
    assert!(ok, "the read-model query fails:\n{out}");
    assert!(out.contains(&format!("{order}|delivered|")), "the read-model query lists the order:\n{out}");

    // The kcat lines of README.md and OPERATIONS.md on this broker and the
    // test's topic, up to the end of the topic (`-e`; as written they follow it).
    let kcat: Vec<String> = std::fs::read_to_string(repo_root().join("README.md"))
        .unwrap()
        .lines()
        .chain(ops.lines())
        .filter(|l| l.starts_with("kcat "))
        .map(|l| {
            l.replace("127.0.0.1:<port>", &brokers)
                .replace("-t order-events", &format!("-e -t {}order-events", cfg.kafka.topic_prefix))
        })
        .collect();
    assert_eq!(kcat.len(), 2, "{kcat:?}");
    for line in &kcat {
        assert!(!line.contains('<'), "a placeholder left: {line}");
        let (ok, out) = bash(&format!("timeout 60 {line}"), &cfg);
        assert!(ok, "`{line}` fails:\n{out}");
        assert!(out.contains(&format!("key={order}")) && out.contains("ce_id="), "`{line}` shows the records:\n{out}");
    }
}
