//! Against the local stack (DynamoDB Local and fauxqs over HTTP): no buyer can put a message
//! in the orders DLQ. `place-order` sends its delayed re-drive copy before its write, so every
//! request that reaches the write leaves a copy behind, also when the write refuses it (a key
//! reused with another body, a purchase limit reached). The queue here has template.yaml's
//! redrive policy, and failed records are left to come back after their visibility timeout,
//! so a copy that `process-orders` failed would reach the DLQ exactly as on AWS.

use aws_sdk_sqs::types::QueueAttributeName as A;
use flash_aws::SqsQueue;
use flash_domain::OrderStatus;
use flash_tests::audit::{audit, AuditAssertions};
use flash_tests::drain::{drain, queue_empty};
use flash_tests::fixtures::{json_body as body, Req};
use flash_tests::stack::{self, unique_sku};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use serde_json::json;
use std::time::{Duration, Instant};

/// The orders queue's `maxReceiveCount` in template.yaml.
const MAX_RECEIVES: u32 = 5;
/// The re-drive delay under test: short, so the copies arrive during the test.
const REDRIVE_DELAY: Duration = Duration::from_secs(2);

/// Messages still to be sent to a consumer: delayed ones (the re-drive copies) included.
async fn delayed(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .and_then(|mut a| a.remove(&A::ApproximateNumberOfMessagesDelayed))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_buyer_can_put_a_message_in_the_dlq_by_reusing_a_key_or_passing_the_limit() {
    // GIVEN a product with a limit of 10 per buyer, behind the orders queue and its DLQ
    let store = stack::store().await;
    let sku = unique_sku("dlq");
    let products = products::Products {
        store: store.clone(),
    };
    let spec = json!({"name": "Phone", "stock": 100, "per_user_limit": 10});
    let created = products
        .handle(Req::put_product(&sku, &spec.to_string()).build())
        .await;
    assert_eq!(created.status(), 201, "{:?}", body(&created));
    let sqs = stack::sqs().await;
    // A visibility timeout of 2 s, so a record reported failed comes back, and finally moves,
    // within seconds.
    let (url, dlq, _) = stack::queue_with_dlq(&sqs, &sku, 2, MAX_RECEIVES).await;
    let place = PlaceOrder::new(store.clone(), SqsQueue::new(sqs.clone(), url.clone()))
        .with_redrive_delay(REDRIVE_DELAY);
    let process = ProcessOrders {
        store: store.clone(),
        timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
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
            (resp.status().as_u16(), body(&resp)["error"]["code"].clone())
        }
    };

    // WHEN buyer x orders 1 unit, then reuses the key with 5 other bodies
    assert_eq!(order("x", "x-key", 1).await.0, 202);
    for quantity in 2..=6 {
        assert_eq!(
            order("x", "x-key", quantity).await,
            (422, json!("idempotency_key_reused"))
        );
    }
    // AND buyer y orders 10 units, then trips the limit 5 times
    assert_eq!(order("y", "y-0", 10).await.0, 202);
    for i in 1..=5 {
        assert_eq!(
            order("y", &format!("y-{i}"), 1).await,
            (409, json!("purchase_limit"))
        );
    }
    let sent = Instant::now();

    // AND the queue is drained until every delayed copy has been delivered and processed, and
    // every record reported failed has come back or moved to the DLQ
    let mut messages = 0;
    let mut failures = 0;
    loop {
        let stats = drain(&process, &sqs, &url, 2, 10, Duration::from_secs(60)).await;
        messages += stats.messages;
        failures += stats.failures;
        let settled = sent.elapsed() > REDRIVE_DELAY
            && delayed(&sqs, &url).await == 0
            && queue_empty(&sqs, &url).await;
        if settled {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(120),
            "the queue never emptied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // THEN the DLQ is empty and no record was reported failed
    assert!(
        queue_empty(&sqs, &dlq).await,
        "a buyer put messages in the DLQ"
    );
    assert_eq!(failures, 0);
    // AND all 12 copies and the 2 first sends were delivered
    assert!(messages >= 14, "only {messages} messages delivered");
    // AND the two orders were decided once, as they were first written
    let a = audit(&store, &sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!(a.orders.len(), 2);
    assert_eq!(a.count(OrderStatus::Pending), 2);
    assert_eq!((a.units_held, a.available), (11, 89));
}
