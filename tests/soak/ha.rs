//! High availability on one SQLite file: two `outboxd run` under load from
//! both, exactly one publishing; kill -9 of the active and the standby takes
//! over within 3 TTL (ten kills in all: median and worst takeover printed;
//! some as soon as a new leader is seen, a crash loop, the others once it
//! caught up, so each unconfirmed window stays the size of one takeover);
//! a "zombie" leader (relay and lease keeper paused past the TTL, the
//! process alive) is refused by epoch and steps down; the
//! checkpoint never moves backwards; a restart of every instance is not
//! blocked by the lease table.

use super::*;
use std::time::Instant;

/// Exactly one of `ds` leads (stable for a moment); returns its index.
fn one_leader(ds: &[&Daemon], within: Duration) -> usize {
    eventually(within, "exactly one active relay", || {
        let leaders: Vec<usize> = (0..ds.len()).filter(|i| is_leader(ds[*i])).collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
}

/// kill -9 of the active `leader`; `standby` must take over within 3 TTL.
/// Returns the killed relay's unconfirmed window and the takeover time.
fn kill_and_take_over(
    leader: &mut Daemon,
    standby: &Daemon,
    db: &Path,
    ttl: Duration,
    kill: usize,
) -> (Window, Duration) {
    kill9(leader);
    let window = unconfirmed_window(db, format!("kill {kill}"));
    let t0 = Instant::now();
    eventually(3 * ttl, "the standby to take over within 3 TTL", || is_leader(standby).then_some(()));
    (window, t0.elapsed())
}

fn relay_status(d: &Daemon) -> serde_json::Value {
    d.health().1["relay"].clone()
}

#[test]
fn soak_two_instances_one_publisher_takeover_zombie_and_restart() {
    let Some(brokers) = shared_brokers() else { return };
    let dir = kept_on_failure();
    let cfg_a = soak_config(&brokers, dir.path());
    let cfg_b = on_new_ports(&cfg_a);
    let db = cfg_a.store.path.clone();
    let env = soak_env(&cfg_a, "at-least-once");
    let a = Daemon::start(&cfg_a, &env);
    let b = Daemon::start(&cfg_b, &env);
    let watch = CheckpointWatch::start(&db);
    let load = Load::start(vec![a.api, b.api], LoadSpec::default());
    let ttl = Duration::from_millis(TTL_MS);

    // One publisher; the other is a healthy, ready standby that publishes nothing.
    let i = one_leader(&[&a, &b], 3 * ttl);
    sleep_ms(3000);
    assert_eq!(one_leader(&[&a, &b], ttl), i, "the leader is stable");
    let (mut active, standby) = if i == 0 { (a, b) } else { (b, a) };
    let s = relay_status(&standby);
    assert_eq!(s["role"], "standby", "{s}");
    assert_eq!(s["delivered"], 0, "a standby publishes nothing: {s}");
    let (code, h) = standby.health();
    assert_eq!(code, 200, "{h}");
    assert_eq!(component(&h, "cdc_processor").0, "healthy", "a standby is healthy: {h}");
    let kafka = component(&h, "kafka");
    assert!(kafka.0 == "healthy" && kafka.1.ends_with("broker reachable"), "a standby's producer is connected: {h}");
    assert!(relay_status(&active)["delivered"].as_u64().unwrap() > 0);

    // kill -9 of the active under load: the standby takes over within 3 TTL.
    let (killed, took) = kill_and_take_over(&mut active, &standby, &db, ttl, 1);
    let mut takeovers = vec![took];
    eprintln!("takeover after kill -9: {:?} (lease TTL {TTL_MS} ms)", takeovers[0]);
    assert!(standby.metrics().value("relay_lease_takeovers_total", &[("consumer", RELAY)]) >= 1.0);
    let restarted = Daemon::start(&active.cfg, &env);
    drop(active);
    sleep_ms(2000);
    assert!(!is_leader(&restarted), "a restarted instance stands by while the leader lives");

    // Zombie: the leader's relay and lease keeper freeze for 3 TTL.
    let leader = standby;
    let r = leader.admin("POST", &format!("/debug/pause/relay?ms={}", 3 * TTL_MS));
    assert_eq!(r.status, 202, "{}", r.text());
    let paused_at = Instant::now();
    let zombie_lo = checkpoint(&db, RELAY);
    eventually(3 * ttl, "the standby to take over from the paused leader", || is_leader(&restarted).then_some(()));
    let resume = (paused_at + 3 * ttl).saturating_duration_since(Instant::now());
    std::thread::sleep(resume + ttl / 3 + Duration::from_millis(500));
    let zombie = unconfirmed_window(&db, "zombie leader");
    let zombie = Window::new(zombie.why, zombie_lo, zombie.hi);
    assert!(!is_leader(&leader), "the zombie stepped down within one renew interval");
    assert!(is_leader(&restarted), "the new leader was not disturbed");
    let log = leader.log_text();
    assert!(
        log.contains("checkpoint write refused") || log.contains("the lease is gone"),
        "the zombie learnt it lost the lease"
    );

    // Nine more kill -9 of whoever leads, each restarted as a standby: the
    // odd ones as soon as the new leader is seen (a crash loop: it dies
    // within its first moments), the even ones once it has caught up with
    // the backlog of its takeover, so their windows are only what it had
    // in flight.
    let mut pair = [leader, restarted];
    let mut windows = vec![killed, zombie];
    for kill in 2..=10 {
        let li = one_leader(&[&pair[0], &pair[1]], 3 * ttl);
        if kill % 2 == 0 {
            let backlog = head(&db);
            eventually(Duration::from_secs(30), "the new leader to catch up with its takeover's backlog", || {
                (checkpoint(&db, RELAY) >= backlog).then_some(())
            });
        }
        let [first, second] = &mut pair;
        let (leader, standby) = if li == 0 { (first, &*second) } else { (second, &*first) };
        let (window, took) = kill_and_take_over(leader, standby, &db, ttl, kill);
        windows.push(window);
        takeovers.push(took);
        let cfg = pair[li].cfg.clone();
        pair[li] = Daemon::start(&cfg, &env);
    }
    takeovers.sort();
    eprintln!(
        "takeover after kill -9 over {} kills (lease TTL {TTL_MS} ms): median {:?}, worst {:?}, best {:?}",
        takeovers.len(),
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1],
        takeovers[0]
    );

    sleep_ms(2000);
    let stats = load.stop();
    assert!(stats.ok() > 200, "the writers kept writing through the kills: {}", stats.line());
    windows.extend(unverified_windows(dir.path()));
    let v = settle_and_judge(&brokers, &cfg_a, &db, &windows);
    eprintln!("ha soak: {}; {}", stats.line(), v.summary());
    v.report_windows("ha soak", &windows);
    v.assert_sound("after a kill -9 takeover and a zombie leader");
    watch.assert_monotonic();

    // Restart of all instances: the lease table does not block a fresh start.
    for d in pair {
        d.stop();
    }
    let a = Daemon::start(&cfg_a, &env);
    let b = Daemon::start(&cfg_b, &env);
    let t0 = Instant::now();
    one_leader(&[&a, &b], 3 * ttl);
    eprintln!("first leader after restarting every instance: {:?}", t0.elapsed());
    let customer = uuid::Uuid::now_v7();
    for k in 0..5 {
        create_order(if k % 2 == 0 { &a } else { &b }, customer, &format!("AFTER-RESTART-{k}"));
    }
    wait_caught_up(&db, RELAY, Duration::from_secs(30));
    // Every stored event (the orders placed after the restart too) is on the topic.
    assert_all_on_topic(&brokers, &a);
    a.stop();
    b.stop();
}
