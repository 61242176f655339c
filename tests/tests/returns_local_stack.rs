//! Stock returns under DynamoDB's rules: a storm of cancels, refunds and payment timeouts on
//! one sold-out product, against DynamoDB Local wrapped in the capacity model, so that
//! transactions that overlap on an item really get `TransactionConflict` (DynamoDB Local alone
//! serialises them and never does). The functions run as deployed: `advance-order` for the
//! buyers, `expire-orders` for the timeouts.

use advance_order::AdvanceOrder;
use aws_sim::CapacityModel;
use expire_orders::ExpireOrders;
use flash_aws::{DynamoStore, SqsQueue, SqsTimeouts};
use flash_domain::ports::Store;
use flash_domain::{OrderId, OrderStatus, Reason, Sku};
use flash_tests::drain::drain;
use flash_tests::fake_expiry::timeout_body;
use flash_tests::fixtures::{json_body as body, sqs_event, Req};
use flash_tests::invariant_assertions::{audit, AuditAssertions};
use flash_tests::stack::{self, unique_sku};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// DynamoDB's budget per item and per partition, unscaled: the storm meets conflicts, not
/// throttling.
const SCALE: f64 = 1.0;
/// Long enough to pay the first orders before their window closes on a busy machine.
const PAYMENT_WINDOW_S: u64 = 4;
/// Buyers' requests in flight at once: Lambda instances of `advance-order`, each serving one
/// request. A transaction holds its items (and so conflicts) for as long as it is in flight:
/// DynamoDB answers one in about ten milliseconds, DynamoDB Local on a busy CI machine in
/// hundreds, so 16 here hold the shards about as long as hundreds of concurrent returns on AWS.
const BUYERS_AT_ONCE: usize = 16;
/// `expire-orders` as the template deploys it: batches of 100, at most 5 at once.
const TIMEOUT_BATCH: usize = 100;

/// Places one order per buyer (up to 32 at once); their order ids.
async fn place(
    place: &Arc<PlaceOrder<DynamoStore, SqsQueue>>,
    sku: &str,
    buyers: std::ops::Range<usize>,
) -> Vec<OrderId> {
    let reqs = buyers
        .map(|i| {
            Req::place_order(
                &format!("buyer-{i}"),
                &format!("{sku}-{i}"),
                &json!({"sku": sku, "quantity": 1}).to_string(),
            )
        })
        .collect();
    let ids = stack::place_accepted(place, reqs, 32).await;
    ids.iter()
        .map(|id| OrderId::parse(id).expect("id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_returns_on_one_sold_out_product_all_succeed_without_a_503() {
    // GIVEN a product of 500 units in 20 shards, sold out: 170 orders paid, 330 pending past
    // their payment window, 10 refused, the product flagged sold out
    stack::vars();
    let model = CapacityModel::new(1000.0, SCALE);
    let sdk = aws_sim::sdk_config_with_capacity(flash_aws::config::sdk_config().await, &model);
    let store = DynamoStore::from_config(&sdk, stack::var("TABLE_NAME"));
    let sku = unique_sku("returns");
    let spec = json!({"name": "Console", "stock": 500, "shards": 20, "per_user_limit": 2,
        "payment_window_seconds": PAYMENT_WINDOW_S});
    stack::create_product(&store, &sku, &spec).await;
    let (queue, orders_url) = stack::test_queue("returns-orders").await;
    let (_, timeouts_url) = stack::test_queue("returns-timeouts").await;
    let sqs = stack::sqs().await;
    let place_order = Arc::new(PlaceOrder::new(store.clone(), queue));
    let process = ProcessOrders {
        store: store.clone(),
        timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
    };
    let decide = || drain(&process, &sqs, &orders_url, 4, 50, Duration::from_secs(60));
    let advance = Arc::new(AdvanceOrder::new(store.clone()));
    let expire = Arc::new(ExpireOrders {
        store: store.clone(),
        timeouts: SqsTimeouts::new(sqs.clone(), timeouts_url),
    });

    let paid = place(&place_order, &sku, 0..170).await;
    assert_eq!(decide().await.accepted, 170);
    for (i, id) in paid.iter().enumerate() {
        let resp = advance
            .handle(Req::advance(&format!("buyer-{i}"), false, id.as_str(), "pay").build())
            .await;
        assert_eq!(resp.status(), 200, "{:?}", body(&resp));
    }
    let pending = place(&place_order, &sku, 170..510).await;
    let decided = decide().await;
    let window_closes = Instant::now() + Duration::from_secs(PAYMENT_WINDOW_S);
    assert_eq!((decided.accepted, decided.rejected), (330, 10));
    let sku_id = Sku::parse(&sku).expect("sku");
    let product = store
        .get_product(&sku_id)
        .await
        .expect("read")
        .expect("product");
    assert!(
        product.sold_out,
        "the sale ended with the product flagged sold out"
    );
    assert_eq!(audit(&store, &sku).await.available, 0);
    let live: Vec<_> = store
        .get_orders(&pending)
        .await
        .expect("read")
        .into_iter()
        .filter(|o| o.status == OrderStatus::Pending)
        .collect();
    assert_eq!(live.len(), 330);
    tokio::time::sleep_until(window_closes.into()).await;
    let before = model.stats();

    // WHEN all 500 come back at once: 170 refunds and 165 cancels by their buyers, and 165
    // payment timeouts, each message delivered twice (SQS is at least once)
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(BUYERS_AT_ONCE));
    let mut answers = Vec::new();
    let mut send = |req: Req| {
        let (advance, gate) = (advance.clone(), gate.clone());
        answers.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.expect("open");
            advance.handle(req.build()).await
        }));
    };
    for (i, id) in paid.iter().enumerate() {
        send(Req::advance(
            &format!("buyer-{i}"),
            false,
            id.as_str(),
            "refund",
        ));
    }
    let (cancels, timeouts): (Vec<_>, Vec<_>) =
        live.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (_, o) in &cancels {
        send(Req::advance(
            o.owner.as_str(),
            false,
            o.id.as_str(),
            "cancel",
        ));
    }
    let mut batches = Vec::new();
    for (n, chunk) in timeouts.chunks(TIMEOUT_BATCH).enumerate() {
        for delivery in 0..2 {
            let messages: Vec<(String, String)> = chunk
                .iter()
                .map(|(_, o)| (format!("t{n}-{delivery}-{}", o.id), timeout_body(&o.id)))
                .collect();
            let expire = expire.clone();
            batches.push(tokio::spawn(async move {
                expire.process(sqs_event(&messages)).await
            }));
        }
    }
    let mut unavailable = 0;
    for a in answers {
        let resp = a.await.expect("task");
        if resp.status() == 503 {
            unavailable += 1;
        } else {
            assert_eq!(resp.status(), 200, "{:?}", body(&resp));
            assert_eq!(body(&resp)["status"], "canceled");
        }
    }
    let (mut expired, mut failed) = (0, 0);
    for b in batches {
        let (resp, report) = b.await.expect("task");
        expired += report.expired;
        failed += resp.batch_item_failures.len();
    }
    let took = started.elapsed();

    // THEN no answer was 503, no timeout failed, each unit came back exactly once, and the
    // product is available and no longer flagged
    let stats = model.stats();
    let product = store
        .get_product(&sku_id)
        .await
        .expect("read")
        .expect("product");
    let a = audit(&store, &sku).await;
    println!(
        "500 returns in {took:?}: {} refunds and cancels, {unavailable} answered 503; \
         {expired} timeouts applied, {failed} records failed; the capacity model answered \
         {} transaction conflicts and {} throttles; available {}, sold_out {}",
        paid.len() + cancels.len(),
        stats.conflicts - before.conflicts,
        stats.throttles - before.throttles,
        a.available,
        product.sold_out
    );
    assert!(
        stats.conflicts > before.conflicts,
        "the returns never overlapped: the test proves nothing"
    );
    assert_eq!(unavailable, 0, "buyers answered 503");
    assert_eq!((expired, failed), (timeouts.len(), 0));
    a.assert_invariants().assert_all_decided();
    assert_eq!(
        (a.available, a.units_held, a.count(OrderStatus::Canceled)),
        (500, 0, 500)
    );
    assert_eq!(a.rejected(Reason::SoldOut), 10);
    assert!(
        !product.sold_out,
        "units came back but the product is flagged sold out"
    );
}

/// Sets the product's sold-out flag behind the pipeline's back: what a processor's
/// `mark_sold_out` does if it read the shards empty just before a return's transaction, and
/// the return's process then stopped before its second write.
async fn flag_sold_out(store: &DynamoStore, sku: &Sku) {
    store
        .client()
        .update_item()
        .table_name(store.table())
        .set_key(Some(flash_aws::dynamo::product_key(sku)))
        .update_expression("SET sold_out = :t")
        .expression_attribute_values(":t", aws_sdk_dynamodb::types::AttributeValue::Bool(true))
        .send()
        .await
        .expect("update");
}

async fn sold_out(store: &DynamoStore, sku: &Sku) -> bool {
    store
        .get_product(sku)
        .await
        .expect("read")
        .expect("product")
        .sold_out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_return_clears_the_sold_out_flag_and_whoever_finds_the_order_canceled_clears_it_again() {
    // GIVEN 2 units sold to 2 buyers, the product flagged sold out
    let store = stack::store().await;
    let sku = unique_sku("flag");
    let spec = json!({"name": "Kettle", "stock": 2, "payment_window_seconds": 1});
    stack::create_product(&store, &sku, &spec).await;
    let (queue, orders_url) = stack::test_queue("flag-orders").await;
    let (_, timeouts_url) = stack::test_queue("flag-timeouts").await;
    let sqs = stack::sqs().await;
    let ids = place(&Arc::new(PlaceOrder::new(store.clone(), queue)), &sku, 0..2).await;
    let process = ProcessOrders {
        store: store.clone(),
        timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
    };
    let decided = drain(&process, &sqs, &orders_url, 1, 10, Duration::from_secs(30)).await;
    assert_eq!(decided.accepted, 2);
    let sku_id = Sku::parse(&sku).expect("sku");
    assert!(sold_out(&store, &sku_id).await);
    let advance = AdvanceOrder::new(store.clone());
    let expire = ExpireOrders {
        store: store.clone(),
        timeouts: SqsTimeouts::new(sqs.clone(), timeouts_url),
    };
    let cancel = || Req::advance("buyer-0", false, ids[0].as_str(), "cancel").build();

    // WHEN buyer 0 cancels THEN the flag is cleared with the unit's return
    assert_eq!(advance.handle(cancel()).await.status(), 200);
    assert!(
        !sold_out(&store, &sku_id).await,
        "a return left the flag set"
    );

    // WHEN the flag is set again as if the cancel had stopped between its two writes, and
    // the buyer repeats the cancel THEN the repeat clears it
    flag_sold_out(&store, &sku_id).await;
    let resp = advance.handle(cancel()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body(&resp)["status"], "canceled");
    assert!(
        !sold_out(&store, &sku_id).await,
        "a repeated cancel left the flag set"
    );

    // WHEN the same happens and the order's payment timeout arrives THEN it clears it too
    flag_sold_out(&store, &sku_id).await;
    let timeout = |id: &OrderId| sqs_event(&[(format!("m-{id}"), timeout_body(id))]);
    let (resp, report) = expire.process(timeout(&ids[0])).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(report.settled, 1);
    assert!(
        !sold_out(&store, &sku_id).await,
        "a settled timeout left the flag set"
    );

    // WHEN buyer 1's window closes and its timeout is delivered twice THEN the first returns
    // the unit, the second finds it canceled, and both units are available
    flag_sold_out(&store, &sku_id).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, first) = expire.process(timeout(&ids[1])).await;
    flag_sold_out(&store, &sku_id).await;
    let (_, second) = expire.process(timeout(&ids[1])).await;
    assert_eq!((first.expired, second.settled), (1, 1));
    assert!(
        !sold_out(&store, &sku_id).await,
        "a redelivered timeout left the flag set"
    );
    let a = audit(&store, &sku).await;
    a.assert_invariants();
    assert_eq!((a.available, a.count(OrderStatus::Canceled)), (2, 2));
}
