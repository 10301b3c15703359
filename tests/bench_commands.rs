//! Every `outboxd bench ...` command shown in docs/BENCHMARKS.md runs as
//! written (the documented binary path replaced by the built one, `<port>`
//! filled with the test servers), with `--json` and small sizes appended
//! (a later flag overrides an earlier one, so `--events 50000 --events 300`
//! runs 300). Its stdout must be one JSON object carrying that benchmark's
//! figures: positive rates, ratios and latencies, never a pass/fail on them.
//!
//! The CQL benchmark needs `CASSANDRA_URI` (make test sets it) and the
//! Kafka ones `KAFKA_BROKERS`; without them each prints SKIPPED.

mod harness;

use serde_json::Value;
use std::process::Command;

/// The bench command lines of docs/BENCHMARKS.md's code blocks.
fn documented() -> Vec<String> {
    let text = std::fs::read_to_string(harness::repo_root().join("docs/BENCHMARKS.md")).unwrap();
    let mut in_block = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let line = line.split("  #").next().unwrap().trim();
        if in_block && line.contains(" bench ") {
            out.push(line.to_string());
        }
    }
    out
}

/// Flags that shrink each benchmark to a few seconds.
fn small(bench: &str) -> &'static [&'static str] {
    match bench {
        "append" => &["--aggregates", "300", "--events-per-aggregate", "2", "--concurrency", "8"],
        "relay" => &["--events", "300", "--size", "512", "--seconds", "1", "--rate", "200,1000"],
        "snapshots" => &["--events", "300"],
        "rebuild" => &["--orders", "200"],
        "cql" => &["--events", "60", "--concurrency", "4"],
        "http" => &["--clients", "4", "--requests-per-client", "20"],
        "backlog" => &["--events", "3000", "--size", "512"],
        other => panic!("docs/BENCHMARKS.md shows `bench {other}`, which this test does not know"),
    }
}

/// A positive number at `path` (slash-separated keys) of `v`.
fn positive(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('/') {
        cur = &cur[k];
    }
    let n = cur.as_f64().unwrap_or_else(|| panic!("{path} missing in {v}"));
    assert!(n > 0.0 && n.is_finite(), "{path} = {n} in {v}");
    n
}

/// The series `key` of `v` has one sample per round: 3.
fn three_rounds(v: &Value, key: &str) {
    let n = v[key]["samples"].as_array().unwrap_or_else(|| panic!("{key}/samples missing in {v}")).len();
    assert_eq!(n, 3, "{key}: 3 rounds: {v}");
}

/// A setting the human lines print, present in the JSON as a string.
fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Each daemon stopped by SIGTERM and its own topics deleted: one whose
/// cleanup failed cannot hide behind the others' deleted topics.
fn stopped_cleanly(stop: &Value, v: &Value) {
    assert!(text(stop, "how").starts_with("daemon stopped by SIGTERM"), "{stop} in {v}");
    assert!(stop["cleanup_error"].is_null(), "its topics were not deleted: {stop} in {v}");
    let deleted = stop["topics_deleted"].as_array().unwrap_or_else(|| panic!("topics_deleted in {stop}"));
    assert!(!deleted.is_empty(), "each daemon deletes the topics it created: {stop} in {v}");
}

fn check(bench: &str, v: &Value) {
    assert_eq!(v["bench"], bench, "{v}");
    match bench {
        "append" => {
            positive(v, "raw/median");
            positive(v, "store/ratio/median");
            for k in ["raw", "store", "store_renewing", "cpu_raw", "cpu_store"] {
                three_rounds(v, k);
            }
            positive(v, "store_renewing/ratio/median");
            positive(v, "lease_renewals");
            positive(v, "cpu_raw/median");
            positive(v, "cpu_store/ratio/median");
            assert!(["full", "normal"].contains(&text(v, "synchronous")), "{v}");
            positive(v, "warmup_events");
        }
        "relay" => {
            for k in ["bare", "relay_at_least_once", "relay_exactly_once", "bare_hot", "relay_hot"] {
                positive(v, &format!("{k}/median"));
                three_rounds(v, k);
            }
            for k in [
                "relay_at_least_once_running",
                "relay_start_ms",
                "cpu_bare",
                "cpu_relay_at_least_once",
                "cpu_relay_exactly_once",
            ] {
                three_rounds(v, k);
            }
            assert!(!text(v, "compression").is_empty(), "{v}");
            positive(v, "hot_events");
            positive(v, "relay_at_least_once/ratio/min");
            // The same passes timed from the relay's report of running, and that start.
            positive(v, "relay_at_least_once_running/ratio/median");
            positive(v, "relay_start_ms/median");
            for k in ["cpu_bare/median", "cpu_relay_at_least_once/ratio/median", "cpu_relay_exactly_once/ratio/min"] {
                positive(v, k);
            }
            for phase in [
                "at-least-once@200",
                "at-least-once@1000",
                "exactly-once@200",
                "exactly-once@1000",
                "at-least-once@200 via standby",
            ] {
                positive(v, &format!("e2e/{phase}/p99_ms"));
                positive(v, &format!("e2e/{phase}/samples"));
            }
        }
        "snapshots" => {
            positive(v, "snapshots/ratio");
        }
        "rebuild" => {
            positive(v, "rebuild/events_per_sec");
            // What the text prints beside the rebuild's report.
            positive(v, "rebuild/read_model_rows");
            positive(v, "rebuild/us_per_event");
            assert_eq!(v["rebuild"]["appended"], v["rebuild"]["events"], "{v}");
            assert!(v["rebuild"]["synchronous"].is_string(), "{v}");
        }
        "cql" => {
            positive(v, "store/ratio/median");
            three_rounds(v, "store");
            three_rounds(v, "raw");
            positive(v, "events");
            positive(v, "concurrency");
            positive(v, "warmup_events");
        }
        "http" => {
            positive(v, "api/ratio/median");
            positive(v, "service/ratio/median");
            positive(v, "api_over_service/median");
            for k in ["api", "service", "bare", "api_over_service"] {
                three_rounds(v, k);
            }
            positive(v, "latency_ms/p99");
            positive(v, "warmup_requests");
            assert_eq!(v["created"], v["requests"], "every POST /orders created: {v}");
            assert_eq!(v["service_created"], v["requests"], "every in-process order created: {v}");
            let stops = v["daemon_stops"].as_array().unwrap_or_else(|| panic!("daemon_stops missing in {v}"));
            assert_eq!(stops.len(), 3, "one daemon per round: {v}");
            for stop in stops {
                stopped_cleanly(stop, v);
            }
        }
        "backlog" => {
            assert_eq!(v["events"], 3000, "{v}");
            positive(v, "vm_hwm_mb");
            positive(v, "seed_seconds");
            assert_eq!(v["rss_by_progress"].as_array().unwrap().len(), 10, "{v}");
            stopped_cleanly(&v["daemon_stop"], v);
        }
        _ => unreachable!(),
    }
}

#[test]
fn every_documented_bench_command_runs_and_prints_its_figures_as_json() {
    let shown = documented();
    assert!(shown.len() >= 7, "BENCHMARKS.md shows the bench commands: {shown:?}");
    let brokers = harness::kafka::shared_brokers();
    let cql = std::env::var("CASSANDRA_URI").ok().filter(|s| !s.is_empty());
    let mut ran = 0;
    for line in shown {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "bench").unwrap();
        let bench = words[at + 1];
        let mut env = Vec::new();
        let mut missing = None;
        for w in &words[..at - 1] {
            let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("`{line}`: {w} is not VAR=value"));
            let server = if k.contains("KAFKA") { &brokers } else { &cql };
            match (v.contains("<port>"), server) {
                (false, _) => env.push((k.to_string(), v.to_string())),
                (true, Some(s)) => env.push((k.to_string(), s.clone())),
                (true, None) => missing = Some(k.to_string()),
            }
        }
        if let Some(k) = missing {
            eprintln!(
                "SKIPPED: `{line}`: needs {} for {k} (make test starts the server)",
                if k.contains("KAFKA") { "KAFKA_BROKERS" } else { "CASSANDRA_URI" }
            );
            continue;
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outboxd"));
        cmd.envs(env);
        assert!(words[at - 1] == "$B" || words[at - 1].ends_with("/outboxd"), "`{line}`: which binary?");
        cmd.args(&words[at..]).args(small(bench)).arg("--json").env("RUST_LOG", "warn");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "`{line}` failed: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let v: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("`{line} --json`: stdout is not one JSON object ({e}): {stdout}"));
        check(bench, &v);
        deleted_its_topics(brokers.as_deref(), bench, &v);
        if bench == "append" {
            // A documented --raw-batch takes effect (256 when not given).
            let want = words.windows(2).find(|w| w[0] == "--raw-batch").map_or("256", |w| w[1]);
            assert_eq!(v["raw_batch"].to_string(), want, "`{line}`: {v}");
            // So does a documented `synchronous` (full when not given).
            let sync = if line.contains("SYNCHRONOUS=normal") { "normal" } else { "full" };
            assert_eq!(v["synchronous"], sync, "`{line}`: {v}");
        }
        eprintln!("ran `{line}` (small, --json): {v}");
        ran += 1;
    }
    assert!(ran >= 4, "the SQLite-only benchmarks always run");
}

/// `outboxd -c FILE bench backlog`: the `outboxd run` child reads the same
/// file. Here it names the relay consumer, whose checkpoint the bench
/// watches; the child ran on the defaults and the bench waited for progress
/// that never came.
#[test]
fn a_bench_daemon_child_reads_the_benchs_config_file() {
    let Some(brokers) = harness::kafka::shared_brokers() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("outboxd.toml");
    std::fs::write(
        &file,
        format!("[kafka]\nbrokers = \"{brokers}\"\n\n[relay]\nconsumer_name = \"bench-from-file\"\n"),
    )
    .unwrap();
    run_small(&["-c".as_ref(), file.as_os_str()], "backlog", &[], &[]);
}

/// `bench relay` with `kafka.topic_routing = "per-event-type"`: the
/// baseline gets topics of its own (it wrote into the relay's, whose names
/// have no `-events` to replace) and the latency consumer reads the topic
/// the bench's events go to (it read another and waited out its deadline).
#[test]
fn bench_relay_runs_with_per_event_type_topics() {
    let Some(brokers) = harness::kafka::shared_brokers() else { return };
    let env = [("OUTBOX_KAFKA__BROKERS", brokers.as_str()), ("OUTBOX_KAFKA__TOPIC_ROUTING", "per-event-type")];
    run_small(&[], "relay", &env, &[]);
}

/// `bench http` against a daemon that requires a bearer token (here set by
/// `OUTBOX_HTTP__API_TOKEN`, which its child inherits): the bench's clients
/// send it, and every order is created.
#[test]
fn bench_http_sends_the_api_token() {
    let Some(brokers) = harness::kafka::shared_brokers() else { return };
    let token = "bench-token-0123456789abcdef0123456789";
    run_small(&[], "http", &[("OUTBOX_KAFKA__BROKERS", brokers.as_str()), ("OUTBOX_HTTP__API_TOKEN", token)], &[]);
}

/// `--dir` (docs/CLI.md: append, backlog, snapshots, rebuild) is where a
/// bench keeps its databases: a directory it creates if missing, its own
/// files removed at the end.
#[test]
fn bench_dir_holds_the_bench_files_and_is_left_empty() {
    let brokers = harness::kafka::shared_brokers();
    let tmp = tempfile::tempdir().unwrap();
    for bench in ["append", "snapshots", "rebuild", "backlog"] {
        let env: Vec<(&str, &str)> = match (bench, brokers.as_deref()) {
            ("backlog", None) => continue, // shared_brokers printed SKIPPED
            ("backlog", Some(b)) => vec![("OUTBOX_KAFKA__BROKERS", b)],
            _ => vec![],
        };
        let base = tmp.path().join(bench).join("not-yet");
        run_small(&[], bench, &env, &["--dir".as_ref(), base.as_os_str()]);
        let left: Vec<_> = std::fs::read_dir(&base)
            .unwrap_or_else(|e| panic!("bench {bench} --dir {}: not made ({e})", base.display()))
            .collect();
        assert!(left.is_empty(), "bench {bench} removed its files: {left:?}");
    }
}

/// Runs `outboxd <pre...> bench <bench>` small with `--json`, `extra` and
/// `env`; checks it succeeded and printed its figures.
fn run_small(pre: &[&std::ffi::OsStr], bench: &str, env: &[(&str, &str)], extra: &[&std::ffi::OsStr]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outboxd"));
    cmd.args(pre).args(["bench", bench]).args(small(bench)).args(extra).arg("--json").env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.env_remove("OUTBOX_CONFIG").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    check(bench, &v);
    deleted_its_topics(harness::kafka::shared_brokers().as_deref(), bench, &v);
}

/// The Kafka benchmarks delete the topics they created (a fresh
/// `bench<uuid>.` prefix each): the report names them, and the cluster no
/// longer lists any of them (deletion is asynchronous: waited up to 30 s).
/// They were left behind, events and all, after every run.
fn deleted_its_topics(brokers: Option<&str>, bench: &str, v: &Value) {
    if !["relay", "http", "backlog"].contains(&bench) {
        return;
    }
    let deleted: Vec<String> = serde_json::from_value(v["topics_deleted"].clone())
        .unwrap_or_else(|e| panic!("bench {bench}: topics_deleted ({e}) in {v}"));
    assert!(!deleted.is_empty(), "bench {bench} created topics and names them: {v}");
    assert!(deleted.iter().all(|t| t.starts_with("bench")), "only its own topics: {deleted:?}");
    let brokers = brokers.expect("a Kafka bench ran, so brokers are known");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let listed = harness::kafka::topic_list(brokers);
        let left: Vec<&String> = deleted.iter().filter(|t| listed.contains(*t)).collect();
        if left.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < until, "bench {bench}: topics still on the cluster after 30 s: {left:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// `outboxd bench <args>` is refused before anything runs: exit 2, one
/// line naming `flag` and its upper bound, no panic.
fn refused(args: &[&str], flag: &str) {
    let o =
        Command::new(env!("CARGO_BIN_EXE_outboxd")).arg("bench").args(args).env_remove("RUST_LOG").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err:?}");
    assert!(err.contains(&format!("'{flag} <")) && err.contains("or less"), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

/// Review finding: huge counts panicked (`bench append` multiplied them
/// past `usize::MAX`; `bench snapshots --events`, `bench rebuild --orders`).
/// Every count has an upper bound: refused naming the flag.
#[test]
fn huge_counts_are_refused_naming_the_flag() {
    let max = u64::MAX.to_string();
    let cases: [(&[&str], &str); 10] = [
        (&["append", "--aggregates", &max, "--events-per-aggregate", "2"], "--aggregates"),
        (&["append", "--aggregates", "2", "--events-per-aggregate", &max], "--events-per-aggregate"),
        (&["append", "--concurrency", "100000001"], "--concurrency"),
        (&["append", "--aggregates", "100000000", "--events-per-aggregate", "2"], "--events-per-aggregate"),
        (&["relay", "--events", &max], "--events"),
        (&["snapshots", "--events", &max], "--events"),
        (&["rebuild", "--orders", &max], "--orders"),
        (&["cql", "--events", &max], "--events"),
        (&["http", "--clients", &max], "--clients"),
        (&["http", "--requests-per-client", &max], "--requests-per-client"),
    ];
    for (args, flag) in cases {
        refused(args, flag);
    }
}

/// Review finding: `bench relay --size 18446744073709551615` overflowed a
/// capacity (a panic): `--size` is 1 byte to 1 MiB.
#[test]
fn huge_event_sizes_are_refused_naming_the_flag() {
    let max = u64::MAX.to_string();
    refused(&["relay", "--events", "1", "--size", &max], "--size");
    refused(&["relay", "--events", "1", "--size", "1048577"], "--size");
    refused(&["backlog", "--events", "1", "--size", &max], "--size");
}
