//! The request parser: any bytes as the body of an API Gateway v2 event (as text when they are
//! UTF-8, and base64-encoded as API Gateway sends a binary media type), read by lambda_http and
//! then by `json_body` as an order and as a product spec. Never a panic; a body over the limit
//! is 413, a blank one is no body, a body not declared JSON is 415, anything else refused is a
//! 400; and whatever is accepted holds only valid values and means the same when re-serialised.

#![no_main]

use flash_aws::http::{json_body, ApiError, OrderRequest, MAX_BODY_BYTES};
use flash_domain::product::{MAX_SHARDS, MAX_STOCK};
use flash_domain::{ProductSpec, Quantity, Sku};
use flash_fuzz::{check_error, place_order_request, Encoding};
use lambda_http::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    for encoding in [Encoding::Text, Encoding::Base64] {
        if let Some(req) = place_order_request(body, encoding, Some("application/json")) {
            check_order(body, &req);
            check_spec(body, &req);
        }
    }
    if let Some(req) = place_order_request(body, Encoding::Text, Some("text/plain")) {
        match json_body::<OrderRequest>(&req) {
            Err(ApiError::PayloadTooLarge) => assert!(body.len() > MAX_BODY_BYTES),
            Ok(None) => assert!(blank(body)),
            Err(e) => check_error(e, 415),
            Ok(Some(o)) => panic!("a text/plain body was read as {o:?}"),
        }
    }
});

fn blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// What every strict reading of `body` must agree on before looking at the fields: `Some` if
/// the body may be parsed at all.
fn screened<T: std::fmt::Debug>(body: &[u8], got: Result<Option<T>, ApiError>) -> Option<T> {
    if body.len() > MAX_BODY_BYTES {
        assert!(matches!(got, Err(ApiError::PayloadTooLarge)), "{got:?}");
        return None;
    }
    if blank(body) {
        assert!(matches!(got, Ok(None)), "{got:?}");
        return None;
    }
    match got {
        Ok(Some(v)) => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            assert_eq!(first, Some(&b'{'), "accepted a body that is not an object");
            Some(v)
        }
        Ok(None) => panic!("a body that is not blank was read as no body"),
        Err(e) => {
            check_error(e, 400);
            None
        }
    }
}

fn check_order(body: &[u8], req: &Request) {
    let Some(order) = screened(body, json_body::<OrderRequest>(req)) else {
        return;
    };
    assert_eq!(Sku::parse(order.sku.as_str()).as_ref(), Ok(&order.sku));
    assert!(Quantity::new(order.quantity.get()).is_ok());
    // The canonical form reads back as the same order, with the same fingerprint.
    let canonical = serde_json::json!({"sku": order.sku, "quantity": order.quantity}).to_string();
    let again: OrderRequest = serde_json::from_str(&canonical).expect("the canonical form parses");
    assert_eq!(again, order);
    assert_eq!(again.fingerprint(), order.fingerprint());
}

fn check_spec(body: &[u8], req: &Request) {
    let Some(spec) = screened(body, json_body::<ProductSpec>(req)) else {
        return;
    };
    let sku = Sku::parse("SKU-1").expect("a valid sku");
    match spec.into_product(sku) {
        Err(e) => check_error(e.into(), 400),
        Ok((product, stock)) => {
            assert!((1..=MAX_STOCK).contains(&stock));
            assert_eq!(product.stock_added, stock);
            assert!((1..=MAX_SHARDS).contains(&product.shards));
            let split = product.split(stock);
            assert!(split.len() <= product.shards as usize);
            assert!(split
                .iter()
                .all(|&(shard, units)| shard < product.shards && units > 0));
            assert_eq!(split.iter().map(|&(_, u)| u).sum::<u64>(), stock);
            let name = product.name.as_str();
            assert!(!name.is_empty() && name == name.trim() && name.chars().count() <= 200);
            assert!((1..=86_400).contains(&product.payment_window_seconds));
            if let (Some(s), Some(e)) = (product.sale_starts_at, product.sale_ends_at) {
                assert!(s < e);
            }
        }
    }
}
