//! Handler tests: every function's handler driven by requests and SQS events built from the
//! `events/` fixtures, against the in-memory store and queue. Each test owns its fakes, so the
//! tests run in parallel and need no network. They check the HTTP contract of `API.md` (status,
//! `error.code`, `Retry-After`) and what each call leaves in the store.

use advance_order::AdvanceOrder;
use flash_domain::clock::parse_rfc3339;
use flash_domain::ports::Store;
use flash_domain::{
    IdempotencyKey, OrderId, OrderMessage, OrderStatus, Quantity, Reason, Sku, UserId,
};
use flash_tests::fake::{message_body, FakeQueue, FakeStore};
use flash_tests::fixtures::{sqs_event, Req};
use get_order::GetOrder;
use lambda_http::{Body, Response};
use place_order::{PlaceOrder, REDRIVE_AFTER};
use process_orders::{BatchReport, ProcessOrders};
use products::Products;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const SKU: &str = "SKU-1";
const ONE: &str = r#"{"sku":"SKU-1","quantity":1}"#;

/// A response taken apart.
#[derive(Debug)]
struct Resp {
    status: u16,
    body: Value,
    retry_after: Option<String>,
    content_type: Option<String>,
}

impl Resp {
    fn from(r: Response<Body>) -> Self {
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (retry_after, content_type) = (header("retry-after"), header("content-type"));
        let body = match r.body() {
            Body::Text(t) => serde_json::from_str(t).expect("the body is JSON"),
            Body::Binary(b) => serde_json::from_slice(b).expect("the body is JSON"),
            _ => Value::Null,
        };
        Self {
            status: r.status().as_u16(),
            body,
            retry_after,
            content_type,
        }
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn order_id(&self) -> OrderId {
        OrderId::parse(self.body["order_id"].as_str().expect("an order_id")).expect("a valid id")
    }

    fn keys(&self) -> BTreeSet<String> {
        self.body
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Status and `error.code` as the contract's error table says, a message for humans, JSON, and
/// `Retry-After` on the statuses that promise it.
#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!((r.status, r.code()), (status, code), "body: {}", r.body);
    assert!(r.body["error"]["message"].is_string(), "body: {}", r.body);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    if matches!(status, 429 | 503) {
        let secs: u32 = r
            .retry_after
            .as_deref()
            .and_then(|s| s.parse().ok())
            .expect("Retry-After in seconds");
        assert!(secs > 0);
    }
}

/// The invariant checker (`flash_aws::audit`'s rules, admission counts included) finds
/// nothing wrong with what the in-memory table holds about `SKU-1`.
#[track_caller]
fn assert_audit_clean(env: &Env) {
    let state = env.store.snapshot();
    let a = flash_tests::invariants::audit_state(&state, &sku(SKU));
    let limit = state.products.get(&sku(SKU)).and_then(|p| p.per_user_limit);
    let admissions = state.admissions(&sku(SKU)).check(&a, limit);
    assert!(a.violations.is_empty(), "{:?}", a.violations);
    assert!(admissions.is_empty(), "{admissions:?}");
}

fn keys(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn sku(s: &str) -> Sku {
    Sku::parse(s).expect("valid sku")
}

fn user(s: &str) -> UserId {
    UserId::parse(s).expect("valid user")
}

/// The id `place-order` derives for `who` and `key`.
fn id_for(who: &str, key: &str) -> OrderId {
    OrderId::derive(&user(who), &IdempotencyKey::parse(key).expect("valid key"))
}

fn failures(resp: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    resp.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

/// One test's world: a table and a queue, and every handler over them.
#[derive(Default)]
struct Env {
    store: FakeStore,
    queue: FakeQueue,
}

impl Env {
    /// A world with `SKU-1` created by an admin's `PUT` of `spec`.
    async fn with_product(spec: &str) -> Self {
        let env = Self::default();
        let r = env.products(Req::put_product(SKU, spec)).await;
        assert_eq!(r.status, 201, "body: {}", r.body);
        env
    }

    async fn place(&self, req: Req) -> Resp {
        // A handler per request: its product cache never outlives a test's step.
        let h = PlaceOrder::new(self.store.clone(), self.queue.clone());
        Resp::from(h.handle(req.build()).await)
    }

    async fn products(&self, req: Req) -> Resp {
        let h = Products {
            store: self.store.clone(),
        };
        Resp::from(h.handle(req.build()).await)
    }

    async fn get_order(&self, req: Req) -> Resp {
        let h = GetOrder {
            store: self.store.clone(),
        };
        Resp::from(h.handle(req.build()).await)
    }

    async fn advance(&self, req: Req) -> Resp {
        let h = AdvanceOrder {
            store: self.store.clone(),
        };
        Resp::from(h.handle(req.build()).await)
    }

    /// Runs the SQS consumer on `event`: the ids of the failed items, and what it did.
    async fn process(
        &self,
        event: aws_lambda_events::event::sqs::SqsEvent,
    ) -> (Vec<String>, BatchReport) {
        let h = ProcessOrders {
            store: self.store.clone(),
            timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
        };
        let (resp, report) = h
            .handle(
                &flash_tests::fake::FakeRedelivery::default(),
                event,
                flash_tests::fixtures::invocation_deadline(),
            )
            .await;
        (failures(&resp), report)
    }

    /// Delivers everything enqueued so far as one batch, as the event source mapping would.
    async fn deliver(&self) -> (Vec<String>, BatchReport) {
        self.process(self.queue.take_event()).await
    }

    /// Places an order that must be accepted; its id.
    async fn place_ok(&self, who: &str, key: &str, quantity: u32) -> OrderId {
        let body = json!({"sku": SKU, "quantity": quantity}).to_string();
        let r = self.place(Req::place_order(who, key, &body)).await;
        assert_eq!(r.status, 202, "body: {}", r.body);
        r.order_id()
    }

    /// An order of `who` that the processor accepted: `pending`.
    async fn pending_order(&self, who: &str, key: &str, quantity: u32) -> OrderId {
        let id = self.place_ok(who, key, quantity).await;
        let (failed, _) = self.deliver().await;
        assert!(failed.is_empty(), "failed: {failed:?}");
        assert_eq!(self.status(&id), OrderStatus::Pending);
        id
    }

    fn status(&self, id: &OrderId) -> OrderStatus {
        self.store.order(id).expect("the order exists").status
    }

    fn available(&self) -> u64 {
        self.store.available(&sku(SKU))
    }

    /// `req` is refused with `status`/`code` and leaves the table and the queue untouched.
    async fn assert_place_refused(&self, req: Req, status: u16, code: &str) {
        let (before, sent) = (self.store.snapshot(), self.queue.sent().len());
        let r = self.place(req).await;
        assert_error(&r, status, code);
        assert_eq!(self.store.snapshot(), before, "the table changed");
        assert_eq!(self.queue.sent().len(), sent, "a message was sent");
    }
}

// --- The fixtures in events/ ---------------------------------------------------------------

#[tokio::test]
async fn the_place_order_fixture_is_not_found_on_an_empty_store_and_accepted_once_the_product_exists(
) {
    // GIVEN an empty table
    let env = Env::default();
    // WHEN the place-order fixture is sent as it is
    // THEN its product is unknown, and nothing is written or sent
    env.assert_place_refused(Req::fixture("place-order"), 404, "not_found")
        .await;

    // GIVEN SKU-1 created with the put-product fixture
    let created = env.products(Req::fixture("put-product")).await;
    assert_eq!(created.status, 201, "body: {}", created.body);
    // WHEN the same fixture is sent again
    let r = env.place(Req::fixture("place-order")).await;
    // THEN it is accepted for user-alice, with the id derived from its Idempotency-Key
    assert_eq!(r.status, 202, "body: {}", r.body);
    assert_eq!(r.order_id(), id_for("user-alice", "3f1c2b7e-0001"));
    assert_eq!(env.queue.sent().len(), 1);
}

#[tokio::test]
async fn the_put_product_and_get_product_fixtures_create_and_read_sku_1() {
    // GIVEN an empty table
    let env = Env::default();
    // WHEN the get-product fixture is sent before the product exists
    // THEN it is not found
    assert_error(
        &env.products(Req::fixture("get-product")).await,
        404,
        "not_found",
    );

    // WHEN the put-product fixture is sent, then get-product
    let put = env.products(Req::fixture("put-product")).await;
    let got = env.products(Req::fixture("get-product")).await;
    // THEN both show the 100 units of "Hot phone"
    assert_eq!(put.status, 201);
    assert_eq!(got.status, 200);
    assert_eq!(put.body, got.body);
    assert_eq!(got.body["name"], "Hot phone");
    assert_eq!(got.body["available"], 100);
}

#[tokio::test]
async fn the_get_order_and_advance_order_fixtures_name_no_order_on_an_empty_store() {
    // GIVEN an empty table
    let env = Env::default();
    // WHEN the get-order and advance-order fixtures are sent as they are
    let got = env.get_order(Req::fixture("get-order")).await;
    let before = env.store.snapshot();
    let advanced = env.advance(Req::fixture("advance-order")).await;
    // THEN both say the order does not exist, and nothing is written
    assert_error(&got, 404, "not_found");
    assert_error(&advanced, 404, "not_found");
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn the_process_orders_fixture_names_no_stored_order_and_is_dropped_without_a_write() {
    // GIVEN a table holding SKU-1 but none of the fixture's orders
    let env = Env::with_product(r#"{"name":"Hot phone","stock":100}"#).await;
    let before = env.store.snapshot();
    // WHEN the process-orders fixture is delivered
    let (failed, report) = env
        .process(
            serde_json::from_value(flash_tests::fixtures::event("process-orders"))
                .expect("an SQS event"),
        )
        .await;
    // THEN its three messages are dropped as re-drive copies of orders never written: none
    // fails (none would reach the DLQ) and nothing is decided
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!((report.accepted, report.rejected, report.failed), (0, 0, 0));
    assert_eq!(env.store.snapshot(), before);
}

// --- POST /orders --------------------------------------------------------------------------

#[tokio::test]
async fn an_order_is_accepted_queued_with_its_location_and_enqueued_once() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.place_ok("alice", "k-1", 1).await;
    let stored = env.store.order(&id);
    // WHEN she sends k-1 again for 2
    // THEN it is refused and the first order is left as it was
    env.assert_place_refused(
        Req::place_order("alice", "k-1", r#"{"sku":"SKU-1","quantity":2}"#),
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(env.store.order(&id), stored);
}

#[tokio::test]
async fn two_callers_with_the_same_key_get_two_different_orders() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    // WHEN the key is the longest allowed, with spaces and punctuation
    let key = format!("{} ~!{}", "k".repeat(100), "z".repeat(25));
    assert_eq!(key.len(), 128);
    // THEN the order is accepted
    assert_eq!(env.place_ok("alice", &key, 1).await, id_for("alice", &key));
}

#[tokio::test]
async fn a_quantity_that_is_not_a_positive_integer_up_to_the_maximum_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
        env.assert_place_refused(
            Req::place_order("alice", "k", &body),
            400,
            "invalid_request",
        )
        .await;
    }
    env.assert_place_refused(
        Req::place_order("alice", "k", r#"{"sku":"SKU-1"}"#),
        400,
        "invalid_request",
    )
    .await;
}

#[tokio::test]
async fn a_body_with_an_unknown_field_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    // WHEN the body tries to set anything but sku and quantity
    // THEN it is refused as invalid and nothing is written
    for extra in [
        r#""status":"paid""#,
        r#""price":1"#,
        r#""user_id":"bob""#,
        r#""owner":"bob""#,
    ] {
        let body = format!(r#"{{"sku":"SKU-1","quantity":1,{extra}}}"#);
        env.assert_place_refused(
            Req::place_order("alice", "k", &body),
            400,
            "invalid_request",
        )
        .await;
    }
}

#[tokio::test]
async fn a_body_with_a_duplicate_field_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    // WHEN a field appears twice (which value wins would be up to the parser)
    // THEN it is refused as invalid
    for body in [
        r#"{"sku":"SKU-1","quantity":1,"quantity":2}"#,
        r#"{"sku":"SKU-1","sku":"SKU-2","quantity":1}"#,
    ] {
        env.assert_place_refused(Req::place_order("alice", "k", body), 400, "invalid_request")
            .await;
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_json_order_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
        env.assert_place_refused(Req::place_order("alice", "k", body), 400, "invalid_request")
            .await;
    }
}

#[tokio::test]
async fn a_body_that_is_a_json_array_of_the_field_values_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    // WHEN the body lists an order's values in an array instead of naming them in an object
    // THEN it is refused as invalid like any other wrong type, and nothing is written
    env.assert_place_refused(
        Req::place_order("alice", "k", r#"["SKU-1",1]"#),
        400,
        "invalid_request",
    )
    .await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    // WHEN the body is 17 KiB
    let body = format!(
        r#"{{"sku":"SKU-1","quantity":1,"pad":"{}"}}"#,
        "x".repeat(17 * 1024)
    );
    // THEN it is refused as too large, before anything else is looked at
    env.assert_place_refused(
        Req::place_order("alice", "k", &body),
        413,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn a_body_of_exactly_16_kib_is_accepted() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
        env.assert_place_refused(Req::place_order("alice", "k", ONE), 409, "sale_not_open")
            .await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    // WHEN alice orders SKU-2
    // THEN the product is not found and nothing is written
    env.assert_place_refused(
        Req::place_order("alice", "k", r#"{"sku":"SKU-2","quantity":1}"#),
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_sku_that_could_forge_a_key_or_is_empty_is_invalid() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
        env.assert_place_refused(
            Req::place_order("alice", "k", &body),
            400,
            "invalid_request",
        )
        .await;
        assert_eq!(env.store.calls(), calls, "{sku} reached the store");
    }
}

#[tokio::test]
async fn a_store_outage_answers_503_with_retry_after_and_writes_nothing() {
    // GIVEN SKU-1 on sale
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    // WHEN the table fails on the product read
    env.store.fail(1);
    // THEN the caller is told to retry later and nothing is written or sent
    env.assert_place_refused(Req::place_order("alice", "k", ONE), 503, "unavailable")
        .await;

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

#[tokio::test]
async fn a_queue_outage_after_the_write_answers_503_and_a_retry_with_the_same_key_enqueues_the_order(
) {
    // GIVEN SKU-1 on sale and a queue whose send after the write fails once
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    env.queue.fail_on("send", 1);
    // WHEN alice orders
    let r = env.place(Req::place_order("alice", "k-1", ONE)).await;
    // THEN she is told to retry, and her order waits queued (the write came first)
    assert_error(&r, 503, "unavailable");
    let id = id_for("alice", "k-1");
    assert_eq!(env.status(&id), OrderStatus::Queued);
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    env.queue.fail_on("send", 1);
    let r = env.place(Req::place_order("alice", "k-1", ONE)).await;
    assert_error(&r, 503, "unavailable");
    let id = id_for("alice", "k-1");
    assert_eq!(env.status(&id), OrderStatus::Queued);
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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

// --- PUT and GET /products/{sku} -----------------------------------------------------------

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
        .products(Req::put_product(SKU, r#"{"name":"Hot phone","stock":250}"#))
        .await;
    // THEN it is created with every unit available, spread over its shards
    assert_eq!(r.status, 201, "body: {}", r.body);
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
        .products(Req::put_product(
            SKU,
            r#"{"name":"Hotter phone","stock":50,"per_user_limit":2}"#,
        ))
        .await;
    // THEN it answers 200 with 150 available and the new settings
    assert_eq!(r.status, 200, "body: {}", r.body);
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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

// --- GET /orders/{order_id} ----------------------------------------------------------------

#[tokio::test]
async fn the_owner_reads_a_queued_order_with_the_contract_fields() {
    // GIVEN alice's queued order for 2
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.place_ok("alice", "k-1", 1).await;
    // WHEN it is read with no authorizer context
    let r = env
        .get_order(Req::get_order("alice", id.as_str()).anonymous())
        .await;
    // THEN the caller is unauthorized
    assert_error(&r, 401, "unauthorized");
}

// --- POST /orders/{order_id}/{action} ------------------------------------------------------

#[tokio::test]
async fn paying_a_pending_order_makes_it_paid_and_paying_again_changes_nothing() {
    // GIVEN alice's pending order
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
    // WHEN she pays
    let paid = env
        .advance(Req::advance("alice", false, id.as_str(), "pay"))
        .await;
    // THEN it is paid, shown as GET shows it, without a payment deadline
    assert_eq!(paid.status, 200, "body: {}", paid.body);
    assert_eq!(paid.body["status"], "paid");
    assert!(paid.body.get("expires_at").is_none());
    let got = env.get_order(Req::get_order("alice", id.as_str())).await;
    assert_eq!(paid.body, got.body);

    // WHEN she pays again
    let before = env.store.snapshot();
    let again = env
        .advance(Req::advance("alice", false, id.as_str(), "pay"))
        .await;
    // THEN the answer is the same order, and nothing changed
    assert_eq!(again.status, 200);
    assert_eq!(again.body, paid.body);
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn a_buyer_may_not_ship_but_an_admin_may() {
    // GIVEN alice's paid order
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
    env.advance(Req::advance("alice", false, id.as_str(), "pay"))
        .await;
    // WHEN she tries to ship it herself
    let before = env.store.snapshot();
    let r = env
        .advance(Req::advance("alice", false, id.as_str(), "ship"))
        .await;
    // THEN she is forbidden and it stays paid
    assert_error(&r, 403, "forbidden");
    assert_eq!(env.store.snapshot(), before);
    // WHEN an admin ships it
    let shipped = env
        .advance(Req::advance("admin-1", true, id.as_str(), "ship"))
        .await;
    // THEN it is shipped
    assert_eq!(shipped.status, 200, "body: {}", shipped.body);
    assert_eq!(shipped.body["status"], "shipped");
    assert_eq!(env.status(&id), OrderStatus::Shipped);
}

#[tokio::test]
async fn confirming_a_shipped_order_completes_it_and_a_later_cancel_names_its_status() {
    // GIVEN alice's shipped order
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
    env.advance(Req::advance("alice", false, id.as_str(), "pay"))
        .await;
    env.advance(Req::advance("admin-1", true, id.as_str(), "ship"))
        .await;
    // WHEN she confirms it
    let done = env
        .advance(Req::advance("alice", false, id.as_str(), "confirm"))
        .await;
    // THEN it is completed
    assert_eq!(done.status, 200, "body: {}", done.body);
    assert_eq!(done.body["status"], "completed");
    // WHEN she then cancels it
    let before = env.store.snapshot();
    let r = env
        .advance(Req::advance("alice", false, id.as_str(), "cancel"))
        .await;
    // THEN the transition is refused, naming the current status, and no stock comes back
    assert_error(&r, 409, "invalid_transition");
    assert_eq!(r.body["error"]["status"], "completed");
    assert_eq!(env.store.snapshot(), before);
    assert_eq!(env.available(), 9);
}

#[tokio::test]
async fn canceling_a_pending_order_returns_its_stock_once() {
    // GIVEN alice's pending order for 3 of 10
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 3).await;
    assert_eq!(env.available(), 7);
    // WHEN she cancels it, twice
    let r = env
        .advance(Req::advance("alice", false, id.as_str(), "cancel"))
        .await;
    let again = env
        .advance(Req::advance("alice", false, id.as_str(), "cancel"))
        .await;
    // THEN it is canceled by the buyer, the 3 units are back, once
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(
        (r.body["status"].clone(), r.body["reason"].clone()),
        (json!("canceled"), json!("buyer_canceled"))
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.body["status"], "canceled");
    assert_eq!(env.available(), 10);
    // AND the product shows them
    let p = env.products(Req::get_product("bob", SKU)).await;
    assert_eq!(p.body["available"], 10);
}

#[tokio::test]
async fn refunding_a_paid_order_returns_its_stock_and_the_buyers_allowance() {
    // GIVEN alice paid for 2 of a product limited to 2 per buyer
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10,"per_user_limit":2}"#).await;
    let id = env.pending_order("alice", "k-1", 2).await;
    env.advance(Req::advance("alice", false, id.as_str(), "pay"))
        .await;
    assert_eq!(
        (env.available(), env.store.bought(&sku(SKU), &user("alice"))),
        (8, 2)
    );
    // WHEN she asks for a refund
    let r = env
        .advance(Req::advance("alice", false, id.as_str(), "refund"))
        .await;
    // THEN it is canceled as refunded, and the units and her allowance come back
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(
        (r.body["status"].clone(), r.body["reason"].clone()),
        (json!("canceled"), json!("refunded"))
    );
    assert_eq!(
        (env.available(), env.store.bought(&sku(SKU), &user("alice"))),
        (10, 0)
    );
    // AND a cancel after the refund is not allowed
    let cancel = env
        .advance(Req::advance("alice", false, id.as_str(), "cancel"))
        .await;
    assert_error(&cancel, 409, "invalid_transition");
    assert_eq!(cancel.body["error"]["status"], "canceled");
    // AND she may buy 2 again
    let again = env.pending_order("alice", "k-2", 2).await;
    assert_eq!(env.status(&again), OrderStatus::Pending);
}

#[tokio::test]
async fn every_action_on_another_users_order_is_not_found() {
    // GIVEN alice's pending order
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
    let before = env.store.snapshot();
    // WHEN bob tries every action on it
    for action in ["pay", "cancel", "refund", "ship", "confirm"] {
        let r = env
            .advance(Req::advance("bob", false, id.as_str(), action))
            .await;
        // THEN it does not exist for him, and nothing changes
        assert_error(&r, 404, "not_found");
    }
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn an_unknown_action_is_not_found() {
    // GIVEN alice's pending order
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
    let before = env.store.snapshot();
    // WHEN she asks for an action that does not exist
    for action in ["steal", "PAY", "accept", ""] {
        let r = env
            .advance(Req::advance("alice", false, id.as_str(), action))
            .await;
        // THEN it is not found and nothing changes
        assert_error(&r, 404, "not_found");
    }
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn an_action_body_with_a_field_is_invalid() {
    // GIVEN alice's pending order
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
    let before = env.store.snapshot();
    // WHEN she pays with a body that says anything, or is not JSON
    for body in [r#"{"status":"paid"}"#, r#"{"amount":100}"#, "pay"] {
        let r = env
            .advance(Req::advance("alice", false, id.as_str(), "pay").body(body))
            .await;
        // THEN it is refused as invalid and the order stays pending
        assert_error(&r, 400, "invalid_request");
    }
    assert_eq!(env.store.snapshot(), before);
    // AND `{}` or no body at all is fine
    for body in ["{}", ""] {
        let r = env
            .advance(Req::advance("alice", false, id.as_str(), "pay").body(body))
            .await;
        assert_eq!(r.status, 200, "body: {}", r.body);
    }
}

#[tokio::test]
async fn an_action_body_that_is_not_an_object_is_invalid() {
    // GIVEN alice's pending order
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
    let before = env.store.snapshot();
    // WHEN she pays with a JSON body of the wrong type (the contract allows only `{}`)
    for body in ["[]", "[1]", "null", "1", "\"pay\""] {
        let r = env
            .advance(Req::advance("alice", false, id.as_str(), "pay").body(body))
            .await;
        // THEN it is refused as invalid and the order stays pending
        assert_error(&r, 400, "invalid_request");
        assert_eq!(env.store.snapshot(), before, "{body} changed the order");
    }
}

#[tokio::test]
async fn an_action_without_an_authorizer_is_unauthorized() {
    // GIVEN alice's pending order
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 1).await;
    // WHEN it is paid with no authorizer context
    let r = env
        .advance(Req::advance("alice", false, id.as_str(), "pay").anonymous())
        .await;
    // THEN the caller is unauthorized and it stays pending
    assert_error(&r, 401, "unauthorized");
    assert_eq!(env.status(&id), OrderStatus::Pending);
}

#[tokio::test]
async fn a_store_outage_during_an_action_answers_503_and_changes_nothing() {
    // GIVEN alice's pending order and a table that fails on the write
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    let id = env.pending_order("alice", "k-1", 2).await;
    let before = env.store.snapshot();
    env.store.fail_on("advance", 1);
    // WHEN she cancels
    let r = env
        .advance(Req::advance("alice", false, id.as_str(), "cancel"))
        .await;
    // THEN she is told to retry, and neither the order nor the stock changed
    assert_error(&r, 503, "unavailable");
    assert_eq!(env.store.snapshot(), before);
}

// --- The SQS consumer ----------------------------------------------------------------------

#[tokio::test]
async fn one_batch_is_decided_with_one_group_commit() {
    // GIVEN three buyers' orders for 2 units each of 10
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let place = std::sync::Arc::new(PlaceOrder::new(env.store.clone(), env.queue.clone()));
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
    let restock = env
        .products(Req::put_product(
            SKU,
            r#"{"name":"Hot phone","stock":1,"per_user_limit":1}"#,
        ))
        .await;
    assert_eq!(restock.status, 200, "body: {}", restock.body);
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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

#[tokio::test]
async fn a_store_outage_fails_the_batch_items_and_decides_nothing() {
    // GIVEN two orders and a table that fails on the group commit
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    env.place_ok("alice", "k", 1).await;
    env.place_ok("bob", "k", 1).await;
    let before = env.store.snapshot();
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    env.place_ok("alice", "k", 1).await;
    env.place_ok("bob", "k", 1).await;
    let before = env.store.snapshot();
    env.store.fail_on("get_orders", 1);
    // WHEN the batch is processed
    let (failed, _) = env.deliver().await;
    // THEN every message is reported failed and nothing changed
    assert_eq!(failed, vec!["m0", "m1"]);
    assert_eq!(env.store.snapshot(), before);
}

// --- The fake keeps the adapter's semantics --------------------------------------------------

mod fake_store {
    use super::*;
    use flash_domain::order::{transition, Event, ShardTake};
    use flash_domain::ports::{Accepted, Advance, Commit, Store};

    async fn two_queued_orders(env: &Env) -> (OrderId, OrderId) {
        let a = env.place_ok("alice", "k", 1).await;
        let b = env.place_ok("bob", "k", 1).await;
        (a, b)
    }

    fn commit(ids: &[&OrderId], units: u32, limit: Option<u32>) -> Commit {
        Commit {
            takes: vec![ShardTake { shard: 0, units }],
            accepted: ids
                .iter()
                .map(|id| Accepted {
                    order_id: (*id).clone(),
                    takes: vec![ShardTake { shard: 0, units: 1 }],
                    expires_at: 1,
                })
                .collect(),
            counters: vec![(user("alice"), 1)],
            limit,
            now: 0,
        }
    }

    #[tokio::test]
    async fn a_commit_with_one_failed_condition_writes_nothing_and_says_why() {
        // GIVEN one unit and two queued orders, one of them already decided
        let env = Env::with_product(r#"{"name":"Hot phone","stock":1}"#).await;
        let (a, b) = two_queued_orders(&env).await;
        assert!(env.store.reject(&b, Reason::SoldOut, 0).await.expect("up"));
        let before = env.store.snapshot();
        // WHEN a commit takes two units for both
        let refused = env
            .store
            .commit(&sku(SKU), &commit(&[&a, &b], 2, None))
            .await
            .expect("up")
            .expect_err("refused");
        // THEN it is refused with what the shard holds and which order was decided, and
        // nothing was written
        assert_eq!(refused.shards.len(), 1);
        assert_eq!(refused.shards[0].available, 1);
        assert_eq!(refused.decided, vec![b]);
        assert!(!refused.conflict);
        assert_eq!(env.store.snapshot(), before);
    }

    #[tokio::test]
    async fn a_commit_past_a_buyers_limit_is_refused_with_the_counter() {
        // GIVEN alice already bought her limit of 1
        let env = Env::with_product(r#"{"name":"Hot phone","stock":5,"per_user_limit":1}"#).await;
        let (a, _) = two_queued_orders(&env).await;
        let c = commit(&[&a], 1, Some(1));
        env.store
            .commit(&sku(SKU), &c)
            .await
            .expect("up")
            .expect("committed");
        assert_eq!(env.store.bought(&sku(SKU), &user("alice")), 1);
        assert!(env.store.order(&a).expect("stored").counted);
        // WHEN another commit counts one more unit for her (an order admission would have
        // refused: it is queued while the limit is lifted)
        env.store
            .edit_product(&sku(SKU), |p| p.per_user_limit = None);
        let other = env.place_ok("alice", "k-2", 1).await;
        let refused = env
            .store
            .commit(&sku(SKU), &commit(&[&other], 1, Some(1)))
            .await
            .expect("up")
            .expect_err("refused");
        // THEN it is refused naming her counter
        assert_eq!(refused.counters, vec![(user("alice"), 1)]);
        assert_eq!(env.status(&other), OrderStatus::Queued);
    }

    #[tokio::test]
    async fn an_advance_on_a_changed_status_or_another_owner_is_stale() {
        // GIVEN alice's pending order
        let env = Env::with_product(r#"{"name":"Hot phone","stock":5}"#).await;
        let id = env.pending_order("alice", "k", 1).await;
        let order = env.store.order(&id).expect("stored");
        let pay = transition(order.status, order.reason, Event::Pay).expect("allowed");
        let before = env.store.snapshot();
        // WHEN bob's write carries his ownership condition
        let bob = env.store.advance(&order, &pay, Some(&user("bob")), 5).await;
        // THEN it is stale and nothing changed
        assert!(matches!(bob, Ok(Advance::Stale)));
        assert_eq!(env.store.snapshot(), before);
        // WHEN alice pays, then a write from the stale read cancels
        let paid = env
            .store
            .advance(&order, &pay, Some(&user("alice")), 5)
            .await;
        assert!(matches!(paid, Ok(Advance::Done(ref o)) if o.status == OrderStatus::Paid));
        let cancel = transition(order.status, order.reason, Event::Cancel).expect("allowed");
        let late = env.store.advance(&order, &cancel, None, 6).await;
        // THEN the cancel is stale and the stock stays taken
        assert!(matches!(late, Ok(Advance::Stale)));
        assert_eq!(env.available(), 4);
    }

    #[tokio::test]
    async fn an_injected_fault_fails_exactly_the_calls_it_names() {
        // GIVEN a store told to fail the next two calls
        let env = Env::with_product(r#"{"name":"Hot phone","stock":5}"#).await;
        env.store.fail(2);
        // WHEN three calls are made
        let results = [
            env.store.get_product(&sku(SKU)).await.is_ok(),
            env.store.read_bought(&sku(SKU), &[]).await.is_ok(),
            env.store.get_product(&sku(SKU)).await.is_ok(),
        ];
        // THEN the first two fail and the third works
        assert_eq!(results, [false, false, true]);
    }
}

#[tokio::test]
async fn a_forged_message_reusing_an_order_id_is_ignored_and_the_genuine_one_decides_it() {
    for forged_first in [true, false] {
        // GIVEN alice's queued order and a forged message naming it with another quantity
        let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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

// --- Rate limit and circuit breaker --------------------------------------------------------

/// A bucket of `capacity` that refills one token every 100 s: nothing comes back during a
/// test, so the counts are exact.
fn slow_bucket(capacity: u32) -> flash_domain::token_bucket::TokenBucket {
    flash_domain::token_bucket::TokenBucket::new(capacity, 0.01).expect("valid bucket")
}

#[tokio::test]
async fn a_caller_over_the_rate_gets_429_with_retry_after_and_nothing_is_written() {
    // GIVEN a bucket of 3 tokens per caller on the write routes
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let pay = env
        .advance(Req::advance("alice", false, id.as_str(), "pay"))
        .await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
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
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    env.store.set_rate_limit(Some(slow_bucket(3)));
    env.place_ok("alice", "k-1", 1).await;
    for key in ["k-2", "k-3"] {
        env.place_ok("alice", key, 1).await;
    }
    // WHEN she reuses k-1 for 2 units
    // THEN the stored order decides: 422, not 429, and nothing is written or sent
    env.assert_place_refused(
        Req::place_order("alice", "k-1", r#"{"sku":"SKU-1","quantity":2}"#),
        422,
        "idempotency_key_reused",
    )
    .await;
    // AND a new key is still refused by the rate limit
    env.assert_place_refused(Req::place_order("alice", "k-4", ONE), 429, "rate_limited")
        .await;
}

#[tokio::test]
async fn a_key_reused_with_a_body_naming_an_unknown_sku_gets_422_not_404() {
    // GIVEN alice's order under k-1
    let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
    env.place_ok("alice", "k-1", 1).await;
    let unknown = r#"{"sku":"NO-SUCH-SKU","quantity":1}"#;
    // WHEN she reuses k-1 for a product that does not exist
    // THEN the key's order decides: 422
    env.assert_place_refused(
        Req::place_order("alice", "k-1", unknown),
        422,
        "idempotency_key_reused",
    )
    .await;
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

mod breaker {
    use super::*;
    use flash_domain::breaker::{BreakerConfig, State};
    use std::time::Duration;

    const COOL_DOWN: Duration = Duration::from_secs(5);

    /// place-order with breakers that open after 3 failures within 10 s, for 5 s.
    fn handler(env: &Env) -> PlaceOrder<FakeStore, FakeQueue> {
        PlaceOrder::new(env.store.clone(), env.queue.clone()).with_breakers(BreakerConfig {
            failures: 3,
            window: Duration::from_secs(10),
            cool_down: COOL_DOWN,
        })
    }

    async fn place(h: &PlaceOrder<FakeStore, FakeQueue>, key: &str) -> Resp {
        Resp::from(h.handle(Req::place_order("alice", key, ONE).build()).await)
    }

    fn retry_after(r: &Resp) -> u64 {
        r.retry_after
            .as_deref()
            .and_then(|s| s.parse().ok())
            .expect("Retry-After in seconds")
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_throttling_opens_it_and_orders_are_refused_at_once_without_a_call() {
        // GIVEN DynamoDB throttling every call
        let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
        let h = handler(&env);
        env.store.throttle(usize::MAX);
        // WHEN three orders fail against it
        for i in 0..3 {
            assert_error(&place(&h, &format!("k-{i}")).await, 503, "unavailable");
        }
        // THEN the breaker is open: the next order is refused 503 with the cool-down as
        // Retry-After, and neither DynamoDB nor SQS is called
        assert_eq!(h.breakers().0.state(), State::Open);
        let (calls, sends) = (env.store.calls(), env.queue.calls());
        tokio::time::advance(Duration::from_secs(1)).await;
        let r = place(&h, "k-3").await;
        assert_error(&r, 503, "unavailable");
        assert_eq!(retry_after(&r), 4);
        assert_eq!((env.store.calls(), env.queue.calls()), (calls, sends));
        assert!(env.store.orders().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cool_down_one_probe_closes_it_when_the_dependency_is_back() {
        // GIVEN a breaker opened by throttling
        let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
        let h = handler(&env);
        env.store.throttle(3);
        for i in 0..3 {
            place(&h, &format!("k-{i}")).await;
        }
        assert_eq!(h.breakers().0.state(), State::Open);
        // WHEN the cool-down passes and DynamoDB has recovered
        tokio::time::advance(COOL_DOWN).await;
        let r = place(&h, "k-probe").await;
        // THEN the probe goes through and closes the breaker; orders flow again
        assert_eq!(r.status, 202, "body: {}", r.body);
        assert_eq!(h.breakers().0.state(), State::Closed);
        assert_eq!(place(&h, "k-next").await.status, 202);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_for_another_cool_down() {
        // GIVEN a breaker opened by throttling, and its cool-down over
        let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
        let h = handler(&env);
        env.store.throttle(4);
        for i in 0..3 {
            place(&h, &format!("k-{i}")).await;
        }
        tokio::time::advance(COOL_DOWN).await;
        // WHEN the probe is throttled too
        assert_error(&place(&h, "k-probe").await, 503, "unavailable");
        // THEN it is open again, for a whole new cool-down
        assert_eq!(h.breakers().0.state(), State::Open);
        let r = place(&h, "k-after").await;
        assert_error(&r, 503, "unavailable");
        assert_eq!(retry_after(&r), 5);
        tokio::time::advance(COOL_DOWN).await;
        assert_eq!(place(&h, "k-later").await.status, 202);
    }

    #[tokio::test(start_paused = true)]
    async fn an_sqs_breaker_opened_by_throttled_sends_sheds_orders_before_any_write() {
        // GIVEN SQS throttling: three orders refused with 503, written or not
        let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
        let h = handler(&env);
        env.queue.throttle(3);
        for i in 0..3 {
            assert_error(&place(&h, &format!("k-{i}")).await, 503, "unavailable");
        }
        assert_eq!(h.breakers().1.state(), State::Open);
        // WHEN another order comes while it is open
        let before = env.store.snapshot();
        let calls = env.store.calls();
        let r = place(&h, "k-3").await;
        // THEN it is refused at once: no DynamoDB write is left waiting for a queue, and the
        // one call is the read that looks for an order the key already names (a replay of a
        // decided order would get its 202 with no send)
        assert_error(&r, 503, "unavailable");
        assert_eq!(
            (env.store.snapshot(), env.store.calls()),
            (before, calls + 1)
        );
        // AND after the cool-down the first caller's retry is the probe that enqueues it
        tokio::time::advance(COOL_DOWN).await;
        let replay = place(&h, "k-0").await;
        assert_eq!(replay.status, 202, "body: {}", replay.body);
        assert_eq!(h.breakers().1.state(), State::Closed);
        assert_eq!(env.queue.sent().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn while_only_the_sqs_breaker_is_open_a_replay_of_a_decided_order_gets_its_202() {
        // GIVEN alice's order, accepted, and then an SQS breaker opened by throttled sends
        let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
        let h = handler(&env);
        let id = env.pending_order("alice", "k-0", 1).await;
        env.queue.throttle(3);
        for i in 1..4 {
            assert_error(&place(&h, &format!("k-{i}")).await, 503, "unavailable");
        }
        assert_eq!(h.breakers().1.state(), State::Open);
        // WHEN she replays her first request
        let r = place(&h, "k-0").await;
        // THEN the stored order answers, with nothing to send
        assert_eq!((r.status, r.order_id()), (202, id), "body: {}", r.body);
        assert_eq!(r.body["status"], "pending");
        // AND a new order is still shed
        assert_error(&place(&h, "k-9").await, 503, "unavailable");
    }

    #[tokio::test(start_paused = true)]
    async fn business_answers_and_spread_out_failures_do_not_open_it() {
        // GIVEN failures that are not throttling, and throttles more than 10 s apart
        let env = Env::with_product(r#"{"name":"Hot phone","stock":10}"#).await;
        let h = handler(&env);
        env.store.fail(3);
        for i in 0..3 {
            assert_error(&place(&h, &format!("f-{i}")).await, 503, "unavailable");
        }
        for i in 0..4 {
            env.store.throttle(1);
            place(&h, &format!("t-{i}")).await;
            tokio::time::advance(Duration::from_secs(6)).await;
        }
        // WHEN orders are refused for business reasons
        let other = json!({"sku": SKU, "quantity": 1001}).to_string();
        assert_error(
            &Resp::from(
                h.handle(Req::place_order("alice", "bad", &other).build())
                    .await,
            ),
            400,
            "invalid_request",
        );
        // THEN the breaker stayed closed throughout
        assert_eq!(h.breakers().0.state(), State::Closed);
        assert_eq!(place(&h, "k-ok").await.status, 202);
    }
}
