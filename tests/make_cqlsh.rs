//! `make cqlsh` (README: "then: SELECT aggregate_id, sequence_number,
//! event_type FROM event_store;") on the path without a Docker engine: cqlsh
//! on the local Cassandra that `make test` started
//! (`scripts/cassandra-local.sh env`), in the `outbox` keyspace, reading
//! what `outboxd` stored there. The Docker path (`docker compose exec scylla
//! cqlsh`) needs the compose stack: `make integration-test`.

mod harness;
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn make_cqlsh_reads_the_outbox_keyspace_of_the_local_cassandra() {
    if Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        crate::harness::skipped(
            true,
            "make cqlsh: a Docker engine answers, so it would open the compose stack's ScyllaDB",
        );
        return;
    }
    let (Ok(uri), Ok(_dir)) = (std::env::var("CASSANDRA_URI"), std::env::var("CASSANDRA_LOCAL_DIR")) else {
        crate::harness::skipped(
            true,
            "make cqlsh: CASSANDRA_URI and CASSANDRA_LOCAL_DIR name the local Cassandra (make test sets both)",
        );
        return;
    };
    let outboxd = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .args(args)
            .env("OUTBOX_STORE__BACKEND", "cql")
            .env("OUTBOX_STORE__CQL__URI", &uri)
            .output()
            .unwrap();
        assert!(out.status.success(), "outboxd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    outboxd(&["schema"]); // the default keyspace, `outbox`
    let email = format!("cqlsh-{}@example.com", uuid::Uuid::now_v7().simple());
    let customer = outboxd(&["customer", "register", "--name", "Cql Sh", "--email", &email]);

    let mut child = Command::new("make")
        .args(["--no-print-directory", "cqlsh"])
        .current_dir(harness::repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT aggregate_id, sequence_number, event_type FROM event_store;\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "make cqlsh: {}{text}", String::from_utf8_lossy(&out.stderr));
    let row = text.lines().find(|l| l.contains(&customer)).unwrap_or_else(|| panic!("{customer} not listed:\n{text}"));
    assert!(row.contains("CustomerRegistered") && row.contains(" 1 "), "{row}");
}
