//! The curl walkthroughs of docs/HTTP.md run exactly as written (bash, curl,
//! jq) against a real `outboxd run`: only the `API=`/`ADMIN=` address lines
//! point at the test's daemon and the `<...>` placeholders get a sample.
//!
//! The command API walkthrough must answer every request with 2xx or 304 and
//! leave the documented outcome (the order delivered, the other cancelled,
//! the email changed); the admin walkthrough, with a token configured, must
//! be authorised throughout and answer each route as docs/HTTP.md says.

mod harness;

use harness::*;
use std::process::Command;

/// The `bash` code blocks of docs/HTTP.md, in order.
fn bash_blocks() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("docs/HTTP.md")).unwrap();
    fenced_blocks(&text, "bash").into_iter().map(|(_, body)| body).collect()
}

/// The block that assigns `var=http://127.0.0.1:PORT`, re-pointed at `addr`.
fn block_for(var: &str, addr: std::net::SocketAddr) -> String {
    let prefix = format!("{var}=http://127.0.0.1:");
    let block = bash_blocks().into_iter().find(|b| b.lines().any(|l| l.starts_with(&prefix))).unwrap_or_else(|| {
        panic!("docs/HTTP.md has a bash block that sets {var}");
    });
    block
        .lines()
        .map(|l| if l.starts_with(&prefix) { format!("{var}=http://{addr}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// Runs `script` with `bash -euo pipefail`; (exit ok, stdout + stderr).
fn bash(script: &str, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .envs(env.iter().copied())
        .output()
        .expect("bash runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn tools_present() -> bool {
    let missing: Vec<_> = ["curl", "jq"].into_iter().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        crate::harness::skipped(
            true,
            &format!("{missing:?} not installed (make test installs them: scripts/deps.sh test)"),
        );
    }
    missing.is_empty()
}

#[test]
fn the_command_api_walkthrough_runs_as_written() {
    if !tools_present() {
        return;
    }
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&daemon_config(&brokers, dir.path()), &[]);
    let script =
        format!("{}\nprintf '\\nIDS %s %s %s\\n' \"$CUSTOMER\" \"$ORDER\" \"$OTHER\"\n", block_for("API", d.api));
    let curls = script.lines().filter(|l| l.trim_start().starts_with("curl -i")).count();
    let (ok, out) = bash(&script, &[]);
    assert!(ok, "the walkthrough fails:\n{out}");
    // A body has no trailing newline: the next status line may follow it on the same line.
    let statuses: Vec<&str> = out.split("HTTP/1.1 ").skip(1).map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(statuses.len(), curls, "one status line per `curl -i`: {statuses:?}\n{out}");
    assert!(statuses.iter().all(|s| s.starts_with('2') || *s == "304"), "{statuses:?}\n{out}");
    assert!(statuses.contains(&"304"), "the If-None-Match read is answered 304: {statuses:?}");
    let ids: Vec<&str> = out.lines().find_map(|l| l.strip_prefix("IDS ")).unwrap().split(' ').collect();
    let get = |path: String| {
        let r = d.api("GET", &path, &[], None);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    };
    assert_eq!(get(format!("/customers/{}", ids[0]))["email"], "ada@example.org");
    eventually(std::time::Duration::from_secs(20), "the read model to show the walkthrough's outcome", || {
        let (o, other) = (get(format!("/orders/{}", ids[1])), get(format!("/orders/{}", ids[2])));
        (o["status"] == "delivered" && other["status"] == "cancelled").then_some(())
    });
    d.stop();
}

#[test]
fn the_admin_walkthrough_runs_as_written_with_the_token() {
    if !tools_present() {
        return;
    }
    let Some(brokers) = shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = format!("docs-curl-{}", uuid::Uuid::now_v7().simple());
    let mut cfg = daemon_config(&brokers, dir.path());
    cfg.http.api_token = Some(token.clone());
    let d = Daemon::start(&cfg, &[("OUTBOX_HTTP__API_TOKEN", token.clone())]);
    let samples =
        [("<id>", uuid::Uuid::now_v7().to_string()), ("<first held event>", uuid::Uuid::now_v7().to_string())];
    let mut script = block_for("ADMIN", d.admin);
    for (p, v) in &samples {
        script = script.replace(p, v);
    }
    assert!(!script.contains('<'), "give every placeholder a sample: {script}");
    let request = uuid::Uuid::now_v7().to_string();
    let (ok, out) = bash(&script, &[("OUTBOX_HTTP__API_TOKEN", &token), ("REQUEST", &request)]);
    assert!(ok, "the admin walkthrough fails:\n{out}");
    assert!(!out.contains("unauthorized"), "the documented AUTH header is accepted:\n{out}");
    assert!(out.contains("outboxd_build_info"), "metrics:\n{out}");
    assert!(out.lines().filter(|l| *l == "200").count() == 2, "live and ready answer 200:\n{out}");
    assert!(out.contains("\"parked_count\"") && out.contains("\"leases\""), "dlq and leases:\n{out}");
    // Nothing is parked and the feed is short: the aggregate replay, the
    // discard and the rewind to 1200 (past the last event) are refused
    // before a request is written (422, naming the field); replay all is
    // done; an unknown request is 404.
    assert_eq!(out.matches("\"error\":\"request_failed\"").count(), 0, "{out}");
    assert!(out.contains("\"field\":\"aggregate_id\"") && out.contains("\"field\":\"event_id\""), "{out}");
    assert!(out.contains("\"field\":\"to_position\"") && out.contains("beyond the last event in the store"), "{out}");
    assert!(out.contains("is not a parked aggregate"), "{out}");
    assert!(out.contains("\"status\":\"done\""), "replay all is carried out:\n{out}");
    assert!(out.contains(&format!("relay request {request} does not exist")), "{out}");
    d.stop();
}
