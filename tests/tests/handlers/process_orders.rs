//! The SQS consumer `process-orders`: group commit, sold out, duplicates, purchase limits, outages.

use super::*;

#[tokio::test]
async fn one_batch_is_decided_with_one_group_commit() {
    // GIVEN three buyers' orders for 2 units each of 10
    let env = Env::on_sale().await;
    let ids = [
        env.place_ok("alice", "k", 2).await,
        env.place_ok("bob", "k", 2).await,
        env.place_ok("carol", "k", 2).await,
    ];
    // WHEN they arrive in one batch
    let (failed, report) = env.deliver().await;
    // THEN all are accepted by a single transaction, and 6 units are taken
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!(
        (report.accepted, report.rejected, report.transactions),
        (3, 0, 1)
    );
    assert_eq!(env.available(), 4);
    for id in &ids {
        let o = env.store.order(id).expect("stored");
        assert_eq!(o.status, OrderStatus::Pending);
        assert_eq!(o.takes.iter().map(|t| t.units).sum::<u32>(), 2);
        assert!(o.expires_at.is_some());
    }
}

#[tokio::test]
async fn a_sold_out_product_rejects_exactly_the_excess_as_sold_out() {
    // GIVEN 5 units spread over 3 shards and seven orders for one unit each
    let env = Env::with_product(r#"{"name":"Hot phone","stock":5,"shards":3}"#).await;
    for i in 0..7 {
        env.place_ok(&format!("buyer-{i}"), "k", 1).await;
    }
    // WHEN they are decided in one batch
    let (failed, report) = env.deliver().await;
    // THEN exactly five are accepted, the other two rejected as sold out, nothing is left
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!((report.accepted, report.rejected), (5, 2));
    let orders = env.store.orders();
    let pending = orders
        .iter()
        .filter(|o| o.status == OrderStatus::Pending)
        .count();
    let sold_out: Vec<_> = orders
        .iter()
        .filter(|o| o.status == OrderStatus::Rejected)
        .map(|o| o.reason)
        .collect();
    assert_eq!(pending, 5);
    assert_eq!(sold_out, vec![Some(Reason::SoldOut); 2]);
    assert_eq!(env.available(), 0);
    // AND the product shows it sold out
    let p = env.products(Req::get_product("bob", SKU)).await;
    assert_eq!(
        (p.body["available"].clone(), p.body["sold_out"].clone()),
        (json!(0), json!(true))
    );
}

#[tokio::test]
async fn a_smaller_order_still_takes_what_a_larger_one_could_not() {
    // GIVEN 3 units over 2 shards, and orders for 2, 2 and 1
    let env = Env::with_product(r#"{"name":"Hot phone","stock":3,"shards":2}"#).await;
    env.place_ok("alice", "k", 2).await;
    env.place_ok("bob", "k", 2).await;
    env.place_ok("carol", "k", 1).await;
    // WHEN they are decided together
    let (failed, report) = env.deliver().await;
    // THEN the sale ends with no unit stranded: one order of 2 is sold out, the rest fit
    assert!(failed.is_empty());
    assert_eq!((report.accepted, report.rejected), (2, 1));
    assert_eq!(env.available(), 0);
    let rejected: Vec<_> = env
        .store
        .orders()
        .into_iter()
        .filter(|o| o.status == OrderStatus::Rejected)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].quantity.get(), rejected[0].reason),
        (2, Some(Reason::SoldOut))
    );
}

#[tokio::test]
async fn a_redelivery_of_a_decided_order_is_a_no_op() {
    // GIVEN alice's order, decided
    let env = Env::on_sale().await;
    env.place_ok("alice", "k", 2).await;
    let message = env.queue.sent()[0].clone();
    env.deliver().await;
    let before = env.store.snapshot();
    // WHEN SQS delivers its message again
    let (failed, report) = env
        .process(sqs_event(&[("again".into(), message_body(&message))]))
        .await;
    // THEN it succeeds without deciding anything or taking more stock
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!(
        (report.accepted, report.rejected, report.already_decided),
        (0, 0, 1)
    );
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn a_duplicate_inside_one_batch_is_decided_once() {
    // GIVEN alice's order delivered twice in the same batch
    let env = Env::on_sale().await;
    env.place_ok("alice", "k", 2).await;
    let body = message_body(&env.queue.take()[0]);
    // WHEN the batch is processed
    let (failed, report) = env
        .process(sqs_event(&[("a".into(), body.clone()), ("b".into(), body)]))
        .await;
    // THEN both messages succeed and only 2 units are taken
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!(report.accepted, 1);
    assert_eq!(env.available(), 8);
}

#[tokio::test]
async fn a_record_that_is_not_an_order_is_the_only_failure_of_its_batch() {
    // GIVEN two real orders
    let env = Env::on_sale().await;
    let a = env.place_ok("alice", "k", 1).await;
    let b = env.place_ok("bob", "k", 1).await;
    let sent = env.queue.take();
    // WHEN they arrive in a batch with records that are not orders
    let event = sqs_event(&[
        ("m-a".into(), message_body(&sent[0])),
        ("junk".into(), "not an order".into()),
        ("extra-field".into(), r#"{"order_id":"0123456789abcdef0123456789abcdef","sku":"SKU-1","quantity":1,"user_id":"x","status":"pending"}"#.into()),
        ("m-b".into(), message_body(&sent[1])),
    ]);
    let (failed, report) = env.process(event).await;
    // THEN only those records are reported failed, and both orders are decided
    assert_eq!(failed, vec!["extra-field", "junk"]);
    assert_eq!((report.accepted, report.failed), (2, 2));
    assert_eq!(env.status(&a), OrderStatus::Pending);
    assert_eq!(env.status(&b), OrderStatus::Pending);
}

#[tokio::test]
async fn a_message_that_disagrees_with_its_stored_order_is_acknowledged_and_not_decided() {
    // GIVEN alice's order for 1
    let env = Env::on_sale().await;
    let id = env.place_ok("alice", "k", 1).await;
    let mut forged = env.queue.take()[0].clone();
    // WHEN a message names her order but claims 5 units, and another names no order at all
    forged.quantity = Quantity::new(5).expect("valid");
    let mut ghost = forged.clone();
    ghost.order_id = id_for("alice", "never-written");
    let (failed, report) = env
        .process(sqs_event(&[
            ("forged".into(), message_body(&forged)),
            ("ghost".into(), message_body(&ghost)),
        ]))
        .await;
    // THEN both are acknowledged (no retry could change them, and none may reach the DLQ) and
    // counted, and the order waits, untouched
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(report.ignored, 2);
    assert_eq!(env.status(&id), OrderStatus::Queued);
    assert_eq!(env.available(), 10);
}

#[tokio::test]
async fn a_buyer_cannot_queue_more_than_the_purchase_limit_and_the_excess_writes_nothing() {
    // GIVEN a limit of 2 per buyer, and alice with 2 orders of 1 queued
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10,"per_user_limit":2}"#).await;
    let first = env.place_ok("alice", "k-1", 1).await;
    env.place_ok("alice", "k-2", 1).await;
    assert_eq!(env.store.admitted(&sku(SKU), &user("alice")), 2);
    // WHEN she orders a third, or one order of 3 on its own
    // THEN each is refused 409 purchase_limit at once, and nothing is written or enqueued
    env.assert_place_refused(Req::place_order("alice", "k-3", ONE), 409, "purchase_limit")
        .await;
    let three = json!({"sku": SKU, "quantity": 3}).to_string();
    env.assert_place_refused(
        Req::place_order("bob", "k-1", &three),
        409,
        "purchase_limit",
    )
    .await;
    // AND a replay of an order she placed still answers it, limit or not
    let replay = env.place(Req::place_order("alice", "k-1", ONE)).await;
    assert_eq!((replay.status, replay.order_id()), (202, first));
    // AND bob has an allowance of his own
    env.place_ok("bob", "k-2", 2).await;
    env.assert_place_refused(Req::place_order("bob", "k-3", ONE), 409, "purchase_limit")
        .await;

    // WHEN the queue is decided
    let (failed, report) = env.deliver().await;
    // THEN every admitted order gets its units: 2 each, none rejected for the limit
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!((report.accepted, report.rejected), (3, 0));
    assert_eq!(env.store.bought(&sku(SKU), &user("alice")), 2);
    assert_eq!(env.store.bought(&sku(SKU), &user("bob")), 2);
    assert_eq!(env.available(), 6);
    assert_audit_clean(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_orders_from_one_buyer_with_a_limit_of_two_sell_exactly_two() {
    // GIVEN plenty of stock and a limit of 2 per buyer
    let env = Env::with_product(r#"{"name":"Hot phone","stock":100,"per_user_limit":2}"#).await;
    // WHEN alice sends 50 orders of one unit at once, each with its own key
    let place = std::sync::Arc::new(
        PlaceOrder::new(env.store.clone(), env.queue.clone()).with_rate_limit(env.store.clone()),
    );
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let place = place.clone();
            let req = Req::place_order("alice", &format!("k-{i}"), ONE);
            tokio::spawn(async move { Resp::from(place.handle(req.build()).await) })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.expect("task");
        if r.status != 202 {
            assert_error(&r, 409, "purchase_limit");
        }
        statuses.push(r.status);
    }
    // THEN exactly 2 are admitted and enqueued; the other 48 wrote nothing
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 2);
    assert_eq!(env.queue.sent().len(), 2);
    assert_eq!(env.store.orders().len(), 2);
    // AND once decided she holds exactly 2 units
    let (failed, report) = env.deliver().await;
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!((report.accepted, report.rejected), (2, 0));
    assert_eq!(env.available(), 98);
    assert_eq!(env.store.bought(&sku(SKU), &user("alice")), 2);
    assert_audit_clean(&env);
}

#[tokio::test]
async fn a_rejected_canceled_or_refunded_order_gives_its_admission_back() {
    // GIVEN one unit and a limit of 1, alice's order queued before bob's
    let env = Env::with_product(r#"{"name":"Hot phone","stock":1,"per_user_limit":1}"#).await;
    let a = env.place_ok("alice", "k-1", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let b = env.place_ok("bob", "k-1", 1).await;
    // WHEN they are decided: first come, first served
    env.deliver().await;
    assert_eq!(env.status(&a), OrderStatus::Pending);
    assert_eq!(
        env.store.order(&b).map(|o| o.reason),
        Some(Some(Reason::SoldOut))
    );
    // THEN his admission came back with the rejection: with new stock he may order again
    assert_eq!(env.store.admitted(&sku(SKU), &user("bob")), 0);
    env.put_product(r#"{"name":"Hot phone","stock":1,"per_user_limit":1}"#, 200)
        .await;
    env.pending_order("bob", "k-2", 1).await;
    assert_eq!(env.store.admitted(&sku(SKU), &user("bob")), 1);
    // AND alice, at her limit, may not order until she cancels
    env.store.edit_product(&sku(SKU), |p| p.sold_out = false);
    env.assert_place_refused(Req::place_order("alice", "k-2", ONE), 409, "purchase_limit")
        .await;
    let r = env
        .advance(Req::advance("alice", false, a.as_str(), "cancel"))
        .await;
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(env.store.admitted(&sku(SKU), &user("alice")), 0);
    // WHEN she orders again, pays, and asks for a refund
    let again = env.pending_order("alice", "k-2", 1).await;
    env.advance(Req::advance("alice", false, again.as_str(), "pay"))
        .await;
    assert_eq!(env.store.admitted(&sku(SKU), &user("alice")), 1);
    let r = env
        .advance(Req::advance("alice", false, again.as_str(), "refund"))
        .await;
    // THEN the refund gives it back too
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(env.store.admitted(&sku(SKU), &user("alice")), 0);
    assert_eq!(env.available(), 1);
    assert_audit_clean(&env);
}

#[tokio::test]
async fn the_processor_still_enforces_the_limit_for_orders_admitted_before_it_was_set() {
    // GIVEN alice queued 3 orders of 1 while the product had no limit, then a limit of 2
    let env = Env::on_sale().await;
    for key in ["k-1", "k-2", "k-3"] {
        env.place_ok("alice", key, 1).await;
    }
    env.store
        .edit_product(&sku(SKU), |p| p.per_user_limit = Some(2));
    env.place_ok("bob", "k-1", 2).await;
    // WHEN the batch is decided
    let (failed, report) = env.deliver().await;
    // THEN the commit's buyer counters hold the line: she gets 2, the third is rejected
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!((report.accepted, report.rejected), (3, 1));
    let alice: Vec<_> = env
        .store
        .orders()
        .into_iter()
        .filter(|o| o.owner == user("alice"))
        .collect();
    let rejected: Vec<_> = alice.iter().filter_map(|o| o.reason).collect();
    assert_eq!(rejected, vec![Reason::PurchaseLimit]);
    assert_eq!(env.store.bought(&sku(SKU), &user("alice")), 2);
    assert_eq!(env.store.bought(&sku(SKU), &user("bob")), 2);
    assert_eq!(env.available(), 6);

    // WHEN she orders again in a later batch (admitted: her earlier orders were not counted
    // at admission)
    let later = env.place_ok("alice", "k-4", 1).await;
    env.deliver().await;
    // THEN what she bought before still counts
    let o = env.store.order(&later).expect("stored");
    assert_eq!(
        (o.status, o.reason),
        (OrderStatus::Rejected, Some(Reason::PurchaseLimit))
    );
    assert_eq!(env.store.admitted(&sku(SKU), &user("alice")), 0);
}

#[tokio::test]
async fn orders_admitted_while_the_sale_was_open_are_honoured_after_it_closes() {
    // GIVEN an order admitted during the sale, and the sale closed before it was decided
    let env = Env::on_sale().await;
    let id = env.place_ok("alice", "k", 1).await;
    let now = flash_domain::clock::now_ms();
    env.store
        .edit_product(&sku(SKU), |p| p.sale_ends_at = Some(now + 1));
    // WHEN it is decided after the close
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (failed, _) = env.deliver().await;
    // THEN it is accepted, because the window is judged when the order was admitted
    assert!(failed.is_empty());
    assert_eq!(env.status(&id), OrderStatus::Pending);
}

/// Alice's and bob's queued orders for one unit each of 10, and the table as it is then.
async fn two_queued_orders() -> (Env, flash_tests::fake::State) {
    let env = Env::on_sale().await;
    env.place_ok("alice", "k", 1).await;
    env.place_ok("bob", "k", 1).await;
    let before = env.store.snapshot();
    (env, before)
}

#[tokio::test]
async fn a_store_outage_fails_the_batch_items_and_decides_nothing() {
    // GIVEN two orders and a table that fails on the group commit
    let (env, before) = two_queued_orders().await;
    let sent = env.queue.sent();
    env.store.fail_on("commit", 1);
    // WHEN the batch is processed
    let (failed, report) = env.deliver().await;
    // THEN both messages are handed back for a retry and nothing is decided
    assert_eq!(failed, vec!["m0", "m1"]);
    assert_eq!(report.accepted, 0);
    assert_eq!(env.store.snapshot(), before);

    // WHEN the same messages come back with the table working again
    let retry: Vec<(String, String)> = sent
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("r{i}"), message_body(m)))
        .collect();
    let (failed, report) = env.process(sqs_event(&retry)).await;
    // THEN both are decided
    assert!(failed.is_empty());
    assert_eq!(report.accepted, 2);
}

#[tokio::test]
async fn a_failed_order_read_fails_every_item_of_the_batch() {
    // GIVEN two orders and a table that fails on the batch read
    let (env, before) = two_queued_orders().await;
    env.store.fail_on("get_orders", 1);
    // WHEN the batch is processed
    let (failed, _) = env.deliver().await;
    // THEN every message is reported failed and nothing changed
    assert_eq!(failed, vec!["m0", "m1"]);
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn a_forged_message_reusing_an_order_id_is_ignored_and_the_genuine_one_decides_it() {
    for forged_first in [true, false] {
        // GIVEN alice's queued order and a forged message naming it with another quantity
        let env = Env::on_sale().await;
        let id = env.place_ok("alice", "a1", 1).await;
        let genuine = env.queue.take().pop().expect("one message");
        let mut forged = genuine.clone();
        forged.quantity = flash_domain::Quantity::new(5).expect("valid");
        let mut records = vec![
            (
                "genuine".to_owned(),
                flash_tests::fake::message_body(&genuine),
            ),
            (
                "forged".to_owned(),
                flash_tests::fake::message_body(&forged),
            ),
        ];
        if forged_first {
            records.reverse();
        }
        // WHEN both arrive in one batch
        let (failed, _) = env
            .process(flash_tests::fixtures::sqs_event(&records))
            .await;
        // THEN no record fails, and the order is decided as stored
        assert!(
            failed.is_empty(),
            "forged first: {forged_first}: {failed:?}"
        );
        assert_eq!(env.status(&id), OrderStatus::Pending);
        assert_eq!(env.available(), 9);
    }
}
