//! `PUT /products/{sku}` on an existing product, safe to retry: a restock that leaves out a
//! setting keeps it and an explicit `null` clears it; with an `Idempotency-Key` a retried
//! request adds its stock once (same key and body: the same answer; another body: `422`
//! and nothing written), even when the first attempt's answer was lost after DynamoDB
//! committed it. Each scenario runs through the products handler twice: over the in-memory
//! store, and over DynamoDB Local (the local stack of `STACK_ENV`).

use flash_aws::DynamoStore;
use flash_domain::ports::Store;
use flash_domain::{Product, Sku};
use flash_tests::fake::FakeStore;
use flash_tests::fixtures::{json_body, Req};
use flash_tests::sdk_faults::{Rule, SdkFault, SdkFaults};
use flash_tests::stack;
use products::Products;
use serde_json::{json, Value};

/// The status and JSON body of one `PUT /products/{sku}` by `admin`, with `key` if any. Keys
/// name their SKU: DynamoDB Local keeps them from one run to the next.
async fn put<S: Store>(
    h: &Products<S>,
    admin: &str,
    sku: &str,
    key: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut req = Req::put_product(sku, &body.to_string()).caller(admin, true);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    let resp = h.handle(req.build()).await;
    (resp.status().as_u16(), json_body(&resp))
}

/// The product as stored, and the units on each of its shards.
async fn stored<S: Store>(h: &Products<S>, sku: &str) -> (Product, Vec<u64>) {
    let sku = Sku::parse(sku).expect("a valid sku");
    let product = h
        .store
        .get_product(&sku)
        .await
        .expect("the store answers")
        .expect("the product exists");
    let shards = h
        .store
        .read_shards(&product)
        .await
        .expect("the store answers")
        .iter()
        .map(|s| s.available)
        .collect();
    (product, shards)
}

fn fake() -> Products<FakeStore> {
    Products::new(FakeStore::new())
}

async fn dynamo() -> Products<DynamoStore> {
    Products::new(stack::store().await)
}

/// Two tests of one scenario, `<scenario>::in_memory` and `<scenario>::in_dynamodb`: over the
/// in-memory store and over DynamoDB Local.
macro_rules! on_both_stores {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test]
            async fn in_memory() {
                super::$scenario(super::fake()).await;
            }

            #[tokio::test]
            async fn in_dynamodb() {
                super::$scenario(super::dynamo().await).await;
            }
        }
    };
}

/// An admin creates `sku` with `spec`, which must answer 201.
async fn create<S: Store>(h: &Products<S>, sku: &str, spec: Value) {
    let (status, body) = put(h, "ops", sku, None, spec).await;
    assert_eq!(status, 201, "{body}");
}

/// A product spec of 10 units that sets every setting: a limit of 2, a sale window open from
/// 2026 to 2099 and a payment window of 60 s.
fn every_setting() -> Value {
    json!({"name": "Phone", "stock": 10, "per_user_limit": 2,
        "sale_starts_at": "2026-01-01T00:00:00Z", "sale_ends_at": "2099-01-01T00:00:00Z",
        "payment_window_seconds": 60})
}

fn sku(prefix: &str) -> String {
    stack::unique_sku(prefix)
}

async fn a_restock_that_leaves_out_the_settings_keeps_them<S: Store>(h: Products<S>) {
    // GIVEN a product on sale with a limit, a sale window and a payment window
    let sku = sku("KEEP");
    create(&h, &sku, every_setting()).await;
    // WHEN an admin restocks it naming only the name and the stock
    let (status, body) = put(&h, "ops", &sku, None, json!({"name": "Phone", "stock": 5})).await;
    // THEN the stock is added and every setting is as it was
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["available"], 15, "{body}");
    assert_eq!(
        body["per_user_limit"], 2,
        "the restock erased the limit: {body}"
    );
    assert_eq!(body["sale_starts_at"], "2026-01-01T00:00:00Z", "{body}");
    assert_eq!(body["sale_ends_at"], "2099-01-01T00:00:00Z", "{body}");
    let (product, _) = stored(&h, &sku).await;
    assert_eq!(
        (product.payment_window_seconds, product.stock_added),
        (60, 15)
    );
}

on_both_stores!(a_restock_that_leaves_out_the_settings_keeps_them);

async fn an_explicit_null_clears_a_setting_and_a_value_replaces_it<S: Store>(h: Products<S>) {
    // GIVEN a product with every setting
    let sku = sku("NULL");
    create(&h, &sku, every_setting()).await;
    // WHEN a restock sends null for the limit, the end and the payment window, and a new start
    let restock = json!({"name": "Phone 2", "stock": 1, "per_user_limit": null,
        "sale_ends_at": null, "payment_window_seconds": null,
        "sale_starts_at": "2026-06-01T00:00:00Z"});
    let (status, body) = put(&h, "ops", &sku, None, restock).await;
    // THEN those are cleared (the payment window back to its default) and the start replaced
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["per_user_limit"], Value::Null, "{body}");
    assert_eq!(body["sale_ends_at"], Value::Null, "{body}");
    assert_eq!(body["sale_starts_at"], "2026-06-01T00:00:00Z", "{body}");
    assert_eq!(body["name"], "Phone 2", "{body}");
    let (product, _) = stored(&h, &sku).await;
    assert_eq!(product.payment_window_seconds, 900);
}

on_both_stores!(an_explicit_null_clears_a_setting_and_a_value_replaces_it);

async fn a_restock_that_would_end_the_sale_before_it_starts_is_refused<S: Store>(h: Products<S>) {
    // GIVEN a product whose sale starts in 2030
    let sku = sku("WINDOW");
    let created = json!({"name": "Phone", "stock": 10, "sale_starts_at": "2030-01-01T00:00:00Z"});
    create(&h, &sku, created).await;
    let before = stored(&h, &sku).await;
    // WHEN a restock sets only an end before that start
    let restock = json!({"name": "Phone", "stock": 5, "sale_ends_at": "2029-01-01T00:00:00Z"});
    let (status, body) = put(&h, "ops", &sku, None, restock).await;
    // THEN it is a 400 and nothing is written
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    assert_eq!(stored(&h, &sku).await, before);
}

on_both_stores!(a_restock_that_would_end_the_sale_before_it_starts_is_refused);

async fn the_same_restock_sent_three_times_with_one_key_adds_its_stock_once<S: Store>(
    h: Products<S>,
) {
    // GIVEN a product with 10 units
    let sku = sku("ONCE");
    create(&h, &sku, json!({"name": "Phone", "stock": 10})).await;
    // WHEN the same restock of 5 is sent 3 times with one Idempotency-Key
    let restock = json!({"name": "Phone", "stock": 5, "per_user_limit": 3});
    let key = format!("restock-{sku}");
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(put(&h, "ops", &sku, Some(&key), restock.clone()).await);
    }
    // THEN each answers 200 with the same body, and the stock went up by 5 once
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body, &answers[0].1);
    }
    assert_eq!(answers[0].1["available"], 15, "{}", answers[0].1);
    let (product, shards) = stored(&h, &sku).await;
    assert_eq!(product.stock_added, 15);
    assert_eq!(shards.iter().sum::<u64>(), 15);
    // AND a key reused with another body is a 422 that writes nothing
    let before = stored(&h, &sku).await;
    let other = json!({"name": "Phone", "stock": 6, "per_user_limit": 3});
    let (status, body) = put(&h, "ops", &sku, Some(&key), other).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused", "{body}");
    assert_eq!(stored(&h, &sku).await, before);
    // AND the same key string from another admin is another key: it adds its stock
    let (status, body) = put(&h, "ops-2", &sku, Some(&key), restock).await;
    assert_eq!((status, &body["available"]), (200, &json!(20)), "{body}");
}

on_both_stores!(the_same_restock_sent_three_times_with_one_key_adds_its_stock_once);

async fn a_create_retried_under_its_key_answers_201_and_adds_nothing<S: Store>(h: Products<S>) {
    // GIVEN a product created with a key
    let sku = sku("CREATE");
    let body = json!({"name": "Phone", "stock": 7});
    let key = format!("create-{sku}");
    let first = put(&h, "ops", &sku, Some(&key), body.clone()).await;
    assert_eq!(first.0, 201, "{}", first.1);
    // WHEN the same request comes again with the key
    let again = put(&h, "ops", &sku, Some(&key), body).await;
    // THEN it answers as the first did, and the stock is still 7
    assert_eq!(again, first);
    assert_eq!(stored(&h, &sku).await.0.stock_added, 7);
    // AND without a key the same body adds its stock, as before keys existed
    let plain = put(&h, "ops", &sku, None, json!({"name": "Phone", "stock": 7})).await;
    assert_eq!((plain.0, &plain.1["available"]), (200, &json!(14)));
}

on_both_stores!(a_create_retried_under_its_key_answers_201_and_adds_nothing);

#[tokio::test]
async fn a_restock_whose_answer_was_lost_after_dynamodb_committed_adds_nothing_when_retried() {
    // GIVEN a product with 10 units, and a DynamoDB client whose next 3 TransactWriteItems
    // are applied by DynamoDB Local but answered with a timeout (all the SDK's attempts)
    let sku = sku("LOST");
    let h = dynamo().await;
    create(&h, &sku, json!({"name": "Phone", "stock": 10})).await;
    let faults = SdkFaults::new(vec![Rule {
        op: "TransactWriteItems",
        skip: 0,
        times: 3,
        fault: SdkFault::TimeoutAfterCommit,
    }]);
    let faulty = Products::new(DynamoStore::from_config(
        &stack::faulty_sdk(&faults).await,
        stack::var("TABLE_NAME"),
    ));
    let restock = json!({"name": "Phone", "stock": 5});
    let key = format!("lost-{sku}");
    // WHEN the restock is sent with a key and its answer is lost
    let (status, body) = put(&faulty, "ops", &sku, Some(&key), restock.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert!(!faults.fired().is_empty(), "no fault was injected");
    // AND the admin retries it with the same key
    let (status, body) = put(&h, "ops", &sku, Some(&key), restock).await;
    // THEN the retry answers 200 and the stock went up by 5 exactly once
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["available"], 15, "{body}");
    assert_eq!(stored(&h, &sku).await.0.stock_added, 15);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_400_and_adds_nothing() {
    // GIVEN a product with 10 units
    let h = fake();
    let sku = sku("BADKEY");
    let body = json!({"name": "Phone", "stock": 10});
    create(&h, &sku, body.clone()).await;
    // WHEN a restock comes with a key that is empty, too long or not ASCII
    for key in ["", &"k".repeat(129), "clé"] {
        let (status, answer) = put(&h, "ops", &sku, Some(key), body.clone()).await;
        // THEN it is a 400, never taken for a request without a key
        assert_eq!(status, 400, "key {key:?}: {answer}");
    }
    assert_eq!(stored(&h, &sku).await.0.stock_added, 10);
}

async fn a_restock_whose_kept_window_bound_moved_meanwhile_writes_nothing<S: Store>(
    h: Products<S>,
) {
    // GIVEN a product whose sale starts in 2030, as another admin just set it
    let sku = sku("RACE");
    let created = json!({"name": "Phone", "stock": 10, "sale_starts_at": "2030-01-01T00:00:00Z"});
    create(&h, &sku, created).await;
    let before = stored(&h, &sku).await;
    // WHEN a restock checked against an older reading (no start) sets an end before that
    // start and reaches the store
    let spec: flash_domain::ProductSpec = serde_json::from_value(
        json!({"name": "Phone", "stock": 5, "sale_ends_at": "2029-01-01T00:00:00Z"}),
    )
    .expect("a valid body");
    let put = spec
        .parse(Sku::parse(&sku).expect("a valid sku"))
        .expect("valid alone");
    let written = h
        .store
        .add_stock(&put, &[(0, 5)], None)
        .await
        .expect("the store answers");
    // THEN the store refuses it as raced and nothing changes
    assert_eq!(written, flash_domain::ports::ProductWrite::Raced);
    assert_eq!(stored(&h, &sku).await, before);
}

on_both_stores!(a_restock_whose_kept_window_bound_moved_meanwhile_writes_nothing);
