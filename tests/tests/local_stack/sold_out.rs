//! Once sold out, a storm of buyers costs no writes until a cancel returns stock.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_sold_out_a_storm_of_buyers_costs_no_writes_until_a_cancel_returns_stock() {
    // GIVEN 10 units sold out to the first 15 buyers
    let sale = Sale::open("storm", json!({"name": "Drone", "stock": 10})).await;
    let ids = sale.rush(15, 15, |_| 1).await;
    sale.drain(1).await;
    assert_eq!(audit(&sale.store, &sale.sku).await.available, 0);
    // WHEN 300 more buyers arrive (after the cached product expires)
    tokio::time::sleep(place_order::PRODUCT_TTL).await;
    let before = sale.writes();
    let late: Vec<_> = (0..300)
        .map(|i| {
            let place = sale.place.clone();
            let req = sale.one_unit(&format!("late-{i}"), &format!("{}-late-{i}", sale.sku));
            tokio::spawn(async move { place.handle(req.build()).await })
        })
        .collect();
    // THEN every one is refused sold_out and nothing was written or enqueued
    for t in late {
        let resp = t.await.expect("task");
        assert_eq!(resp.status(), 409);
        assert_eq!(body(&resp)["error"]["code"], "sold_out");
    }
    assert_eq!(sale.writes().write_requests, before.write_requests);
    assert!(receive_batch(&sale.sqs, &sale.url, 10).await.is_empty());
    // AND a replay of an early order still answers that order
    let replay = sale
        .place_one_unit("buyer-0", &format!("{}-key-0", sale.sku))
        .await;
    assert_eq!(
        (replay.status().as_u16(), body(&replay)["order_id"].clone()),
        (202, json!(ids[0]))
    );

    // WHEN one buyer cancels, returning a unit
    let advance = advance_order::AdvanceOrder::new(sale.store.clone());
    let held = audit(&sale.store, &sale.sku).await;
    let holder = held
        .orders
        .iter()
        .find(|o| o.status == OrderStatus::Pending)
        .expect("a sale");
    let resp = advance
        .handle(Req::advance(holder.owner.as_str(), false, holder.id.as_str(), "cancel").build())
        .await;
    assert_eq!(resp.status(), 200);
    // THEN within the cache period a new buyer is admitted again and gets the unit
    tokio::time::sleep(place_order::PRODUCT_TTL).await;
    let again = sale
        .place_one_unit("late-again", &format!("{}-again", sale.sku))
        .await;
    assert_eq!(again.status(), 202);
    sale.drain(1).await;
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!((a.available, a.units_held), (0, 10));
}
