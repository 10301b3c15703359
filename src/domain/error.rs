//! `DomainError`: every way a command can be refused by business rules.
//!
//! Guarantee: each variant names what was wrong in words a person
//! understands, and `field()` names the input field at fault where there is one,
//! so the HTTP layer can answer 422 naming it. A rule about one item of an
//! order (`Item`) carries that item's index, so the exact path
//! (`items[2].unit_price.currency`) can be given. Infrastructure failures
//! never appear here (see `store::StoreError`).

use crate::domain::order::OrderStatus;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("order already exists")]
    OrderAlreadyExists,
    #[error("order does not exist")]
    OrderNotFound,
    #[error("an order needs at least one item")]
    EmptyOrder,
    #[error("an order may have at most {max} items, got {got}")]
    TooManyItems { max: usize, got: usize },
    #[error("item `{sku}`: quantity must be between 1 and 4294967295, got {quantity}")]
    InvalidQuantity { sku: String, quantity: i64 },
    #[error("item `{sku}` appears more than once")]
    DuplicateSku { sku: String },
    #[error("invalid sku {0:?}: 1 to 64 characters of letters, digits, '-', '_' or '.'")]
    InvalidSku(String),
    #[error("invalid unit price {0}: must be between 0 and 1000000000000 minor units")]
    InvalidPrice(i64),
    /// An amount (e.g. a stored order total) below 0.
    #[error("invalid amount {0}: must not be negative")]
    NegativeAmount(i64),
    #[error("invalid currency {0:?}: expected a three-letter ISO 4217 code such as EUR")]
    InvalidCurrency(String),
    #[error("unknown currency {0:?}: not an ISO 4217 code")]
    UnknownCurrency(String),
    #[error("all items must use one currency, found {first} and {second}")]
    CurrencyMismatch { first: String, second: String },
    #[error("order total overflows")]
    TotalOverflow,
    /// `error` is about the item at `index` (0-based) of the command's items.
    #[error("items[{index}]: {error}")]
    Item { index: usize, error: Box<DomainError> },
    #[error("cannot {action} an order that is {status}")]
    InvalidTransition { action: &'static str, status: OrderStatus },
    #[error("{field} must not be empty")]
    Blank { field: &'static str },
    #[error("{field} is too long: at most {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} must not contain control characters")]
    ControlCharacters { field: &'static str },
    #[error("invalid email address {0:?}")]
    InvalidEmail(String),
    #[error("invalid phone number {0:?}: expected international format such as +4915112345678")]
    InvalidPhone(String),
    #[error("customer already exists")]
    CustomerAlreadyExists,
    #[error("customer does not exist")]
    CustomerNotFound,
}

impl DomainError {
    /// Stable machine-readable kind, used as the `error` field of API errors.
    pub fn kind(&self) -> &'static str {
        match self {
            DomainError::OrderNotFound | DomainError::CustomerNotFound => "not_found",
            DomainError::OrderAlreadyExists | DomainError::CustomerAlreadyExists => "already_exists",
            DomainError::InvalidTransition { .. } => "invalid_state",
            DomainError::Item { error, .. } => error.kind(),
            _ => "validation",
        }
    }

    /// The input field at fault, if the error is about one. An item field
    /// is a template, `items[].quantity`; [`item_index`](Self::item_index)
    /// says which item, when known.
    pub fn field(&self) -> Option<&'static str> {
        Some(match self {
            DomainError::EmptyOrder | DomainError::TooManyItems { .. } => "items",
            DomainError::InvalidQuantity { .. } => "items[].quantity",
            DomainError::InvalidSku(_) | DomainError::DuplicateSku { .. } => "items[].sku",
            DomainError::InvalidPrice(_) | DomainError::TotalOverflow => "items[].unit_price.amount_minor",
            DomainError::InvalidCurrency(_)
            | DomainError::UnknownCurrency(_)
            | DomainError::CurrencyMismatch { .. } => "items[].unit_price.currency",
            DomainError::Blank { field }
            | DomainError::TooLong { field, .. }
            | DomainError::ControlCharacters { field } => field,
            DomainError::InvalidEmail(_) => "email",
            DomainError::InvalidPhone(_) => "phone",
            DomainError::Item { error, .. } => return error.field(),
            _ => return None,
        })
    }

    /// The index of the item at fault, for an error about one item.
    pub fn item_index(&self) -> Option<usize> {
        match self {
            DomainError::Item { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// `self` as the error of the item at `index`.
    pub fn at_item(self, index: usize) -> DomainError {
        DomainError::Item { index, error: Box::new(self) }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, DomainError::OrderNotFound | DomainError::CustomerNotFound)
    }
}
