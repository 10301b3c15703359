//! Value objects: `Sku`, `Currency`, `Money`, `OrderItem`, `Email`, `PhoneNumber`.
//!
//! Guarantee: a value object exists only in a valid state. Constructors
//! validate and return a `DomainError`; deserialisation goes through the same
//! constructors, so an invalid value can't enter from JSON either.

use crate::domain::DomainError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest unit price accepted, in minor units (10^12, i.e. 10 billion EUR).
pub const MAX_UNIT_PRICE_MINOR: i64 = 1_000_000_000_000;

/// A stock keeping unit: 1..=64 chars of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    pub fn new(s: impl Into<String>) -> Result<Self, DomainError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(Sku(s))
        } else {
            Err(DomainError::InvalidSku(truncate(&s)))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Sku {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Sku::new(s)
    }
}
impl From<Sku> for String {
    fn from(s: Sku) -> String {
        s.0
    }
}
impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ISO 4217 style currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn new(s: &str) -> Result<Self, DomainError> {
        let b = s.as_bytes();
        if b.len() == 3 && b.iter().all(|c| c.is_ascii_uppercase()) {
            Ok(Currency([b[0], b[1], b[2]]))
        } else {
            Err(DomainError::InvalidCurrency(truncate(s)))
        }
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}
impl TryFrom<String> for Currency {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Currency::new(&s)
    }
}
impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_string()
    }
}
impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount in minor units (cents) of one currency.
///
/// Deserialised through [`Money::amount`]: never negative. A unit price
/// (within an [`OrderItem`]) is further checked by [`Money::new`]; an order
/// total may be larger than one unit price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MoneyFields")]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    /// A unit price: `0..=MAX_UNIT_PRICE_MINOR` minor units.
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, DomainError> {
        if !(0..=MAX_UNIT_PRICE_MINOR).contains(&amount_minor) {
            return Err(DomainError::InvalidPrice(amount_minor));
        }
        Ok(Money { amount_minor, currency })
    }

    /// Any amount that is not negative (an order total: up to `i64::MAX`).
    pub fn amount(amount_minor: i64, currency: Currency) -> Result<Self, DomainError> {
        if amount_minor < 0 {
            return Err(DomainError::NegativeAmount(amount_minor));
        }
        Ok(Money { amount_minor, currency })
    }
}

/// `Money`'s wire shape, before validation.
#[derive(Deserialize)]
struct MoneyFields {
    amount_minor: i64,
    currency: Currency,
}

impl TryFrom<MoneyFields> for Money {
    type Error = DomainError;
    fn try_from(m: MoneyFields) -> Result<Self, Self::Error> {
        Money::amount(m.amount_minor, m.currency)
    }
}

/// One line of an order. Deserialised through [`OrderItem::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "OrderItemFields")]
pub struct OrderItem {
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price: Money,
}

/// `OrderItem`'s wire shape, before validation.
#[derive(Deserialize)]
struct OrderItemFields {
    sku: Sku,
    quantity: i64,
    unit_price: Money,
}

impl TryFrom<OrderItemFields> for OrderItem {
    type Error = DomainError;
    fn try_from(i: OrderItemFields) -> Result<Self, Self::Error> {
        OrderItem::new(i.sku, i.quantity, i.unit_price)
    }
}

impl OrderItem {
    /// Validates quantity (1 to `u32::MAX`) and price; `sku` and `currency` are already valid.
    pub fn new(sku: Sku, quantity: i64, unit_price: Money) -> Result<Self, DomainError> {
        if quantity <= 0 || quantity > u32::MAX as i64 {
            return Err(DomainError::InvalidQuantity { sku: sku.0, quantity });
        }
        let unit_price = Money::new(unit_price.amount_minor, unit_price.currency)?;
        Ok(OrderItem { sku, quantity: quantity as u32, unit_price })
    }

    pub fn line_total(&self) -> Option<i64> {
        self.unit_price.amount_minor.checked_mul(self.quantity as i64)
    }
}

/// An email address, normalised to a lower-case domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn new(s: &str) -> Result<Self, DomainError> {
        // A control character anywhere (a trailing newline too) is refused
        // before the trim, as every text field is (`order::text`).
        if s.chars().any(char::is_control) {
            return Err(DomainError::InvalidEmail(truncate(s)));
        }
        let s = s.trim();
        let bad = || DomainError::InvalidEmail(truncate(s));
        if s.len() > 254 || s.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
        let local_ok = local.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        if !local_ok
            || local.is_empty()
            || local.len() > 64
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
        {
            return Err(bad());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err(bad());
        }
        for l in &labels {
            let ok = !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(bad());
            }
        }
        if !labels.last().is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())) {
            return Err(bad());
        }
        Ok(Email(format!("{local}@{}", domain.to_ascii_lowercase())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for Email {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Email::new(&s)
    }
}
impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}
impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A phone number in E.164 form (`+` and 8 to 15 digits); spaces, dashes,
/// dots and parentheses in the input are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn new(s: &str) -> Result<Self, DomainError> {
        let bad = || DomainError::InvalidPhone(truncate(s));
        if s.chars().any(char::is_control) {
            return Err(bad());
        }
        let t = s.trim();
        let rest = t.strip_prefix('+').ok_or_else(bad)?;
        let mut digits = String::with_capacity(16);
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return Err(bad()),
            }
        }
        if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
            return Err(bad());
        }
        Ok(PhoneNumber(format!("+{digits}")))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for PhoneNumber {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PhoneNumber::new(&s)
    }
}
impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> String {
        p.0
    }
}

/// Keeps error messages one line and bounded even for hostile input.
pub(crate) fn truncate(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(80).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@Example.COM", "x_y@sub.domain.org"] {
            assert!(Email::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(Email::new("A@Example.COM").unwrap().as_str(), "A@example.com");
        for bad in [
            "",
            "a",
            "a@",
            "@b.co",
            "a@b",
            "a b@c.de",
            "a@@b.co",
            "a@b..co",
            "a@-b.co",
            "a@b.c0",
            ".a@b.co",
            "a..b@c.de",
            "ä@b.co\n",
            "a@b.co\n",
            "\ta@b.co",
        ] {
            assert!(matches!(Email::new(bad), Err(DomainError::InvalidEmail(_))), "{bad:?} accepted");
        }
        assert!(Email::new(&format!("{}@b.co", "a".repeat(65))).is_err());
    }

    #[test]
    fn phones() {
        assert_eq!(PhoneNumber::new("+49 151 1234-5678").unwrap().as_str(), "+4915112345678");
        for bad in
            ["", "4915112345678", "+12", "+0123456789", "+1234567890123456", "+49abc12345678", "+4915112345678\n"]
        {
            assert!(PhoneNumber::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn skus_currencies_money() {
        assert!(Sku::new("ABC-1_2.3").is_ok());
        assert!(Sku::new("").is_err());
        assert!(Sku::new("a b").is_err());
        assert!(Sku::new("x".repeat(65)).is_err());
        assert!(Currency::new("EUR").is_ok());
        for bad in ["eur", "EU", "EURO", "€€€"] {
            assert!(Currency::new(bad).is_err(), "{bad}");
        }
        let eur = Currency::new("EUR").unwrap();
        assert!(Money::new(-1, eur).is_err());
        assert!(Money::new(MAX_UNIT_PRICE_MINOR + 1, eur).is_err());
        assert!(OrderItem::new(Sku::new("A").unwrap(), 0, Money::new(1, eur).unwrap()).is_err());
        assert!(OrderItem::new(Sku::new("A").unwrap(), -3, Money::new(1, eur).unwrap()).is_err());
    }

    #[test]
    fn deserialisation_validates() {
        assert!(serde_json::from_str::<Email>("\"nope\"").is_err());
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
        let e: Email = serde_json::from_str("\"a@b.co\"").unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"a@b.co\"");
    }

    /// Review finding: `Money` and `OrderItem` derived `Deserialize`, so a
    /// stored body with a negative amount or a zero quantity decoded.
    #[test]
    fn money_and_items_deserialise_through_their_constructors() {
        let money = |amount: i64| serde_json::json!({"amount_minor": amount, "currency": "EUR"});
        let item = |quantity: i64, amount: i64| serde_json::json!({"sku": "A", "quantity": quantity, "unit_price": money(amount)});
        let err = serde_json::from_value::<Money>(money(-5)).unwrap_err().to_string();
        assert!(err.contains("-5"), "{err}");
        assert!(serde_json::from_value::<Money>(serde_json::json!({"amount_minor": 1, "currency": "eur"})).is_err());
        for (q, a) in [(0, 100), (-1, 100), (u32::MAX as i64 + 1, 100), (1, -5), (1, MAX_UNIT_PRICE_MINOR + 1)] {
            assert!(serde_json::from_value::<OrderItem>(item(q, a)).is_err(), "quantity {q}, price {a} decoded");
        }
        // Valid values keep their wire format, and a total may exceed one unit price.
        let eur = Currency::new("EUR").unwrap();
        let ok = OrderItem::new(Sku::new("A").unwrap(), 2, Money::new(150, eur).unwrap()).unwrap();
        assert_eq!(serde_json::to_value(&ok).unwrap(), item(2, 150));
        assert_eq!(serde_json::from_value::<OrderItem>(item(2, 150)).unwrap(), ok);
        let total = Money::amount(3 * MAX_UNIT_PRICE_MINOR, eur).unwrap();
        assert_eq!(serde_json::to_value(total).unwrap(), money(3 * MAX_UNIT_PRICE_MINOR));
        assert_eq!(serde_json::from_value::<Money>(money(3 * MAX_UNIT_PRICE_MINOR)).unwrap(), total);
    }

    #[test]
    fn truncate_is_bounded() {
        let long = "x".repeat(10_000);
        assert!(truncate(&long).chars().count() <= 81);
    }
}
