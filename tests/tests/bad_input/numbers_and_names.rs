//! Counts of units, SKUs, product names and the Idempotency-Key: every malformed one refused with the contract's error, nothing written.

use super::*;

// --- Numbers -------------------------------------------------------------------------------

#[tokio::test]
async fn every_malformed_count_of_units_is_invalid_in_an_order_and_in_a_product_spec() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    let mut cases = Vec::new();
    for n in BAD_COUNTS {
        // WHEN an order's quantity, or a product's stock, is zero, negative, fractional, a
        // string, a float in exponent form, above u32::MAX or null
        cases.push(Case::invalid(
            format!("quantity {n}"),
            place(&format!(r#"{{"sku":"SKU-1","quantity":{n}}}"#)),
        ));
        cases.push(Case::invalid(
            format!("stock {n}"),
            put(SKU, &format!(r#"{{"name":"Hot phone","stock":{n}}}"#)),
        ));
        // AND the optional counts of a spec (where null means "absent", so it is fine)
        for field in ["per_user_limit", "payment_window_seconds", "shards"] {
            if *n != "null" {
                cases.push(Case::invalid(
                    format!("{field} {n}"),
                    put(
                        SKU,
                        &format!(r#"{{"name":"Hot phone","stock":5,"{field}":{n}}}"#),
                    ),
                ));
            }
        }
    }
    // THEN each is refused as invalid, and nothing is written or sent
    world.assert_refused(cases).await;
}

#[tokio::test]
async fn the_largest_quantity_and_stock_are_accepted_and_one_more_is_not() {
    // GIVEN SKU-1 on sale
    let world = World::new().await;
    // WHEN the quantity and the stock are one past their maximum
    world
        .assert_refused(vec![
            Case::invalid(
                "quantity MAX+1",
                place(&format!(
                    r#"{{"sku":"SKU-1","quantity":{}}}"#,
                    Quantity::MAX + 1
                )),
            ),
            Case::invalid(
                "stock MAX+1",
                put(SKU, r#"{"name":"Hot phone","stock":1000000001}"#),
            ),
        ])
        .await;
    // THEN they are refused, AND exactly the maximum is accepted (the bounds are where the
    // contract says, not one off)
    let q = world
        .send(place(&format!(
            r#"{{"sku":"SKU-1","quantity":{}}}"#,
            Quantity::MAX
        )))
        .await;
    assert_eq!(q.status, 202, "body: {}", q.body);
    let s = world
        .send(put("SKU-BIG", r#"{"name":"Big","stock":1000000000}"#))
        .await;
    assert_eq!(s.status, 201, "body: {}", s.body);
}

// --- SKUs ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_sku_that_is_empty_a_kilobyte_long_or_holds_a_key_delimiter_is_invalid_in_a_body_and_in_a_path(
) {
    // GIVEN SKU-1 on sale
    let world = World::new().await;
    let kilobyte = "S".repeat(1024);
    let mut cases = Vec::new();
    for bad in [
        "",
        kilobyte.as_str(),
        "SKU-1#SHARD#000",
        "SKU#1",
        "ORDER#x",
        "A%23B",
    ] {
        let what = &bad[..bad.len().min(20)];
        // WHEN such a sku is ordered
        cases.push(Case::invalid(
            format!("order of sku {what:?}"),
            place(&json!({"sku": bad, "quantity": 1}).to_string()),
        ));
        // AND when an admin puts a product under it
        cases.push(Case::invalid(
            format!("put of sku {what:?}"),
            put(bad, SPEC),
        ));
    }
    // THEN each is refused as invalid, and nothing is written or sent
    world.assert_refused(cases).await;
    // AND reading a product by such a sku finds nothing (GET never writes)
    for bad in ["", kilobyte.as_str(), "SKU-1#SHARD#000", "A%23B"] {
        let r = world
            .send((Route::Products, Req::get_product("bob", bad)))
            .await;
        assert_eq!(r.error_mismatch(404, "not_found"), None, "GET {bad:?}");
    }
}

#[tokio::test]
async fn a_product_name_that_is_blank_or_a_kilobyte_long_is_invalid() {
    // GIVEN SKU-1 on sale
    let world = World::new().await;
    // WHEN an admin puts a spec whose name is empty, only spaces, or 1 KiB
    let cases = ["", "   ", &"n".repeat(1024)]
        .into_iter()
        .map(|name| {
            Case::invalid(
                format!("name of {} bytes", name.len()),
                put(SKU, &json!({"name": name, "stock": 5}).to_string()),
            )
        })
        .collect();
    // THEN each is refused as invalid, and no stock is added
    world.assert_refused(cases).await;
}

// --- Idempotency-Key ------------------------------------------------------------------------

#[tokio::test]
async fn an_idempotency_key_that_is_missing_empty_129_characters_or_not_ascii_is_invalid() {
    // GIVEN SKU-1 on sale
    let world = World::new().await;
    let valid = place(ORDER);
    // WHEN a valid order comes with no key, an empty one, one too long, or one with characters
    // outside printable ASCII (Latin, Cyrillic, emoji)
    let mut cases = vec![Case::invalid(
        "no key",
        (valid.0, valid.1.clone().without_header("idempotency-key")),
    )];
    for key in [
        String::new(),
        "k".repeat(129),
        "clé".to_owned(),
        "ключ".to_owned(),
        "key-🔑".to_owned(),
    ] {
        cases.push(Case::invalid(
            format!("key {key:?} ({} bytes)", key.len()),
            with_header(valid.clone(), "idempotency-key", &key),
        ));
    }
    // THEN each is refused as invalid, and no order is written or enqueued
    world.assert_refused(cases).await;
}
