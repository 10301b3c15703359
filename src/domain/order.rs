//! The Order aggregate: commands, events, state and the lifecycle rules.
//!
//! Lifecycle: (new) -Create-> Created -Confirm-> Confirmed -Ship-> Shipped
//! -Deliver-> Delivered; Cancel from Created or Confirmed; items change only
//! while Created. Guarantee: `handle` never mutates and rejects every
//! transition outside that graph with a typed `DomainError`; `apply` is total.

use crate::domain::{decode, Aggregate, DecodeError, DomainError, DomainEvent, Money, OrderItem};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use uuid::Uuid;

/// Most items one order may hold.
pub const MAX_ITEMS: usize = 100;
/// Longest free-text field (tracking number, carrier, signature, reason).
pub const MAX_TEXT: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// No OrderCreated yet: the order does not exist.
    #[default]
    New,
    Created,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::New => "new",
            OrderStatus::Created => "created",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    Create { customer_id: Uuid, items: Vec<OrderItem> },
    UpdateItems { items: Vec<OrderItem> },
    Confirm,
    Ship { tracking_number: String, carrier: String },
    Deliver { signature: String },
    Cancel { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub customer_id: Uuid,
    pub items: Vec<OrderItem>,
    pub total: Money,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItemsUpdated {
    pub items: Vec<OrderItem>,
    pub total: Money,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OrderConfirmed {}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub tracking_number: String,
    pub carrier: String,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDelivered {
    pub signature: String,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Created(OrderCreated),
    ItemsUpdated(OrderItemsUpdated),
    Confirmed(OrderConfirmed),
    Shipped(OrderShipped),
    Delivered(OrderDelivered),
    Cancelled(OrderCancelled),
}

impl OrderEvent {
    // The stored `event_type` names (also the Kafka `ce_type`); `DomainEvent::TYPES` lists them.
    pub const CREATED: &'static str = "OrderCreated";
    pub const ITEMS_UPDATED: &'static str = "OrderItemsUpdated";
    pub const CONFIRMED: &'static str = "OrderConfirmed";
    pub const SHIPPED: &'static str = "OrderShipped";
    pub const DELIVERED: &'static str = "OrderDelivered";
    pub const CANCELLED: &'static str = "OrderCancelled";
}

impl DomainEvent for OrderEvent {
    const TYPES: &'static [&'static str] =
        &[Self::CREATED, Self::ITEMS_UPDATED, Self::CONFIRMED, Self::SHIPPED, Self::DELIVERED, Self::CANCELLED];

    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Created(_) => Self::CREATED,
            OrderEvent::ItemsUpdated(_) => Self::ITEMS_UPDATED,
            OrderEvent::Confirmed(_) => Self::CONFIRMED,
            OrderEvent::Shipped(_) => Self::SHIPPED,
            OrderEvent::Delivered(_) => Self::DELIVERED,
            OrderEvent::Cancelled(_) => Self::CANCELLED,
        }
    }

    fn schema_version(event_type: &str) -> i32 {
        match event_type {
            // v2 added a currency to every price (see domain::upcast).
            Self::CREATED => 2,
            _ => 1,
        }
    }

    fn to_payload(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            OrderEvent::Created(e) => serde_json::to_value(e),
            OrderEvent::ItemsUpdated(e) => serde_json::to_value(e),
            OrderEvent::Confirmed(e) => serde_json::to_value(e),
            OrderEvent::Shipped(e) => serde_json::to_value(e),
            OrderEvent::Delivered(e) => serde_json::to_value(e),
            OrderEvent::Cancelled(e) => serde_json::to_value(e),
        }
    }

    fn from_payload(event_type: &str, v: serde_json::Value) -> Result<Self, DecodeError> {
        Ok(match event_type {
            Self::CREATED => OrderEvent::Created(decode(event_type, v)?),
            Self::ITEMS_UPDATED => OrderEvent::ItemsUpdated(decode(event_type, v)?),
            Self::CONFIRMED => OrderEvent::Confirmed(decode(event_type, v)?),
            Self::SHIPPED => OrderEvent::Shipped(decode(event_type, v)?),
            Self::DELIVERED => OrderEvent::Delivered(decode(event_type, v)?),
            Self::CANCELLED => OrderEvent::Cancelled(decode(event_type, v)?),
            other => return Err(DecodeError::UnknownType(other.to_string())),
        })
    }
}

/// Current state of one order, rebuilt from its events.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub customer_id: Option<Uuid>,
    pub items: Vec<OrderItem>,
    pub total: Option<Money>,
    pub tracking_number: Option<String>,
    pub carrier: Option<String>,
    pub signature: Option<String>,
    pub cancel_reason: Option<String>,
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    const TYPE: &'static str = "order";
    const STATE_SCHEMA: i32 = 1;

    fn handle(&self, cmd: &OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        use OrderStatus::*;
        let s = self.status;
        if s == New && !matches!(cmd, OrderCommand::Create { .. }) {
            return Err(DomainError::OrderNotFound);
        }
        let refuse = |action: &'static str| Err(DomainError::InvalidTransition { action, status: s });
        match cmd {
            OrderCommand::Create { customer_id, items } => {
                if s != New {
                    return Err(DomainError::OrderAlreadyExists);
                }
                let total = validate_items(items)?;
                Ok(vec![OrderEvent::Created(OrderCreated { customer_id: *customer_id, items: items.clone(), total })])
            }
            OrderCommand::UpdateItems { items } => {
                if s != Created {
                    return refuse("change the items of");
                }
                let total = validate_items(items)?;
                if *items == self.items {
                    return Ok(vec![]); // idempotent: nothing changed
                }
                Ok(vec![OrderEvent::ItemsUpdated(OrderItemsUpdated { items: items.clone(), total })])
            }
            OrderCommand::Confirm => match s {
                Created => Ok(vec![OrderEvent::Confirmed(OrderConfirmed {})]),
                _ => refuse("confirm"),
            },
            OrderCommand::Ship { tracking_number, carrier } => {
                if s != Confirmed {
                    return refuse("ship");
                }
                let tracking_number = text("tracking_number", tracking_number)?;
                let carrier = text("carrier", carrier)?;
                Ok(vec![OrderEvent::Shipped(OrderShipped { tracking_number, carrier })])
            }
            OrderCommand::Deliver { signature } => {
                if s != Shipped {
                    return refuse("deliver");
                }
                let signature = text("signature", signature)?;
                Ok(vec![OrderEvent::Delivered(OrderDelivered { signature })])
            }
            OrderCommand::Cancel { reason } => {
                if !matches!(s, Created | Confirmed) {
                    return refuse("cancel");
                }
                let reason = text("reason", reason)?;
                Ok(vec![OrderEvent::Cancelled(OrderCancelled { reason })])
            }
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Created(e) => {
                self.status = OrderStatus::Created;
                self.customer_id = Some(e.customer_id);
                self.items = e.items.clone();
                self.total = Some(e.total);
            }
            OrderEvent::ItemsUpdated(e) => {
                self.items = e.items.clone();
                self.total = Some(e.total);
            }
            OrderEvent::Confirmed(_) => self.status = OrderStatus::Confirmed,
            OrderEvent::Shipped(e) => {
                self.status = OrderStatus::Shipped;
                self.tracking_number = Some(e.tracking_number.clone());
                self.carrier = Some(e.carrier.clone());
            }
            OrderEvent::Delivered(e) => {
                self.status = OrderStatus::Delivered;
                self.signature = Some(e.signature.clone());
            }
            OrderEvent::Cancelled(e) => {
                self.status = OrderStatus::Cancelled;
                self.cancel_reason = Some(e.reason.clone());
            }
        }
    }

    fn exists(&self) -> bool {
        self.status != OrderStatus::New
    }
}

/// Checks the order-level rules on items and returns the order total.
pub fn validate_items(items: &[OrderItem]) -> Result<Money, DomainError> {
    let first = items.first().ok_or(DomainError::EmptyOrder)?;
    if items.len() > MAX_ITEMS {
        return Err(DomainError::TooManyItems { max: MAX_ITEMS, got: items.len() });
    }
    let currency = first.unit_price.currency;
    let mut seen = HashSet::with_capacity(items.len());
    let mut total: i64 = 0;
    for item in items {
        // Re-checked here because the fields are public.
        let item = OrderItem::new(item.sku.clone(), item.quantity as i64, item.unit_price)?;
        if item.unit_price.currency != currency {
            return Err(DomainError::CurrencyMismatch {
                first: currency.to_string(),
                second: item.unit_price.currency.to_string(),
            });
        }
        if !seen.insert(item.sku.clone()) {
            return Err(DomainError::DuplicateSku { sku: item.sku.to_string() });
        }
        total = item.line_total().and_then(|l| total.checked_add(l)).ok_or(DomainError::TotalOverflow)?;
    }
    Ok(Money { amount_minor: total, currency })
}

/// Trims a free-text field and enforces non-empty and `MAX_TEXT`.
pub(crate) fn text(field: &'static str, s: &str) -> Result<String, DomainError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(DomainError::Blank { field });
    }
    if t.chars().count() > MAX_TEXT {
        return Err(DomainError::TooLong { field, max: MAX_TEXT });
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    //! Given/when/then: given past events, when a command, then events or an error.
    use super::*;
    use crate::domain::{Currency, Sku};

    fn item(sku: &str, qty: i64, price: i64) -> OrderItem {
        let eur = Currency::new("EUR").unwrap();
        OrderItem::new(Sku::new(sku).unwrap(), qty, Money::new(price, eur).unwrap()).unwrap()
    }
    fn customer() -> Uuid {
        Uuid::from_u128(7)
    }
    fn create() -> OrderCommand {
        OrderCommand::Create { customer_id: customer(), items: vec![item("A", 2, 500), item("B", 1, 250)] }
    }
    fn given(cmds: &[OrderCommand]) -> Order {
        let mut o = Order::default();
        for c in cmds {
            for e in o.handle(c).expect("given command must be accepted") {
                o.apply(&e);
            }
        }
        o
    }
    fn ship() -> OrderCommand {
        OrderCommand::Ship { tracking_number: "TRK1".into(), carrier: "DHL".into() }
    }
    fn deliver() -> OrderCommand {
        OrderCommand::Deliver { signature: "J. Doe".into() }
    }
    fn cancel() -> OrderCommand {
        OrderCommand::Cancel { reason: "changed mind".into() }
    }
    fn update() -> OrderCommand {
        OrderCommand::UpdateItems { items: vec![item("C", 3, 100)] }
    }
    /// The history that leads to each status.
    fn history(status: OrderStatus) -> Vec<OrderCommand> {
        use OrderStatus::*;
        match status {
            New => vec![],
            Created => vec![create()],
            Confirmed => vec![create(), OrderCommand::Confirm],
            Shipped => vec![create(), OrderCommand::Confirm, ship()],
            Delivered => vec![create(), OrderCommand::Confirm, ship(), deliver()],
            Cancelled => vec![create(), cancel()],
        }
    }

    #[test]
    fn every_command_in_every_state() {
        use OrderStatus::*;
        let states = [New, Created, Confirmed, Shipped, Delivered, Cancelled];
        let commands = [create(), update(), OrderCommand::Confirm, ship(), deliver(), cancel()];
        // (command index, state) pairs that are accepted, with the resulting status.
        let accepted = |ci: usize, s: OrderStatus| -> Option<OrderStatus> {
            match (ci, s) {
                (0, New) => Some(Created),
                (1, Created) => Some(Created),
                (2, Created) => Some(Confirmed),
                (3, Confirmed) => Some(Shipped),
                (4, Shipped) => Some(Delivered),
                (5, Created) | (5, Confirmed) => Some(Cancelled),
                _ => None,
            }
        };
        for s in states {
            let order = given(&history(s));
            assert_eq!(order.status, s);
            for (ci, cmd) in commands.iter().enumerate() {
                let result = order.handle(cmd);
                match accepted(ci, s) {
                    Some(next) => {
                        let events = result.unwrap_or_else(|e| panic!("{cmd:?} in {s} rejected: {e}"));
                        assert_eq!(events.len(), 1, "{cmd:?} in {s}");
                        let mut after = order.clone();
                        after.apply(&events[0]);
                        assert_eq!(after.status, next, "{cmd:?} in {s}");
                    }
                    None => {
                        let err = result.expect_err(&format!("{cmd:?} in {s} must be rejected"));
                        let expected = match (ci, s) {
                            (0, _) => DomainError::OrderAlreadyExists,
                            (_, New) => DomainError::OrderNotFound,
                            (1, _) => DomainError::InvalidTransition { action: "change the items of", status: s },
                            (2, _) => DomainError::InvalidTransition { action: "confirm", status: s },
                            (3, _) => DomainError::InvalidTransition { action: "ship", status: s },
                            (4, _) => DomainError::InvalidTransition { action: "deliver", status: s },
                            _ => DomainError::InvalidTransition { action: "cancel", status: s },
                        };
                        assert_eq!(err, expected, "{cmd:?} in {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn create_records_items_and_total() {
        let events = Order::default().handle(&create()).unwrap();
        let OrderEvent::Created(e) = &events[0] else { panic!("{events:?}") };
        assert_eq!(e.total.amount_minor, 2 * 500 + 250);
        assert_eq!(e.total.currency.as_str(), "EUR");
        assert_eq!(e.customer_id, customer());
    }

    #[test]
    fn create_rejects_bad_items() {
        let o = Order::default();
        let create_with = |items| OrderCommand::Create { customer_id: customer(), items };
        assert_eq!(o.handle(&create_with(vec![])), Err(DomainError::EmptyOrder));
        let mut zero = item("A", 1, 1);
        zero.quantity = 0;
        assert!(matches!(o.handle(&create_with(vec![zero])), Err(DomainError::InvalidQuantity { quantity: 0, .. })));
        assert_eq!(
            o.handle(&create_with(vec![item("A", 1, 1), item("A", 2, 1)])),
            Err(DomainError::DuplicateSku { sku: "A".into() })
        );
        let mut usd = item("B", 1, 1);
        usd.unit_price.currency = Currency::new("USD").unwrap();
        assert!(matches!(
            o.handle(&create_with(vec![item("A", 1, 1), usd])),
            Err(DomainError::CurrencyMismatch { .. })
        ));
        let many: Vec<_> = (0..=MAX_ITEMS).map(|i| item(&format!("S{i}"), 1, 1)).collect();
        assert!(matches!(o.handle(&create_with(many)), Err(DomainError::TooManyItems { .. })));
        let huge = item("H", u32::MAX as i64, crate::domain::values::MAX_UNIT_PRICE_MINOR);
        let huge2 = item("I", u32::MAX as i64, crate::domain::values::MAX_UNIT_PRICE_MINOR);
        assert_eq!(o.handle(&create_with(vec![huge, huge2])), Err(DomainError::TotalOverflow));
    }

    #[test]
    fn update_items_validates_and_is_idempotent() {
        let o = given(&[create()]);
        assert_eq!(o.handle(&OrderCommand::UpdateItems { items: vec![] }), Err(DomainError::EmptyOrder));
        let same = OrderCommand::UpdateItems { items: o.items.clone() };
        assert_eq!(o.handle(&same), Ok(vec![]));
        let after = given(&[create(), update()]);
        assert_eq!(after.items, vec![item("C", 3, 100)]);
        assert_eq!(after.total.unwrap().amount_minor, 300);
    }

    #[test]
    fn text_fields_are_required_and_bounded() {
        let confirmed = given(&[create(), OrderCommand::Confirm]);
        let blank = OrderCommand::Ship { tracking_number: "  ".into(), carrier: "DHL".into() };
        assert_eq!(confirmed.handle(&blank), Err(DomainError::Blank { field: "tracking_number" }));
        let blank = OrderCommand::Ship { tracking_number: "T".into(), carrier: "".into() };
        assert_eq!(confirmed.handle(&blank), Err(DomainError::Blank { field: "carrier" }));
        let long = OrderCommand::Cancel { reason: "x".repeat(MAX_TEXT + 1) };
        assert_eq!(confirmed.handle(&long), Err(DomainError::TooLong { field: "reason", max: MAX_TEXT }));
        let shipped = given(&[create(), OrderCommand::Confirm, ship()]);
        assert_eq!(
            shipped.handle(&OrderCommand::Deliver { signature: "".into() }),
            Err(DomainError::Blank { field: "signature" })
        );
    }

    #[test]
    fn full_lifecycle_state() {
        let o = given(&history(OrderStatus::Delivered));
        assert_eq!(o.tracking_number.as_deref(), Some("TRK1"));
        assert_eq!(o.carrier.as_deref(), Some("DHL"));
        assert_eq!(o.signature.as_deref(), Some("J. Doe"));
        let c = given(&history(OrderStatus::Cancelled));
        assert_eq!(c.cancel_reason.as_deref(), Some("changed mind"));
    }

    #[test]
    fn payload_round_trip_for_every_event() {
        let mut o = Order::default();
        let mut all = vec![];
        for c in history(OrderStatus::Delivered).into_iter().chain([]) {
            for e in o.handle(&c).unwrap() {
                o.apply(&e);
                all.push(e);
            }
        }
        all.push(OrderEvent::Cancelled(OrderCancelled { reason: "r".into() }));
        all.push(OrderEvent::ItemsUpdated(OrderItemsUpdated {
            items: vec![item("Z", 1, 1)],
            total: item("Z", 1, 1).unit_price,
        }));
        let mut seen = std::collections::BTreeSet::new();
        for e in all {
            let v = e.to_payload().unwrap();
            assert!(OrderEvent::TYPES.contains(&e.event_type()), "{} missing from TYPES", e.event_type());
            seen.insert(e.event_type());
            assert_eq!(OrderEvent::from_payload(e.event_type(), v).unwrap(), e);
        }
        assert_eq!(seen.len(), OrderEvent::TYPES.len(), "every listed type is written by some event");
        assert_eq!(
            OrderEvent::from_payload("Nope", serde_json::json!({})),
            Err(DecodeError::UnknownType("Nope".into()))
        );
        assert!(OrderEvent::from_payload("OrderShipped", serde_json::json!({"carrier": 1})).is_err());
    }

    #[test]
    fn messages_read_well() {
        let e = DomainError::InvalidTransition { action: "ship", status: OrderStatus::Created };
        assert_eq!(e.to_string(), "cannot ship an order that is created");
        assert_eq!(
            DomainError::InvalidQuantity { sku: "A".into(), quantity: 0 }.to_string(),
            "item `A`: quantity must be greater than 0, got 0"
        );
    }
}
