//! SQS records that are not orders: each the only failure of its batch, nothing written.

use super::*;
use flash_tests::drain::invoke;
use flash_tests::fixtures::sqs_records;

// --- SQS -----------------------------------------------------------------------------------

/// Bodies of SQS records that are not an order `place-order` could have sent.
fn not_orders() -> Vec<(String, Option<String>)> {
    let valid = json!({
        "order_id": "0123456789abcdef0123456789abcdef",
        "sku": "SKU-1",
        "quantity": 1,
        "user_id": "alice",
    });
    let with = |field: &str, value: Value| {
        let mut m = valid.clone();
        m[field] = value;
        m.to_string()
    };
    let mut bodies: Vec<(String, Option<String>)> = vec![
        ("no body".into(), None),
        ("empty".into(), Some(String::new())),
        ("blank".into(), Some("  \n".into())),
        ("text".into(), Some("not an order".into())),
        ("null".into(), Some("null".into())),
        ("array".into(), Some("[]".into())),
        ("empty object".into(), Some("{}".into())),
        ("string".into(), Some(json!(valid.to_string()).to_string())),
        ("base64".into(), Some(encode(&valid.to_string()))),
        (
            "an HTTP event".into(),
            Some(Req::place_order("alice", "k", ORDER).0.to_string()),
        ),
        (
            "1 MiB".into(),
            Some(padded(
                &valid.to_string()[..valid.to_string().len() - 1],
                ONE_MIB,
            )),
        ),
        (
            "nested 10,000 deep".into(),
            Some(format!(
                r#"{{"order_id":{}{}}}"#,
                "[".repeat(DEEP),
                "]".repeat(DEEP)
            )),
        ),
        (
            "duplicate key".into(),
            Some(valid.to_string().replacen('{', r#"{"quantity":1,"#, 1)),
        ),
        (
            "extra status".into(),
            Some(with("status", json!("pending"))),
        ),
        (
            "order id uppercase".into(),
            Some(with("order_id", json!("0123456789ABCDEF0123456789ABCDEF"))),
        ),
        (
            "order id short".into(),
            Some(with("order_id", json!("0123456789abcdef"))),
        ),
        (
            "order id with #".into(),
            Some(with("order_id", json!("0123456789abcdef#123456789abcdef"))),
        ),
        (
            "sku with #".into(),
            Some(with("sku", json!("SKU-1#SHARD#000"))),
        ),
        ("sku empty".into(), Some(with("sku", json!("")))),
        (
            "sku of 1 KiB".into(),
            Some(with("sku", json!("S".repeat(1024)))),
        ),
        ("user id a number".into(), Some(with("user_id", json!(7)))),
    ];
    for n in BAD_COUNTS {
        let q: Value = serde_json::from_str(n).expect("a JSON value");
        bodies.push((format!("quantity {n}"), Some(with("quantity", q))));
    }
    bodies
}

#[tokio::test]
async fn an_sqs_record_that_is_not_an_order_is_the_only_failure_of_its_batch_and_writes_nothing() {
    let mut wrong = Vec::new();
    for (what, body) in not_orders() {
        // GIVEN two queued orders (bob's and carol's)
        let world = World::new().await;
        for who in ["bob", "carol"] {
            let r = world
                .send((Route::PlaceOrder, Req::place_order(who, "k", ORDER)))
                .await;
            assert_eq!(r.status, 202, "body: {}", r.body);
        }
        let sent = world.queue.take();
        let processor = ProcessOrders {
            store: world.store.clone(),
            timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
        };
        // WHEN the bad record arrives alone
        let before = world.written();
        let (alone, _) = invoke(&processor, sqs_records(&[("bad".into(), body.clone())])).await;
        // THEN it is reported failed, and nothing is written
        if failures(&alone) != ["bad"] {
            wrong.push(format!("{what} alone: failures {:?}", failures(&alone)));
        }
        if world.written() != before {
            wrong.push(format!("{what} alone: wrote"));
        }
        // WHEN it arrives between the two orders
        let batch = sqs_records(&[
            ("m-bob".into(), Some(message_body(&sent[0]))),
            ("bad".into(), body),
            ("m-carol".into(), Some(message_body(&sent[1]))),
        ]);
        let (resp, report) = invoke(&processor, batch).await;
        // THEN it alone is reported failed, and both orders are decided
        if failures(&resp) != ["bad"] || report.accepted != 2 {
            wrong.push(format!(
                "{what} in a batch: failures {:?}, report {report:?}",
                failures(&resp)
            ));
        }
        for m in &sent {
            if world.status(&m.order_id) != OrderStatus::Pending {
                wrong.push(format!("{what} in a batch: {} not decided", m.order_id));
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
