//! `POST /orders/{order_id}/{action}`: the state machine through the API, stock returned once.

use super::*;

#[tokio::test]
async fn paying_a_pending_order_makes_it_paid_and_paying_again_changes_nothing() {
    // GIVEN alice's pending order
    let (env, id) = Env::with_alices_pending_order().await;
    // WHEN she pays
    let paid = env.alice_does(&id, "pay").await;
    // THEN it is paid, shown as GET shows it, without a payment deadline
    assert_eq!(paid.status, 200, "body: {}", paid.body);
    assert_eq!(paid.body["status"], "paid");
    assert!(paid.body.get("expires_at").is_none());
    let got = env.get_order(Req::get_order("alice", id.as_str())).await;
    assert_eq!(paid.body, got.body);

    // WHEN she pays again
    let before = env.store.snapshot();
    let again = env.alice_does(&id, "pay").await;
    // THEN the answer is the same order, and nothing changed
    assert_eq!(again.status, 200);
    assert_eq!(again.body, paid.body);
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn a_buyer_may_not_ship_but_an_admin_may() {
    // GIVEN alice's paid order
    let (env, id) = Env::with_alices_pending_order().await;
    env.alice_does(&id, "pay").await;
    // WHEN she tries to ship it herself
    let before = env.store.snapshot();
    let r = env.alice_does(&id, "ship").await;
    // THEN she is forbidden and it stays paid
    assert_error(&r, 403, "forbidden");
    assert_eq!(env.store.snapshot(), before);
    // WHEN an admin ships it
    let shipped = env
        .advance(Req::advance("admin-1", true, id.as_str(), "ship"))
        .await;
    // THEN it is shipped
    assert_eq!(shipped.status, 200, "body: {}", shipped.body);
    assert_eq!(shipped.body["status"], "shipped");
    assert_eq!(env.status(&id), OrderStatus::Shipped);
}

#[tokio::test]
async fn confirming_a_shipped_order_completes_it_and_a_later_cancel_names_its_status() {
    // GIVEN alice's shipped order
    let (env, id) = Env::with_alices_pending_order().await;
    env.alice_does(&id, "pay").await;
    env.advance(Req::advance("admin-1", true, id.as_str(), "ship"))
        .await;
    // WHEN she confirms it
    let done = env.alice_does(&id, "confirm").await;
    // THEN it is completed
    assert_eq!(done.status, 200, "body: {}", done.body);
    assert_eq!(done.body["status"], "completed");
    // WHEN she then cancels it
    let before = env.store.snapshot();
    let r = env.alice_does(&id, "cancel").await;
    // THEN the transition is refused, naming the current status, and no stock comes back
    assert_error(&r, 409, "invalid_transition");
    assert_eq!(r.body["error"]["status"], "completed");
    assert_eq!(env.store.snapshot(), before);
    assert_eq!(env.available(), 9);
}

#[tokio::test]
async fn canceling_a_pending_order_returns_its_stock_once() {
    // GIVEN alice's pending order for 3 of 10
    let env = Env::on_sale().await;
    let id = env.pending_order("alice", "k-1", 3).await;
    assert_eq!(env.available(), 7);
    // WHEN she cancels it, twice
    let r = env.alice_does(&id, "cancel").await;
    let again = env.alice_does(&id, "cancel").await;
    // THEN it is canceled by the buyer, the 3 units are back, once
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(
        (r.body["status"].clone(), r.body["reason"].clone()),
        (json!("canceled"), json!("buyer_canceled"))
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.body["status"], "canceled");
    assert_eq!(env.available(), 10);
    // AND the product shows them
    let p = env.products(Req::get_product("bob", SKU)).await;
    assert_eq!(p.body["available"], 10);
}

#[tokio::test]
async fn refunding_a_paid_order_returns_its_stock_and_the_buyers_allowance() {
    // GIVEN alice paid for 2 of a product limited to 2 per buyer
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10,"per_user_limit":2}"#).await;
    let id = env.pending_order("alice", "k-1", 2).await;
    env.alice_does(&id, "pay").await;
    assert_eq!(
        (env.available(), env.store.bought(&sku(SKU), &user("alice"))),
        (8, 2)
    );
    // WHEN she asks for a refund
    let r = env.alice_does(&id, "refund").await;
    // THEN it is canceled as refunded, and the units and her allowance come back
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(
        (r.body["status"].clone(), r.body["reason"].clone()),
        (json!("canceled"), json!("refunded"))
    );
    assert_eq!(
        (env.available(), env.store.bought(&sku(SKU), &user("alice"))),
        (10, 0)
    );
    // AND a cancel after the refund is not allowed
    let cancel = env.alice_does(&id, "cancel").await;
    assert_error(&cancel, 409, "invalid_transition");
    assert_eq!(cancel.body["error"]["status"], "canceled");
    // AND she may buy 2 again
    let again = env.pending_order("alice", "k-2", 2).await;
    assert_eq!(env.status(&again), OrderStatus::Pending);
}

#[tokio::test]
async fn every_action_on_another_users_order_is_not_found() {
    // GIVEN alice's pending order
    let (env, id) = Env::with_alices_pending_order().await;
    // WHEN bob tries every action on it
    let actions = ["pay", "cancel", "refund", "ship", "confirm"];
    let bobs = |action: &str| Req::advance("bob", false, id.as_str(), action);
    // THEN it does not exist for him, and nothing changes
    env.assert_each_advance_refused(&actions, bobs, 404, "not_found")
        .await;
}

#[tokio::test]
async fn an_unknown_action_is_not_found() {
    // GIVEN alice's pending order
    let (env, id) = Env::with_alices_pending_order().await;
    // WHEN she asks for an action that does not exist
    let actions = ["steal", "PAY", "accept", ""];
    let alices = |action: &str| Req::advance("alice", false, id.as_str(), action);
    // THEN it is not found and nothing changes
    env.assert_each_advance_refused(&actions, alices, 404, "not_found")
        .await;
}

#[tokio::test]
async fn an_action_body_with_a_field_is_invalid() {
    // GIVEN alice's pending order
    let (env, id) = Env::with_alices_pending_order().await;
    // WHEN she pays with a body that says anything, or is not JSON
    let bodies = [r#"{"status":"paid"}"#, r#"{"amount":100}"#, "pay"];
    // THEN it is refused as invalid and the order stays pending
    env.assert_each_advance_refused(&bodies, alices_payment(&id), 400, "invalid_request")
        .await;
    // AND `{}` or no body at all is fine
    for body in ["{}", ""] {
        let r = env.alice_pays_with(&id, body).await;
        assert_eq!(r.status, 200, "body: {}", r.body);
    }
}

#[tokio::test]
async fn an_action_body_that_is_not_an_object_is_invalid() {
    // GIVEN alice's pending order
    let (env, id) = Env::with_alices_pending_order().await;
    // WHEN she pays with a JSON body of the wrong type (the contract allows only `{}`)
    let bodies = ["[]", "[1]", "null", "1", "\"pay\""];
    // THEN it is refused as invalid and the order stays pending
    env.assert_each_advance_refused(&bodies, alices_payment(&id), 400, "invalid_request")
        .await;
}

#[tokio::test]
async fn an_action_without_an_authorizer_is_unauthorized() {
    // GIVEN alice's pending order
    let (env, id) = Env::with_alices_pending_order().await;
    // WHEN it is paid with no authorizer context
    let r = env
        .advance(Req::advance("alice", false, id.as_str(), "pay").anonymous())
        .await;
    // THEN the caller is unauthorized and it stays pending
    assert_error(&r, 401, "unauthorized");
    assert_eq!(env.status(&id), OrderStatus::Pending);
}

#[tokio::test]
async fn a_store_outage_during_an_action_answers_503_and_changes_nothing() {
    // GIVEN alice's pending order and a table that fails on the write
    let env = Env::on_sale().await;
    let id = env.pending_order("alice", "k-1", 2).await;
    let before = env.store.snapshot();
    env.store.fail_on("advance", 1);
    // WHEN she cancels
    let r = env.alice_does(&id, "cancel").await;
    // THEN she is told to retry, and neither the order nor the stock changed
    assert_error(&r, 503, "unavailable");
    assert_eq!(env.store.snapshot(), before);
}

/// Alice's payment of her order `id`, with a body.
fn alices_payment(id: &OrderId) -> impl Fn(&str) -> Req + '_ {
    move |body| Req::advance("alice", false, id.as_str(), "pay").body(body)
}
