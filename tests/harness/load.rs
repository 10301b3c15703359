//! A concurrent HTTP workload like production's: several writers advance
//! order lifecycles (create, items, confirm, ship, deliver or cancel) drawn
//! from one shared pool of open orders, so each aggregate's events are
//! spread over time, interleaved with other aggregates', and two writers
//! sometimes race on one aggregate (the loser gets 409/422, as in life).
//!
//! The workload keeps going through faults: a refused connection or a 503
//! moves to the next target after a short pause. What was stored is judged
//! from the store afterwards ([`super::check`]), never from the client's
//! view (a request cut by a kill may or may not have committed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use uuid::Uuid;

use super::http::try_request;

#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Concurrent writer threads.
    pub writers: usize,
    /// Orders open at once (shared by all writers).
    pub open_orders: usize,
    /// Pause of each writer between its requests.
    pub pause: Duration,
}

impl Default for LoadSpec {
    fn default() -> LoadSpec {
        LoadSpec { writers: 16, open_orders: 64, pause: Duration::from_millis(20) }
    }
}

/// Counts of what the writers saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// 2xx answers.
    pub ok: AtomicU64,
    /// 409/412/422: another writer moved the aggregate first.
    pub conflicts: AtomicU64,
    /// 503, refused or cut connections (daemon down, restarting).
    pub unavailable: AtomicU64,
    /// Anything else (a test failure if non-zero).
    pub unexpected: AtomicU64,
}

impl LoadStats {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    pub fn line(&self) -> String {
        format!(
            "{} ok, {} conflicts, {} unavailable, {} unexpected",
            self.ok(),
            self.conflicts.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
            self.unexpected.load(Ordering::Relaxed)
        )
    }
}

struct Open {
    id: Uuid,
    step: u8,
    n: u64,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<LoadStats>,
    /// Last unexpected answer, for the failure message.
    pub last_unexpected: Arc<Mutex<Option<String>>>,
}

impl Load {
    /// Starts the writers against `targets` (command API addresses; each
    /// writer starts at a different one and moves on when one is down).
    pub fn start(targets: Vec<SocketAddr>, spec: LoadSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let pool = Arc::new(Mutex::new(Vec::<Open>::new()));
        let counter = Arc::new(AtomicU64::new(0));
        let last_unexpected = Arc::new(Mutex::new(None));
        let threads = (0..spec.writers)
            .map(|w| {
                let (stop, stats, pool, counter, last) =
                    (stop.clone(), stats.clone(), pool.clone(), counter.clone(), last_unexpected.clone());
                let (targets, spec) = (targets.clone(), spec.clone());
                std::thread::spawn(move || writer(w, &targets, &spec, &stop, &stats, &pool, &counter, &last))
            })
            .collect();
        Load { stop, threads, stats, last_unexpected }
    }

    /// Stops the writers and waits for them; panics if one of them panicked
    /// (a writer stopped by the flag returns normally).
    pub fn stop(self) -> Arc<LoadStats> {
        self.stop.store(true, Ordering::Relaxed);
        // Every writer is joined before a panic is reported: none is left running.
        let panics: Vec<String> = self
            .threads
            .into_iter()
            .filter_map(|t| t.join().err())
            .map(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(no message)".into())
            })
            .collect();
        assert!(panics.is_empty(), "a load writer panicked: {panics:?}");
        let unexpected = self.stats.unexpected.load(Ordering::Relaxed);
        assert_eq!(unexpected, 0, "unexpected answers: {:?}", self.last_unexpected.lock().unwrap());
        self.stats
    }
}

#[allow(clippy::too_many_arguments)]
fn writer(
    w: usize,
    targets: &[SocketAddr],
    spec: &LoadSpec,
    stop: &AtomicBool,
    stats: &LoadStats,
    pool: &Mutex<Vec<Open>>,
    counter: &AtomicU64,
    last: &Mutex<Option<String>>,
) {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407);
    let mut target = w % targets.len();
    while !stop.load(Ordering::Relaxed) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // Pick: create a new order while the pool is short, else advance a random open one.
        let pick = {
            let p = pool.lock().unwrap();
            if p.len() < spec.open_orders || p.is_empty() {
                None
            } else {
                let o = &p[(rng as usize) % p.len()];
                Some((o.id, o.step, o.n))
            }
        };
        let (id, step, n) = pick.unwrap_or_else(|| (Uuid::now_v7(), 0, counter.fetch_add(1, Ordering::Relaxed)));
        let (path, body) = request_for(id, step, n);
        let body = serde_json::to_vec(&body).unwrap();
        let headers = [("Content-Type", "application/json")];
        let status = match try_request(targets[target], "POST", &path, &headers, Some(&body)) {
            Ok(r) => r.status,
            Err(_) => 0,
        };
        match status {
            200 | 201 => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                let mut p = pool.lock().unwrap();
                let last_step = step == 4 || (step == 2 && n % 4 == 3);
                match p.iter().position(|o| o.id == id) {
                    Some(i) if last_step => {
                        p.swap_remove(i);
                    }
                    Some(i) => p[i].step = p[i].step.max(step + 1),
                    None if step == 0 => p.push(Open { id, step: 1, n }),
                    None => {}
                }
            }
            409 | 412 | 422 => {
                stats.conflicts.fetch_add(1, Ordering::Relaxed);
                // Someone else moved it (or a cut request did commit): resync from the API next time.
                let mut p = pool.lock().unwrap();
                if let Some(i) = p.iter().position(|o| o.id == id) {
                    p[i].step = p[i].step.max(step + 1);
                    if p[i].step > 4 || (p[i].step > 2 && n % 4 == 3) {
                        p.swap_remove(i);
                    }
                }
            }
            0 | 502 | 503 | 504 => {
                stats.unavailable.fetch_add(1, Ordering::Relaxed);
                target = (target + 1) % targets.len();
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            s => {
                stats.unexpected.fetch_add(1, Ordering::Relaxed);
                *last.lock().unwrap() = Some(format!("{s} for POST {path}"));
            }
        }
        std::thread::sleep(spec.pause);
    }
}

/// The request that moves order `id` from `step` (0: not created yet); one
/// order in four is cancelled after its items change.
fn request_for(id: Uuid, step: u8, n: u64) -> (String, serde_json::Value) {
    let item = |k: u64| serde_json::json!({"sku": format!("SKU-{n}-{k}"), "quantity": 1 + k, "unit_price": {"amount_minor": 999 + k, "currency": "EUR"}});
    match (step, n % 4 == 3) {
        (0, _) => (
            "/orders".into(),
            serde_json::json!({"id": id, "customer_id": Uuid::from_u128(u128::from(n % 17)), "items": [item(0), item(1)]}),
        ),
        (1, _) => (format!("/orders/{id}/items"), serde_json::json!({"items": [item(0), item(1), item(2)]})),
        (2, true) => (format!("/orders/{id}/cancel"), serde_json::json!({"reason": "customer asked"})),
        (2, false) => (format!("/orders/{id}/confirm"), serde_json::json!({})),
        (3, _) => {
            (format!("/orders/{id}/ship"), serde_json::json!({"tracking_number": format!("TRK{n}"), "carrier": "DHL"}))
        }
        _ => (format!("/orders/{id}/deliver"), serde_json::json!({"signature": "J. Doe"})),
    }
}
