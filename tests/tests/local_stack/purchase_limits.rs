//! Per-user purchase limits under concurrency, admissions given back, and the checker catching a stranded count.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_buyer_sending_fifty_orders_at_once_with_a_limit_of_two_buys_exactly_two() {
    // GIVEN plenty of stock and a limit of 2 per buyer
    let sale = Sale::limited("flood", "Sneaker", 100, 2).await;
    let before = sale.writes();
    // WHEN one buyer sends 50 orders of one unit at once, each with its own key
    let reqs = (0..50)
        .map(|i| sale.one_unit("flooder", &format!("{}-k-{i}", sale.sku)))
        .collect();
    let resps = at_once(&sale.place, reqs).await;
    // THEN exactly 2 are admitted and the other 48 are refused 409 purchase_limit
    assert_eq!(count_admitted(&resps), 2);
    // AND the 48 cost one refused transaction each, and nothing is stored or enqueued for them
    let writes = sale.writes();
    assert_eq!(writes.write_requests - before.write_requests, 50);
    let stats = sale.drain(2).await;
    assert_eq!(stats.messages, 2);
    // AND after processing exactly 2 units are sold, and every invariant holds
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!((a.orders.len(), a.units_held, a.available), (2, 2, 98));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purchase_limit_holds_for_buyers_ordering_concurrently() {
    // GIVEN a limit of 2 per buyer and plenty of stock
    let sale = Sale::limited("limit", "Sneaker", 500, 2).await;
    // WHEN 10 buyers each place 6 orders of one unit with different keys, all at once
    let reqs = (0..60)
        .map(|i| sale.one_unit(&format!("buyer-{}", i % 10), &format!("{}-k-{i}", sale.sku)))
        .collect();
    let resps = at_once(&sale.place, reqs).await;
    // THEN 2 per buyer are admitted, and once processed each buyer holds exactly 2 units
    assert_eq!(count_admitted(&resps), 20);
    sale.drain(4).await;
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!((a.units_held, a.rejected(Reason::PurchaseLimit)), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_canceled_or_refunded_order_gives_its_admission_back() {
    // GIVEN one unit and a limit of 1; alice's order queued before bob's
    let sale = Sale::limited("readmit", "Watch", 1, 1).await;
    let order = |who: &str, key: &str| sale.one_unit(who, &format!("{}-{key}", sale.sku)).build();
    let alice = body(&sale.place.handle(order("alice", "a1")).await)["order_id"].clone();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(sale.place.handle(order("bob", "b1")).await.status(), 202);
    // WHEN they are decided: alice gets the unit, bob is rejected sold out
    sale.drain(1).await;
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants();
    assert_eq!((a.units_held, a.rejected(Reason::SoldOut)), (1, 1));
    // THEN bob's rejection gave his admission back: with new stock he is admitted again
    let products = products::Products::new(sale.store.clone());
    let spec = json!({"name": "Watch", "stock": 1, "per_user_limit": 1}).to_string();
    let restock = products
        .handle(Req::put_product(&sale.sku, &spec).build())
        .await;
    assert_eq!(restock.status(), 200);
    tokio::time::sleep(place_order::PRODUCT_TTL).await;
    assert_eq!(sale.place.handle(order("bob", "b2")).await.status(), 202);
    // AND alice, at her limit, is refused until she cancels
    let refused = sale.place.handle(order("alice", "a2")).await;
    assert_eq!(body(&refused)["error"]["code"], "purchase_limit");
    let advance = advance_order::AdvanceOrder::new(sale.store.clone());
    let alice = alice.as_str().expect("order id").to_owned();
    let cancel = advance
        .handle(Req::advance("alice", false, &alice, "cancel").build())
        .await;
    assert_eq!(cancel.status(), 200, "{:?}", body(&cancel));
    assert_eq!(sale.place.handle(order("alice", "a3")).await.status(), 202);
    sale.drain(1).await;
    // THEN everything is decided and the counts agree with the orders
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!(a.units_held, 2);
    assert_eq!(a.count(OrderStatus::Canceled), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_gives_back_what_was_counted_even_when_the_limit_changed_midway() {
    // GIVEN alice admitted under a limit that was lifted before her order was decided (counted
    // at admission, not at commit), and carol admitted without a limit that was set before
    // hers was decided (counted at commit, not at admission)
    let sale = Sale::limited("midway", "Kettle", 10, 2).await;
    let products = products::Products::new(sale.store.clone());
    let put = |spec: Value| {
        let req = Req::put_product(&sale.sku, &spec.to_string()).build();
        let products = &products;
        async move { assert_eq!(products.handle(req).await.status(), 200) }
    };
    let order = |who: &str| sale.one_unit(who, &format!("{}-{who}", sale.sku)).build();
    let alice = body(&sale.place.handle(order("alice")).await)["order_id"].clone();
    put(json!({"name": "Kettle", "stock": 1})).await;
    sale.drain(1).await;
    tokio::time::sleep(place_order::PRODUCT_TTL).await;
    let carol = body(&sale.place.handle(order("carol")).await)["order_id"].clone();
    put(json!({"name": "Kettle", "stock": 1, "per_user_limit": 2})).await;
    sale.drain(1).await;
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!(a.units_held, 2);
    // WHEN both cancel
    let advance = advance_order::AdvanceOrder::new(sale.store.clone());
    for (who, id) in [("alice", alice), ("carol", carol)] {
        let id = id.as_str().expect("order id");
        let resp = advance
            .handle(Req::advance(who, false, id, "cancel").build())
            .await;
        assert_eq!(resp.status(), 200, "{:?}", body(&resp));
    }
    // THEN each count gave back exactly what it had counted: every invariant holds
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants();
    assert_eq!(
        (a.units_held, a.available, a.count(OrderStatus::Canceled)),
        (0, 12, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_invariant_checker_catches_a_stranded_admission_count() {
    // GIVEN a clean sale with a limit, one order admitted and decided
    let sale = Sale::limited("strand", "Lamp", 3, 2).await;
    sale.rush(1, 1, |_| 1).await;
    sale.drain(1).await;
    audit(&sale.store, &sale.sku).await.assert_invariants();
    // WHEN the buyer's admission count keeps a unit no order holds
    sale.tamper(
        flash_aws::dynamo::admit_key(
            &flash_domain::Sku::parse(&sale.sku).expect("sku"),
            &flash_domain::UserId::parse("buyer-0").expect("user"),
        ),
        "ADD admitted :v",
        AttributeValue::N("1".into()),
    )
    .await;
    // THEN the checker reports it
    audit(&sale.store, &sale.sku)
        .await
        .assert_violation(|v| v.contains("admission count 2 but 1 units"));
}
