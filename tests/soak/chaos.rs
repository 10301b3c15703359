//! Chaos: 10 kill -9 of the daemon at random moments and one broker outage
//! longer than every timeout, all while 16 writers keep going through HTTP.
//! At-least-once: every stored event arrives, per-key order holds at first
//! arrival, and each duplicate lies in a dead relay's unconfirmed window.
//! Exactly-once: a read_committed consumer sees every event exactly once.

use super::*;

struct Outcome {
    verdict: Verdict,
    /// kill -9 that hit a live process leading the relay (its lease held).
    kills: usize,
    /// Kept until the test's asserts ran: a failed one keeps both directories.
    _evidence: (PrivateKafka, KeptOnFailure),
}

fn chaos(delivery: &str) -> Outcome {
    let kafka = PrivateKafka::start();
    let dir = kept_on_failure();
    let cfg = soak_config(&kafka.brokers, dir.path());
    let db = cfg.store.path.clone();
    let env = soak_env(&cfg, delivery);
    let mut d = Daemon::start(&cfg, &env);
    let load = Load::start(vec![d.api], LoadSpec::default());
    let mut windows = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let (planned, mut kills) = (10, 0);
    for k in 1..=planned {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // A restarted instance waits one TTL for its predecessor's lease.
        eventually(Duration::from_millis(4 * TTL_MS), "the restarted relay to lead", || is_leader(&d).then_some(()));
        sleep_ms(500 + rng % 2500);
        if k == planned / 2 {
            // The outage, while writes continue; the kill lands during it.
            // With the restart below it lasts over 3x the longest timeout.
            kafka.stop();
            sleep_ms(2 * LONGEST_TIMEOUT_MS);
        }
        let alive = d.child.try_wait().ok().flatten().is_none();
        if alive && is_leader(&d) {
            kills += 1;
        } else {
            eprintln!("chaos ({delivery}): kill {k} found no live leader (alive: {alive})");
        }
        kill9(&mut d);
        windows.push(unconfirmed_window(&db, format!("kill {k}")));
        if k == planned / 2 {
            d = Daemon::start(&cfg, &env);
            sleep_ms(3000);
            kafka.restart();
        } else {
            d = Daemon::start(&cfg, &env);
        }
    }
    sleep_ms(3000);
    let stats = load.stop();
    assert!(stats.ok() > 200, "the workload kept writing: {}", stats.line());
    windows.extend(unverified_windows(dir.path()));
    let verdict = settle_and_judge(&kafka.brokers, &cfg, &db, &windows);
    eprintln!("chaos ({delivery}): {kills} kills; {}; {}", stats.line(), verdict.summary());
    verdict.report_windows(&format!("chaos ({delivery})"), &windows);
    d.stop();
    Outcome { verdict, kills, _evidence: (kafka, dir) }
}

#[test]
fn soak_chaos_at_least_once_duplicates_only_in_unconfirmed_windows() {
    let o = chaos("at-least-once");
    assert_eq!(o.kills, 10, "every kill -9 hit the live leader");
    o.verdict.assert_sound("at-least-once after 10 kill -9 and an outage");
}

#[test]
fn soak_chaos_exactly_once_read_committed_sees_each_event_once() {
    let o = chaos("exactly-once");
    assert_eq!(o.kills, 10, "every kill -9 hit the live leader");
    o.verdict.assert_sound("exactly-once after 10 kill -9 and an outage");
    assert_eq!(o.verdict.duplicate_copies(), 0, "read_committed: no duplicates: {}", o.verdict.summary());
}
