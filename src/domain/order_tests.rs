//! Tests of the Order aggregate (`domain::order`): every command in every
//! state, payload round trips, messages.

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
    assert_eq!(
        o.handle(&create_with(vec![zero])),
        Err(DomainError::InvalidQuantity { sku: "A".into(), quantity: 0 }.at_item(0))
    );
    assert_eq!(
        o.handle(&create_with(vec![item("A", 1, 1), item("A", 2, 1)])),
        Err(DomainError::DuplicateSku { sku: "A".into() }.at_item(1))
    );
    let mut usd = item("B", 1, 1);
    usd.unit_price.currency = Currency::new("USD").unwrap();
    assert_eq!(
        o.handle(&create_with(vec![item("A", 1, 1), usd])),
        Err(DomainError::CurrencyMismatch { first: "EUR".into(), second: "USD".into() }.at_item(1))
    );
    let many: Vec<_> = (0..=MAX_ITEMS).map(|i| item(&format!("S{i}"), 1, 1)).collect();
    assert!(matches!(o.handle(&create_with(many)), Err(DomainError::TooManyItems { .. })));
    let huge = item("H", u32::MAX as i64, crate::domain::values::MAX_UNIT_PRICE_MINOR);
    let huge2 = item("I", u32::MAX as i64, crate::domain::values::MAX_UNIT_PRICE_MINOR);
    assert_eq!(o.handle(&create_with(vec![huge, huge2])), Err(DomainError::TotalOverflow.at_item(0)));
}

/// Review finding: an item rule broken by the order as a whole (mixed
/// currencies, a repeated SKU, an unknown currency, an overflowing total)
/// did not say which item; the error now carries its index, and the field
/// stays the template the HTTP layer fills in.
#[test]
fn an_item_rule_names_the_offending_item() {
    let o = Order::default();
    let create_with = |items| OrderCommand::Create { customer_id: customer(), items };
    let priced = |sku: &str, currency: &str| {
        let mut i = item(sku, 1, 1);
        i.unit_price.currency = Currency::new(currency).unwrap();
        i
    };
    let cases = [
        (vec![item("A", 1, 1), item("B", 1, 1), priced("C", "USD")], 2, "items[].unit_price.currency"),
        (vec![item("A", 1, 1), item("B", 1, 1), item("C", 1, 1), item("B", 3, 1)], 3, "items[].sku"),
        (vec![priced("A", "ZZZ"), priced("B", "ZZZ")], 0, "items[].unit_price.currency"),
        (vec![item("A", 1, 1), priced("B", "ZZZ")], 1, "items[].unit_price.currency"),
    ];
    for (items, index, field) in cases {
        let e = o.handle(&create_with(items.clone())).unwrap_err();
        assert_eq!((e.item_index(), e.field(), e.kind()), (Some(index), Some(field), "validation"), "{items:?}: {e}");
        assert!(e.to_string().starts_with(&format!("items[{index}]: ")), "{e}");
    }
    // The sum overflows at the third item (each line fits).
    let big = |sku: &str| item(sku, 4_000_000, crate::domain::values::MAX_UNIT_PRICE_MINOR);
    let e = o.handle(&create_with(vec![big("A"), big("B"), big("C")])).unwrap_err();
    assert_eq!(e, DomainError::TotalOverflow.at_item(2));
    assert_eq!(e.field(), Some("items[].unit_price.amount_minor"));
    // The same on a change of items.
    let created = given(&[create()]);
    let e = created.handle(&OrderCommand::UpdateItems { items: vec![item("A", 1, 1), item("A", 1, 1)] }).unwrap_err();
    assert_eq!((e.item_index(), e.field()), (Some(1), Some("items[].sku")));
    // Order-level errors name no item.
    assert_eq!(DomainError::EmptyOrder.item_index(), None);
    assert_eq!(DomainError::TooManyItems { max: 1, got: 2 }.field(), Some("items"));
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
    let escape = OrderCommand::Ship { tracking_number: "T\u{1b}[31mRED".into(), carrier: "DHL".into() };
    assert_eq!(confirmed.handle(&escape), Err(DomainError::ControlCharacters { field: "tracking_number" }));
    let bell = OrderCommand::Ship { tracking_number: "T1".into(), carrier: "D\u{7}HL".into() };
    assert_eq!(confirmed.handle(&bell), Err(DomainError::ControlCharacters { field: "carrier" }));
    // Review finding: the trim came first, so the CLI took "DHL\n" (a
    // shell's trailing newline) that the HTTP API refuses: a control
    // character is refused wherever it stands, before the trim.
    for edge in ["DHL\n", "\tDHL", "\r\nDHL"] {
        let ship = OrderCommand::Ship { tracking_number: "T1".into(), carrier: edge.into() };
        assert_eq!(confirmed.handle(&ship), Err(DomainError::ControlCharacters { field: "carrier" }), "{edge:?}");
    }
    // Review finding: a text of zero-width or byte-order marks only is blank
    // (it is stored and shown as nothing); one visible character is enough.
    for invisible in
        ["\u{200b}", " \u{feff} ", "\u{200d}\u{2060}\u{00ad}", "\u{202e}\u{200f}", "\u{e0020}", "\u{2800}", "\u{e0100}"]
    {
        let cancel = OrderCommand::Cancel { reason: invisible.into() };
        assert_eq!(confirmed.handle(&cancel), Err(DomainError::Blank { field: "reason" }), "{invisible:?}");
    }
    assert!(confirmed.handle(&OrderCommand::Cancel { reason: "\u{200b}x".into() }).is_ok());
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
    assert_eq!(OrderEvent::from_payload("Nope", serde_json::json!({})), Err(DecodeError::UnknownType("Nope".into())));
    assert!(OrderEvent::from_payload("OrderShipped", serde_json::json!({"carrier": 1})).is_err());
}

#[test]
fn messages_read_well() {
    let e = DomainError::InvalidTransition { action: "ship", status: OrderStatus::Created };
    assert_eq!(e.to_string(), "cannot ship an order that is created");
    assert_eq!(
        DomainError::InvalidQuantity { sku: "A".into(), quantity: 0 }.to_string(),
        "item `A`: quantity must be between 1 and 4294967295, got 0"
    );
}

#[test]
fn a_currency_outside_iso_4217_is_refused_by_a_command_but_still_decodes() {
    let zzz = crate::domain::Currency::new("ZZZ").unwrap();
    let bad = OrderItem::new(Sku::new("A").unwrap(), 1, Money::new(100, zzz).unwrap()).unwrap();
    let cmd = OrderCommand::Create { customer_id: Uuid::from_u128(1), items: vec![bad.clone()] };
    assert_eq!(Order::default().handle(&cmd), Err(DomainError::UnknownCurrency("ZZZ".into()).at_item(0)));
    assert_eq!(DomainError::UnknownCurrency("ZZZ".into()).field(), Some("items[].unit_price.currency"));
    // A stored event with such a code (written before this check) still decodes.
    let json = serde_json::to_value(&bad).unwrap();
    assert_eq!(serde_json::from_value::<OrderItem>(json).unwrap(), bad);
}

/// Review finding: `Money` and `OrderItem` derived `Deserialize`, so a stored
/// `OrderCreated` with a negative price, a negative total or a zero quantity
/// decoded. Each is now a decode error naming the value; a total above one
/// unit price's limit (a valid order) still decodes.
#[test]
fn stored_bodies_with_invalid_values_do_not_decode() {
    let body = |quantity: i64, price: i64, total: i64| {
        serde_json::json!({
            "customer_id": customer(),
            "items": [{"sku": "A", "quantity": quantity, "unit_price": {"amount_minor": price, "currency": "EUR"}}],
            "total": {"amount_minor": total, "currency": "EUR"},
        })
    };
    for (q, p, t, what) in [(1, -5, 0, "-5"), (1, 5, -5, "-5"), (0, 5, 0, "quantity")] {
        let Err(DecodeError::Body { event_type, message }) = OrderEvent::from_payload("OrderCreated", body(q, p, t))
        else {
            panic!("quantity {q}, price {p}, total {t} decoded")
        };
        assert_eq!(event_type, "OrderCreated");
        assert!(message.contains(what), "{message}");
    }
    let big = crate::domain::values::MAX_UNIT_PRICE_MINOR;
    let Ok(OrderEvent::Created(e)) = OrderEvent::from_payload("OrderCreated", body(3, big, 3 * big)) else {
        panic!("a valid order with a large total is refused")
    };
    assert_eq!(e.total.amount_minor, 3 * big);
}
