//! The CLI's long-running commands as processes: `outboxd run` on a port
//! it cannot take exits 2 before it opens the store, starts actors or takes
//! a lease; SIGTERM to `outboxd bench` stops the `outboxd run` child it
//! started and removes its directory (exit 130).

use std::path::Path;
use std::process::{Command, Output};

fn outboxd(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outboxd")).arg("--db").arg(db).args(args).env_remove("RUST_LOG").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// Black-box review: `outboxd run` that cannot listen (the port is taken)
/// exits 2 (the configuration must change) naming the key, and never holds
/// a lease for it, so a replica crash-looping on it never holds off the one
/// that can publish. (It used to take its leases, then give them back when
/// the bind failed; the ports are now checked before the leases, the
/// actors or the store are touched.)
#[test]
fn a_daemon_that_cannot_listen_takes_no_lease() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    assert!(outboxd(&db, &["schema"]).status.success());
    for (listen, admin, key) in [
        (format!("127.0.0.1:{port}"), "127.0.0.1:0".to_string(), "http.listen"),
        ("127.0.0.1:0".to_string(), format!("127.0.0.1:{port}"), "http.admin_listen"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .args(["--db", db.to_str().unwrap(), "run"])
            .env("OUTBOX_HTTP__LISTEN", listen)
            .env("OUTBOX_HTTP__ADMIN_LISTEN", admin)
            .env("OUTBOX_KAFKA__BROKERS", format!("127.0.0.1:{nobody}"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(
            err,
            format!("error: cannot listen on {key} = 127.0.0.1:{port}: Address already in use (os error 98)")
        );
        let leases = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM relay_leases", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert_eq!(leases, 0, "no lease was ever taken: {err}");
    }
    drop(taken);
}

/// Black-box review: SIGTERM to `outboxd bench http` left its `outboxd run`
/// child running and its directory behind. Now the benchmark is dropped on
/// the signal: exit 130, the child gone, the directory removed.
#[test]
fn an_interrupted_bench_stops_its_daemon_child_and_removes_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bench = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["bench", "http", "--clients", "2", "--requests-per-client", "1000000"])
        .env("OUTBOX_KAFKA__BROKERS", format!("127.0.0.1:{nobody}"))
        .env("TMPDIR", tmp.path())
        .env("NO_COLOR", "1")
        // Not piped: an orphaned child holding the pipe would block the test.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The daemon child: listed in the `children` file of the bench thread that spawned it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let child = loop {
        let found =
            std::fs::read_dir(format!("/proc/{}/task", bench.id())).into_iter().flatten().flatten().find_map(|t| {
                std::fs::read_to_string(t.path().join("children")).ok()?.split_whitespace().next().map(str::to_string)
            });
        if let Some(pid) = found {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "the bench started no daemon child");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "the bench's directory exists while it runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bench.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut bench = bench;
    let code = bench.wait().unwrap().code();
    let gone = || {
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or_default().trim_start().starts_with('Z'))
            .unwrap_or(true)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gone() {
        if std::time::Instant::now() >= deadline {
            let _ = Command::new("kill").args(["-9", &child]).status();
            panic!("the daemon child {child} still ran after the bench ended");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(code, Some(130), "the bench ended on the signal by itself");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "the bench's directory is removed");
}
