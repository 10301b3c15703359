//! The `ReadModelStore` queries of the CQL backend (orders, a customer's
//! orders, freshness, dump, reset, and the SQLite-shaped `commit_batch`).
//!
//! Guarantee: see the module doc of `projection::cql`: rows are written with
//! their version as timestamp, `commit_batch` moves the checkpoint with an
//! LWT after the rows, freshness reports the CDC watermark (no global head).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use scylla::statement::Statement;
use scylla::value::{CqlValue, Row as CqlRow};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::apply::{write_customer, write_order};
use super::cdc::{LEGACY_PROJECTION_CHECKPOINT_TABLE, PROJECTION_CONSUMER};
use super::{codec, load_stored, stmts, unavailable, watermark_cache, MAX_OFFSET};
use crate::domain::{Aggregate, Customer, Order};
use crate::projection::{
    CommitBatch, CustomerOrder, CustomerOrdersPage, CustomerView, Freshness, OrderView, PageRequest, ReadModelStore,
    StoredRows,
};
use crate::store::cql::CqlStore;
use crate::store::StoreError;

/// The projection's oldest per-stream CDC progress (ms), 0 when none.
async fn watermark(store: &CqlStore) -> i64 {
    let ks = store.keyspace().to_string();
    if let Some((at, w)) = watermark_cache().lock().unwrap().get(&ks) {
        if at.elapsed() < Duration::from_secs(1) {
            return *w;
        }
    }
    let w = match store.cdc_oldest_progress(PROJECTION_CONSUMER).await {
        Ok(t) => t.map_or(0, |t| t.timestamp_millis()),
        Err(_) => 0,
    };
    watermark_cache().lock().unwrap().insert(ks, (Instant::now(), w));
    w
}

async fn freshness_of(store: &CqlStore) -> Freshness {
    Freshness { checkpoint: watermark(store).await, head: 0, lag_events: 0 }
}

fn lwt_applied(res: scylla::response::query_result::QueryResult) -> Result<bool, StoreError> {
    let rows = res.into_rows_result().map_err(|e| codec(format!("conditional write returned no rows: {e}")))?;
    let idx =
        rows.column_specs().get_by_name("[applied]").map(|(i, _)| i).ok_or_else(|| codec("no [applied] column"))?;
    let first =
        rows.maybe_first_row::<CqlRow>().map_err(codec)?.ok_or_else(|| codec("conditional write answer has no row"))?;
    match first.columns.get(idx).cloned().flatten() {
        Some(CqlValue::Boolean(b)) => Ok(b),
        other => Err(codec(format!("[applied] is not a boolean: {other:?}"))),
    }
}

fn json_of(v: Option<CqlValue>) -> serde_json::Value {
    match v {
        None | Some(CqlValue::Empty) => serde_json::Value::Null,
        Some(CqlValue::Uuid(u)) => u.to_string().into(),
        Some(CqlValue::Text(s)) | Some(CqlValue::Ascii(s)) => s.into(),
        Some(CqlValue::BigInt(n)) => n.into(),
        Some(CqlValue::Int(n)) => n.into(),
        Some(CqlValue::Timestamp(t)) => DateTime::from_timestamp_millis(t.0)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
            .into(),
        Some(other) => format!("{other:?}").into(),
    }
}

async fn dump_table(
    store: &CqlStore,
    table: &str,
    keys: &[&str],
    out: &mut Vec<serde_json::Value>,
) -> Result<(), StoreError> {
    let mut q = Statement::new(format!("SELECT * FROM {}.{table}", store.keyspace()));
    q.set_page_size(1000);
    let pager = store.session().query_iter(q, ()).await.map_err(|e| unavailable(format!("dump {table}: {e}")))?;
    let names: Vec<String> = pager.column_specs().iter().map(|c| c.name().to_string()).collect();
    let mut rows = pager.rows_stream::<CqlRow>().map_err(codec)?;
    use futures::StreamExt;
    while let Some(r) = rows.next().await {
        let r = r.map_err(|e| unavailable(format!("dump {table}: {e}")))?;
        let mut obj = serde_json::Map::new();
        obj.insert("table".into(), table.into());
        let mut key = Vec::new();
        for (n, v) in names.iter().zip(r.columns) {
            let v = json_of(v);
            if keys.contains(&n.as_str()) {
                key.push(v.as_str().unwrap_or_default().to_string());
            }
            obj.insert(n.clone(), v);
        }
        obj.insert("key".into(), key.join("/").into());
        out.push(serde_json::Value::Object(obj));
    }
    Ok(())
}

type OrderTuple = (
    Option<Uuid>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<i64>,
    Option<i32>,
    Option<String>,
);

#[async_trait]
impl ReadModelStore for CqlStore {
    async fn projection_checkpoint(&self, consumer: &str) -> Result<i64, StoreError> {
        let st = stmts(self).await?;
        let res = self
            .session()
            .execute_unpaged(&st.get_checkpoint, (consumer,))
            .await
            .map_err(|e| unavailable(format!("checkpoint {consumer}: {e}")))?;
        let row = res.into_rows_result().map_err(codec)?.maybe_first_row::<(Option<i64>,)>().map_err(codec)?;
        Ok(row.and_then(|(p,)| p).unwrap_or(0))
    }

    async fn load_rows(&self, orders: Vec<Uuid>, customers: Vec<Uuid>) -> Result<StoredRows, StoreError> {
        let st = stmts(self).await?;
        let mut out = StoredRows::default();
        for id in orders {
            if let Some(r) = load_stored(self, &st.load_order, id).await? {
                out.orders.insert(id, r);
            }
        }
        for id in customers {
            if let Some(r) = load_stored(self, &st.load_customer, id).await? {
                out.customers.insert(id, r);
            }
        }
        Ok(out)
    }

    async fn commit_batch(&self, batch: CommitBatch) -> Result<bool, StoreError> {
        let st = stmts(self).await?;
        if self.projection_checkpoint(&batch.consumer).await? != batch.from {
            return Ok(false);
        }
        for p in &batch.parks {
            crate::store::parking::ParkingStore::park(self, p).await?;
        }
        for o in &batch.orders {
            write_order(self, &st, o).await?;
        }
        for c in &batch.customers {
            write_customer(self, &st, c).await?;
        }
        let now = Utc::now();
        let session = self.session();
        let mut applied = false;
        if batch.from == 0 {
            let res = session
                .execute_unpaged(&st.cp_insert, (&batch.consumer, batch.to, now))
                .await
                .map_err(|e| unavailable(format!("checkpoint {}: {e}", batch.consumer)))?;
            applied = lwt_applied(res)?;
        }
        if !applied {
            let res = session
                .execute_unpaged(&st.cp_update, (batch.to, now, &batch.consumer, batch.from))
                .await
                .map_err(|e| unavailable(format!("checkpoint {}: {e}", batch.consumer)))?;
            applied = lwt_applied(res)?;
        }
        Ok(applied)
    }

    async fn reset(&self, consumer: &str) -> Result<(), StoreError> {
        let ks = self.keyspace().to_string();
        let session = self.session();
        for t in ["order_read_model", "orders_by_customer", "customer_read_model"] {
            session
                .query_unpaged(format!("TRUNCATE {ks}.{t}"), ())
                .await
                .map_err(|e| unavailable(format!("truncate {ks}.{t}: {e}")))?;
        }
        // The projection's CDC progress (its lease, in the static columns, stays).
        session
            .query_unpaged(
                format!("DELETE FROM {ks}.relay_leases WHERE name = ? AND stream_id >= 0x"),
                (PROJECTION_CONSUMER,),
            )
            .await
            .map_err(|e| unavailable(format!("delete the CDC progress of {PROJECTION_CONSUMER}: {e}")))?;
        // Progress of the former scylla-cdc table would be taken over again.
        if let Err(e) = session.query_unpaged(format!("TRUNCATE {ks}.{LEGACY_PROJECTION_CHECKPOINT_TABLE}"), ()).await {
            tracing::debug!(error = %e, "no former CDC progress table of the projection to clear");
        }
        // An LWT delete: the checkpoint row is only ever written with LWTs.
        session
            .query_unpaged(format!("DELETE FROM {ks}.checkpoints WHERE consumer = ? IF EXISTS"), (consumer,))
            .await
            .map_err(|e| unavailable(format!("delete checkpoint {consumer}: {e}")))?;
        watermark_cache().lock().unwrap().remove(&ks);
        Ok(())
    }

    async fn freshness(&self) -> Result<Freshness, StoreError> {
        Ok(freshness_of(self).await)
    }

    async fn get_order(&self, order_id: Uuid) -> Result<Option<OrderView>, StoreError> {
        let st = stmts(self).await?;
        let session = self.session();
        let res = session
            .execute_unpaged(&st.get_order, (order_id,))
            .await
            .map_err(|e| unavailable(format!("order_read_model {order_id}: {e}")))?;
        let Some(r) = res.into_rows_result().map_err(codec)?.maybe_first_row::<OrderTuple>().map_err(codec)? else {
            return Ok(None);
        };
        let (
            customer_id,
            status,
            total_minor,
            currency,
            item_count,
            _items,
            tracking_number,
            carrier,
            cancel_reason,
            created,
            updated,
            version,
            last_position,
            schema,
            state,
        ) = r;
        let missing = |c: &str| codec(format!("order_read_model {order_id} has null {c} (rebuild the read models)"));
        let state: Order = serde_json::from_str(&state.ok_or_else(|| missing("state"))?)
            .map_err(|e| codec(format!("order_read_model state of {order_id} (rebuild the read models): {e}")))?;
        let res = session
            .execute_unpaged(&st.stream_version, (order_id,))
            .await
            .map_err(|e| unavailable(format!("event_store {order_id}: {e}")))?;
        let stream_version = res
            .into_rows_result()
            .map_err(codec)?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(codec)?
            .and_then(|(v,)| v)
            .unwrap_or(0);
        Ok(Some(OrderView {
            order_id,
            customer_id,
            status: status.ok_or_else(|| missing("status"))?,
            total_minor,
            currency,
            item_count: item_count.unwrap_or(0) as i64,
            items: state.items.clone(),
            tracking_number,
            carrier,
            cancel_reason,
            created_at: created.ok_or_else(|| missing("created_at"))?,
            updated_at: updated.ok_or_else(|| missing("updated_at"))?,
            version: version.ok_or_else(|| missing("version"))?,
            last_position: last_position.unwrap_or(0),
            stream_version,
            state,
            projection: freshness_of(self).await,
            current_shape: schema == Some(Order::STATE_SCHEMA),
        }))
    }

    async fn get_customer(&self, customer_id: Uuid) -> Result<Option<CustomerView>, StoreError> {
        let st = stmts(self).await?;
        let res = self
            .session()
            .execute_unpaged(&st.get_customer, (customer_id,))
            .await
            .map_err(|e| unavailable(format!("customer_read_model {customer_id}: {e}")))?;
        type T = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<i64>,
            Option<i64>,
            Option<i32>,
            Option<String>,
        );
        let Some((name, email, phone, created, updated, version, last_position, schema, state)) =
            res.into_rows_result().map_err(codec)?.maybe_first_row::<T>().map_err(codec)?
        else {
            return Ok(None);
        };
        if schema != Some(Customer::STATE_SCHEMA) {
            return Ok(None); // another build's shape: the events answer
        }
        let missing =
            |c: &str| codec(format!("customer_read_model {customer_id} has null {c} (rebuild the read models)"));
        Ok(Some(CustomerView {
            customer_id,
            name,
            email,
            phone,
            created_at: created.ok_or_else(|| missing("created_at"))?,
            updated_at: updated.ok_or_else(|| missing("updated_at"))?,
            version: version.ok_or_else(|| missing("version"))?,
            last_position: last_position.unwrap_or(0),
            state: serde_json::from_str(&state.ok_or_else(|| missing("state"))?).map_err(|e| {
                codec(format!("customer_read_model state of {customer_id} (rebuild the read models): {e}"))
            })?,
            projection: freshness_of(self).await,
        }))
    }

    async fn orders_by_customer(&self, customer_id: Uuid, page: PageRequest) -> Result<CustomerOrdersPage, StoreError> {
        let limit = page.effective_limit();
        if page.after.is_none() && page.offset > MAX_OFFSET {
            return Err(StoreError::Unsupported {
                backend: "cql",
                what: format!(
                    "offset {} (at most {MAX_OFFSET} on CQL; page with the `after` cursor instead)",
                    page.offset
                ),
            });
        }
        let st = stmts(self).await?;
        let session = self.session();
        let res = session
            .execute_unpaged(&st.count_by_customer, (customer_id,))
            .await
            .map_err(|e| unavailable(format!("orders_by_customer {customer_id}: {e}")))?;
        let total = res
            .into_rows_result()
            .map_err(codec)?
            .maybe_first_row::<(i64,)>()
            .map_err(codec)?
            .map(|(n,)| n)
            .unwrap_or(0);
        let res = match page.after {
            Some(a) => session.execute_unpaged(&st.page_after, (customer_id, a, (limit + 1) as i32)).await,
            None => {
                session.execute_unpaged(&st.page_first, (customer_id, (page.offset as usize + limit + 1) as i32)).await
            }
        }
        .map_err(|e| unavailable(format!("orders_by_customer {customer_id}: {e}")))?;
        type T = (Uuid, Option<String>, Option<i64>, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
        let rows = res.into_rows_result().map_err(codec)?;
        let skip = if page.after.is_some() { 0 } else { page.offset as usize };
        let mut orders = Vec::new();
        for r in rows.rows::<T>().map_err(codec)?.skip(skip) {
            let (order_id, status, total_minor, currency, created, updated) = r.map_err(codec)?;
            let missing = |c: &str| codec(format!("orders_by_customer {customer_id}/{order_id} has null {c}"));
            orders.push(CustomerOrder {
                order_id,
                status: status.ok_or_else(|| missing("status"))?,
                total_minor,
                currency,
                created_at: created.ok_or_else(|| missing("created_at"))?,
                updated_at: updated.ok_or_else(|| missing("updated_at"))?,
                stale: false,
            });
        }
        let more = orders.len() > limit;
        orders.truncate(limit);
        let next_after = if more { orders.last().map(|o| o.order_id) } else { None };
        // Parks are few (one read of them all, not one per row). Unread, the
        // page is served unmarked rather than not at all (health says why).
        let parked = match crate::store::parking::ParkingStore::parked_positions(self, crate::projection::CONSUMER)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the projection's parks; customer orders page not marked stale");
                Vec::new()
            }
        };
        for o in &mut orders {
            let id = o.order_id.to_string();
            o.stale = parked.iter().any(|(a, _)| *a == id);
        }
        Ok(CustomerOrdersPage {
            customer_id,
            orders,
            total: total.max(0) as u64,
            next_after,
            projection: freshness_of(self).await,
        })
    }

    async fn dump(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let mut out = Vec::new();
        dump_table(self, "customer_read_model", &["customer_id"], &mut out).await?;
        dump_table(self, "order_read_model", &["order_id"], &mut out).await?;
        dump_table(self, "orders_by_customer", &["customer_id", "order_id"], &mut out).await?;
        out.sort_by(|a, b| (a["table"].as_str(), a["key"].as_str()).cmp(&(b["table"].as_str(), b["key"].as_str())));
        Ok(out)
    }
}
