//! Every `OUTBOX_*=value` example in README.md, docs/*.md and the deploy/
//! config files is run exactly as written: the variables of one line
//! together, against the built binary's `outboxd config`, which must exit 0
//! and show each value at the key the variable names. A documented variable
//! that the configuration refuses or ignores fails here.
//!
//! Placeholders are filled with a sample (`<port>` -> 9092); any other
//! `<...>` placeholder fails the test until it is given a sample here.
//! Every ```toml block of README.md and docs/*.md is given to
//! `outboxd config` as the `OUTBOX_CONFIG` file exactly as written, and
//! each of its values must show in the effective configuration. A line
//! that shows the variables on `outboxd run` also starts the daemon with them.

mod harness;

use harness::config_check::{assert_env_taken, effective_config};
use std::path::{Path, PathBuf};

const PLACEHOLDERS: &[(&str, &str)] = &[("<port>", "9092")];

fn documents() -> Vec<PathBuf> {
    let root = harness::repo_root();
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "deploy"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if matches!(p.extension().and_then(|e| e.to_str()), Some("md" | "toml")) {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// `OUTBOX_[A-Z0-9_]+=value` occurrences of one line; the value ends at
/// whitespace, a quote, a backtick or a closing bracket, and loses a trailing
/// sentence period or comma.
fn examples_in(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("OUTBOX_") {
        let tail = &rest[i..];
        let name_len =
            tail.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        let after = &tail[name_len..];
        rest = after;
        let Some(value) = after.strip_prefix('=') else { continue };
        let end = value.find(|c: char| c.is_whitespace() || "`'\")]".contains(c)).unwrap_or(value.len());
        let mut v = value[..end].trim_end_matches(['.', ',', ';', ':']).to_string();
        for (ph, sample) in PLACEHOLDERS {
            v = v.replace(ph, sample);
        }
        out.push((tail[..name_len].to_string(), v));
    }
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(harness::repo_root()).unwrap_or(p).display().to_string()
}

#[test]
fn example_extraction() {
    assert_eq!(
        examples_in("e.g. `OUTBOX_KAFKA__BROKERS=10.0.0.5:9092 OUTBOX_RELAY__X=5000 outboxd run`."),
        [("OUTBOX_KAFKA__BROKERS".to_string(), "10.0.0.5:9092".to_string()), ("OUTBOX_RELAY__X".into(), "5000".into())]
    );
    assert_eq!(examples_in("(`OUTBOX_HTTP__API_TOKEN`, at least 16)"), []);
    assert_eq!(
        examples_in("OUTBOX_KAFKA__PARTITIONS=12."),
        [("OUTBOX_KAFKA__PARTITIONS".to_string(), "12".to_string())]
    );
    assert_eq!(
        examples_in("OUTBOX_KAFKA__BROKERS=127.0.0.1:<port>"),
        [("OUTBOX_KAFKA__BROKERS".to_string(), "127.0.0.1:9092".to_string())]
    );
}

#[test]
fn every_documented_outbox_variable_takes_effect() {
    let cwd = harness::repo_root();
    let baseline = effective_config(&[], &cwd).expect("outboxd config with no variables");
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (n, line) in text.lines().enumerate() {
            let examples = examples_in(line);
            if examples.is_empty() {
                continue;
            }
            let at = format!("{}:{}", rel(&doc), n + 1);
            for (_, v) in &examples {
                assert!(!v.contains('<'), "{at}: placeholder in {v:?}: add a sample to PLACEHOLDERS");
            }
            let env: Vec<(String, String)> = examples.clone();
            let cfg = effective_config(&env, &cwd).unwrap_or_else(|e| panic!("{at}: {line}\n  outboxd config: {e}"));
            for (k, v) in &examples {
                if k == "OUTBOX_CONFIG" {
                    // A file: every value in it must show.
                    harness::config_check::assert_file_taken(&cwd.join(v), &cfg, &[], &at);
                } else {
                    assert_env_taken(k, v, &cfg, &baseline, &at);
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 3, "found {checked} documented OUTBOX_ examples; the extraction must be broken");
    eprintln!("{checked} documented OUTBOX_* examples took effect");
}

/// The ```toml blocks of README.md and docs/*.md, each with where it starts.
fn toml_blocks() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for doc in documents().into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")) {
        let text = std::fs::read_to_string(&doc).unwrap();
        out.extend(
            harness::fenced_blocks(&text, "toml").into_iter().map(|(at, body)| (format!("{}:{at}", rel(&doc)), body)),
        );
    }
    out
}

#[test]
fn every_documented_toml_configuration_is_accepted_as_written() {
    let cwd = harness::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let blocks = toml_blocks();
    assert!(!blocks.is_empty(), "README.md shows a TOML configuration; the extraction must be broken");
    for (i, (at, body)) in blocks.iter().enumerate() {
        let file = dir.path().join(format!("block-{i}.toml"));
        std::fs::write(&file, body).unwrap();
        let env = [("OUTBOX_CONFIG".to_string(), file.display().to_string())];
        let cfg = effective_config(&env, &cwd).unwrap_or_else(|e| panic!("{at}: outboxd config refused it: {e}"));
        harness::config_check::assert_file_taken(&file, &cfg, &[], at);
    }
    eprintln!("{} documented TOML configurations accepted as written", blocks.len());
}

/// A documented `OUTBOX_...=value ... outboxd run` line (the README's
/// configuration example) starts the daemon with those variables. The test
/// harness's own settings come first (a store path, ports, topic prefix,
/// short timeouts: keys the line does not set), the line's variables last,
/// so they win. It serves `/health/live` (its broker unreachable or not)
/// and stops on SIGTERM with exit 0.
#[test]
fn documented_run_lines_start_the_daemon() {
    let mut ran = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for (n, line) in text.lines().enumerate() {
            let examples = examples_in(line);
            if examples.is_empty() || !line.contains("outboxd run") {
                continue;
            }
            let at = format!("{}:{}", rel(&doc), n + 1);
            let dir = tempfile::tempdir().unwrap();
            let cfg = harness::daemon_config("127.0.0.1:9", dir.path());
            let env: Vec<(&str, String)> = examples.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            assert!(
                env.iter()
                    .all(|(k, _)| !["OUTBOX_STORE__PATH", "OUTBOX_HTTP__LISTEN", "OUTBOX_HTTP__ADMIN_LISTEN"]
                        .contains(k)),
                "{at}: the test gives the daemon its own store and ports"
            );
            let mut d = harness::Daemon::spawn(&cfg, &env);
            harness::eventually(std::time::Duration::from_secs(60), &format!("{at}: /health/live"), || {
                assert!(d.alive(), "{at}: `{line}` exited; log:\n{}", d.log_text());
                harness::try_request(d.admin, "GET", "/health/live", &[], None).ok().filter(|r| r.status == 200)
            });
            eprintln!("{at}: `outboxd run` with {env:?} serves /health/live");
            d.stop();
            ran += 1;
        }
    }
    assert!(ran >= 1, "README.md shows an `outboxd run` line with variables");
}
