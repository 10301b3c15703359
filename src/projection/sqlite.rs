//! `ReadModelStore` for the embedded SQLite store (tables of schema v2).
//!
//! Rows are encoded on the caller's task; the writer thread only runs the
//! SQL: one IMMEDIATE transaction per batch that checks the checkpoint,
//! writes the batch's park records, upserts the rows (never to a lower
//! version; a stored row whose version is no integer is replaced) and moves
//! the checkpoint.
//! Queries run in one read transaction each, so a row and the checkpoint
//! reported with it come from the same snapshot.

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use uuid::Uuid;

use super::model::{OrderColumns, Row};
use super::{
    CommitBatch, CustomerOrder, CustomerOrdersPage, CustomerView, Freshness, OrderView, PageRequest, ReadModelStore,
    StoredRow, StoredRows, CONSUMER,
};
use crate::domain::{Aggregate, Customer, Order};
use crate::store::sqlite::{codec, parse_ts, parse_uuid, ts, unavailable, SqliteStore};
use crate::store::StoreError;

struct OrderParams {
    order_id: String,
    customer_id: Option<String>,
    cols: OrderColumns,
    items: String,
    created_at: String,
    updated_at: String,
    version: i64,
    last_position: i64,
    state: String,
}

struct CustomerParams {
    customer_id: String,
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    created_at: String,
    updated_at: String,
    version: i64,
    last_position: i64,
    state: String,
}

fn order_params(r: &Row<Order>) -> Result<OrderParams, StoreError> {
    Ok(OrderParams {
        order_id: r.id.to_string(),
        customer_id: r.state.customer_id.map(|c| c.to_string()),
        cols: OrderColumns::of(&r.state),
        items: serde_json::to_string(&r.state.items).map_err(codec)?,
        created_at: ts(&r.created_at),
        updated_at: ts(&r.updated_at),
        version: r.version,
        last_position: r.last_position,
        state: serde_json::to_string(&r.state).map_err(codec)?,
    })
}

fn customer_params(r: &Row<Customer>) -> Result<CustomerParams, StoreError> {
    Ok(CustomerParams {
        customer_id: r.id.to_string(),
        name: r.state.name.clone(),
        email: r.state.email.as_ref().map(|e| e.as_str().to_string()),
        phone: r.state.phone.as_ref().map(|p| p.as_str().to_string()),
        created_at: ts(&r.created_at),
        updated_at: ts(&r.updated_at),
        version: r.version,
        last_position: r.last_position,
        state: serde_json::to_string(&r.state).map_err(codec)?,
    })
}

fn checkpoint_of(c: &Connection, consumer: &str) -> Result<i64, StoreError> {
    c.prepare_cached("SELECT position FROM checkpoints WHERE consumer = ?1")
        .and_then(|mut s| s.query_row([consumer], |r| r.get::<_, i64>(0)).optional())
        .map(|p| p.unwrap_or(0))
        .map_err(unavailable)
}

fn freshness_of(c: &Connection) -> Result<Freshness, StoreError> {
    let checkpoint = checkpoint_of(c, CONSUMER)?;
    let head: i64 =
        c.query_row("SELECT COALESCE(MAX(position), 0) FROM event_store", [], |r| r.get(0)).map_err(unavailable)?;
    Ok(Freshness::new(checkpoint, head))
}

/// `state_schema` of a stored row whose state or timestamps cannot be read:
/// no build's shape, so `page::decode_row` re-derives it from its events.
const UNREADABLE_ROW: i32 = i32::MIN;

/// The rows of `ids`. A row whose `state`, `state_schema`, `last_position`
/// or timestamps cannot be read (a non-text state, a `created_at` that is
/// no timestamp) is returned as [`UNREADABLE_ROW`], re-derived from its
/// events by the caller, never an error: failing the load would fail every
/// batch that touches the row, on every retry, and stall every aggregate.
/// A row whose `version` is no integer is left out (as if absent): the
/// caller re-derives it from all its events and the upsert replaces it
/// (see `commit_batch`).
fn load_stored(c: &Connection, sql: &str, ids: &[Uuid]) -> Result<HashMap<Uuid, StoredRow>, StoreError> {
    let mut st = c.prepare_cached(sql).map_err(unavailable)?;
    let mut out = HashMap::with_capacity(ids.len());
    for id in ids {
        let row = st
            .query_row([id.to_string()], |r| {
                Ok((
                    r.get::<_, i64>(0).ok(),
                    r.get::<_, i64>(1).ok(),
                    r.get::<_, i32>(2).ok(),
                    r.get::<_, String>(3).ok(),
                    r.get::<_, String>(4).ok().and_then(|t| parse_ts(&t).ok()),
                    r.get::<_, String>(5).ok().and_then(|t| parse_ts(&t).ok()),
                ))
            })
            .optional()
            .map_err(unavailable)?;
        let Some((version, last_position, state_schema, state, created, updated)) = row else { continue };
        let Some(version) = version else {
            tracing::warn!(%id, "read-model row has no integer version; it is re-derived from all its events");
            continue;
        };
        let stored = match (last_position, state_schema, state, created, updated) {
            (Some(last_position), Some(state_schema), Some(state), Some(created_at), Some(updated_at)) => {
                StoredRow { version, last_position, state_schema, state, created_at, updated_at }
            }
            (last_position, ..) => {
                tracing::warn!(%id, version, "read-model row cannot be read (state, position or timestamps); it is re-derived from its events");
                let epoch = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
                StoredRow {
                    version,
                    last_position: last_position.unwrap_or(0),
                    state_schema: UNREADABLE_ROW,
                    state: String::new(),
                    created_at: epoch,
                    updated_at: epoch,
                }
            }
        };
        out.insert(*id, stored);
    }
    Ok(out)
}

fn json_of(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => f.into(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => format!("blob:{}", b.len()).into(),
    }
}

fn dump_table(c: &Connection, table: &str, key: &str, out: &mut Vec<serde_json::Value>) -> Result<(), StoreError> {
    let mut st = c.prepare(&format!("SELECT * FROM {table} ORDER BY {key}")).map_err(unavailable)?;
    let names: Vec<String> = st.column_names().into_iter().map(String::from).collect();
    let key_cols: Vec<&str> = key.split(',').map(str::trim).collect();
    let mut rows = st.query([]).map_err(unavailable)?;
    while let Some(r) = rows.next().map_err(unavailable)? {
        let mut obj = serde_json::Map::new();
        obj.insert("table".into(), table.into());
        let mut keys = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let v = json_of(r.get_ref(i).map_err(unavailable)?);
            if key_cols.contains(&n.as_str()) {
                keys.push(v.as_str().unwrap_or_default().to_string());
            }
            obj.insert(n.clone(), v);
        }
        obj.insert("key".into(), keys.join("/").into());
        out.push(serde_json::Value::Object(obj));
    }
    Ok(())
}

#[async_trait]
impl ReadModelStore for SqliteStore {
    async fn projection_checkpoint(&self, consumer: &str) -> Result<i64, StoreError> {
        let consumer = consumer.to_string();
        self.read(move |c| checkpoint_of(c, &consumer)).await
    }

    async fn load_rows(&self, orders: Vec<Uuid>, customers: Vec<Uuid>) -> Result<StoredRows, StoreError> {
        if orders.is_empty() && customers.is_empty() {
            return Ok(StoredRows::default());
        }
        self.read(move |c| {
            let tx = c.unchecked_transaction().map_err(unavailable)?;
            let rows = StoredRows {
                orders: load_stored(&tx, "SELECT version, last_position, state_schema, state, created_at, updated_at FROM order_read_model WHERE order_id = ?1", &orders)?,
                customers: load_stored(&tx, "SELECT version, last_position, state_schema, state, created_at, updated_at FROM customer_read_model WHERE customer_id = ?1", &customers)?,
            };
            Ok(rows)
        })
        .await
    }

    async fn commit_batch(&self, batch: CommitBatch) -> Result<bool, StoreError> {
        let orders = batch.orders.iter().map(order_params).collect::<Result<Vec<_>, _>>()?;
        let customers = batch.customers.iter().map(customer_params).collect::<Result<Vec<_>, _>>()?;
        let (consumer, from, to, parks, held_by) = (batch.consumer, batch.from, batch.to, batch.parks, batch.held_by);
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| unavailable(format!("cannot begin projection transaction: {e}")))?;
            let current = checkpoint_of(&tx, &consumer)?;
            if current != from {
                return Ok(false); // dropped: rolled back, nothing written
            }
            // Held on the strength of a park a reset removed since: the
            // held events would be skipped for good (the same outcome).
            for agg in &held_by {
                let there: bool = tx
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM parked_aggregates WHERE consumer = ?1 AND aggregate_id = ?2)")
                    .and_then(|mut s| s.query_row(params![consumer, agg], |r| r.get(0)))
                    .map_err(unavailable)?;
                if !there {
                    return Ok(false);
                }
            }
            for p in &parks {
                crate::store::sqlite::parking::park(&tx, p)?;
            }
            {
                let mut up = tx
                    .prepare_cached(
                        "INSERT INTO order_read_model (order_id, customer_id, status, total_minor, currency, item_count, items, tracking_number, carrier, cancel_reason,
                                                       created_at, updated_at, version, last_position, state_schema, state)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                         ON CONFLICT (order_id) DO UPDATE SET
                            customer_id = excluded.customer_id, status = excluded.status, total_minor = excluded.total_minor,
                            currency = excluded.currency, item_count = excluded.item_count, items = excluded.items,
                            tracking_number = excluded.tracking_number, carrier = excluded.carrier, cancel_reason = excluded.cancel_reason,
                            created_at = excluded.created_at, updated_at = excluded.updated_at, version = excluded.version,
                            last_position = excluded.last_position, state_schema = excluded.state_schema, state = excluded.state
                         WHERE excluded.version > order_read_model.version OR typeof(order_read_model.version) <> 'integer'",
                    )
                    .map_err(unavailable)?;
                let mut by_customer = tx
                    .prepare_cached(
                        "INSERT INTO orders_by_customer (customer_id, order_id, status, total_minor, currency, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (customer_id, order_id) DO UPDATE SET
                            status = excluded.status, total_minor = excluded.total_minor, currency = excluded.currency,
                            created_at = excluded.created_at, updated_at = excluded.updated_at",
                    )
                    .map_err(unavailable)?;
                for o in &orders {
                    let n = up
                        .execute(params![
                            o.order_id,
                            o.customer_id,
                            o.cols.status,
                            o.cols.total_minor,
                            o.cols.currency,
                            o.cols.item_count,
                            o.items,
                            o.cols.tracking_number,
                            o.cols.carrier,
                            o.cols.cancel_reason,
                            o.created_at,
                            o.updated_at,
                            o.version,
                            o.last_position,
                            Order::STATE_SCHEMA,
                            o.state
                        ])
                        .map_err(unavailable)?;
                    if let (1, Some(cust)) = (n, &o.customer_id) {
                        by_customer
                            .execute(params![cust, o.order_id, o.cols.status, o.cols.total_minor, o.cols.currency, o.created_at, o.updated_at])
                            .map_err(unavailable)?;
                    }
                }
                let mut cu = tx
                    .prepare_cached(
                        "INSERT INTO customer_read_model (customer_id, name, email, phone, created_at, updated_at, version, last_position, state_schema, state)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                         ON CONFLICT (customer_id) DO UPDATE SET
                            name = excluded.name, email = excluded.email, phone = excluded.phone, created_at = excluded.created_at,
                            updated_at = excluded.updated_at, version = excluded.version, last_position = excluded.last_position,
                            state_schema = excluded.state_schema, state = excluded.state
                         WHERE excluded.version > customer_read_model.version OR typeof(customer_read_model.version) <> 'integer'",
                    )
                    .map_err(unavailable)?;
                for p in &customers {
                    cu.execute(params![p.customer_id, p.name, p.email, p.phone, p.created_at, p.updated_at, p.version, p.last_position, Customer::STATE_SCHEMA, p.state])
                        .map_err(unavailable)?;
                }
                tx.prepare_cached(
                    "INSERT INTO checkpoints (consumer, position, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                )
                .and_then(|mut s| s.execute(params![consumer, to, ts(&chrono::Utc::now())]))
                .map_err(unavailable)?;
            }
            tx.commit().map_err(|e| unavailable(format!("projection commit failed: {e}")))?;
            Ok(true)
        })
        .await
    }

    async fn reset(&self, consumer: &str) -> Result<(), StoreError> {
        let consumer = consumer.to_string();
        self.write(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            tx.execute_batch(
                "DELETE FROM order_read_model; DELETE FROM orders_by_customer; DELETE FROM customer_read_model;
                 DELETE FROM customer_order_counts;",
            )
            .map_err(unavailable)?;
            tx.execute("DELETE FROM checkpoints WHERE consumer = ?1", [&consumer]).map_err(unavailable)?;
            // With the checkpoint: a projector that finds it gone re-reads
            // checkpoint and parks together, never a park from before.
            tx.execute("DELETE FROM parked_aggregates WHERE consumer = ?1", [&consumer]).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn freshness(&self) -> Result<Freshness, StoreError> {
        self.read(|c| {
            let tx = c.unchecked_transaction().map_err(unavailable)?;
            freshness_of(&tx)
        })
        .await
    }

    async fn get_order(&self, order_id: Uuid) -> Result<Option<OrderView>, StoreError> {
        self.read(move |c| {
            let tx = c.unchecked_transaction().map_err(unavailable)?;
            let id = order_id.to_string();
            let row = tx
                .prepare_cached(
                    "SELECT customer_id, status, total_minor, currency, item_count, tracking_number, carrier, cancel_reason,
                            created_at, updated_at, version, last_position, state, state_schema
                     FROM order_read_model WHERE order_id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&id], |r| {
                        Ok((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<i64>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, Option<String>>(7)?,
                            (r.get::<_, String>(8)?, r.get::<_, String>(9)?, r.get::<_, i64>(10)?, r.get::<_, i64>(11)?, r.get::<_, String>(12)?),
                            r.get::<_, i64>(13)?,
                        ))
                    })
                    .optional()
                })
                .map_err(unavailable)?;
            let Some((customer_id, status, total_minor, currency, item_count, tracking_number, carrier, cancel_reason, (created, updated, version, last_position, state), schema)) = row else {
                return Ok(None);
            };
            let state: Order = serde_json::from_str(&state).map_err(|e| codec(format!("order_read_model state of {order_id} (rebuild the read models): {e}")))?;
            let stream_version: i64 = tx
                .prepare_cached("SELECT COALESCE(MAX(sequence_number), 0) FROM event_store WHERE aggregate_id = ?1")
                .and_then(|mut s| s.query_row([&id], |r| r.get(0)))
                .map_err(unavailable)?;
            Ok(Some(OrderView {
                order_id,
                customer_id: customer_id.as_deref().map(parse_uuid).transpose()?,
                status,
                total_minor,
                currency,
                item_count,
                items: state.items.clone(),
                tracking_number,
                carrier,
                cancel_reason,
                created_at: parse_ts(&created)?,
                updated_at: parse_ts(&updated)?,
                version,
                last_position,
                stream_version,
                state,
                projection: freshness_of(&tx)?,
                current_shape: schema == i64::from(Order::STATE_SCHEMA),
            }))
        })
        .await
    }

    async fn get_customer(&self, customer_id: Uuid) -> Result<Option<CustomerView>, StoreError> {
        self.read(move |c| {
            let tx = c.unchecked_transaction().map_err(unavailable)?;
            let row = tx
                .prepare_cached("SELECT name, email, phone, created_at, updated_at, version, last_position, state, state_schema FROM customer_read_model WHERE customer_id = ?1")
                .and_then(|mut s| {
                    s.query_row([customer_id.to_string()], |r| {
                        Ok((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, i64>(6)?,
                            r.get::<_, String>(7)?,
                            r.get::<_, i64>(8)?,
                        ))
                    })
                    .optional()
                })
                .map_err(unavailable)?;
            let Some((name, email, phone, created, updated, version, last_position, state, schema)) = row else { return Ok(None) };
            if schema != i64::from(Customer::STATE_SCHEMA) {
                return Ok(None); // another build's shape: the events answer
            }
            Ok(Some(CustomerView {
                customer_id,
                name,
                email,
                phone,
                created_at: parse_ts(&created)?,
                updated_at: parse_ts(&updated)?,
                version,
                last_position,
                state: serde_json::from_str(&state).map_err(|e| codec(format!("customer_read_model state of {customer_id} (rebuild the read models): {e}")))?,
                projection: freshness_of(&tx)?,
            }))
        })
        .await
    }

    async fn orders_by_customer(&self, customer_id: Uuid, page: PageRequest) -> Result<CustomerOrdersPage, StoreError> {
        let limit = page.effective_limit();
        self.read(move |c| {
            let tx = c.unchecked_transaction().map_err(unavailable)?;
            let cust = customer_id.to_string();
            // Kept by triggers (schema version 5): one row, not a count of them all.
            let total: i64 = tx
                .prepare_cached("SELECT orders FROM customer_order_counts WHERE customer_id = ?1")
                .and_then(|mut s| s.query_row([&cust], |r| r.get(0)).optional())
                .map_err(unavailable)?
                .unwrap_or(0);
            // `stale`: parked by the projector (the row is as of the version before the park).
            let cols = format!(
                "order_id, status, total_minor, currency, created_at, updated_at,
                 EXISTS (SELECT 1 FROM parked_aggregates p WHERE p.consumer = '{CONSUMER}' AND p.aggregate_id = order_id)"
            );
            let fetch = (limit + 1) as i64;
            let (sql, after, offset) = match page.after {
                Some(a) => (format!("SELECT {cols} FROM orders_by_customer WHERE customer_id = ?1 AND order_id > ?2 ORDER BY order_id LIMIT ?3"), a.to_string(), 0i64),
                None => (format!("SELECT {cols} FROM orders_by_customer WHERE customer_id = ?1 AND order_id > ?2 ORDER BY order_id LIMIT ?3 OFFSET ?4"), String::new(), page.offset.min(i64::MAX as u64) as i64),
            };
            let mut st = tx.prepare_cached(&sql).map_err(unavailable)?;
            let mut rows = if page.after.is_some() { st.query(params![cust, after, fetch]) } else { st.query(params![cust, after, fetch, offset]) }.map_err(unavailable)?;
            let mut orders = Vec::new();
            while let Some(r) = rows.next().map_err(unavailable)? {
                let g = |i: usize| r.get::<_, String>(i).map_err(codec);
                orders.push(CustomerOrder {
                    order_id: parse_uuid(&g(0)?)?,
                    status: g(1)?,
                    total_minor: r.get(2).map_err(codec)?,
                    currency: r.get(3).map_err(codec)?,
                    created_at: parse_ts(&g(4)?)?,
                    updated_at: parse_ts(&g(5)?)?,
                    stale: r.get(6).map_err(codec)?,
                });
            }
            drop(rows);
            drop(st);
            let more = orders.len() > limit;
            orders.truncate(limit);
            let next_after = if more { orders.last().map(|o| o.order_id) } else { None };
            Ok(CustomerOrdersPage { customer_id, orders, total: total as u64, next_after, projection: freshness_of(&tx)? })
        })
        .await
    }

    async fn dump(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        self.read(|c| {
            let tx = c.unchecked_transaction().map_err(unavailable)?;
            let mut out = Vec::new();
            dump_table(&tx, "customer_read_model", "customer_id", &mut out)?;
            dump_table(&tx, "order_read_model", "order_id", &mut out)?;
            dump_table(&tx, "orders_by_customer", "customer_id, order_id", &mut out)?;
            dump_table(&tx, "customer_order_counts", "customer_id", &mut out)?;
            out.sort_by(|a, b| (a["table"].as_str(), a["key"].as_str()).cmp(&(b["table"].as_str(), b["key"].as_str())));
            Ok(out)
        })
        .await
    }
}
