//! `POST /orders`: admission, idempotency, validation, refusals, outages and the re-drive copy.

use super::*;

#[tokio::test]
async fn an_order_is_accepted_queued_with_its_location_and_enqueued_once() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN alice orders 2
    let r = env
        .place(Req::place_order(
            "alice",
            "k-1",
            r#"{"sku":"SKU-1","quantity":2}"#,
        ))
        .await;
    // THEN the answer is 202 with exactly the contract's fields
    assert_eq!(r.status, 202, "body: {}", r.body);
    let id = r.order_id();
    assert_eq!(
        r.body,
        json!({"order_id": id.as_str(), "status": "queued", "location": format!("/orders/{id}")})
    );
    // AND the order is stored queued for alice, without touching stock
    let order = env.store.order(&id).expect("stored");
    assert_eq!(
        (order.status, order.owner, order.quantity.get()),
        (OrderStatus::Queued, user("alice"), 2)
    );
    assert_eq!(env.available(), 10);
    // AND exactly one message names it
    assert_eq!(
        env.queue.sent(),
        vec![OrderMessage {
            order_id: id,
            sku: sku(SKU),
            quantity: Quantity::new(2).expect("valid"),
            user_id: user("alice"),
        }]
    );
}

#[tokio::test]
async fn a_replay_with_the_same_key_and_body_returns_the_same_order() {
    // GIVEN alice placed an order with key k-1
    let env = Env::on_sale().await;
    let first = env.place(Req::place_order("alice", "k-1", ONE)).await;
    // WHEN she sends it again, re-serialised with other key order and whitespace
    let replay = env
        .place(Req::place_order(
            "alice",
            "k-1",
            "{ \"quantity\": 1,\n  \"sku\": \"SKU-1\" }",
        ))
        .await;
    // THEN she gets the same answer and there is still one order
    assert_eq!((first.status, replay.status), (202, 202));
    assert_eq!(first.body, replay.body);
    assert_eq!(env.store.orders().len(), 1);
}

#[tokio::test]
async fn a_replay_after_the_order_was_decided_answers_its_status_as_it_is_now() {
    // GIVEN alice's order was accepted by the processor
    let (env, id) = Env::with_alices_pending_order().await;
    // WHEN she replays the request
    let replay = env.place(Req::place_order("alice", "k-1", ONE)).await;
    // THEN the answer names the same order, pending now, and nothing is enqueued again
    assert_eq!(replay.status, 202);
    assert_eq!(replay.order_id(), id);
    assert_eq!(replay.body["status"], "pending");
    assert!(env.queue.sent().is_empty());
    assert_eq!(env.store.orders().len(), 1);
}

#[tokio::test]
async fn a_replay_after_the_sale_closed_still_answers_the_order() {
    // GIVEN alice's order was admitted while the sale was open
    let env = Env::on_sale().await;
    let id = env.place_ok("alice", "k-1", 1).await;
    // AND the sale has closed since
    env.store
        .edit_product(&sku(SKU), |p| p.sale_ends_at = Some(0));
    // WHEN she replays the request (say her first answer was lost)
    let replay = env.place(Req::place_order("alice", "k-1", ONE)).await;
    // THEN, as the contract says of replays, she gets the same order as it is now
    assert_eq!(replay.status, 202, "body: {}", replay.body);
    assert_eq!(replay.order_id(), id);
    assert_eq!(env.store.orders().len(), 1);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_refused_as_reused() {
    // GIVEN alice placed an order for 1 with key k-1
    let env = Env::on_sale().await;
    let id = env.place_ok("alice", "k-1", 1).await;
    let stored = env.store.order(&id);
    // WHEN she sends k-1 again for 2
    // THEN it is refused and the first order is left as it was
    env.assert_k1_reused(r#"{"sku":"SKU-1","quantity":2}"#)
        .await;
    assert_eq!(env.store.order(&id), stored);
}

#[tokio::test]
async fn two_callers_with_the_same_key_get_two_different_orders() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN alice and bob both use key "1"
    let a = env.place_ok("alice", "1", 1).await;
    let b = env.place_ok("bob", "1", 1).await;
    // THEN each has an order of their own
    assert_ne!(a, b);
    assert_eq!(env.store.order(&a).expect("stored").owner, user("alice"));
    assert_eq!(env.store.order(&b).expect("stored").owner, user("bob"));
    assert_eq!(env.queue.sent().len(), 2);
}

#[tokio::test]
async fn a_missing_empty_overlong_or_non_ascii_idempotency_key_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    let base = Req::place_order("alice", "k", ONE);
    // WHEN the key is missing, empty, 129 characters, non-ASCII or has a control character
    // THEN each is refused as invalid and nothing is written
    let cases = [
        base.clone().without_header("idempotency-key"),
        base.clone().header("idempotency-key", ""),
        base.clone().header("idempotency-key", &"k".repeat(129)),
        base.clone().header("idempotency-key", "clé"),
        base.clone().header("idempotency-key", "a\tb"),
    ];
    for req in cases {
        env.assert_place_refused(req, 400, "invalid_request").await;
    }
}

#[tokio::test]
async fn an_idempotency_key_of_128_printable_characters_is_accepted() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN the key is the longest allowed, with spaces and punctuation
    let key = format!("{} ~!{}", "k".repeat(100), "z".repeat(25));
    assert_eq!(key.len(), 128);
    // THEN the order is accepted
    assert_eq!(env.place_ok("alice", &key, 1).await, id_for("alice", &key));
}

#[tokio::test]
async fn a_quantity_that_is_not_a_positive_integer_up_to_the_maximum_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN the quantity is zero, negative, fractional, a string, huge, null or missing
    // THEN each is refused as invalid and nothing is written
    for q in [
        "0",
        "-1",
        "1.5",
        "\"1\"",
        "1e9",
        "4294967296",
        "1001",
        "null",
        "true",
        "[1]",
    ] {
        let body = format!(r#"{{"sku":"SKU-1","quantity":{q}}}"#);
        env.assert_invalid_order(&body).await;
    }
    env.assert_invalid_order(r#"{"sku":"SKU-1"}"#).await;
}

#[tokio::test]
async fn a_body_with_an_unknown_field_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN the body tries to set anything but sku and quantity
    // THEN it is refused as invalid and nothing is written
    for extra in [
        r#""status":"paid""#,
        r#""price":1"#,
        r#""user_id":"bob""#,
        r#""owner":"bob""#,
    ] {
        let body = format!(r#"{{"sku":"SKU-1","quantity":1,{extra}}}"#);
        env.assert_invalid_order(&body).await;
    }
}

#[tokio::test]
async fn a_body_with_a_duplicate_field_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN a field appears twice (which value wins would be up to the parser)
    // THEN it is refused as invalid
    for body in [
        r#"{"sku":"SKU-1","quantity":1,"quantity":2}"#,
        r#"{"sku":"SKU-1","sku":"SKU-2","quantity":1}"#,
    ] {
        env.assert_invalid_order(body).await;
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_json_order_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN the body is declared JSON but is not a JSON object of an order, or is absent
    // THEN it is refused as invalid
    for body in [
        "sku=SKU-1&quantity=1",
        r#"{"sku":"SKU-1","quantity":1"#,
        r#"[{"sku":"SKU-1","quantity":1}]"#,
        "\"SKU-1\"",
        "{}",
        "",
    ] {
        env.assert_invalid_order(body).await;
    }
}

#[tokio::test]
async fn a_body_that_is_a_json_array_of_the_field_values_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN the body lists an order's values in an array instead of naming them in an object
    // THEN it is refused as invalid like any other wrong type, and nothing is written
    env.assert_invalid_order(r#"["SKU-1",1]"#).await;
    // AND the same holds for a product spec
    let before = env.store.snapshot();
    let r = env
        .products(Req::put_product(
            SKU,
            r#"["Hot phone",5,null,null,null,null,null]"#,
        ))
        .await;
    assert_error(&r, 400, "invalid_request");
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_an_unsupported_media_type() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN a valid order body comes as text/plain, form data, or with no content type
    // THEN it is refused as an unsupported media type
    let base = Req::place_order("alice", "k", ONE);
    for req in [
        base.clone().header("content-type", "text/plain"),
        base.clone()
            .header("content-type", "application/x-www-form-urlencoded"),
        base.clone().without_header("content-type"),
    ] {
        env.assert_place_refused(req, 415, "unsupported_media_type")
            .await;
    }
    // AND a charset parameter on JSON is fine
    let r = env
        .place(base.header("content-type", "application/json; charset=utf-8"))
        .await;
    assert_eq!(r.status, 202, "body: {}", r.body);
}

#[tokio::test]
async fn a_body_over_16_kib_is_too_large() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN the body is 17 KiB
    let body = format!(
        r#"{{"sku":"SKU-1","quantity":1,"pad":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    // THEN it is refused as too large, before anything else is looked at
    env.assert_body_refused(&body, 413, "payload_too_large")
        .await;
}

#[tokio::test]
async fn a_body_of_exactly_16_kib_is_accepted() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN a valid order is padded with whitespace to exactly the limit
    let body = format!("{ONE}{}", " ".repeat(16 * 1024 - ONE.len()));
    assert_eq!(body.len(), 16 * 1024);
    let r = env.place(Req::place_order("alice", "k", &body)).await;
    // THEN it is accepted
    assert_eq!(r.status, 202, "body: {}", r.body);
}

#[tokio::test]
async fn a_request_without_an_authorizer_is_unauthorized() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN the request carries no authorizer context, or claims without a subject
    let mut no_sub = Req::place_order("alice", "k", ONE);
    if let Some(claims) = no_sub.0["requestContext"]["authorizer"]["jwt"]["claims"].as_object_mut()
    {
        claims.remove("sub");
    }
    // THEN it is unauthorized and nothing is written
    for req in [Req::place_order("alice", "k", ONE).anonymous(), no_sub] {
        env.assert_place_refused(req, 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn an_order_before_the_sale_starts_or_after_it_ends_is_refused_as_not_open() {
    for window in [
        r#""sale_starts_at":"2099-01-01T00:00:00Z""#,
        r#""sale_ends_at":"2000-01-01T00:00:00Z""#,
        r#""sale_starts_at":"1999-01-01T00:00:00Z","sale_ends_at":"2000-01-01T00:00:00Z""#,
    ] {
        // GIVEN SKU-1 whose sale has not started, or has ended
        let env =
            Env::with_product(&format!(r#"{{"name":"Hot phone","stock":10,{window}}}"#)).await;
        // WHEN alice orders
        // THEN she is told the sale is not open and nothing is written
        env.assert_body_refused(ONE, 409, "sale_not_open").await;
    }
}

#[tokio::test]
async fn once_the_last_unit_sells_new_orders_are_refused_sold_out_without_a_write() {
    // GIVEN SKU-1 with 2 units, both sold to alice and bob
    let env = Env::with_product(r#"{"name":"Hot phone","stock":2}"#).await;
    let first = env.pending_order("alice", "a1", 1).await;
    env.pending_order("bob", "b1", 1).await;
    assert!(env.store.product(&sku(SKU)).expect("product").sold_out);
    // WHEN carol orders
    // THEN she is refused sold_out and nothing is written or enqueued
    env.assert_place_refused(Req::place_order("carol", "c1", ONE), 409, "sold_out")
        .await;
    // AND alice's replay of her accepted order still answers it
    let replay = env.place(Req::place_order("alice", "a1", ONE)).await;
    assert_eq!((replay.status, replay.order_id()), (202, first.clone()));
    // WHEN alice cancels, the unit comes back and the flag with it
    let r = env
        .advance(Req::advance("alice", false, first.as_str(), "cancel"))
        .await;
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert!(!env.store.product(&sku(SKU)).expect("product").sold_out);
    // THEN carol is admitted
    env.place_ok("carol", "c1", 1).await;
}

#[tokio::test]
async fn a_warm_function_reads_a_product_low_on_stock_again_sooner_and_sees_it_sold_out() {
    // GIVEN SKU-1 hinted low on stock, and one warm function that has just read it
    let env = Env::on_sale().await;
    env.store.edit_product(&sku(SKU), |p| p.low_stock = true);
    let warm = PlaceOrder::new(env.store.clone(), env.queue.clone());
    let place = |who: &str, key: &str| warm.handle(Req::place_order(who, key, ONE).build());
    assert_eq!(Resp::from(place("alice", "a1").await).status, 202);
    // WHEN the product is flagged sold out and twice the low-stock cache time passes, well
    // within the usual one
    env.store.edit_product(&sku(SKU), |p| p.sold_out = true);
    assert!(LOW_STOCK_TTL * 2 < PRODUCT_TTL);
    tokio::time::sleep(LOW_STOCK_TTL * 2).await;
    // THEN the same function refuses bob: it read the product again
    assert_error(&Resp::from(place("bob", "b1").await), 409, "sold_out");
}

#[test]
fn only_a_product_low_on_stock_and_not_sold_out_is_cached_for_the_shorter_time() {
    let mut p = flash_tests::given::product(sku(SKU), 1, 10, None);
    assert_eq!(product_ttl(&p), PRODUCT_TTL);
    p.low_stock = true;
    assert_eq!(product_ttl(&p), LOW_STOCK_TTL);
    // Sold out, the flag is what matters: a cleared one reaches buyers at the usual pace.
    p.sold_out = true;
    assert_eq!(product_ttl(&p), PRODUCT_TTL);
}

#[tokio::test]
async fn stock_returned_after_a_processor_read_the_product_keeps_it_off_sold_out() {
    // GIVEN SKU-1's only unit sold to alice, and a processor that read the product then
    let env = Env::with_product(r#"{"name":"Hot phone","stock":1}"#).await;
    let first = env.pending_order("alice", "a1", 1).await;
    env.store.edit_product(&sku(SKU), |p| p.sold_out = false);
    let read_before = env.store.product(&sku(SKU)).expect("product");
    // WHEN alice cancels before that processor flags the product sold out
    let r = env
        .advance(Req::advance("alice", false, first.as_str(), "cancel"))
        .await;
    assert_eq!(r.status, 200, "body: {}", r.body);
    // THEN the flag is refused, so the returned unit stays on sale
    assert!(!env.store.mark_sold_out(&read_before).await.expect("store"));
    assert!(!env.store.product(&sku(SKU)).expect("product").sold_out);
    env.place_ok("bob", "b1", 1).await;
}

#[tokio::test]
async fn an_order_for_an_unknown_sku_is_not_found() {
    // GIVEN SKU-1 only
    let env = Env::on_sale().await;
    // WHEN alice orders SKU-2
    // THEN the product is not found and nothing is written
    env.assert_body_refused(r#"{"sku":"SKU-2","quantity":1}"#, 404, "not_found")
        .await;
}

#[tokio::test]
async fn a_sku_that_could_forge_a_key_or_is_empty_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN the sku holds the key delimiter, is empty, too long or not a string
    // THEN it is refused as invalid, without reaching the table
    let long = "S".repeat(65);
    for sku in [
        "\"SKU-1#SHARD#000\"",
        "\"\"",
        "\"SKU 1\"",
        &format!("\"{long}\""),
        "1",
        "null",
    ] {
        let body = format!(r#"{{"sku":{sku},"quantity":1}}"#);
        let calls = env.store.calls();
        env.assert_invalid_order(&body).await;
        assert_eq!(env.store.calls(), calls, "{sku} reached the store");
    }
}

#[tokio::test]
async fn a_store_outage_answers_503_with_retry_after_and_writes_nothing() {
    // GIVEN SKU-1 on sale
    let env = Env::on_sale().await;
    // WHEN the table fails on the product read
    env.store.fail(1);
    // THEN the caller is told to retry later and nothing is written or sent
    env.assert_body_refused(ONE, 503, "unavailable").await;

    // WHEN the table fails on the order write instead
    env.store.fail_on("create_order", 1);
    // THEN the same, and the answer names nothing internal
    let r = env.place(Req::place_order("alice", "k", ONE)).await;
    assert_error(&r, 503, "unavailable");
    let text = r.body.to_string();
    assert!(
        !text.contains("create_order") && !text.contains("injected"),
        "{text}"
    );
    assert!(env.store.orders().is_empty());
    assert!(env.queue.sent().is_empty());

    // WHEN the table is back and the caller retries
    // THEN the order is accepted
    assert_eq!(env.place_ok("alice", "k", 1).await, id_for("alice", "k"));
}

/// SKU-1 on sale, and alice's order under `k-1` placed while the send after the write fails
/// once: she is told to retry (503) and her order waits queued. The world and the order's id.
async fn ordered_while_the_send_fails() -> (Env, OrderId) {
    let env = Env::on_sale().await;
    env.queue.fail_on("send", 1);
    let r = env.place(Req::place_order("alice", "k-1", ONE)).await;
    assert_error(&r, 503, "unavailable");
    let id = id_for("alice", "k-1");
    assert_eq!(env.status(&id), OrderStatus::Queued);
    (env, id)
}

#[tokio::test]
async fn a_queue_outage_after_the_write_answers_503_and_a_retry_with_the_same_key_enqueues_the_order(
) {
    // GIVEN SKU-1 on sale and a queue whose send after the write fails once
    // WHEN alice orders
    // THEN she is told to retry, and her order waits queued (the write came first)
    let (env, id) = ordered_while_the_send_fails().await;
    assert!(env.queue.sent().is_empty());

    // WHEN she retries with the same key
    let retry = env.place(Req::place_order("alice", "k-1", ONE)).await;
    // THEN the same order is accepted and this time enqueued, still only one order
    assert_eq!(retry.status, 202, "body: {}", retry.body);
    assert_eq!(retry.order_id(), id);
    assert_eq!(env.store.orders().len(), 1);
    assert_eq!(env.queue.sent().len(), 1);
    assert_eq!(env.queue.sent()[0].order_id, id);
    // AND the processor decides it
    let (failed, report) = env.deliver().await;
    assert!(failed.is_empty());
    assert_eq!(report.accepted, 1);
    assert_eq!(env.status(&id), OrderStatus::Pending);
}

#[tokio::test]
async fn an_order_whose_send_failed_and_was_never_retried_is_decided_by_its_re_drive_copy() {
    // GIVEN alice's order written but not enqueued (the send after the write failed), and
    // alice never retries
    let (env, id) = ordered_while_the_send_fails().await;
    // WHEN the copy sent before the write arrives, fifteen minutes later
    let later = env.queue.take_later();
    assert_eq!(later.len(), 1);
    assert_eq!(
        (later[0].0.order_id.clone(), later[0].1),
        (id.clone(), REDRIVE_AFTER)
    );
    let (failed, report) = env
        .process(sqs_event(&[("copy".into(), message_body(&later[0].0))]))
        .await;
    // THEN it decides the order
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(report.accepted, 1);
    assert_eq!(env.status(&id), OrderStatus::Pending);
}

#[tokio::test]
async fn when_the_re_drive_copy_cannot_be_sent_nothing_is_written() {
    // GIVEN SKU-1 on sale and a queue that refuses the delayed copy once
    let env = Env::on_sale().await;
    env.queue.fail_on("send_later", 1);
    let before = env.store.snapshot();
    // WHEN alice orders
    let r = env.place(Req::place_order("alice", "k-1", ONE)).await;
    // THEN she is told to retry and no order exists that nothing would re-drive
    assert_error(&r, 503, "unavailable");
    assert_eq!(env.store.snapshot(), before);
    assert!(env.queue.sent().is_empty());
    // AND her retry goes through
    assert_eq!(
        env.place_ok("alice", "k-1", 1).await,
        id_for("alice", "k-1")
    );
}
