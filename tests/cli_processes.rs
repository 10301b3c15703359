//! The CLI's long-running commands as processes: SIGTERM to `outboxd bench`
//! stops the `outboxd run` child it started and removes its directory (exit
//! 130). (`outboxd run` on an address it cannot take: tests/cli_config.rs.)

use std::process::Command;

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
