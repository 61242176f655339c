//! The per-caller rate limit on the write routes.

use super::*;

/// A bucket of `capacity` that refills one token every 100 s: nothing comes back during a
/// test, so the counts are exact.
fn slow_bucket(capacity: u32) -> flash_domain::token_bucket::TokenBucket {
    flash_domain::token_bucket::TokenBucket::new(capacity, 0.01).expect("valid bucket")
}

#[tokio::test]
async fn a_caller_over_the_rate_gets_429_with_retry_after_and_nothing_is_written() {
    // GIVEN a bucket of 3 tokens per caller on the write routes
    let env = Env::on_sale().await;
    env.store.set_rate_limit(Some(slow_bucket(3)));
    // WHEN alice places 3 orders, then a fourth
    for key in ["k-1", "k-2", "k-3"] {
        env.place_ok("alice", key, 1).await;
    }
    let (before, sent) = (env.store.snapshot(), env.queue.sent().len());
    let r = env.place(Req::place_order("alice", "k-4", ONE)).await;
    // THEN the fourth is refused 429 rate_limited, told to come back when a token is back
    // (one refill interval, 100 s), and nothing is written or sent
    assert_error(&r, 429, "rate_limited");
    let secs: u32 = r
        .retry_after
        .as_deref()
        .and_then(|s| s.parse().ok())
        .expect("secs");
    assert!((99..=100).contains(&secs), "Retry-After {secs}");
    assert_eq!(env.store.snapshot(), before);
    assert_eq!(env.queue.sent().len(), sent);
    // AND her other write routes are limited by the same bucket
    env.deliver().await;
    let id = env.store.orders()[0].id.clone();
    assert_eq!(env.status(&id), OrderStatus::Pending);
    let pay = env.alice_does(&id, "pay").await;
    assert_error(&pay, 429, "rate_limited");
    // AND bob has a bucket of his own
    env.place_ok("bob", "k-1", 1).await;
}

#[tokio::test]
async fn requests_refused_before_any_write_cost_no_token() {
    // GIVEN a bucket of 1 token, and a product that is not on sale yet
    let env = Env::with_product(
        r#"{"name":"Hot phone","stock":10,"sale_starts_at":"2999-01-01T00:00:00Z"}"#,
    )
    .await;
    env.store.set_rate_limit(Some(slow_bucket(1)));
    // WHEN alice sends bad requests and orders before the sale, many times
    for i in 0..5 {
        let key = format!("k-{i}");
        env.assert_place_refused(Req::place_order("alice", &key, ONE), 409, "sale_not_open")
            .await;
        env.assert_place_refused(
            Req::place_order("alice", &key, "{}"),
            400,
            "invalid_request",
        )
        .await;
    }
    // THEN her token is still there for the write that matters
    env.store
        .edit_product(&sku(SKU), |p| p.sale_starts_at = None);
    env.place_ok("alice", "k-ok", 1).await;
    assert_error(
        &env.place(Req::place_order("alice", "k-next", ONE)).await,
        429,
        "rate_limited",
    );
}

#[tokio::test]
async fn duplicates_of_an_admitted_order_get_its_202_whatever_the_bucket_holds() {
    // GIVEN alice's admitted order, and her bucket emptied by a second order
    let env = Env::on_sale().await;
    env.store.set_rate_limit(Some(slow_bucket(2)));
    let first = env.place(Req::place_order("alice", "k-1", ONE)).await;
    assert_eq!(first.status, 202, "body: {}", first.body);
    env.place_ok("alice", "k-2", 1).await;
    assert_error(
        &env.place(Req::place_order("alice", "k-3", ONE)).await,
        429,
        "rate_limited",
    );
    // WHEN 20 duplicates of the first request arrive at once
    let replies = futures::future::join_all(
        (0..20).map(|_| env.place(Req::place_order("alice", "k-1", ONE))),
    )
    .await;
    // THEN every one gets the first answer, and there is still one order for the key
    for r in &replies {
        assert_eq!((r.status, &r.body), (202, &first.body));
    }
    assert_eq!(env.store.orders().len(), 2);
}

#[tokio::test]
async fn a_key_reused_with_another_body_gets_422_whatever_the_bucket_holds() {
    // GIVEN alice's order under k-1, then a burst that empties her bucket
    let env = Env::on_sale().await;
    env.store.set_rate_limit(Some(slow_bucket(3)));
    env.place_ok("alice", "k-1", 1).await;
    for key in ["k-2", "k-3"] {
        env.place_ok("alice", key, 1).await;
    }
    // WHEN she reuses k-1 for 2 units
    // THEN the stored order decides: 422, not 429, and nothing is written or sent
    env.assert_k1_reused(r#"{"sku":"SKU-1","quantity":2}"#)
        .await;
    // AND a new key is still refused by the rate limit
    env.assert_place_refused(Req::place_order("alice", "k-4", ONE), 429, "rate_limited")
        .await;
}

#[tokio::test]
async fn a_key_reused_with_a_body_naming_an_unknown_sku_gets_422_not_404() {
    // GIVEN alice's order under k-1
    let env = Env::on_sale().await;
    env.place_ok("alice", "k-1", 1).await;
    let unknown = r#"{"sku":"NO-SUCH-SKU","quantity":1}"#;
    // WHEN she reuses k-1 for a product that does not exist
    // THEN the key's order decides: 422
    env.assert_k1_reused(unknown).await;
    // AND with a fresh key the product is simply not found
    env.assert_place_refused(Req::place_order("alice", "k-2", unknown), 404, "not_found")
        .await;
}

#[tokio::test]
async fn an_admin_putting_products_is_rate_limited_too() {
    // GIVEN a bucket of 2 tokens
    let env = Env::default();
    env.store.set_rate_limit(Some(slow_bucket(2)));
    let spec = r#"{"name":"Hot phone","stock":1}"#;
    // WHEN the admin puts the product three times
    let first = env.products(Req::put_product(SKU, spec)).await;
    let second = env.products(Req::put_product(SKU, spec)).await;
    let before = env.store.snapshot();
    let third = env.products(Req::put_product(SKU, spec)).await;
    // THEN the third is refused and adds no stock
    assert_eq!((first.status, second.status), (201, 200));
    assert_error(&third, 429, "rate_limited");
    assert_eq!(env.store.snapshot(), before);
    assert_eq!(env.available(), 2);
}
