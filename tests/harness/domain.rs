//! Domain workloads for library-level tests: order lifecycles, customers,
//! hand-built envelopes with chosen sequences.

use uuid::Uuid;

use outboxd::app::CommandService;
use outboxd::domain::{Currency, Customer, CustomerCommand, Email, Money, Order, OrderCommand, OrderItem, Sku};
use outboxd::envelope::Metadata;

pub fn sample_items(i: usize, n: usize) -> Vec<OrderItem> {
    let eur = Currency::new("EUR").unwrap();
    (0..n)
        .map(|k| {
            OrderItem::new(
                Sku::new(format!("SKU-{i}-{k}")).unwrap(),
                1 + k as i64,
                Money::new(999 + k as i64, eur).unwrap(),
            )
            .unwrap()
        })
        .collect()
}

/// Runs one order through its whole lifecycle (5 events) or a cancel (3 events).
pub async fn order_lifecycle(svc: &CommandService, i: usize) -> Uuid {
    let id = Uuid::now_v7();
    let meta = Metadata::default();
    let customer = Uuid::from_u128(i as u128 % 17);
    svc.execute::<Order>(
        id,
        &OrderCommand::Create { customer_id: customer, items: sample_items(i, 2) },
        meta.clone(),
        None,
    )
    .await
    .unwrap();
    svc.execute::<Order>(id, &OrderCommand::UpdateItems { items: sample_items(i, 3) }, meta.clone(), None)
        .await
        .unwrap();
    if i % 4 == 3 {
        svc.execute::<Order>(id, &OrderCommand::Cancel { reason: "customer asked".into() }, meta.clone(), None)
            .await
            .unwrap();
        return id;
    }
    svc.execute::<Order>(id, &OrderCommand::Confirm, meta.clone(), None).await.unwrap();
    svc.execute::<Order>(
        id,
        &OrderCommand::Ship { tracking_number: format!("TRK{i}"), carrier: "DHL".into() },
        meta.clone(),
        None,
    )
    .await
    .unwrap();
    svc.execute::<Order>(id, &OrderCommand::Deliver { signature: "J. Doe".into() }, meta.clone(), None).await.unwrap();
    id
}

pub async fn register_customer(svc: &CommandService, i: usize) -> Uuid {
    let id = Uuid::now_v7();
    let cmd = CustomerCommand::Register {
        name: format!("Customer {i}"),
        email: Email::new(&format!("c{i}@example.com")).unwrap(),
        phone: None,
    };
    svc.execute::<Customer>(id, &cmd, Metadata::default(), None).await.unwrap();
    id
}

/// `n` order events for aggregate `id` with sequences `from_version + 1 ..`
/// (an OrderCreated first, then OrderItemsUpdated).
pub fn order_events(id: Uuid, from_version: i64, n: usize) -> Vec<outboxd::envelope::EventEnvelope> {
    use outboxd::domain::Aggregate;
    let eur = Currency::new("EUR").unwrap();
    let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: Some(Uuid::now_v7()), trace: None };
    let at = outboxd::envelope::now_millis();
    (0..n)
        .map(|i| {
            let seq = from_version + 1 + i as i64;
            let items =
                vec![OrderItem::new(Sku::new(format!("S{seq}")).unwrap(), seq, Money::new(100, eur).unwrap()).unwrap()];
            let cmd = if seq == 1 {
                OrderCommand::Create { customer_id: Uuid::from_u128(1), items }
            } else {
                OrderCommand::UpdateItems { items }
            };
            let mut o = Order::default();
            if seq > 1 {
                // Any created order accepts UpdateItems.
                let create = OrderCommand::Create {
                    customer_id: Uuid::from_u128(1),
                    items: vec![OrderItem::new(Sku::new("X").unwrap(), 1, Money::new(1, eur).unwrap()).unwrap()],
                };
                o.apply(&o.handle(&create).unwrap()[0]);
            }
            let e = o.handle(&cmd).unwrap().remove(0);
            outboxd::envelope::EventEnvelope::new::<Order>(id, seq, &e, &meta, at).unwrap()
        })
        .collect()
}

/// `orders` order lifecycles and `customers` registrations from `writers`
/// concurrent tasks (order i by writer i % writers); returns when all are stored.
pub async fn write_concurrently(svc: &CommandService, writers: usize, orders: usize, customers: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..orders).step_by(writers) {
                order_lifecycle(&svc, i).await;
            }
            for i in (w..customers).step_by(writers) {
                register_customer(&svc, i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A dead letter holding `env` at feed `position`, as the relay writes one.
pub fn dead_letter(env: &outboxd::envelope::EventEnvelope, position: Option<i64>) -> outboxd::store::DeadLetter {
    let now = chrono::Utc::now();
    outboxd::store::DeadLetter {
        id: Uuid::now_v7(),
        position,
        event_id: env.event_id,
        aggregate_id: env.aggregate_id,
        event_type: env.event_type.clone(),
        payload: serde_json::to_string(env).unwrap(),
        error_message: "message too large (message_size_too_large)".into(),
        failure_count: 5,
        first_failed_at: now,
        last_failed_at: now,
        created_at: now,
    }
}
