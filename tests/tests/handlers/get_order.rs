//! `GET /orders/{order_id}`.

use super::*;

#[tokio::test]
async fn the_owner_reads_a_queued_order_with_the_contract_fields() {
    // GIVEN alice's queued order for 2
    let env = Env::on_sale().await;
    let id = env.place_ok("alice", "k-1", 2).await;
    // WHEN she reads it
    let r = env.get_order(Req::get_order("alice", id.as_str())).await;
    // THEN she sees its fields, with no reason and no payment deadline yet
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(
        r.keys(),
        keys(&[
            "order_id",
            "sku",
            "quantity",
            "status",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(r.body["order_id"], id.as_str());
    assert_eq!(r.body["sku"], SKU);
    assert_eq!(r.body["quantity"], 2);
    assert_eq!(r.body["status"], "queued");
    for field in ["created_at", "updated_at"] {
        let t = r.body[field].as_str().expect("a timestamp");
        assert!(parse_rfc3339(t).is_some(), "{field}: {t}");
    }
}

#[tokio::test]
async fn a_pending_order_shows_when_its_payment_window_closes() {
    // GIVEN alice's order accepted, with a 60 s payment window
    let env =
        Env::with_product(r#"{"name":"Hot phone","stock":10,"payment_window_seconds":60}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
    // WHEN she reads it
    let r = env.get_order(Req::get_order("alice", id.as_str())).await;
    // THEN it is pending and expires 60 s after it was decided
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "pending");
    let field =
        |name: &str| parse_rfc3339(r.body[name].as_str().expect("a timestamp")).expect("RFC 3339");
    assert_eq!(field("expires_at") - field("updated_at"), 60_000);
    assert!(r.body.get("reason").is_none());
}

#[tokio::test]
async fn a_rejected_order_shows_its_reason() {
    // GIVEN one unit and two orders for it
    let env = Env::with_product(r#"{"name":"Hot phone","stock":1}"#).await;
    let a = env.place_ok("alice", "k-1", 1).await;
    let b = env.place_ok("bob", "k-1", 1).await;
    env.deliver().await;
    // WHEN each buyer reads theirs
    let ra = env.get_order(Req::get_order("alice", a.as_str())).await;
    let rb = env.get_order(Req::get_order("bob", b.as_str())).await;
    // THEN one is pending and the other rejected as sold out, without a payment deadline
    let mut seen: Vec<(Value, Value)> = [&ra, &rb]
        .iter()
        .map(|r| {
            (
                r.body["status"].clone(),
                r.body.get("reason").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    seen.sort_by_key(|(s, _)| s.to_string());
    assert_eq!(
        seen,
        vec![
            (json!("pending"), Value::Null),
            (json!("rejected"), json!("sold_out"))
        ]
    );
    let rejected = if ra.body["status"] == "rejected" {
        &ra
    } else {
        &rb
    };
    assert!(rejected.body.get("expires_at").is_none());
}

#[tokio::test]
async fn another_user_is_told_the_order_does_not_exist() {
    // GIVEN alice's order
    let env = Env::on_sale().await;
    let id = env.place_ok("alice", "k-1", 1).await;
    // WHEN bob reads it
    let r = env.get_order(Req::get_order("bob", id.as_str())).await;
    // THEN it does not exist for him, exactly like an order that does not exist at all
    assert_error(&r, 404, "not_found");
    let missing = env
        .get_order(Req::get_order("bob", "0123456789abcdef0123456789abcdef"))
        .await;
    assert_eq!(r.body, missing.body);
}

#[tokio::test]
async fn an_admin_reads_any_order() {
    // GIVEN alice's order
    let env = Env::on_sale().await;
    let id = env.place_ok("alice", "k-1", 1).await;
    // WHEN an admin reads it
    let r = env
        .get_order(Req::get_order("admin-1", id.as_str()).caller("admin-1", true))
        .await;
    // THEN the admin sees it
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(r.body["order_id"], id.as_str());
}

#[tokio::test]
async fn a_malformed_order_id_is_not_found() {
    // GIVEN an empty table
    let env = Env::default();
    // WHEN the id is not 32 lowercase hex digits
    // THEN it is not found, without reaching the table
    for bad in [
        "nope",
        "0123456789ABCDEF0123456789ABCDEF",
        "0123456789abcdef0123456789abcde",
        "ORDER#x",
    ] {
        let r = env.get_order(Req::get_order("alice", bad)).await;
        assert_error(&r, 404, "not_found");
    }
    assert_eq!(env.store.calls(), 0);
}

#[tokio::test]
async fn reading_an_order_without_an_authorizer_is_unauthorized() {
    // GIVEN alice's order
    let env = Env::on_sale().await;
    let id = env.place_ok("alice", "k-1", 1).await;
    // WHEN it is read with no authorizer context
    let r = env
        .get_order(Req::get_order("alice", id.as_str()).anonymous())
        .await;
    // THEN the caller is unauthorized
    assert_error(&r, 401, "unauthorized");
}
