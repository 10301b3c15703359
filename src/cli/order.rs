//! `outboxd order ...`: Order commands and `order show`.
//!
//! Guarantee: items are parsed and validated before the store is opened;
//! a refused command changes nothing (exit 2), a pinned version that is
//! stale is a conflict (exit 3). Only `create` makes a store; `update-items`
//! without `--currency` keeps the order's currency.

use uuid::Uuid;

use outboxd::app::AppError;
use outboxd::config::Config;
use outboxd::domain::{Currency, DomainError, Money, Order, OrderCommand, OrderItem, Sku};

use super::{meta, open_existing, open_for, service, BadInput, Failure};
use crate::OrderCmd;

/// Parses `SKU:QUANTITY:UNIT_PRICE_MINOR` items.
fn parse_items(raw: &[String], currency: &str) -> Result<Vec<OrderItem>, Failure> {
    let currency = Currency::new(currency)?;
    parse_items_in(raw, currency)
}

/// [`parse_items`] with every price in `currency`.
fn parse_items_in(raw: &[String], currency: Currency) -> Result<Vec<OrderItem>, Failure> {
    raw.iter()
        .map(|s| {
            let parts: Vec<&str> = s.split(':').collect();
            let [sku, qty, price] = parts[..] else {
                return Err(BadInput(format!(
                    "--item {s:?}: expected SKU:QUANTITY:UNIT_PRICE_MINOR, e.g. BOOK-1:2:1999"
                ))
                .into());
            };
            let qty: i64 =
                qty.parse().map_err(|_| BadInput(format!("--item {s:?}: quantity {qty:?} is not a whole number")))?;
            let price: i64 = price.parse().map_err(|_| {
                BadInput(format!("--item {s:?}: unit price {price:?} is not a whole number of minor units"))
            })?;
            Ok(OrderItem::new(Sku::new(sku)?, qty, Money::new(price, currency)?)?)
        })
        .collect()
}

/// `update-items` without `--currency`: the items in the order's current
/// currency (never a silent default that would switch it). The items are
/// checked before the store is opened; an order that does not exist is
/// refused as the command would be (exit 2), and the store is not created.
/// Also returns the version read: the update is pinned to it, so an order
/// whose currency changed in between is a conflict (exit 3), not repriced.
async fn items_in_order_currency(cfg: &Config, id: Uuid, raw: &[String]) -> Result<(Vec<OrderItem>, i64), Failure> {
    // Checked in a stand-in currency (no rule of an item depends on it), then repriced below.
    let checked = parse_items_in(raw, Currency::new("EUR")?)?;
    let svc = service(cfg, open_existing(cfg).await?);
    let loaded = svc.load::<Order>(id).await.map_err(|e| Failure::from(e).context(format!("order {id}")))?;
    let current =
        loaded.state.total.map(|t| t.currency).or_else(|| loaded.state.items.first().map(|i| i.unit_price.currency));
    let Some(currency) = current else {
        return Err(
            Failure::from(AppError::Domain(outboxd::domain::DomainError::OrderNotFound)).context(format!("order {id}"))
        );
    };
    let items =
        checked.into_iter().map(|i| OrderItem { unit_price: Money { currency, ..i.unit_price }, ..i }).collect();
    Ok((items, loaded.version))
}

pub async fn run(cfg: &Config, c: OrderCmd) -> Result<u8, Failure> {
    // The `--item` values as given: a rule about one item names it by them.
    let raw_items = match &c {
        OrderCmd::Create { items, .. } | OrderCmd::UpdateItems { items, .. } => items.clone(),
        _ => Vec::new(),
    };
    // An id this command made up names nothing stored: a refusal omits it.
    let generated_id = matches!(&c, OrderCmd::Create { id: None, .. });
    // Validate the input before touching the store.
    let (id, cmd, m) = match c {
        OrderCmd::Show { id } => {
            let svc = service(cfg, super::open_to_read(cfg).await?);
            let loaded = svc.load::<Order>(id).await?;
            if loaded.version == 0 {
                return Err(Failure::from(AppError::Domain(outboxd::domain::DomainError::OrderNotFound))
                    .context(format!("order {id}")));
            }
            let events = svc.store().load(id).await?;
            out!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"id": id, "version": loaded.version, "state": loaded.state, "events": events})
                )?
            );
            return Ok(0);
        }
        OrderCmd::Create { customer, items, currency, id, meta: m } => {
            let items = parse_items(&items, &currency)?;
            (id.unwrap_or_else(Uuid::now_v7), OrderCommand::Create { customer_id: customer, items }, m)
        }
        OrderCmd::UpdateItems { id, items, currency, meta: mut m } => {
            let items = match currency {
                Some(c) => parse_items(&items, &c)?,
                None => {
                    let (items, read_at) = items_in_order_currency(cfg, id, &items).await?;
                    m.expected_version = m.expected_version.or(Some(read_at));
                    items
                }
            };
            (id, OrderCommand::UpdateItems { items }, m)
        }
        OrderCmd::Confirm { id, meta: m } => (id, OrderCommand::Confirm, m),
        OrderCmd::Ship { id, tracking_number, carrier, meta: m } => {
            (id, OrderCommand::Ship { tracking_number, carrier }, m)
        }
        OrderCmd::Deliver { id, signature, meta: m } => (id, OrderCommand::Deliver { signature }, m),
        OrderCmd::Cancel { id, reason, meta: m } => (id, OrderCommand::Cancel { reason }, m),
    };
    let is_create = matches!(cmd, OrderCommand::Create { .. });
    let svc = service(cfg, open_for(cfg, is_create).await?);
    let out = svc.execute::<Order>(id, &cmd, meta(&m), m.expected_version).await.map_err(|e| match e {
        // The CLI's currency is `--currency`'s, for every item.
        AppError::Domain(DomainError::Item { error, .. })
            if matches!(*error, DomainError::UnknownCurrency(_) | DomainError::InvalidCurrency(_)) =>
        {
            Failure::from(BadInput(format!("--currency: {error}")))
        }
        AppError::Domain(DomainError::Item { index, error }) if index < raw_items.len() => {
            Failure::from(BadInput(format!("--item {:?}: {error}", raw_items[index])))
        }
        e if generated_id => Failure::from(e),
        e => Failure::from(e).context(format!("order {id}")),
    })?;
    if is_create {
        out!("{id}");
    } else {
        out!("order {id}: {} (version {})", out.state.status, out.version);
    }
    Ok(0)
}
