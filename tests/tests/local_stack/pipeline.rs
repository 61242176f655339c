//! Orders through the API, the queue and the group commit: the flow, contention, a thousand buyers, sharded stock.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_flow_from_the_api_through_the_queue_to_a_decision() {
    // GIVEN 5 units and 8 buyers
    let sale = Sale::open("e2e", json!({"name": "Phone", "stock": 5})).await;
    // WHEN each orders one unit through place-order and the queue is drained by process-orders
    let ids = sale.rush(8, 8, |_| 1).await;
    sale.drain(1).await;
    // THEN get-order shows 5 pending orders and 3 rejected as sold out
    let get = get_order::GetOrder {
        store: sale.store.clone(),
    };
    let mut statuses = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let resp = get
            .handle(Req::get_order(&format!("buyer-{i}"), id).build())
            .await;
        assert_eq!(resp.status(), 200);
        let b = body(&resp);
        assert_eq!(b["order_id"], json!(id));
        statuses.push((
            b["status"].as_str().unwrap().to_owned(),
            b["reason"].clone(),
        ));
        if b["status"] == "pending" {
            assert!(b["expires_at"].is_string());
        }
    }
    assert_eq!(statuses.iter().filter(|s| s.0 == "pending").count(), 5);
    assert!(statuses
        .iter()
        .filter(|s| s.0 == "rejected")
        .all(|s| s.1 == json!("sold_out")));
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_clean();
    assert_eq!(
        (a.available, a.units_held, a.rejected(Reason::SoldOut)),
        (0, 5, 3)
    );
}

/// A put of an order can meet another writer's transaction: a replay's, the processor's
/// transaction deciding the order it names; a new limited order's, the buyer's other orders on
/// their admission count. On DynamoDB that is a `TransactionConflict`; DynamoDB Local
/// serialises instead, so the conflicts are injected under the SDK. Neither gets a `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_put_that_meets_another_writers_transaction_is_not_answered_503() {
    use flash_tests::sdk_faults::{Rule, SdkFault, SdkFaults};
    for (limit, op) in [(None, "PutItem"), (Some(3), "TransactWriteItems")] {
        // GIVEN a product (with and without a per-user limit) and an order admitted by x
        let mut spec = json!({"name": "Phone", "stock": 10});
        if let Some(limit) = limit {
            spec["per_user_limit"] = json!(limit);
        }
        let sale = Sale::open("conflict", spec).await;
        let order = |key: &str| sale.one_unit("x", &format!("{}-{key}", sale.sku)).build();
        let first = sale.place.handle(order("a")).await;
        assert_eq!(first.status(), 202, "{:?}", body(&first));
        // WHEN its replay's write, and then a new order's first two writes, meet a conflict
        // (three in a row outlast the SDK's own attempts, had it retried them)
        let faults = SdkFaults::new(vec![Rule {
            op,
            skip: 0,
            times: 3,
            fault: SdkFault::Conflict,
        }]);
        let store =
            DynamoStore::from_config(&stack::faulty_sdk(&faults).await, stack::var("TABLE_NAME"));
        let (queue, _) = stack::test_queue("conflict").await;
        let place = PlaceOrder::new(store, queue);
        let replay = place.handle(order("a")).await;
        let faults_after_replay = faults.fired().values().sum::<usize>();
        let fresh = place.handle(order("b")).await;
        // THEN the replay is answered from the stored order, and the new order is written
        assert_eq!(faults_after_replay, 1, "{:?}", faults.fired());
        assert_eq!(replay.status(), 202, "{limit:?}: {:?}", body(&replay));
        assert_eq!(body(&replay)["order_id"], body(&first)["order_id"]);
        assert_eq!(fresh.status(), 202, "{limit:?}: {:?}", body(&fresh));
        assert_eq!(
            faults.fired().values().sum::<usize>(),
            3,
            "{:?}",
            faults.fired()
        );
        let id = body(&fresh)["order_id"]
            .as_str()
            .expect("order_id")
            .to_owned();
        let stored = flash_domain::ports::Store::get_order(
            &sale.store,
            &flash_domain::OrderId::parse(&id).expect("order id"),
        )
        .await
        .expect("read");
        assert_eq!(stored.map(|o| o.status), Some(OrderStatus::Queued));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_buyers_for_a_hundred_units_buy_exactly_a_hundred() {
    // GIVEN 100 units
    let sale = Sale::open("rush", json!({"name": "Console", "stock": 100})).await;
    // WHEN 1,000 buyers order at once and four processors drain the queue concurrently
    let ids = sale.rush(1000, 100, |_| 1).await;
    let stats = sale.drain(4).await;
    // THEN exactly 100 are sold, 900 rejected sold out, nothing is left, everything decided
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_clean();
    let writes = sale.writes();
    println!(
        "1000 buyers / 100 units: accepted {} ({} units), rejected sold_out {}, available {}, \
         orders {}, {} batches, {} stock transactions, {} write requests, {} write units, \
         {} stock-item writes",
        a.count(OrderStatus::Pending),
        a.units_held,
        a.rejected(Reason::SoldOut),
        a.available,
        a.orders.len(),
        stats.batches,
        stats.transactions,
        writes.write_requests,
        writes.write_units,
        writes.stock_item_writes,
    );
    assert_eq!(ids.len(), 1000);
    assert_eq!(a.orders.len(), 1000);
    assert_eq!(a.count(OrderStatus::Pending), 100);
    assert_eq!(a.units_held, 100);
    assert_eq!(a.rejected(Reason::SoldOut), 900);
    assert_eq!(a.available, 0);
    // AND a rejected order expires (TTL) a week after its decision; a sold one never does
    for status in [OrderStatus::Rejected, OrderStatus::Pending] {
        let order = a.orders.iter().find(|o| o.status == status).expect("one");
        let item = sale
            .store
            .client()
            .get_item()
            .table_name(sale.store.table())
            .set_key(Some(flash_aws::dynamo::order_key(&order.id)))
            .send()
            .await
            .expect("GetItem")
            .item
            .expect("the order");
        let ttl = item
            .get("ttl")
            .and_then(|v| v.as_n().ok()?.parse::<i64>().ok());
        match status {
            OrderStatus::Rejected => {
                let expected = order.updated_at / 1000 + flash_aws::dynamo::REJECTED_KEPT_S;
                assert_eq!(ttl, Some(expected), "{item:?}");
            }
            _ => assert_eq!(ttl, None, "{item:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sharded_stock_with_mixed_quantities_sells_out_without_stranding_a_unit() {
    // GIVEN 97 units over 4 shards
    let sale = Sale::open(
        "shards",
        json!({"name": "Tablet", "stock": 97, "shards": 4}),
    )
    .await;
    // WHEN 150 buyers order 1 to 3 units each
    sale.rush(150, 50, |i| (i % 3) as u32 + 1).await;
    sale.drain(3).await;
    // THEN every unit is sold: a rejected order never fit in what was left
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_clean();
    assert_eq!(a.shards.len(), 4);
    assert_eq!(a.available, 0, "{a:?}");
    assert_eq!(a.units_held, 97);
}
