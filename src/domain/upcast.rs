//! Upcasting: turns event bodies written by older code into the current schema.
//!
//! Guarantee: `upcast` is pure and total over known versions. It is applied
//! where events are decoded on load: the command side (aggregates,
//! `CommandService`) and the read models (projections), which therefore only
//! see the current shape; a version newer than this build is refused (not
//! guessed). The relay does not upcast: it publishes each event as stored
//! (its `schema_version`, header `ce_dataschemaversion`, and the stored
//! payload bytes verbatim), so Kafka consumers must accept every schema
//! version ever written (docs/OPERATIONS.md).
//!
//! The chain today has one real step: `OrderCreated` v1 priced items with a
//! bare `unit_price_minor` and no currency; v2 prices every item as
//! `{amount_minor, currency}` and records the order `total`. v1 bodies get
//! the configured default currency (EUR unless configured otherwise).

use crate::domain::{DecodeError, OrderEvent};
use serde_json::{json, Value};

/// Currency assumed for v1 events that carried none.
pub const DEFAULT_V1_CURRENCY: &str = "EUR";

/// Rewrites `payload` from `version` to the current schema version of
/// `event_type`. Returns the new version and body.
pub fn upcast(
    event_type: &str,
    version: i32,
    payload: Value,
    default_currency: &str,
) -> Result<(i32, Value), DecodeError> {
    let current = current_version(event_type);
    if version > current {
        return Err(DecodeError::FutureVersion { event_type: event_type.to_string(), version, supported: current });
    }
    let mut v = version;
    let mut body = payload;
    while v < current {
        body = match (event_type, v) {
            (OrderEvent::CREATED, 1) => order_created_v1_to_v2(body, default_currency)?,
            _ => {
                return Err(DecodeError::Body {
                    event_type: event_type.to_string(),
                    message: format!("no upcaster from version {v}"),
                })
            }
        };
        v += 1;
    }
    Ok((v, body))
}

/// Current schema version of any known event type (1 if unknown).
pub fn current_version(event_type: &str) -> i32 {
    use crate::domain::DomainEvent;
    if event_type.starts_with("Order") {
        crate::domain::OrderEvent::schema_version(event_type)
    } else {
        crate::domain::CustomerEvent::schema_version(event_type)
    }
}

fn order_created_v1_to_v2(mut body: Value, currency: &str) -> Result<Value, DecodeError> {
    let err = |m: &str| DecodeError::Body { event_type: OrderEvent::CREATED.into(), message: format!("v1 body: {m}") };
    let items = body.get_mut("items").and_then(Value::as_array_mut).ok_or_else(|| err("missing items"))?;
    let mut total: i64 = 0;
    for item in items.iter_mut() {
        let obj = item.as_object_mut().ok_or_else(|| err("item is not an object"))?;
        let price =
            obj.remove("unit_price_minor").and_then(|p| p.as_i64()).ok_or_else(|| err("missing unit_price_minor"))?;
        let qty = obj.get("quantity").and_then(Value::as_i64).ok_or_else(|| err("missing quantity"))?;
        total = price.checked_mul(qty).and_then(|l| total.checked_add(l)).ok_or_else(|| err("total overflows"))?;
        obj.insert("unit_price".into(), json!({ "amount_minor": price, "currency": currency }));
    }
    let obj = body.as_object_mut().ok_or_else(|| err("not an object"))?;
    obj.insert("total".into(), json!({ "amount_minor": total, "currency": currency }));
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DomainEvent, OrderEvent};

    #[test]
    fn v1_order_created_becomes_v2() {
        let v1 = json!({"customer_id": "00000000-0000-0000-0000-000000000007",
                        "items": [{"sku": "A", "quantity": 2, "unit_price_minor": 150}]});
        let (v, body) = upcast("OrderCreated", 1, v1, "EUR").unwrap();
        assert_eq!(v, 2);
        let OrderEvent::Created(e) = OrderEvent::from_payload("OrderCreated", body).unwrap() else { panic!() };
        assert_eq!(e.items[0].unit_price.currency.as_str(), "EUR");
        assert_eq!(e.total.amount_minor, 300);
    }

    /// The v1 step computes the total from the raw values; a bad price or
    /// quantity is then refused by the decode (an error, never a panic).
    #[test]
    fn v1_bodies_with_invalid_values_are_refused() {
        for (quantity, price) in [(2, -5), (0, 150), (-1, 150), (2, i64::MAX)] {
            let v1 = json!({"customer_id": "00000000-0000-0000-0000-000000000007",
                            "items": [{"sku": "A", "quantity": quantity, "unit_price_minor": price}]});
            let decoded = upcast("OrderCreated", 1, v1, "EUR")
                .and_then(|(_, body)| OrderEvent::from_payload("OrderCreated", body));
            assert!(decoded.is_err(), "quantity {quantity}, price {price}: {decoded:?}");
        }
    }

    #[test]
    fn current_versions_pass_through_and_future_is_refused() {
        let body = json!({"reason": "x"});
        assert_eq!(upcast("OrderCancelled", 1, body.clone(), "EUR").unwrap(), (1, body.clone()));
        assert!(matches!(upcast("OrderCancelled", 9, body, "EUR"), Err(DecodeError::FutureVersion { .. })));
        assert!(upcast("OrderCreated", 1, json!({"items": 3}), "EUR").is_err());
    }
}
