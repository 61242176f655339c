//! Request bodies: not JSON, not declared JSON, base64, too large, too deep, duplicate keys, fields a caller may not set.

use super::*;

// --- Bodies -------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_that_is_not_json_is_invalid_on_every_route_that_reads_one() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    let mut cases = Vec::new();
    for body in [
        "sku=SKU-1&quantity=1",
        "<order><sku>SKU-1</sku></order>",
        "{\"sku\":\"SKU-1\",",
        "{sku:'SKU-1'}",
        "\u{feff}{}",
        "{}{}",
        "\"{}\"",
    ] {
        // WHEN a body declared JSON is not a JSON object
        for (route, req) in [place(body), put(SKU, body), world.pay(body)] {
            cases.push(Case::invalid(format!("{route:?} {body:?}"), (route, req)));
        }
    }
    // THEN each is refused as invalid, and nothing is written or sent
    world.assert_refused(cases).await;
}

#[tokio::test]
async fn a_json_body_with_another_content_type_is_an_unsupported_media_type_on_every_route() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    let mut cases = Vec::new();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        Some("application/jsonp"),
        Some("json"),
        None,
    ] {
        // WHEN a body that would be valid comes with another content type, or none
        for (route, req) in [place(ORDER), put(SKU, SPEC), world.pay("{}")] {
            let req = match content_type {
                Some(ct) => req.header("content-type", ct),
                None => req.without_header("content-type"),
            };
            cases.push(Case::new(
                format!("{route:?} as {content_type:?}"),
                (route, req),
                415,
                "unsupported_media_type",
            ));
        }
    }
    // THEN each is refused as an unsupported media type, and nothing is written or sent
    world.assert_refused(cases).await;
}

#[tokio::test]
async fn a_base64_string_of_json_sent_as_text_is_invalid() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    // WHEN the client base64-encodes its JSON itself and sends the result as a JSON body
    // (isBase64Encoded false: API Gateway passed the text through)
    let cases = vec![
        Case::invalid("order", place(&encode(ORDER))),
        Case::invalid("spec", put(SKU, &encode(SPEC))),
        Case::invalid("action", world.pay(&encode("{}"))),
    ];
    // THEN it is not a JSON object, so each is refused as invalid
    world.assert_refused(cases).await;
}

#[tokio::test]
async fn a_base64_encoded_body_is_decoded_and_then_judged_like_the_same_body_sent_as_text() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    // WHEN API Gateway delivers base64 (isBase64Encoded: a binary media type) of bodies that
    // would be refused as text: not JSON, an extra field, not declared JSON, 1 MiB
    let big = padded(r#"{"sku":"SKU-1","quantity":1"#, ONE_MIB);
    let cases = vec![
        Case::invalid("not JSON", base64(place(""), b"sku=SKU-1")),
        Case::invalid(
            "extra field",
            base64(
                place(""),
                br#"{"sku":"SKU-1","quantity":1,"status":"paid"}"#,
            ),
        ),
        Case::invalid(
            "not UTF-8",
            base64(place(""), b"{\"sku\":\"\xff\xfe\",\"quantity\":1}"),
        ),
        Case::new(
            "octet-stream",
            base64(
                with_header(place(""), "content-type", "application/octet-stream"),
                ORDER.as_bytes(),
            ),
            415,
            "unsupported_media_type",
        ),
        Case::too_large("1 MiB", base64(place(""), big.as_bytes())),
        Case::invalid(
            "spec with a price",
            base64(put(SKU, ""), br#"{"name":"x","stock":5,"price":1}"#),
        ),
        Case::invalid(
            "action with a status",
            base64(world.pay(""), br#"{"status":"paid"}"#),
        ),
    ];
    // THEN each gets the same refusal as its text twin, and nothing is written or sent
    world.assert_refused(cases).await;
}

#[tokio::test]
async fn a_base64_encoded_json_order_is_decoded_and_accepted_like_the_same_order_sent_as_text() {
    // GIVEN SKU-1 on sale
    let world = World::new().await;
    let orders = world.store.orders().len();
    // WHEN API Gateway delivers a valid order base64-encoded with a JSON content type (a
    // client whose content type the API treats as binary); lambda_http decodes it
    let r = world
        .send(base64(place_with_key("k-b64", ""), ORDER.as_bytes()))
        .await;
    // THEN it is the order it encodes: accepted once, under the id of caller and key
    assert_eq!(r.status, 202, "body: {}", r.body);
    assert_eq!(r.body["order_id"], id_for("alice", "k-b64").as_str());
    assert_eq!(world.store.orders().len(), orders + 1);
    assert_eq!(world.queue.sent().len(), 1);
    // AND the same order sent as text with the same key is its replay, not a reuse
    let replay = world.send(place_with_key("k-b64", ORDER)).await;
    assert_eq!(replay.status, 202, "body: {}", replay.body);
    assert_eq!(world.store.orders().len(), orders + 1);
}

#[tokio::test]
async fn a_body_of_one_mebibyte_is_too_large_on_every_route() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    let order = padded(r#"{"sku":"SKU-1","quantity":1"#, ONE_MIB);
    let spec = padded(r#"{"name":"Hot phone","stock":5"#, ONE_MIB);
    let action = padded("{", ONE_MIB).replacen("{,", "{", 1);
    let blank = " ".repeat(ONE_MIB);
    assert_eq!(
        (order.len(), spec.len(), blank.len()),
        (ONE_MIB, ONE_MIB, ONE_MIB)
    );
    // WHEN each route gets a 1 MiB body: JSON, or only whitespace (which would otherwise count
    // as no body)
    let cases = vec![
        Case::too_large("order", place(&order)),
        Case::too_large("spec", put(SKU, &spec)),
        Case::too_large("action", world.pay(&action)),
        Case::too_large("blank order", place(&blank)),
        Case::too_large("blank action", world.pay(&blank)),
    ];
    // THEN each is refused as too large, and nothing is written or sent
    world.assert_refused(cases).await;
}

#[tokio::test]
async fn a_body_nested_ten_thousand_deep_is_refused_without_overflowing_the_stack() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    let open = "[".repeat(DEEP);
    let balanced = format!("{open}{}", "]".repeat(DEEP));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(DEEP), "}".repeat(DEEP));
    let mut cases = Vec::new();
    for (route, req) in [place(""), put(SKU, ""), world.pay("")] {
        let field = match route {
            Route::PlaceOrder => "quantity",
            Route::Products => "name",
            Route::AdvanceOrder => "a",
        };
        let with = |body: String| (route, req.clone().body(&body));
        // WHEN the nesting fits in 16 KiB (10,000 open brackets inside a field, or at the top)
        cases.push(Case::invalid(
            format!("{route:?} field opened {DEEP} deep"),
            with(format!(r#"{{"{field}":{open}"#)),
        ));
        cases.push(Case::invalid(
            format!("{route:?} array opened {DEEP} deep"),
            with(open.clone()),
        ));
        // AND when it is balanced, which takes more than 16 KiB
        cases.push(Case::too_large(
            format!("{route:?} balanced arrays"),
            with(format!(r#"{{"{field}":{balanced}}}"#)),
        ));
        cases.push(Case::too_large(
            format!("{route:?} balanced objects"),
            with(objects.clone()),
        ));
    }
    // THEN each is refused (invalid, or too large) and nothing is written: the process is
    // still here, so no parser recursed 10,000 deep
    world.assert_refused(cases).await;
}

#[tokio::test]
async fn a_body_with_a_duplicate_key_is_invalid_on_every_route_that_reads_one() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    // WHEN a key appears twice, even with the same value both times (which one wins would be
    // up to the parser, and the fingerprint must not depend on it)
    let cases = vec![
        Case::invalid(
            "quantity twice",
            place(r#"{"sku":"SKU-1","quantity":1,"quantity":1}"#),
        ),
        Case::invalid(
            "sku twice",
            place(r#"{"sku":"SKU-2","quantity":1,"sku":"SKU-1"}"#),
        ),
        Case::invalid(
            "stock twice",
            put(SKU, r#"{"name":"Hot phone","stock":5,"stock":5}"#),
        ),
        Case::invalid(
            "name twice",
            put(SKU, r#"{"name":"a","name":"b","stock":5}"#),
        ),
        Case::invalid(
            "optional field twice",
            put(SKU, r#"{"name":"a","stock":5,"shards":1,"shards":2}"#),
        ),
        Case::invalid("action key twice", world.pay(r#"{"a":1,"a":1}"#)),
    ];
    // THEN each is refused as invalid, and nothing is written or sent
    world.assert_refused(cases).await;
}

#[tokio::test]
async fn a_body_that_tries_to_set_status_price_user_id_or_owner_is_invalid_on_every_route() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    let mut cases = Vec::new();
    // WHEN any body carries a field the server decides, with the otherwise valid fields
    let server_fields = [
        r#""status":"paid""#,
        r#""price":0"#,
        r#""user_id":"bob""#,
        r#""owner":"bob""#,
        r#""reason":"refunded""#,
        r#""order_id":"0123456789abcdef0123456789abcdef""#,
    ];
    let product_fields = [
        r#""available":1000000"#,
        r#""sold_out":false"#,
        r#""stock_added":1"#,
    ];
    for field in server_fields.iter().chain(&product_fields) {
        for (route, body) in [
            (
                Route::PlaceOrder,
                format!(r#"{{"sku":"SKU-1","quantity":1,{field}}}"#),
            ),
            (
                Route::Products,
                format!(r#"{{"name":"Hot phone","stock":5,{field}}}"#),
            ),
            (Route::AdvanceOrder, format!("{{{field}}}")),
        ] {
            let req = match route {
                Route::PlaceOrder => place(&body),
                Route::Products => put(SKU, &body),
                Route::AdvanceOrder => world.pay(&body),
            };
            cases.push(Case::invalid(format!("{route:?} {field}"), req));
        }
    }
    // THEN each is refused as invalid, and nothing is written or sent
    world.assert_refused(cases).await;
    assert_eq!(world.status(&world.pending), OrderStatus::Pending);
}
