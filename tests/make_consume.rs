//! `make consume TOPIC=...` against the real Kafka of `make test`: the exact
//! records of a topic, one line each, with kcat and (when `make rpk` could
//! build it) with rpk, and the isolation level following the relay's delivery
//! mode: an aborted transaction's record is shown under at-least-once
//! (read_uncommitted, the consumer default) and hidden under exactly-once
//! (read_committed). Also `make topics` lists the topic.
//!
//! Records are produced with kcat (plain) and an rdkafka transactional
//! producer (one aborted, one committed transaction), into a fresh
//! single-partition topic so the expected output is exact.

mod harness;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn kcat_produce(brokers: &str, topic: &str, lines: &str) {
    let mut child = Command::new("kcat")
        .args(["-b", brokers, "-P", "-t", topic, "-K:"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat runs (scripts/deps.sh installs it)");
    child.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "kcat produced");
}

/// One transaction with one record, committed or aborted.
fn transaction(brokers: &str, topic: &str, key: &str, value: &str, commit: bool) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("transactional.id", format!("make-consume-{}", uuid::Uuid::now_v7()))
        .create()
        .unwrap();
    let t = Duration::from_secs(30);
    p.init_transactions(t).unwrap();
    p.begin_transaction().unwrap();
    p.send(BaseRecord::to(topic).key(key).payload(value)).map_err(|(e, _)| e).unwrap();
    p.flush(t).unwrap();
    if commit {
        p.commit_transaction(t).unwrap();
    } else {
        p.abort_transaction(t).unwrap();
    }
}

fn make(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new("make");
    cmd.arg("--no-print-directory").args(args).current_dir(harness::repo_root());
    cmd.env("OUTBOXD", env!("CARGO_BIN_EXE_outboxd"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("make runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rpk_available() -> bool {
    harness::repo_root().join(".local/bin/rpk").exists()
        || Command::new("rpk").arg("version").output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn make_consume_prints_the_records_and_follows_the_delivery_mode() {
    let Some(brokers) = harness::shared_brokers() else { return };
    let topic = format!("make-consume-{}", uuid::Uuid::now_v7().simple());
    // One partition, so offsets (and the expected lines) are exact.
    harness::create_topic(&brokers, &topic, 1, &[]);
    kcat_produce(&brokers, &topic, "order-1:{\"n\":1}\norder-2:{\"n\":2}\norder-1:{\"n\":3}\n");
    transaction(&brokers, &topic, "order-3", "aborted", false);
    transaction(&brokers, &topic, "order-4", "committed", true);

    // offset 3 is the aborted record, 4 its abort marker, 5 the committed
    // record, 6 its commit marker (control records are never printed).
    let plain = [
        format!("{topic} 0 0 order-1 {{\"n\":1}}"),
        format!("{topic} 0 1 order-2 {{\"n\":2}}"),
        format!("{topic} 0 2 order-1 {{\"n\":3}}"),
    ];
    let aborted = format!("{topic} 0 3 order-3 aborted");
    let committed = format!("{topic} 0 5 order-4 committed");

    let mut tools = vec!["kcat"];
    if rpk_available() {
        tools.push("rpk");
    } else {
        crate::harness::skipped(false, "rpk not built; `make rpk` builds it where the Go module proxy serves it");
    }
    let topic_arg = format!("TOPIC={topic}");
    // `relay.delivery` in the configuration file (README: "or `relay.delivery`
    // in the configuration file"), no variable.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("eos.toml");
    std::fs::write(&file, "[relay]\ndelivery = \"exactly-once\"\n").unwrap();
    let file = file.display().to_string();
    for tool in tools {
        for (delivery, want_aborted, iso) in [
            ("at-least-once", true, "read_uncommitted"),
            ("exactly-once", false, "read_committed"),
            ("", true, "read_uncommitted"),
            ("file", false, "read_committed"),
        ] {
            let mut env = vec![("KAFKA_BROKERS", brokers.as_str()), ("KAFKA_CLI", tool)];
            match delivery {
                "" => {}
                "file" => env.push(("OUTBOX_CONFIG", file.as_str())),
                d => env.push(("OUTBOX_RELAY__DELIVERY", d)),
            }
            let (ok, out, err) = make(&["consume", &topic_arg], &env);
            assert!(ok, "{tool} {delivery}: make consume failed: {err}");
            assert!(err.contains(tool) && err.contains(iso), "{tool} {delivery}: says tool and isolation: {err}");
            let mut want: Vec<String> = plain.to_vec();
            if want_aborted {
                want.push(aborted.clone());
            }
            want.push(committed.clone());
            let got: Vec<&str> = out.lines().collect();
            assert_eq!(got, want, "{tool} delivery={delivery:?}: exact records ({err})");
        }
        let (ok, out, err) =
            make(&["consume", &topic_arg, "COUNT=2"], &[("KAFKA_BROKERS", &brokers), ("KAFKA_CLI", tool)]);
        assert!(ok, "{err}");
        assert_eq!(out.lines().collect::<Vec<_>>(), plain[..2].to_vec(), "{tool}: COUNT=2");

        let (ok, out, err) = make(&["topics"], &[("KAFKA_BROKERS", &brokers), ("KAFKA_CLI", tool)]);
        assert!(ok, "{err}");
        assert!(
            out.lines().any(|l| l.split_whitespace().next() == Some(topic.as_str())),
            "{tool}: make topics lists {topic}: {out}"
        );
    }
}

#[test]
fn make_consume_without_topic_is_a_clear_error() {
    let (ok, _, err) = make(&["consume"], &[("KAFKA_BROKERS", "127.0.0.1:1")]);
    assert!(!ok);
    assert!(err.contains("TOPIC is required"), "{err}");
}

/// `make consume TOPIC=... FOLLOW=1` (README) prints what the topic holds,
/// then keeps reading: a record produced afterwards is printed too, until
/// the operator stops it (here: SIGTERM to its process group).
#[test]
fn make_consume_follow_prints_records_produced_later() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let Some(brokers) = harness::shared_brokers() else { return };
    let mut tools = vec!["kcat"];
    if rpk_available() {
        tools.push("rpk");
    }
    for tool in tools {
        let topic = format!("make-follow-{}", uuid::Uuid::now_v7().simple());
        harness::create_topic(&brokers, &topic, 1, &[]);
        kcat_produce(&brokers, &topic, "order-1:{\"n\":1}\n");
        let mut child = Command::new("make")
            .args(["--no-print-directory", "consume", &format!("TOPIC={topic}"), "FOLLOW=1"])
            .current_dir(harness::repo_root())
            .env("KAFKA_BROKERS", &brokers)
            .env("KAFKA_CLI", tool)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("make runs");
        let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).expect("the record already there is printed");
        assert_eq!(first, format!("{topic} 0 0 order-1 {{\"n\":1}}"), "{tool}");
        // Still running after the end of the topic; a new record is printed.
        std::thread::sleep(Duration::from_secs(1));
        assert!(child.try_wait().unwrap().is_none(), "{tool}: FOLLOW=1 keeps reading past the end");
        kcat_produce(&brokers, &topic, "order-2:{\"n\":2}\n");
        let later = rx.recv_timeout(Duration::from_secs(60)).expect("a record produced later is printed");
        assert_eq!(later, format!("{topic} 0 1 order-2 {{\"n\":2}}"), "{tool}");
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let _ = child.wait();
    }
}
