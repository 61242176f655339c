//! A catalog sale's batch: 50 orders over 40 products, decided by `process-orders` against
//! DynamoDB Local, with every request the store sends counted by `aws_sim`'s request counter.
//! A batch's cost must not grow with the products in it: one `BatchGetItem` for the products,
//! one for their shards, one transaction per product group — and the groups' invariants as
//! before (a `sold_out` rejection only after a fresh read that follows the commit).

use aws_sim::{judged_sdk_config, RequestCounter};
use flash_aws::DynamoStore;
use flash_domain::ports::{CreateOrder, ProductWrite, Store};
use flash_domain::{
    IdempotencyKey, Order, OrderId, OrderMessage, OrderStatus, Product, Reason, Sku, UserId,
};
use flash_tests::fake::{message_body, FakeRedelivery};
use flash_tests::fake_expiry::FakeTimeouts;
use flash_tests::fixtures::{invocation_deadline, sqs_event};
use flash_tests::{given, stack};
use process_orders::ProcessOrders;
use serde_json::Value;

const PRODUCTS: usize = 40;
const ORDERS: usize = 50;

/// A catalog item of `stock` units on one shard, no limit.
fn product(sku: &Sku, stock: u64) -> Product {
    Product {
        name: "Catalog item".into(),
        ..given::product(sku.clone(), 1, stock, None)
    }
}

fn order(sku: &Sku, i: usize, now: i64) -> Order {
    let owner = UserId::parse(&format!("buyer-{i}")).expect("valid user");
    let key = IdempotencyKey::parse(&format!("{sku}-{i}")).expect("valid key");
    let id = OrderId::derive(&owner, &key);
    // Arrival order: the first order of each product comes first.
    Order {
        fingerprint: format!("{sku}:1"),
        ..given::queued_order(id, owner, sku.clone(), 1, now + i as i64)
    }
}

/// The `sk` of every key a `BatchGetItem` asked for.
fn batch_sks(body: &Value) -> Vec<String> {
    body["RequestItems"]
        .as_object()
        .into_iter()
        .flat_map(|tables| tables.values())
        .flat_map(|t| t["Keys"].as_array().cloned().unwrap_or_default())
        .filter_map(|k| k["sk"]["S"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_batch_of_50_orders_over_40_products_reads_products_once_and_commits_once_per_product() {
    // GIVEN 40 products of one shard each: product 0 has 1 unit and two orders (it sells out
    // inside the batch), products 1..=9 have 10 units and two orders, the other 30 have 10
    // units and one order: 50 orders in one batch.
    let plain = stack::store().await;
    let now = flash_domain::clock::now_ms();
    let prefix = stack::unique_sku("MIX");
    let skus: Vec<Sku> = (0..PRODUCTS)
        .map(|p| Sku::parse(&format!("{prefix}-{p:02}")).expect("valid sku"))
        .collect();
    for (p, sku) in skus.iter().enumerate() {
        let stock = if p == 0 { 1 } else { 10 };
        let written = plain
            .create_product(&product(sku, stock), &[(0, stock)], None)
            .await
            .expect("DynamoDB Local creates the product");
        assert_eq!(written, ProductWrite::Written);
    }
    let orders: Vec<Order> = (0..ORDERS)
        .map(|i| order(&skus[i % PRODUCTS], i, now))
        .collect();
    for o in &orders {
        assert!(matches!(
            plain
                .create_order(o)
                .await
                .expect("DynamoDB Local writes the order"),
            CreateOrder::Created
        ));
    }
    let event = sqs_event(
        &orders
            .iter()
            .enumerate()
            .map(|(i, o)| (format!("m-{i}"), message_body(&OrderMessage::of(o))))
            .collect::<Vec<_>>(),
    );

    // WHEN process-orders decides the batch through a store whose requests are counted.
    let counter = RequestCounter::new().journaled();
    let sdk = judged_sdk_config(stack::sdk().await, counter.clone());
    let store = DynamoStore::from_config(&sdk, stack::var("TABLE_NAME"));
    let process = ProcessOrders {
        store,
        timeouts: FakeTimeouts::new(),
    };
    let (response, report) = process
        .handle(&FakeRedelivery::default(), event, invocation_deadline())
        .await;

    // THEN every order is decided: 49 accepted, product 0's second order rejected sold out.
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(
        (report.accepted, report.rejected),
        (ORDERS - 1, 1),
        "{report:?}"
    );
    let decided = plain
        .get_orders(&orders.iter().map(|o| o.id.clone()).collect::<Vec<_>>())
        .await
        .expect("read back");
    let rejected: Vec<&Order> = decided
        .iter()
        .filter(|o| o.status == OrderStatus::Rejected)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        rejected[0].id, orders[PRODUCTS].id,
        "the later order of product 0"
    );
    assert_eq!(rejected[0].reason, Some(Reason::SoldOut));
    assert_eq!(
        decided
            .iter()
            .filter(|o| o.status == OrderStatus::Pending)
            .count(),
        ORDERS - 1
    );

    // AND the batch cost one transaction per product: 40, each group's orders in one.
    assert_eq!(report.transactions, PRODUCTS);
    assert_eq!(
        counter.requests("dynamodb:TransactWriteItems"),
        PRODUCTS as u64
    );
    // AND one BatchGetItem read the 40 products (no GetItem per product), one the orders, one
    // all 40 shards, and one more re-read product 0's shard before its rejection: a rejection
    // rests on a read made after the commit that sold the last unit.
    assert_eq!(
        counter.requests("dynamodb:GetItem"),
        0,
        "{:?}",
        counter.counts()
    );
    let batches: Vec<Vec<String>> = counter
        .journal()
        .iter()
        .filter(|(op, _)| op == "dynamodb:BatchGetItem")
        .map(|(_, body)| batch_sks(body))
        .collect();
    let product_reads = batches
        .iter()
        .filter(|sks| sks.iter().any(|sk| sk == "META"))
        .count();
    assert_eq!(product_reads, 1, "product reads: {batches:?}");
    assert_eq!(
        batches
            .iter()
            .find(|sks| sks.iter().any(|sk| sk == "META"))
            .map(Vec::len),
        Some(PRODUCTS)
    );
    assert_eq!(batches.len(), 4, "BatchGetItems: {batches:?}");
    // AND product 0 was flagged sold out, its stock is 0 and every other product sold its
    // orders and nothing more.
    let p0 = plain
        .get_product(&skus[0])
        .await
        .expect("read")
        .expect("exists");
    assert!(p0.sold_out);
    let shards = plain.read_shards_of(&[&p0]).await.expect("read the shards");
    assert_eq!(shards[&skus[0]][0].available, 0);
    for (p, sku) in skus.iter().enumerate().skip(1) {
        let product = plain.get_product(sku).await.expect("read").expect("exists");
        let ordered = orders.iter().filter(|o| &o.sku == sku).count() as u64;
        let left = plain.read_shards(&product).await.expect("read")[0].available;
        assert_eq!(left, 10 - ordered, "product {p}");
    }
}
