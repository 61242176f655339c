//! `PUT` and `GET /products/{sku}`.

use super::*;

#[tokio::test]
async fn a_buyer_may_not_put_a_product() {
    // GIVEN an empty table
    let env = Env::default();
    // WHEN a signed-in buyer PUTs a product
    let req = Req::put_product(SKU, r#"{"name":"Hot phone","stock":10}"#).caller("alice", false);
    let r = env.products(req).await;
    // THEN it is forbidden and nothing is written
    assert_error(&r, 403, "forbidden");
    assert_eq!(env.store.snapshot(), Default::default());
    // AND without any token it is unauthorized
    let anon = Req::put_product(SKU, r#"{"name":"Hot phone","stock":10}"#).anonymous();
    assert_error(&env.products(anon).await, 401, "unauthorized");
}

#[tokio::test]
async fn putting_a_new_product_creates_it_with_all_its_stock_available() {
    // GIVEN an empty table
    let env = Env::default();
    // WHEN an admin PUTs 250 units (more than one shard holds)
    let r = env
        .put_product(r#"{"name":"Hot phone","stock":250}"#, 201)
        .await;
    // THEN it is created (201) with every unit available, spread over its shards
    assert_eq!(
        (r.body["available"].clone(), r.body["sold_out"].clone()),
        (json!(250), json!(false))
    );
    let product = env.store.product(&sku(SKU)).expect("stored");
    assert_eq!((product.stock_added, product.shards), (250, 3));
    assert_eq!(env.available(), 250);
}

#[tokio::test]
async fn putting_an_existing_product_adds_stock_and_answers_200() {
    // GIVEN SKU-1 with 100 units
    let env = Env::with_product(r#"{"name":"Hot phone","stock":100}"#).await;
    // WHEN an admin PUTs 50 more with a new name and a limit
    let r = env
        .put_product(
            r#"{"name":"Hotter phone","stock":50,"per_user_limit":2}"#,
            200,
        )
        .await;
    // THEN it answered 200 with 150 available and the new settings
    assert_eq!(r.body["available"], 150);
    assert_eq!(r.body["name"], "Hotter phone");
    assert_eq!(r.body["per_user_limit"], 2);
    assert_eq!(
        env.store.product(&sku(SKU)).expect("stored").stock_added,
        150
    );
}

#[tokio::test]
async fn getting_a_product_shows_exactly_the_contract_fields() {
    // GIVEN SKU-1 with a sale window and a limit
    let env = Env::with_product(
        r#"{"name":"Hot phone","stock":7,"per_user_limit":2,
            "sale_starts_at":"2026-01-01T12:00:00Z","sale_ends_at":"2099-01-01T00:00:00Z"}"#,
    )
    .await;
    // WHEN a buyer reads it
    let r = env.products(Req::get_product("bob", SKU)).await;
    // THEN it answers 200 with the contract's fields
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(
        r.keys(),
        keys(&[
            "sku",
            "name",
            "available",
            "sold_out",
            "sale_starts_at",
            "sale_ends_at",
            "per_user_limit"
        ])
    );
    assert_eq!(r.body["sku"], SKU);
    assert_eq!(r.body["name"], "Hot phone");
    assert_eq!(r.body["available"], 7);
    assert_eq!(r.body["sold_out"], false);
    assert_eq!(r.body["per_user_limit"], 2);
    let starts = r.body["sale_starts_at"].as_str().expect("a timestamp");
    assert_eq!(parse_rfc3339(starts), parse_rfc3339("2026-01-01T12:00:00Z"));
    let ends = r.body["sale_ends_at"].as_str().expect("a timestamp");
    assert_eq!(parse_rfc3339(ends), parse_rfc3339("2099-01-01T00:00:00Z"));
}

#[tokio::test]
async fn getting_an_unknown_product_is_not_found() {
    // GIVEN SKU-1 only
    let env = Env::with_product(r#"{"name":"Hot phone","stock":7}"#).await;
    // WHEN a buyer reads SKU-2, or a SKU that cannot exist
    // THEN both are not found
    for s in ["SKU-2", "SKU#1"] {
        assert_error(
            &env.products(Req::get_product("bob", s)).await,
            404,
            "not_found",
        );
    }
}

#[tokio::test]
async fn a_bad_product_spec_is_invalid_and_writes_nothing() {
    // GIVEN SKU-1 with 10 units
    let env = Env::on_sale().await;
    let before = env.store.snapshot();
    // WHEN an admin PUTs a spec with no stock, an unknown field, a window that ends before it
    // starts, or a sku that could forge a key
    for (s, spec) in [
        (SKU, r#"{"name":"Hot phone","stock":0}"#),
        (SKU, r#"{"name":"Hot phone","stock":-1}"#),
        (SKU, r#"{"name":"Hot phone","stock":5,"price":100}"#),
        (
            SKU,
            r#"{"name":"Hot phone","stock":5,"sale_starts_at":"2026-01-02T00:00:00Z","sale_ends_at":"2026-01-01T00:00:00Z"}"#,
        ),
        (
            SKU,
            r#"{"name":"Hot phone","stock":5,"sale_starts_at":"tomorrow"}"#,
        ),
        (SKU, r#"{"stock":5}"#),
        (SKU, "not json"),
        ("SKU#2", r#"{"name":"Hot phone","stock":5}"#),
    ] {
        let r = env.products(Req::put_product(s, spec)).await;
        // THEN each is refused as invalid and nothing is written
        assert_error(&r, 400, "invalid_request");
        assert_eq!(env.store.snapshot(), before, "{spec} wrote");
    }
}
