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

    fn creates(cmd: &OrderCommand) -> bool {
        matches!(cmd, OrderCommand::Create { .. })
    }

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

/// Checks the order-level rules on items and returns the order total. An
/// error about one item is a [`DomainError::Item`] with its index.
pub fn validate_items(items: &[OrderItem]) -> Result<Money, DomainError> {
    let first = items.first().ok_or(DomainError::EmptyOrder)?;
    if items.len() > MAX_ITEMS {
        return Err(DomainError::TooManyItems { max: MAX_ITEMS, got: items.len() });
    }
    let currency = first.unit_price.currency;
    if !super::iso4217::is_iso_4217(currency.as_str()) {
        return Err(DomainError::UnknownCurrency(currency.to_string()).at_item(0));
    }
    let mut seen = HashSet::with_capacity(items.len());
    let mut total: i64 = 0;
    for (i, item) in items.iter().enumerate() {
        // Re-checked here because the fields are public.
        let item = OrderItem::new(item.sku.clone(), item.quantity as i64, item.unit_price).map_err(|e| e.at_item(i))?;
        if item.unit_price.currency != currency {
            return Err(DomainError::CurrencyMismatch {
                first: currency.to_string(),
                second: item.unit_price.currency.to_string(),
            }
            .at_item(i));
        }
        if !seen.insert(item.sku.clone()) {
            return Err(DomainError::DuplicateSku { sku: item.sku.to_string() }.at_item(i));
        }
        total = item
            .line_total()
            .and_then(|l| total.checked_add(l))
            .ok_or_else(|| DomainError::TotalOverflow.at_item(i))?;
    }
    Ok(Money { amount_minor: total, currency })
}

/// Trims a free-text field and enforces non-empty, no control characters
/// (terminal escapes, bells, a trailing newline: anywhere in the text as
/// given, whatever the entry point, so the CLI and the HTTP API refuse the
/// same texts) and `MAX_TEXT`.
pub(crate) fn text(field: &'static str, s: &str) -> Result<String, DomainError> {
    bounded_text(field, s, MAX_TEXT)
}

/// [`text`] with its own length limit `max` (characters, after trimming).
pub(crate) fn bounded_text(field: &'static str, s: &str, max: usize) -> Result<String, DomainError> {
    if s.chars().any(char::is_control) {
        return Err(DomainError::ControlCharacters { field });
    }
    let t = s.trim();
    if t.chars().all(invisible) {
        return Err(DomainError::Blank { field });
    }
    if t.chars().count() > max {
        return Err(DomainError::TooLong { field, max });
    }
    Ok(t.to_string())
}

/// Whitespace, or a format character that shows nothing on its own (zero
/// widths, joiners, bidi marks, soft hyphen, byte-order mark, the braille
/// blank, musical formatting, tag characters and variation selectors): a text made
/// only of these reads as empty wherever it is shown.
fn invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}' | '\u{FFA0}' | '\u{2800}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}')
}

#[cfg(test)]
#[path = "order_tests.rs"]
mod tests;
