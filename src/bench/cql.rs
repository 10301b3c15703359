//! `bench cql`: the CQL store's conditional append against a raw
//! single-partition conditional insert, same server, same concurrency: an
//! untimed warm-up of both sides, then 3 interleaved rounds.
//!
//! Guarantee: only measures and prints.

use std::time::Instant;
use uuid::Uuid;

use super::sample_events;
use crate::config::Config;
use crate::envelope::EventEnvelope;
use crate::store::EventStore;

/// Events of the untimed warm-up of each side (a multiple of the 5 events
/// per aggregate), at the rounds' concurrency.
const WARMUP_EVENTS: usize = 1_000;

/// Each of `concurrency` workers appends single events to its own aggregates
/// (one conditional batch each); the baseline inserts the same rows with
/// `INSERT ... IF NOT EXISTS` (one LWT each) through the same session.
pub(super) async fn cql_bench(r: &mut super::Report, cfg: &Config, n: usize, concurrency: usize) -> anyhow::Result<()> {
    use crate::store::cql::CqlStore;
    let mut c = cfg.store.cql.clone();
    c.keyspace = format!("bench_{}", Uuid::now_v7().simple());
    let store = CqlStore::connect(&c).await?;
    store.migrate().await?;
    let session = store.session();
    let ks = store.keyspace().to_string();
    let per_agg = 5;
    let total: usize = n.div_ceil(per_agg) * per_agg;
    r.say(format!(
        "bench cql: {total} events ({per_agg} per aggregate, one append each), {concurrency} concurrent writers, {}; a warm-up of {WARMUP_EVENTS} events each side, then 3 interleaved rounds",
        c.uri
    ));
    r.set("events", total);
    r.set("events_per_aggregate", per_agg);
    r.set("concurrency", concurrency);
    r.set("uri", &c.uri);
    r.set("warmup_events", WARMUP_EVENTS);

    let insert = session
        .prepare(format!(
            "INSERT INTO {ks}.event_store (aggregate_id, sequence_number, event_id, aggregate_type, event_type, event_version, payload, causation_id, correlation_id, timestamp) VALUES (?,?,?,?,?,?,?,?,?,?) IF NOT EXISTS"
        ))
        .await?;
    let split = |evs: &Vec<Vec<EventEnvelope>>| {
        let mut w: Vec<Vec<Vec<EventEnvelope>>> = (0..concurrency.max(1)).map(|_| Vec::new()).collect();
        for (i, a) in evs.iter().enumerate() {
            w[i % concurrency.max(1)].push(a.clone());
        }
        w
    };
    // One pass of each side over `events` at `concurrency` (the work split,
    // and copied, before the clock starts): its seconds.
    let raw_pass = |events: &Vec<Vec<EventEnvelope>>| {
        timed(split(&fresh_ids(events)), |work| {
            let (session, insert) = (session.clone(), insert.clone());
            async move { raw_inserts(&session, &insert, work).await }
        })
    };
    let store_pass = |events: &Vec<Vec<EventEnvelope>>| {
        timed(split(events), |work| {
            let s: crate::store::DynStore = store.clone();
            async move {
                for agg in work {
                    for (i, e) in agg.into_iter().enumerate() {
                        s.append(e.aggregate_id, i as i64, vec![e]).await?;
                    }
                }
                anyhow::Ok(())
            }
        })
    };
    let measured = async {
        // Warm-up (untimed), both sides: the JVM's JIT and Paxos paths, so
        // neither pays for them in a round.
        let warm = sample_events(WARMUP_EVENTS / per_agg, per_agg);
        raw_pass(&warm).await?;
        store_pass(&warm).await?;
        // 3 interleaved rounds, fresh aggregates each.
        let (mut raws, mut stores) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let events = sample_events(n.div_ceil(per_agg), per_agg);
            raws.push(total as f64 / raw_pass(&events).await?);
            stores.push(total as f64 / store_pass(&events).await?);
        }
        anyhow::Ok((raws, stores))
    };
    let measured = measured.await;
    // The keyspace goes whatever happened.
    let _ = session.query_unpaged(format!("DROP KEYSPACE {ks}"), ()).await;
    let (raws, stores) = measured?;
    r.rates("raw", "raw conditional insert (LWT)", "events/s", &raws, None);
    r.rates("store", "store append (LWT batch + CAS)", "events/s", &stores, Some(&raws));
    r.say("(goal: store >= 0.7x of raw)");
    Ok(())
}

/// Seconds until every worker (`f` of each work list, spawned together)
/// has finished; the first error fails the pass.
async fn timed<W, F, Fut>(works: Vec<W>, f: F) -> anyhow::Result<f64>
where
    F: Fn(W) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = works.into_iter().map(|w| tokio::spawn(f(w))).collect();
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Copies of `events` under new aggregate ids (the baseline's rows).
fn fresh_ids(events: &[Vec<EventEnvelope>]) -> Vec<Vec<EventEnvelope>> {
    events
        .iter()
        .map(|a| {
            let id = Uuid::now_v7();
            a.iter()
                .cloned()
                .map(|mut e| {
                    e.aggregate_id = id;
                    e
                })
                .collect()
        })
        .collect()
}

/// One worker's raw conditional inserts, one LWT per event.
async fn raw_inserts(
    session: &scylla::client::session::Session,
    insert: &scylla::statement::prepared::PreparedStatement,
    work: Vec<Vec<EventEnvelope>>,
) -> anyhow::Result<()> {
    for agg in work {
        for e in agg {
            let payload = serde_json::to_string(&e.payload)?;
            let event_id = e.event_id;
            let res = session
                .execute_unpaged(
                    insert,
                    (
                        e.aggregate_id,
                        e.sequence,
                        e.event_id,
                        e.aggregate_type,
                        e.event_type,
                        e.schema_version,
                        payload,
                        e.causation_id,
                        e.correlation_id,
                        e.timestamp,
                    ),
                )
                .await?;
            // Counted only if written: a refused insert is a bench failure.
            anyhow::ensure!(crate::store::cql::lwt_applied(res)?, "raw insert of event {event_id} was not applied");
        }
    }
    Ok(())
}
