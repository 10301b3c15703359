//! What Scylla says of the CDC generations, read the way scylla-cdc reads
//! it: which generation was in effect at a time (an operator's rewind into
//! an earlier generation), and the stream groups of a generation (the stall
//! watchdog). scylla-cdc starts one reader, and one consumer, per group: the
//! streams of one vnode (one row of
//! `system_distributed.cdc_streams_descriptions_v2`), or every stream alone
//! in a tablets keyspace. Knowing the groups, the watchdog can tell which
//! consumer a stream belongs to before the stream had any rows.
//!
//! Guarantees: the same queries, grouping and read consistency as scylla-cdc
//! 0.7's generation fetchers (`stream_generations.rs`, `log_reader.rs`), so a
//! group here is a reader there and a generation here is the one it reads
//! at that time; a failure is an error for the caller to report (the
//! watchdog then keeps its cautious fallback, a rewind is refused), never a
//! guess.

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::CqlTimestamp;

use super::progress::StreamKey;

/// Where Scylla describes a vnode generation's streams.
pub const DESCRIPTIONS_TABLE: &str = "system_distributed.cdc_streams_descriptions_v2";

/// Where Scylla lists the vnode generations' start times.
pub const TIMESTAMPS_TABLE: &str = "system_distributed.cdc_generation_timestamps";

/// Where Scylla lists a tablets table's generations.
const TABLETS_TIMESTAMPS_TABLE: &str = "system.cdc_timestamps";

/// Where Scylla lists a tablets table's streams.
const TABLETS_STREAMS_TABLE: &str = "system.cdc_streams";

/// How a generation's streams are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Groups {
    /// A tablets keyspace: each of these streams has its own reader and consumer.
    PerStream(Vec<StreamKey>),
    /// A vnode keyspace: the streams of each description row share one.
    Shared(Vec<Vec<StreamKey>>),
}

impl Groups {
    /// Every stream of the generation (a reader reports each when it starts).
    pub fn streams(&self) -> impl Iterator<Item = &StreamKey> {
        let (one, shared): (&[StreamKey], &[Vec<StreamKey>]) = match self {
            Groups::PerStream(s) => (s, &[]),
            Groups::Shared(g) => (&[], g),
        };
        one.iter().chain(shared.iter().flatten())
    }
}

/// True when `keyspace` uses tablets. As scylla-cdc decides it: a keyspace
/// with `initial_tablets` in `system_schema.scylla_keyspaces`; a server
/// without that table (an older Scylla, Cassandra) has no tablets.
pub async fn uses_tablets(session: &Session, keyspace: &str) -> anyhow::Result<bool> {
    let q = "SELECT initial_tablets FROM system_schema.scylla_keyspaces WHERE keyspace_name = ?";
    let Ok(res) = session.query_unpaged(q, (keyspace,)).await else { return Ok(false) };
    let row = res.into_rows_result()?.maybe_first_row::<(Option<i32>,)>()?;
    Ok(matches!(row, Some((Some(_),))))
}

/// The groups of the generation that started at `generation_ms`, from
/// `descriptions` (a table shaped like [`DESCRIPTIONS_TABLE`]) for a vnode
/// keyspace. No row for that generation is an error: scylla-cdc would start
/// no reader either.
pub async fn load(session: &Session, keyspace: &str, descriptions: &str, generation_ms: i64) -> anyhow::Result<Groups> {
    if uses_tablets(session, keyspace).await? {
        let streams = tablet_streams(session, TABLETS_STREAMS_TABLE, keyspace, generation_ms).await?;
        return Ok(Groups::PerStream(streams));
    }
    let mut q = Statement::new(format!("SELECT streams FROM {descriptions} WHERE time = ?"));
    q.set_page_size(5000);
    q.set_consistency(distributed_consistency(session).await?);
    let mut pages = session.query_iter(q, (CqlTimestamp(generation_ms),)).await?.rows_stream::<(Vec<Vec<u8>>,)>()?;
    let mut rows = Vec::new();
    while let Some(row) = pages.next().await {
        rows.push(row?.0.into_iter().map(StreamKey).collect());
    }
    anyhow::ensure!(!rows.is_empty(), "{descriptions} has no streams for the generation at {generation_ms} ms");
    Ok(Groups::Shared(rows))
}

/// The streams of a tablets table's generation that started at
/// `generation_ms`, from `streams` (a table shaped like `system.cdc_streams`),
/// as scylla-cdc's tablets fetcher reads them (`stream_state` 0, current).
/// None is an error: scylla-cdc would start no reader either.
pub async fn tablet_streams(
    session: &Session,
    streams: &str,
    keyspace: &str,
    generation_ms: i64,
) -> anyhow::Result<Vec<StreamKey>> {
    let mut q = Statement::new(format!(
        "SELECT stream_id FROM {streams} WHERE keyspace_name = ? AND table_name = ? AND timestamp = ? AND stream_state = ?"
    ));
    q.set_page_size(5000);
    let values = (keyspace, super::EVENT_TABLE, CqlTimestamp(generation_ms), 0i8);
    let mut pages = session.query_iter(q, values).await?.rows_stream::<(Vec<u8>,)>()?;
    let mut out = Vec::new();
    while let Some(row) = pages.next().await {
        out.push(StreamKey(row?.0));
    }
    anyhow::ensure!(!out.is_empty(), "{streams} has no current streams for the generation at {generation_ms} ms");
    Ok(out)
}

/// The start (ms) of the first generation of `keyspace`'s event table
/// (`None`: none yet), from `timestamps` (a table shaped like
/// [`TIMESTAMPS_TABLE`]) for a vnode keyspace: a first start is raised to
/// this (nothing is logged before it; see `start` for what scylla-cdc does
/// with an earlier start).
pub async fn first(session: &Session, keyspace: &str, timestamps: &str) -> anyhow::Result<Option<i64>> {
    generation_start(session, keyspace, timestamps, i64::MAX, Pick::Oldest).await
}

/// The start (ms) of the generation of `keyspace`'s event table in effect
/// at `at_ms` (the last one begun at or before it), from `timestamps` (a
/// table shaped like [`TIMESTAMPS_TABLE`]) for a vnode keyspace; `None`
/// when none had begun.
pub async fn in_effect_at(
    session: &Session,
    keyspace: &str,
    timestamps: &str,
    at_ms: i64,
) -> anyhow::Result<Option<i64>> {
    generation_start(session, keyspace, timestamps, at_ms, Pick::Newest).await
}

/// Which of the generations begun by a time [`generation_start`] answers.
#[derive(Clone, Copy)]
enum Pick {
    Oldest,
    Newest,
}

/// The start (ms) of the oldest or newest generation of `keyspace`'s event
/// table begun at or before `at_ms`, read as scylla-cdc reads them (tablets:
/// `system.cdc_timestamps`; vnodes: `timestamps` at its consistency).
async fn generation_start(
    session: &Session,
    keyspace: &str,
    timestamps: &str,
    at_ms: i64,
    pick: Pick,
) -> anyhow::Result<Option<i64>> {
    let (at, order) = (CqlTimestamp(at_ms), if matches!(pick, Pick::Oldest) { "ASC" } else { "DESC" });
    let res = if uses_tablets(session, keyspace).await? {
        let q = format!(
            "SELECT timestamp FROM {TABLETS_TIMESTAMPS_TABLE} WHERE keyspace_name = ? AND table_name = ? \
             AND timestamp <= ? ORDER BY timestamp {order} LIMIT 1"
        );
        session.query_unpaged(q, (keyspace, super::EVENT_TABLE, at)).await?
    } else {
        let mut q = Statement::new(format!(
            "SELECT time FROM {timestamps} WHERE key = 'timestamps' AND time <= ? ORDER BY time {order} LIMIT 1"
        ));
        q.set_consistency(distributed_consistency(session).await?);
        session.query_unpaged(q, (at,)).await?
    };
    Ok(res.into_rows_result()?.maybe_first_row::<(CqlTimestamp,)>()?.map(|(t,)| t.0))
}

/// `read` of Scylla's generation metadata, given 10 s: its result, or why
/// there is none (the callers report it, never guess).
pub async fn within_limit<T>(read: impl std::future::Future<Output = anyhow::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(r) => r.map_err(|e| format!("{e:#}")),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

/// scylla-cdc reads the distributed system tables at ONE on a single node
/// and at QUORUM on a cluster.
async fn distributed_consistency(session: &Session) -> anyhow::Result<Consistency> {
    let (peers,) = session
        .query_unpaged("SELECT COUNT(*) FROM system.peers", ())
        .await?
        .into_rows_result()?
        .first_row::<(i64,)>()?;
    Ok(if peers == 0 { Consistency::One } else { Consistency::Quorum })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::cdc::testkit::live_store;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_vnode_generation_is_grouped_by_description_row() {
        let Some(store) = live_store("CDC stream groups").await else { return };
        let (session, ks) = (&*store.session(), store.keyspace());
        // The same shape as Scylla's table (scylla-cdc's own tests do the same).
        let table = format!("{ks}.cdc_streams_descriptions_v2");
        session
            .query_unpaged(
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (time timestamp, range_end bigint, streams frozen<set<blob>>, \
                     PRIMARY KEY (time, range_end)) WITH CLUSTERING ORDER BY (range_end ASC)"
                ),
                (),
            )
            .await
            .unwrap();
        let insert = format!("INSERT INTO {table} (time, range_end, streams) VALUES (?, ?, ?)");
        let k = |b: u8| vec![b; 16];
        for (generation, end, streams) in
            [(1_000, -5, vec![k(1), k(2)]), (1_000, 7, vec![k(3)]), (2_000, 7, vec![k(4), k(5), k(6)])]
        {
            session.query_unpaged(insert.clone(), (CqlTimestamp(generation), end as i64, streams)).await.unwrap();
        }
        assert!(!uses_tablets(session, ks).await.unwrap(), "no scylla_keyspaces: vnodes, as scylla-cdc decides");
        let key = |b: u8| StreamKey(k(b));
        assert_eq!(
            load(session, ks, &table, 1_000).await.unwrap(),
            Groups::Shared(vec![vec![key(1), key(2)], vec![key(3)]]),
            "one group per description row, in range order"
        );
        assert_eq!(load(session, ks, &table, 2_000).await.unwrap(), Groups::Shared(vec![vec![key(4), key(5), key(6)]]));
        let none = load(session, ks, &table, 3_000).await.unwrap_err().to_string();
        assert!(none.contains("no streams for the generation at 3000 ms"), "{none}");
        let missing = load(session, ks, &format!("{ks}.no_such_table"), 1_000).await;
        assert!(missing.is_err(), "a missing table is an error, not an empty grouping");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_generation_in_effect_is_the_last_one_begun_by_then() {
        let Some(store) = live_store("CDC generation in effect").await else { return };
        let (session, ks) = (&*store.session(), store.keyspace());
        // The same shape as Scylla's table (scylla-cdc's own tests do the same).
        let table = format!("{ks}.cdc_generation_timestamps");
        session
            .query_unpaged(
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (key text, time timestamp, expired timestamp, \
                     PRIMARY KEY (key, time)) WITH CLUSTERING ORDER BY (time DESC)"
                ),
                (),
            )
            .await
            .unwrap();
        for t in [1_000i64, 5_000, 9_000] {
            let insert = format!("INSERT INTO {table} (key, time) VALUES ('timestamps', ?)");
            session.query_unpaged(insert, (CqlTimestamp(t),)).await.unwrap();
        }
        assert_eq!(in_effect_at(session, ks, &table, 999).await.unwrap(), None, "none had begun");
        assert_eq!(in_effect_at(session, ks, &table, 1_000).await.unwrap(), Some(1_000));
        assert_eq!(in_effect_at(session, ks, &table, 4_999).await.unwrap(), Some(1_000));
        assert_eq!(in_effect_at(session, ks, &table, 7_000).await.unwrap(), Some(5_000));
        assert_eq!(in_effect_at(session, ks, &table, 90_000).await.unwrap(), Some(9_000));
        assert!(in_effect_at(session, ks, &format!("{ks}.no_such_table"), 7_000).await.is_err());
        assert_eq!(first(session, ks, &table).await.unwrap(), Some(1_000), "the oldest, though clustered newest first");
        assert!(first(session, ks, &format!("{ks}.no_such_table")).await.is_err());
        session.query_unpaged(format!("TRUNCATE {table}"), ()).await.unwrap();
        assert_eq!(first(session, ks, &table).await.unwrap(), None, "no generation yet");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_tablets_generation_lists_its_current_streams() {
        let Some(store) = live_store("CDC tablets streams").await else { return };
        let (session, ks) = (&*store.session(), store.keyspace());
        // The same shape as Scylla's `system.cdc_streams` (scylla-cdc's own tests do the same).
        let table = format!("{ks}.cdc_streams");
        session
            .query_unpaged(
                format!(
                    "CREATE TABLE IF NOT EXISTS {table} (keyspace_name text, table_name text, timestamp timestamp, \
                     stream_state tinyint, stream_id blob, \
                     PRIMARY KEY ((keyspace_name, table_name), timestamp, stream_state, stream_id)) \
                     WITH CLUSTERING ORDER BY (timestamp ASC, stream_state ASC, stream_id ASC)"
                ),
                (),
            )
            .await
            .unwrap();
        let insert = format!(
            "INSERT INTO {table} (keyspace_name, table_name, timestamp, stream_state, stream_id) VALUES (?, ?, ?, ?, ?)"
        );
        let k = |b: u8| vec![b; 16];
        let event_table = crate::relay::cdc::EVENT_TABLE;
        for (t, generation, state, stream) in [
            (event_table, 1_000i64, 0i8, k(1)),
            (event_table, 1_000, 0, k(2)),
            (event_table, 1_000, 2, k(3)), // opened, not current
            (event_table, 2_000, 0, k(4)),
            ("other_table", 1_000, 0, k(5)),
        ] {
            session.query_unpaged(insert.clone(), (ks, t, CqlTimestamp(generation), state, stream)).await.unwrap();
        }
        let key = |b: u8| StreamKey(k(b));
        assert_eq!(tablet_streams(session, &table, ks, 1_000).await.unwrap(), vec![key(1), key(2)]);
        assert_eq!(tablet_streams(session, &table, ks, 2_000).await.unwrap(), vec![key(4)]);
        let none = tablet_streams(session, &table, ks, 3_000).await.unwrap_err().to_string();
        assert!(none.contains("no current streams for the generation at 3000 ms"), "{none}");
        let groups = Groups::PerStream(vec![key(1), key(2)]);
        assert_eq!(groups.streams().cloned().collect::<Vec<_>>(), vec![key(1), key(2)]);
        let groups = Groups::Shared(vec![vec![key(1)], vec![key(2), key(3)]]);
        assert_eq!(groups.streams().count(), 3);
    }
}
