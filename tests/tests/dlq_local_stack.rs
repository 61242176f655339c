//! Against the local stack (DynamoDB Local and fauxqs over HTTP): no buyer can put a message
//! in the orders DLQ or the payment-timeouts DLQ. `place-order` sends its delayed re-drive copy before its write, so every
//! request that reaches the write leaves a copy behind, also when the write refuses it (a key
//! reused with another body, a purchase limit reached). The queue here has template.yaml's
//! redrive policy, and so does the payment-timeouts queue `process-orders` schedules on and
//! `expire-orders` drains; failed records are left to come back after their visibility timeout,
//! so a message either function failed would reach its DLQ exactly as on AWS.

use advance_order::AdvanceOrder;
use aws_sdk_sqs::types::QueueAttributeName as A;
use expire_orders::ExpireOrders;
use flash_aws::{SqsQueue, SqsTimeouts};
use flash_domain::{OrderId, OrderStatus};
use flash_tests::drain::{drain, queue_count, queue_empty};
use flash_tests::fixtures::{json_body as body, Req};
use flash_tests::invariant_assertions::{audit, AuditAssertions};
use flash_tests::stack::{self, unique_sku};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use serde_json::json;
use std::time::{Duration, Instant};

/// The orders queue's `maxReceiveCount` in template.yaml.
const MAX_RECEIVES: u32 = 5;
/// The re-drive delay under test: short, so the copies arrive during the test.
const REDRIVE_DELAY: Duration = Duration::from_secs(2);
/// The product's payment window: short, so the payment timeouts arrive during the test.
const PAYMENT_WINDOW_S: u64 = 3;

/// Messages still to be sent to a consumer: delayed ones (the re-drive copies) included.
async fn delayed(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    queue_count(sqs, url, &[A::ApproximateNumberOfMessagesDelayed]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_buyer_can_put_a_message_in_either_dlq_by_reusing_a_key_or_passing_the_limit() {
    // GIVEN a product with a limit of 10 per buyer and a 3 s payment window, behind the orders
    // queue and the payment-timeouts queue, each with its DLQ
    let store = stack::store().await;
    let sku = unique_sku("dlq");
    let products = products::Products::new(store.clone());
    let spec = json!({"name": "Phone", "stock": 100, "per_user_limit": 10,
                      "payment_window_seconds": PAYMENT_WINDOW_S});
    let created = products
        .handle(Req::put_product(&sku, &spec.to_string()).build())
        .await;
    assert_eq!(created.status(), 201, "{:?}", body(&created));
    let sqs = stack::sqs().await;
    // A visibility timeout of 2 s, so a record reported failed comes back, and finally moves,
    // within seconds.
    let (url, dlq, _) = stack::queue_with_dlq(&sqs, &sku, 2, MAX_RECEIVES).await;
    let (timeouts_url, timeouts_dlq, _) =
        stack::queue_with_dlq(&sqs, &format!("{sku}-timeouts"), 2, MAX_RECEIVES).await;
    let timeouts = SqsTimeouts::new(sqs.clone(), timeouts_url.clone());
    let place = PlaceOrder::new(store.clone(), SqsQueue::new(sqs.clone(), url.clone()))
        .with_redrive_delay(REDRIVE_DELAY);
    let process = ProcessOrders {
        store: store.clone(),
        timeouts: timeouts.clone(),
    };
    let expire = ExpireOrders {
        store: store.clone(),
        timeouts,
    };
    let order = |who: &str, key: &str, quantity: u32| {
        // Keys scoped to this run's SKU: order ids derive from caller and key alone.
        let req = Req::place_order(
            who,
            &format!("{sku}-{key}"),
            &json!({"sku": sku, "quantity": quantity}).to_string(),
        );
        let place = &place;
        async move {
            let resp = place.handle(req.build()).await;
            let b = body(&resp);
            (
                resp.status().as_u16(),
                b["error"]["code"].clone(),
                b["order_id"].clone(),
            )
        }
    };

    let refused = |(status, code, _): (u16, serde_json::Value, serde_json::Value)| (status, code);
    let order_id = |v: &serde_json::Value| OrderId::parse(v.as_str().unwrap_or("")).expect("id");

    // WHEN buyer x orders 1 unit, then reuses the key with 5 other bodies
    let (status, _, x_id) = order("x", "x-key", 1).await;
    assert_eq!(status, 202);
    for quantity in 2..=6 {
        assert_eq!(
            refused(order("x", "x-key", quantity).await),
            (422, json!("idempotency_key_reused"))
        );
    }
    // AND buyer y orders 10 units, then trips the limit 5 times
    let (status, _, y_id) = order("y", "y-0", 10).await;
    assert_eq!(status, 202);
    for i in 1..=5 {
        assert_eq!(
            refused(order("y", &format!("y-{i}"), 1).await),
            (409, json!("purchase_limit"))
        );
    }
    let sent = Instant::now();

    // AND both queues are drained until every delayed message (the re-drive copies, the
    // payment timeouts) has been delivered and processed, and every record reported failed has
    // come back or moved to its DLQ; x pays once its order is pending, y never does
    let (mut messages, mut failures) = (0, 0);
    let (mut timeouts_delivered, mut expired, mut settled) = (0, 0, 0);
    let mut paid = false;
    loop {
        let stats = drain(&process, &sqs, &url, 2, 10, Duration::from_secs(60)).await;
        messages += stats.messages;
        failures += stats.failures;
        if !paid && stats.accepted > 0 {
            let pay = AdvanceOrder::new(store.clone());
            let resp = pay
                .handle(Req::advance("x", false, x_id.as_str().unwrap_or(""), "pay").build())
                .await;
            assert_eq!(resp.status(), 200, "{:?}", body(&resp));
            paid = true;
        }
        let t = drain(&expire, &sqs, &timeouts_url, 1, 10, Duration::from_secs(60)).await;
        timeouts_delivered += t.messages;
        failures += t.failures;
        expired += t.accepted;
        settled += t.rejected;
        let idle = sent.elapsed() > REDRIVE_DELAY + Duration::from_secs(PAYMENT_WINDOW_S)
            && delayed(&sqs, &url).await == 0
            && queue_empty(&sqs, &url).await
            && delayed(&sqs, &timeouts_url).await == 0
            && queue_empty(&sqs, &timeouts_url).await;
        if idle {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(120),
            "the queues never emptied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // THEN both DLQs are empty and no record was reported failed
    assert!(
        queue_empty(&sqs, &dlq).await,
        "a buyer put messages in the orders DLQ"
    );
    assert!(
        queue_empty(&sqs, &timeouts_dlq).await,
        "a buyer put messages in the payment-timeouts DLQ"
    );
    assert_eq!(failures, 0);
    // AND all 12 copies and the 2 first sends were delivered, and at least one payment timeout
    // per order (a redelivered copy of a pending order may schedule its timeout again)
    assert!(messages >= 14, "only {messages} messages delivered");
    assert!(
        timeouts_delivered >= 2,
        "only {timeouts_delivered} timeouts"
    );
    // AND the two orders were decided once, as they were first written: x paid, y's unpaid
    // order timed out once and returned its 10 units
    assert_eq!((expired, settled >= 1), (1, true));
    let a = audit(&store, &sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!(a.orders.len(), 2);
    let status = |id: &serde_json::Value| {
        let id = order_id(id);
        a.orders.iter().find(|o| o.id == id).map(|o| o.status)
    };
    assert_eq!(status(&x_id), Some(OrderStatus::Paid));
    assert_eq!(status(&y_id), Some(OrderStatus::Canceled));
    assert_eq!((a.units_held, a.available), (1, 99));
}
