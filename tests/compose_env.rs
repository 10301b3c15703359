//! The docker-compose path, exercised without a Docker engine: every outboxd
//! service of docker-compose.yml is run here with its `environment`,
//! `command` and mounted config file exactly as the file writes them (YAML
//! anchors and merge keys resolved as compose does; the container path of
//! the config file mapped to the repository file through the service's
//! `volumes` entry), and `outboxd config` must accept them and show every
//! value of the file and of the environment; `outboxd schema --dry-run`
//! (the schema job's command, without connecting) must print the DDL for
//! the configured keyspace; the replicas' healthcheck command runs against
//! a real daemon's admin port.
//!
//! This is the test whose absence let `OUTBOX_CONFIG` break the stack (it was
//! read as a config key and refused, so the schema job exited 2).

mod harness;

use harness::config_check::{assert_env_taken, assert_file_taken, effective_config, env_key_path, outboxd};
use serde_yaml_ng::Value as Yaml;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One outboxd service as compose would start it.
#[derive(Debug)]
struct Service {
    name: String,
    env: BTreeMap<String, String>,
    command: Vec<String>,
    /// container path -> repository file (bind mounts of files only)
    mounts: BTreeMap<String, PathBuf>,
}

fn compose() -> Yaml {
    let path = harness::repo_root().join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut doc: Yaml = serde_yaml_ng::from_str(&text).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("merge keys resolve");
    doc
}

fn scalar(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The services that run the outboxd image (its Dockerfile build).
fn outboxd_services(doc: &Yaml) -> Vec<Service> {
    let services = doc["services"].as_mapping().expect("services");
    let mut out = Vec::new();
    for (name, svc) in services {
        let image = svc.get("image").map(scalar).unwrap_or_default();
        let dockerfile = svc.get("build").and_then(|b| b.get("dockerfile")).map(scalar).unwrap_or_default();
        if !image.starts_with("outboxd") && dockerfile != "Dockerfile" {
            continue;
        }
        let mut env = BTreeMap::new();
        match svc.get("environment") {
            Some(Yaml::Mapping(m)) => {
                for (k, v) in m {
                    env.insert(scalar(k), scalar(v));
                }
            }
            Some(Yaml::Sequence(list)) => {
                for item in list {
                    let s = scalar(item);
                    let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                    env.insert(k.to_string(), v.to_string());
                }
            }
            _ => {}
        }
        let command = match svc.get("command") {
            Some(Yaml::Sequence(c)) => c.iter().map(scalar).collect(),
            Some(Yaml::String(s)) => s.split_whitespace().map(String::from).collect(),
            _ => vec!["run".to_string()], // the Dockerfile's CMD
        };
        let mut mounts = BTreeMap::new();
        for v in svc.get("volumes").and_then(|v| v.as_sequence()).into_iter().flatten() {
            let spec = scalar(v);
            let mut parts = spec.split(':');
            let (src, dst) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if src.starts_with("./") || src.starts_with('/') {
                mounts.insert(dst.to_string(), harness::repo_root().join(src.trim_start_matches("./")));
            }
        }
        out.push(Service { name: scalar(name), env, command, mounts });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[test]
fn compose_file_has_two_outboxd_replicas_and_a_schema_job() {
    let services = outboxd_services(&compose());
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["outboxd-1", "outboxd-2", "outboxd-schema"], "outboxd services");
    for s in &services {
        let want = if s.name == "outboxd-schema" { vec!["schema"] } else { vec!["run"] };
        assert_eq!(s.command, want, "{}: command", s.name);
        assert!(s.env.contains_key("OUTBOX_CONFIG"), "{}: OUTBOX_CONFIG selects the mounted file", s.name);
    }
    let ids: Vec<_> = services.iter().filter_map(|s| s.env.get("OUTBOX_RELAY__INSTANCE_ID")).collect();
    assert_eq!(ids, ["outboxd-1", "outboxd-2"], "each replica names itself");
    // Operator walkthrough: Docker's default 10 s before SIGKILL cut the
    // daemon's graceful stop (up to shutdown_deadline_ms, default 30 s) short.
    let doc = compose();
    let deadline_s = outboxd::config::Config::default().shutdown_deadline_ms / 1000;
    for name in ["outboxd-1", "outboxd-2"] {
        let grace = scalar(&doc["services"][name]["stop_grace_period"]);
        let secs: u64 =
            grace.strip_suffix('s').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{name}: {grace:?}"));
        // The deadline, then at most about 6 s (docs/OPERATIONS.md, Shutdown).
        assert!(
            secs >= deadline_s + 6,
            "{name}: stop_grace_period {grace} outlasts the {deadline_s} s deadline and its tail"
        );
    }
}

#[test]
fn admin_ports_are_published_on_loopback_only() {
    let doc = compose();
    for (name, svc) in doc["services"].as_mapping().unwrap() {
        for p in svc.get("ports").and_then(|p| p.as_sequence()).into_iter().flatten() {
            let spec = scalar(p);
            let container_port = spec.rsplit(':').next().unwrap();
            if container_port == "9090" && scalar(name).starts_with("outboxd") {
                assert!(spec.starts_with("127.0.0.1:"), "{}: admin port {spec} must be 127.0.0.1 only", scalar(name));
            }
        }
    }
}

#[test]
fn every_outboxd_service_config_is_accepted_as_written() {
    let services = outboxd_services(&compose());
    assert!(!services.is_empty());
    let scratch = tempfile::tempdir().unwrap();
    for s in &services {
        // The environment exactly as written, with the mounted file's
        // container path replaced by the repository file it mounts.
        let mut env: Vec<(String, String)> = Vec::new();
        let mut config_file = None;
        for (k, v) in &s.env {
            let v = match s.mounts.get(v) {
                Some(host) => {
                    assert!(host.is_file(), "{}: {k}={v} mounts {} which exists", s.name, host.display());
                    config_file = Some(host.clone());
                    host.display().to_string()
                }
                None => v.clone(),
            };
            env.push((k.clone(), v));
        }
        let config_file = config_file.unwrap_or_else(|| panic!("{}: OUTBOX_CONFIG names a mounted file", s.name));
        let cfg = effective_config(&env, scratch.path()).unwrap_or_else(|e| panic!("{}: outboxd config: {e}", s.name));
        let baseline = effective_config(&[], scratch.path()).unwrap();
        let overridden: Vec<Vec<String>> =
            s.env.keys().filter(|k| k.starts_with("OUTBOX_")).map(|k| env_key_path(k)).collect();
        assert_file_taken(&config_file, &cfg, &overridden, &s.name);
        for (k, v) in &env {
            if k.starts_with("OUTBOX_") && k != "OUTBOX_CONFIG" {
                assert_env_taken(k, v, &cfg, &baseline, &s.name);
            }
        }
        // The stack is ScyllaDB + Redpanda: the file must say so.
        assert_eq!(cfg["store"]["backend"], "cql", "{}", s.name);
        assert_eq!(cfg["kafka"]["brokers"], "redpanda:9092", "{}", s.name);
        // The schema job's command (every service shares the schema), as a
        // dry run: the DDL for the file's keyspace, nothing connected.
        let out = outboxd(&["schema", "--dry-run"], &env, scratch.path());
        let ddl = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: schema --dry-run: {}", s.name, String::from_utf8_lossy(&out.stderr));
        let ks = cfg["store"]["cql"]["keyspace"].as_str().unwrap();
        assert!(ddl.contains(&format!("CREATE KEYSPACE IF NOT EXISTS {ks}")), "{}: {ddl}", s.name);
        assert!(ddl.contains(&format!("CREATE TABLE IF NOT EXISTS {ks}.event_store")), "{}: {ddl}", s.name);
    }
}

/// The outboxd services' healthcheck, run as compose runs it (`CMD bash -c
/// ...`) against a real daemon's admin port in place of the container's
/// 9090: healthy once the daemon is ready, unhealthy once it is gone.
#[test]
fn the_healthcheck_passes_on_a_ready_daemon_and_fails_without_one() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let doc = compose();
    let checks: Vec<Vec<String>> = outboxd_services(&doc)
        .iter()
        .filter_map(|s| doc["services"][s.name.as_str()].get("healthcheck"))
        .map(|h| h["test"].as_sequence().expect("test is a CMD list").iter().map(scalar).collect())
        .collect();
    assert!(checks.len() >= 2, "both replicas have a healthcheck: {checks:?}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = harness::daemon_config(&brokers, dir.path());
    let d = harness::Daemon::start(&cfg, &[]);
    harness::eventually(std::time::Duration::from_secs(30), "the daemon to be ready", || {
        (d.admin("GET", "/health/ready").status == 200).then_some(())
    });
    let admin = d.admin;
    let run = |test: &[String]| {
        assert_eq!(test[0], "CMD", "{test:?}");
        let args: Vec<String> = test[2..]
            .iter()
            .map(|a| a.replace("127.0.0.1/9090", &format!("{}/{}", admin.ip(), admin.port())))
            .collect();
        assert!(args.iter().any(|a| a.contains(&admin.port().to_string())), "the check names port 9090: {test:?}");
        // compose's `timeout: 5s`: a check that hangs fails.
        let st = std::process::Command::new("timeout").arg("5").arg(&test[1]).args(&args).status().expect("bash runs");
        st.success()
    };
    for test in &checks {
        assert!(run(test), "the healthcheck fails on a ready daemon: {test:?}");
    }
    d.stop();
    for test in &checks {
        assert!(!run(test), "the healthcheck passes with no daemon: {test:?}");
    }
}
