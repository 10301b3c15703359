//! Read models: the store's feed projected into query tables.
//!
//! `order_read_model` (one row per order: status, totals, items, timestamps,
//! the serialised `Order`), `orders_by_customer` (a customer's orders, paged
//! by order id) and `customer_read_model`, kept by a [`Projector`] that reads
//! the feed after its own checkpoint (consumer [`CONSUMER`]) and applies each
//! batch with the pure domain (`upcast` -> `decode` -> `Aggregate::apply`).
//!
//! Guarantees:
//! - A batch of rows and the checkpoint after it are written in one
//!   transaction, and only if the checkpoint is still where the batch was
//!   read from (compare-and-set), so a kill -9 at any moment, a restart, or a
//!   second projector (a `rebuild` while the daemon runs) can never leave rows
//!   and checkpoint disagreeing.
//! - Rows are idempotent by (aggregate id, sequence): an event with a
//!   sequence <= the row's `version` changes nothing, so replaying the feed
//!   (after a crash, or from 0 over existing rows) gives identical rows.
//! - Rows are a function of the feed alone (timestamps come from the event
//!   envelopes), so after any crash the tables equal a [`rebuild`] from
//!   scratch, row by row.
//! - A stored row whose state shape is older than the code (`state_schema`)
//!   or undecodable is re-derived from its events, never fatal.
//!
//! Backends: SQLite (tables of schema version 2, see `store::sqlite`) and
//! CQL (see [`cql`]: fed by the Scylla CDC log, so [`open_stores`] returns
//! them only when `event_store` has a CDC log, i.e. on ScyllaDB).

pub mod bench;
pub mod cql;
pub mod model;
mod page;
pub mod parking;
mod projector;
mod rebuild;
mod sqlite;

pub use model::{apply_event, Applied, CustomerRow, OrderColumns, OrderRow, Row};
pub use projector::{ProjectionStatus, Projector, ProjectorOptions};
pub use rebuild::{dump_read_models, rebuild, RebuildReport};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use uuid::Uuid;

use crate::domain::{Customer, Order, OrderItem};
use crate::store::{DynStore, StoreError};

/// The projection's consumer name (its row in `checkpoints`); no relay may
/// take it (`relay.consumer_name` is refused).
pub const CONSUMER: &str = crate::config::PROJECTION_CONSUMER;
/// Largest page `orders_by_customer` returns.
pub const MAX_PAGE: usize = 500;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE: usize = 50;
/// Largest `offset` (without cursor) of `orders_by_customer`, on every
/// backend: the HTTP API refuses more (400 naming `offset`); CQL emulates
/// the offset by skipping rows and its store refuses more itself. Deeper
/// pages use the `after` cursor.
pub const MAX_OFFSET: u64 = 10_000;

/// How far the read models are behind the event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Freshness {
    /// Feed position the read models include (the projection checkpoint).
    pub checkpoint: i64,
    /// Highest committed feed position.
    pub head: i64,
    /// `head - checkpoint`: events committed but not yet in the read models.
    pub lag_events: i64,
}

impl Freshness {
    pub fn new(checkpoint: i64, head: i64) -> Self {
        Freshness { checkpoint, head, lag_events: (head - checkpoint).max(0) }
    }
}

/// One row of `order_read_model`, as the query API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: Option<Uuid>,
    pub status: String,
    pub total_minor: Option<i64>,
    pub currency: Option<String>,
    /// Number of order lines.
    pub item_count: i64,
    pub items: Vec<OrderItem>,
    pub tracking_number: Option<String>,
    pub carrier: Option<String>,
    pub cancel_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Sequence of the last event applied (use as the ETag).
    pub version: i64,
    /// Feed position of the last event applied.
    pub last_position: i64,
    /// The aggregate's version in the event store; `> version` means newer
    /// events of this order are not projected yet.
    pub stream_version: i64,
    /// The full state (for the API's usual order body).
    pub state: Order,
    pub projection: Freshness,
    /// Written in this build's state shape (`state_schema`). A row of
    /// another (an older build's, untouched since the upgrade) is not served
    /// as current: the events answer, and the row only if they cannot be
    /// read (a parked order, marked stale).
    #[serde(skip)]
    pub current_shape: bool,
}

/// One row of `customer_read_model`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerView {
    pub customer_id: Uuid,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub last_position: i64,
    pub state: Customer,
    pub projection: Freshness,
}

/// Which page of a customer's orders (ordered by order id; v7 ids are time ordered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageRequest {
    /// Keyset cursor: orders with an id greater than this (preferred; stable
    /// under concurrent inserts). Takes precedence over `offset`.
    pub after: Option<Uuid>,
    /// Rows to skip when no cursor is given.
    pub offset: u64,
    /// Page size, clamped to `1..=MAX_PAGE` (0 = `DEFAULT_PAGE`).
    pub limit: usize,
}

impl PageRequest {
    pub fn first(limit: usize) -> Self {
        PageRequest { after: None, offset: 0, limit }
    }
    pub fn after(cursor: Uuid, limit: usize) -> Self {
        PageRequest { after: Some(cursor), offset: 0, limit }
    }
    pub fn effective_limit(&self) -> usize {
        if self.limit == 0 {
            DEFAULT_PAGE
        } else {
            self.limit.min(MAX_PAGE)
        }
    }
}

/// One row of `orders_by_customer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerOrder {
    pub order_id: Uuid,
    pub status: String,
    pub total_minor: Option<i64>,
    pub currency: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The order's read model is parked (an event this build cannot apply
    /// or read): this row is as of the version before it. Serialised only
    /// when true, as `GET /orders/{id}` marks the same order.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// A page of a customer's orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerOrdersPage {
    pub customer_id: Uuid,
    pub orders: Vec<CustomerOrder>,
    /// All orders of the customer in the read model.
    pub total: u64,
    /// Cursor for the next page (`PageRequest::after`), None on the last page.
    pub next_after: Option<Uuid>,
    pub projection: Freshness,
}

/// A stored row before decoding (the projector decodes, or re-derives it
/// when its state shape is stale).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub version: i64,
    pub last_position: i64,
    pub state_schema: i32,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Rows of the aggregates one batch touches (absent = never projected).
#[derive(Debug, Clone, Default)]
pub struct StoredRows {
    pub orders: std::collections::HashMap<Uuid, StoredRow>,
    pub customers: std::collections::HashMap<Uuid, StoredRow>,
}

/// One batch to commit: changed rows plus the checkpoint move `from -> to`,
/// and the park records of the aggregates the batch stopped (written with
/// the checkpoint move, or not at all).
#[derive(Debug, Clone)]
pub struct CommitBatch {
    pub consumer: String,
    pub from: i64,
    pub to: i64,
    pub orders: Vec<OrderRow>,
    pub customers: Vec<CustomerRow>,
    pub parks: Vec<crate::store::parking::Parked>,
    /// Aggregates whose events the batch held because of a park record
    /// read before it: SQLite commits only if each record is still there
    /// (a rebuild's reset removes them; the batch is then read again, as
    /// after a lost compare-and-set). CQL has no reset and ignores it.
    pub held_by: Vec<String>,
}

/// Storage of the read models. Implemented by `SqliteStore` and `CqlStore`.
#[async_trait]
pub trait ReadModelStore: Send + Sync + 'static {
    /// The consumer's checkpoint (0 when it has none).
    async fn projection_checkpoint(&self, consumer: &str) -> Result<i64, StoreError>;
    /// Current rows of these aggregates.
    async fn load_rows(&self, orders: Vec<Uuid>, customers: Vec<Uuid>) -> Result<StoredRows, StoreError>;
    /// In one transaction: if the checkpoint of `batch.consumer` is still
    /// `batch.from` (and, SQLite, every park record of `batch.held_by` is
    /// still there), writes the park records, upserts the rows (never to a
    /// lower version) and sets the checkpoint to `batch.to`; returns false
    /// (writing nothing, parks included) if another projector moved the
    /// checkpoint meanwhile. (CQL, no transaction: the parks, then the rows,
    /// then the checkpoint's compare-and-set.)
    async fn commit_batch(&self, batch: CommitBatch) -> Result<bool, StoreError>;
    /// Deletes every read-model row and the consumer's checkpoint,
    /// atomically, and (SQLite: in the same transaction) its parked
    /// aggregates: a projector running beside a rebuild that re-reads the
    /// checkpoint must not re-read parks from before the reset with it, or it
    /// holds those aggregates' events from position 0 and loses them. (CQL
    /// keeps its park records: no command resets its read models.)
    async fn reset(&self, consumer: &str) -> Result<(), StoreError>;
    /// The projection checkpoint ([`CONSUMER`]) and the feed head, read together.
    async fn freshness(&self) -> Result<Freshness, StoreError>;
    /// A row written in another `state_schema` than this build's (an older
    /// build's, not yet touched by an event since the upgrade) comes with
    /// `current_shape` false: its columns may mean something else, so the
    /// events answer (the row only when they cannot be read).
    async fn get_order(&self, order_id: Uuid) -> Result<Option<OrderView>, StoreError>;
    /// A customer row of another `state_schema` reads as absent (the events answer).
    async fn get_customer(&self, customer_id: Uuid) -> Result<Option<CustomerView>, StoreError>;
    async fn orders_by_customer(&self, customer_id: Uuid, page: PageRequest) -> Result<CustomerOrdersPage, StoreError>;
    /// Every read-model row as JSON (`{"table": .., "key": .., columns..}`),
    /// sorted by (table, key): for comparing two databases row by row.
    async fn dump(&self) -> Result<Vec<serde_json::Value>, StoreError>;
}

pub type DynReadModels = Arc<dyn ReadModelStore>;

/// Opens the configured store and, where the backend has them, its read
/// models (the same SQLite instance: one writer thread for both).
pub async fn open_stores(cfg: &crate::config::Config) -> Result<(DynStore, Option<DynReadModels>), StoreError> {
    match cfg.store.backend {
        crate::config::Backend::Sqlite => {
            let s = crate::store::sqlite::SqliteStore::open(&cfg.store.path, cfg.store.sqlite.clone()).await?;
            Ok((s.clone(), Some(s)))
        }
        crate::config::Backend::Cql => {
            let cql = crate::store::cql::CqlStore::connect(&cfg.store.cql).await?;
            if cql.cdc_enabled() {
                Ok((cql.clone(), Some(cql)))
            } else {
                tracing::info!(
                    keyspace = cql.keyspace(),
                    "read models on CQL need ScyllaDB CDC (no CDC log on event_store): no read models"
                );
                Ok((cql, None))
            }
        }
    }
}
