//! The message parser and the consumer behind it: any bytes as an SQS message body. Read as an
//! `OrderMessage`, never a panic, and a message that is accepted holds only valid values and
//! reads back the same after serialising. Sent to `process-orders` in a batch after the genuine
//! message of a queued order, it is reported failed unless it is the message of a stored order,
//! and the genuine message is decided.

#![no_main]

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use flash_domain::{OrderId, OrderMessage, OrderStatus, Quantity, Sku};
use flash_fuzz::{block_on, World};
use libfuzzer_sys::fuzz_target;
use process_orders::ProcessOrders;

fuzz_target!(|data: &[u8]| {
    let parsed = serde_json::from_slice::<OrderMessage>(data);
    if let Ok(m) = &parsed {
        assert_eq!(
            OrderId::parse(m.order_id.as_str()).as_ref(),
            Ok(&m.order_id)
        );
        assert_eq!(Sku::parse(m.sku.as_str()).as_ref(), Ok(&m.sku));
        assert!(Quantity::new(m.quantity.get()).is_ok());
        // `user_id` is not re-checked: `UserId` deserialises any string (the consumer compares it
        // with the stored owner, so a bad one never matches an order).
        let text = serde_json::to_vec(m).expect("an accepted message serialises");
        let again: OrderMessage =
            serde_json::from_slice(&text).expect("a serialised message parses");
        assert_eq!(&again, m);
    }

    // SQS bodies are text.
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let world = World::new();
    let genuine = serde_json::to_string(&world.queued).expect("a message serialises");
    let event = batch(&[("genuine", &genuine), ("fuzzed", body)]);
    let processor = ProcessOrders {
        store: world.store.clone(),
        timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
    };
    let (resp, _) = block_on(processor.handle(
        &flash_tests::fake::FakeRedelivery::default(),
        event,
        flash_domain::clock::now_ms() + 30_000,
    ));
    let failed: Vec<&str> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    let stored = |m: &OrderMessage| {
        world
            .store
            .order(&m.order_id)
            .is_some_and(|o| o.sku == m.sku && o.quantity == m.quantity && o.owner == m.user_id)
    };
    if parsed.as_ref().is_ok_and(stored) {
        // A redelivery of a stored order's message (this one's, or an order decided earlier).
        assert!(failed.is_empty(), "a genuine message failed: {failed:?}");
    } else if parsed
        .as_ref()
        .is_ok_and(|m| m.order_id == world.queued.order_id)
    {
        // Other values under the queued order's id: the consumer keeps one message per order id,
        // so the forged one may cost the genuine one this delivery (SQS retries it).
        assert!(failed.contains(&"fuzzed"), "{failed:?}");
    } else {
        assert_eq!(failed, ["fuzzed"]);
    }
    let status = world
        .store
        .order(&world.queued.order_id)
        .expect("the order is still there")
        .status;
    if failed.contains(&"genuine") {
        assert_eq!(status, OrderStatus::Queued);
    } else {
        assert_eq!(status, OrderStatus::Pending);
    }
});

/// An SQS event of (message id, body) records.
fn batch(records: &[(&str, &str)]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = records
        .iter()
        .map(|(id, body)| {
            let mut m = SqsMessage::default();
            m.message_id = Some((*id).to_owned());
            m.body = Some((*body).to_owned());
            m.event_source = Some("aws:sqs".to_owned());
            m
        })
        .collect();
    event
}
