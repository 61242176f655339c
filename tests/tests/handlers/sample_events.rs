//! The fixtures in `events/`, each driven through its handler as it is.

use super::*;

#[tokio::test]
async fn the_place_order_fixture_is_not_found_on_an_empty_store_and_accepted_once_the_product_exists(
) {
    // GIVEN an empty table
    let env = Env::default();
    // WHEN the place-order fixture is sent as it is
    // THEN its product is unknown, and nothing is written or sent
    env.assert_place_refused(Req::fixture("place-order"), 404, "not_found")
        .await;

    // GIVEN SKU-1 created with the put-product fixture
    let created = env.products(Req::fixture("put-product")).await;
    assert_eq!(created.status, 201, "body: {}", created.body);
    // WHEN the same fixture is sent again
    let r = env.place(Req::fixture("place-order")).await;
    // THEN it is accepted for user-alice, with the id derived from its Idempotency-Key
    assert_eq!(r.status, 202, "body: {}", r.body);
    assert_eq!(r.order_id(), id_for("user-alice", "3f1c2b7e-0001"));
    assert_eq!(env.queue.sent().len(), 1);
}

#[tokio::test]
async fn the_put_product_and_get_product_fixtures_create_and_read_sku_1() {
    // GIVEN an empty table
    let env = Env::default();
    // WHEN the get-product fixture is sent before the product exists
    // THEN it is not found
    assert_error(
        &env.products(Req::fixture("get-product")).await,
        404,
        "not_found",
    );

    // WHEN the put-product fixture is sent, then get-product
    let put = env.products(Req::fixture("put-product")).await;
    let got = env.products(Req::fixture("get-product")).await;
    // THEN both show the 100 units of "Hot phone"
    assert_eq!(put.status, 201);
    assert_eq!(got.status, 200);
    assert_eq!(put.body, got.body);
    assert_eq!(got.body["name"], "Hot phone");
    assert_eq!(got.body["available"], 100);
}

#[tokio::test]
async fn the_get_order_and_advance_order_fixtures_name_no_order_on_an_empty_store() {
    // GIVEN an empty table
    let env = Env::default();
    // WHEN the get-order and advance-order fixtures are sent as they are
    let got = env.get_order(Req::fixture("get-order")).await;
    let before = env.store.snapshot();
    let advanced = env.advance(Req::fixture("advance-order")).await;
    // THEN both say the order does not exist, and nothing is written
    assert_error(&got, 404, "not_found");
    assert_error(&advanced, 404, "not_found");
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn the_process_orders_fixture_names_no_stored_order_and_is_dropped_without_a_write() {
    // GIVEN a table holding SKU-1 but none of the fixture's orders
    let env = Env::with_product(r#"{"name":"Hot phone","stock":100}"#).await;
    let before = env.store.snapshot();
    // WHEN the process-orders fixture is delivered
    let (failed, report) = env
        .process(
            serde_json::from_value(flash_tests::fixtures::event("process-orders"))
                .expect("an SQS event"),
        )
        .await;
    // THEN its three messages are dropped as re-drive copies of orders never written: none
    // fails (none would reach the DLQ) and nothing is decided
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!((report.accepted, report.rejected, report.failed), (0, 0, 0));
    assert_eq!(env.store.snapshot(), before);
}
