//! The invariant checker catches a lost unit and a broken order.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_invariant_checker_catches_a_lost_unit_and_a_broken_order() {
    // GIVEN a clean sale of 3 units to 2 buyers
    let sale = Sale::open("audit", json!({"name": "Lamp", "stock": 3})).await;
    let ids = sale.rush(2, 2, |_| 1).await;
    sale.drain(1).await;
    audit(&sale.store, &sale.sku).await.assert_invariants();
    // WHEN a unit disappears from the shard behind the pipeline's back
    sale.tamper(
        flash_aws::dynamo::shard_key(&flash_domain::Sku::parse(&sale.sku).expect("sku"), 0),
        "ADD available :v",
        AttributeValue::N("-1".into()),
    )
    .await;
    // AND an order is marked pending without the stock it should hold
    sale.tamper(
        flash_aws::dynamo::order_key(&flash_domain::OrderId::parse(&ids[0]).expect("order id")),
        "SET takes = :v",
        AttributeValue::S(String::new()),
    )
    .await;
    // THEN the checker reports both
    audit(&sale.store, &sale.sku)
        .await
        .assert_violation(|v| v.starts_with("conservation"))
        .assert_violation(|v| v.contains("took 0"));
}
