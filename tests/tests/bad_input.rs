//! Bad input, case by case: every malformed request the HTTP API can receive gets the 4xx JSON
//! error of `API.md` and leaves the table and the queue exactly as they were; every SQS record
//! that is not an order is reported as the only failure of its batch; and every (status, action)
//! pair the state machine forbids is refused naming the current status. Cases are tables run
//! against one world per test; a table reports every case that failed, not only the first.
//! `handlers.rs` covers the POST /orders cases one by one; here each kind of bad input is sent to
//! every route that reads a body.

use advance_order::AdvanceOrder;
use flash_domain::clock::now_ms;
use flash_domain::order::ShardTake;
use flash_domain::{
    IdempotencyKey, Order, OrderId, OrderMessage, OrderRequest, OrderStatus, Product, ProductSpec,
    Quantity, Reason, Sku, UserId,
};
use flash_tests::fake::{message_body, FakeQueue, FakeStore, State};
use flash_tests::fixtures::{event, Req};
use get_order::GetOrder;
use lambda_http::{Body, Response};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use products::Products;
use serde_json::{json, Value};

const SKU: &str = "SKU-1";
const ORDER: &str = r#"{"sku":"SKU-1","quantity":1}"#;
const SPEC: &str = r#"{"name":"Hot phone","stock":5}"#;
/// The largest body in the table cases: 1 MiB, well over the contract's 16 KiB but under the
/// 6 MB Lambda invocation payload, so it does reach the function.
const ONE_MIB: usize = 1024 * 1024;
/// How deep the nesting cases go: far past serde_json's recursion limit of 128.
const DEEP: usize = 10_000;

/// Words that would mean an error message leaks the implementation.
const INTERNAL_NAMES: &[&str] = &[
    "OrderRequest",
    "ProductSpec",
    "NoFields",
    "flash_",
    "struct ",
    "panicked",
    ".rs:",
    "serde",
];

/// A response taken apart.
#[derive(Debug)]
struct Resp {
    status: u16,
    body: Value,
    content_type: Option<String>,
}

impl Resp {
    fn from(r: Response<Body>) -> Self {
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes: &[u8] = match r.body() {
            Body::Text(t) => t.as_bytes(),
            Body::Binary(b) => b,
            _ => b"",
        };
        // A body that is not JSON is kept as a string so the case fails with it, not a panic.
        let body = serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()));
        Self {
            status: r.status().as_u16(),
            body,
            content_type,
        }
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// How this response differs from the contract's error `status`/`code`, if it does.
    fn error_mismatch(&self, status: u16, code: &str) -> Option<String> {
        let message = self.body["error"]["message"].as_str().unwrap_or("");
        let leak = INTERNAL_NAMES.iter().find(|n| message.contains(*n));
        if (self.status, self.code()) != (status, code) {
            Some(format!("got {} {}", self.status, self.body))
        } else if message.is_empty() {
            Some(format!("no error.message: {}", self.body))
        } else if let Some(leak) = leak {
            Some(format!("the message names {leak:?}: {message}"))
        } else if self.content_type.as_deref() != Some("application/json") {
            Some(format!("content type {:?}", self.content_type))
        } else {
            None
        }
    }
}

/// Which function a request goes to.
#[derive(Debug, Clone, Copy)]
enum Route {
    PlaceOrder,
    Products,
    AdvanceOrder,
}

/// One row of a table: a request and the error the contract promises for it.
struct Case {
    what: String,
    route: Route,
    req: Req,
    status: u16,
    code: &'static str,
}

impl Case {
    fn new(
        what: impl Into<String>,
        (route, req): (Route, Req),
        status: u16,
        code: &'static str,
    ) -> Self {
        Self {
            what: what.into(),
            route,
            req,
            status,
            code,
        }
    }
}

/// Everything a handler could have written to.
#[derive(Debug, PartialEq)]
struct Written {
    table: State,
    sent: Vec<OrderMessage>,
}

/// One test's world: SKU-1 with 10 units, of which alice holds one in a pending order (so the
/// action route has an order to act on, and a bad `PUT` has stock it could wrongly add to).
struct World {
    store: FakeStore,
    queue: FakeQueue,
    pending: OrderId,
}

impl World {
    async fn new() -> Self {
        let world = Self {
            store: FakeStore::new(),
            queue: FakeQueue::new(),
            pending: id_for("alice", "k-pending"),
        };
        let created = world
            .send(put(SKU, r#"{"name":"Hot phone","stock":10}"#))
            .await;
        assert_eq!(created.status, 201, "body: {}", created.body);
        let placed = world.send(place_with_key("k-pending", ORDER)).await;
        assert_eq!(placed.status, 202, "body: {}", placed.body);
        let processor = ProcessOrders {
            store: world.store.clone(),
            timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
        };
        let (resp, _) = processor
            .handle(
                &flash_tests::fake::FakeRedelivery::default(),
                world.queue.take_event(),
                flash_tests::fixtures::invocation_deadline(),
            )
            .await;
        assert!(resp.batch_item_failures.is_empty());
        assert_eq!(world.status(&world.pending), OrderStatus::Pending);
        world
    }

    async fn send(&self, (route, req): (Route, Req)) -> Resp {
        self.send_request(route, req.build()).await
    }

    async fn send_request(&self, route: Route, req: lambda_http::Request) -> Resp {
        let resp = match route {
            // A handler per request, so no product cache outlives one case.
            Route::PlaceOrder => {
                PlaceOrder::new(self.store.clone(), self.queue.clone())
                    .handle(req)
                    .await
            }
            Route::Products => {
                Products {
                    store: self.store.clone(),
                }
                .handle(req)
                .await
            }
            Route::AdvanceOrder => {
                AdvanceOrder {
                    store: self.store.clone(),
                }
                .handle(req)
                .await
            }
        };
        Resp::from(resp)
    }

    fn written(&self) -> Written {
        Written {
            table: self.store.snapshot(),
            sent: self.queue.sent(),
        }
    }

    fn status(&self, id: &OrderId) -> OrderStatus {
        self.store.order(id).expect("the order exists").status
    }

    /// `POST /orders/{pending}/pay` with `body`.
    fn pay(&self, body: &str) -> (Route, Req) {
        (
            Route::AdvanceOrder,
            Req::advance("alice", false, self.pending.as_str(), "pay").body(body),
        )
    }

    /// Sends every case; each must get its error and write nothing. Reports all that did not.
    async fn assert_refused(&self, cases: Vec<Case>) {
        assert!(!cases.is_empty());
        let mut wrong = Vec::new();
        for case in cases {
            let before = self.written();
            let r = self.send((case.route, case.req)).await;
            if let Some(why) = r.error_mismatch(case.status, case.code) {
                wrong.push(format!("{}: {why}", case.what));
            }
            if self.written() != before {
                wrong.push(format!("{}: wrote to the table or the queue", case.what));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }
}

fn user(s: &str) -> UserId {
    UserId::parse(s).expect("valid user")
}

fn sku(s: &str) -> Sku {
    Sku::parse(s).expect("valid sku")
}

/// The id `place-order` derives for `who` and `key`.
fn id_for(who: &str, key: &str) -> OrderId {
    OrderId::derive(&user(who), &IdempotencyKey::parse(key).expect("valid key"))
}

/// `POST /orders` by alice with key `k-bad`.
fn place(body: &str) -> (Route, Req) {
    place_with_key("k-bad", body)
}

fn place_with_key(key: &str, body: &str) -> (Route, Req) {
    (Route::PlaceOrder, Req::place_order("alice", key, body))
}

/// `PUT /products/{sku}` by an admin.
fn put(sku: &str, body: &str) -> (Route, Req) {
    (Route::Products, Req::put_product(sku, body))
}

/// The same request with its body sent base64-encoded, as API Gateway delivers a body of a
/// binary media type.
fn base64((route, mut req): (Route, Req), body: &[u8]) -> (Route, Req) {
    // lambda_http's `Body` serialises binary data with the engine it decodes with.
    req.0["body"] = serde_json::to_value(Body::Binary(body.to_vec())).expect("base64 text");
    req.0["isBase64Encoded"] = json!(true);
    (route, req)
}

fn with_header((route, req): (Route, Req), name: &str, value: &str) -> (Route, Req) {
    (route, req.header(name, value))
}

/// A JSON body of `n` bytes: `prefix`, then a string field padded to length, then `}`.
fn padded(prefix: &str, n: usize) -> String {
    let head = format!(r#"{prefix},"pad":""#);
    format!("{head}{}\"}}", "x".repeat(n - head.len() - 2))
}

// --- Numbers -------------------------------------------------------------------------------

/// What the checklist sends where a count of units belongs.
const BAD_COUNTS: &[&str] = &["0", "-1", "1.5", "\"1\"", "1e9", "4294967296", "null"];

#[tokio::test]
async fn every_malformed_count_of_units_is_invalid_in_an_order_and_in_a_product_spec() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    let mut cases = Vec::new();
    for n in BAD_COUNTS {
        // WHEN an order's quantity, or a product's stock, is zero, negative, fractional, a
        // string, a float in exponent form, above u32::MAX or null
        cases.push(Case::new(
            format!("quantity {n}"),
            place(&format!(r#"{{"sku":"SKU-1","quantity":{n}}}"#)),
            400,
            "invalid_request",
        ));
        cases.push(Case::new(
            format!("stock {n}"),
            put(SKU, &format!(r#"{{"name":"Hot phone","stock":{n}}}"#)),
            400,
            "invalid_request",
        ));
        // AND the optional counts of a spec (where null means "absent", so it is fine)
        for field in ["per_user_limit", "payment_window_seconds", "shards"] {
            if *n != "null" {
                cases.push(Case::new(
                    format!("{field} {n}"),
                    put(
                        SKU,
                        &format!(r#"{{"name":"Hot phone","stock":5,"{field}":{n}}}"#),
                    ),
                    400,
                    "invalid_request",
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
            Case::new(
                "quantity MAX+1",
                place(&format!(
                    r#"{{"sku":"SKU-1","quantity":{}}}"#,
                    Quantity::MAX + 1
                )),
                400,
                "invalid_request",
            ),
            Case::new(
                "stock MAX+1",
                put(SKU, r#"{"name":"Hot phone","stock":1000000001}"#),
                400,
                "invalid_request",
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
        cases.push(Case::new(
            format!("order of sku {what:?}"),
            place(&json!({"sku": bad, "quantity": 1}).to_string()),
            400,
            "invalid_request",
        ));
        // AND when an admin puts a product under it
        cases.push(Case::new(
            format!("put of sku {what:?}"),
            put(bad, SPEC),
            400,
            "invalid_request",
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
            Case::new(
                format!("name of {} bytes", name.len()),
                put(SKU, &json!({"name": name, "stock": 5}).to_string()),
                400,
                "invalid_request",
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
    let mut cases = vec![Case::new(
        "no key",
        (valid.0, valid.1.clone().without_header("idempotency-key")),
        400,
        "invalid_request",
    )];
    for key in [
        String::new(),
        "k".repeat(129),
        "clé".to_owned(),
        "ключ".to_owned(),
        "key-🔑".to_owned(),
    ] {
        cases.push(Case::new(
            format!("key {key:?} ({} bytes)", key.len()),
            with_header(valid.clone(), "idempotency-key", &key),
            400,
            "invalid_request",
        ));
    }
    // THEN each is refused as invalid, and no order is written or enqueued
    world.assert_refused(cases).await;
}

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
            cases.push(Case::new(
                format!("{route:?} {body:?}"),
                (route, req),
                400,
                "invalid_request",
            ));
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
        Case::new("order", place(&encode(ORDER)), 400, "invalid_request"),
        Case::new("spec", put(SKU, &encode(SPEC)), 400, "invalid_request"),
        Case::new("action", world.pay(&encode("{}")), 400, "invalid_request"),
    ];
    // THEN it is not a JSON object, so each is refused as invalid
    world.assert_refused(cases).await;
}

/// `text` base64-encoded, as a string.
fn encode(text: &str) -> String {
    serde_json::to_value(Body::Binary(text.as_bytes().to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("base64 text")
}

#[tokio::test]
async fn a_base64_encoded_body_is_decoded_and_then_judged_like_the_same_body_sent_as_text() {
    // GIVEN SKU-1 on sale and alice's pending order
    let world = World::new().await;
    // WHEN API Gateway delivers base64 (isBase64Encoded: a binary media type) of bodies that
    // would be refused as text: not JSON, an extra field, not declared JSON, 1 MiB
    let big = padded(r#"{"sku":"SKU-1","quantity":1"#, ONE_MIB);
    let cases = vec![
        Case::new(
            "not JSON",
            base64(place(""), b"sku=SKU-1"),
            400,
            "invalid_request",
        ),
        Case::new(
            "extra field",
            base64(
                place(""),
                br#"{"sku":"SKU-1","quantity":1,"status":"paid"}"#,
            ),
            400,
            "invalid_request",
        ),
        Case::new(
            "not UTF-8",
            base64(place(""), b"{\"sku\":\"\xff\xfe\",\"quantity\":1}"),
            400,
            "invalid_request",
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
        Case::new(
            "1 MiB",
            base64(place(""), big.as_bytes()),
            413,
            "payload_too_large",
        ),
        Case::new(
            "spec with a price",
            base64(put(SKU, ""), br#"{"name":"x","stock":5,"price":1}"#),
            400,
            "invalid_request",
        ),
        Case::new(
            "action with a status",
            base64(world.pay(""), br#"{"status":"paid"}"#),
            400,
            "invalid_request",
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
        Case::new("order", place(&order), 413, "payload_too_large"),
        Case::new("spec", put(SKU, &spec), 413, "payload_too_large"),
        Case::new("action", world.pay(&action), 413, "payload_too_large"),
        Case::new("blank order", place(&blank), 413, "payload_too_large"),
        Case::new("blank action", world.pay(&blank), 413, "payload_too_large"),
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
        cases.push(Case::new(
            format!("{route:?} field opened {DEEP} deep"),
            with(format!(r#"{{"{field}":{open}"#)),
            400,
            "invalid_request",
        ));
        cases.push(Case::new(
            format!("{route:?} array opened {DEEP} deep"),
            with(open.clone()),
            400,
            "invalid_request",
        ));
        // AND when it is balanced, which takes more than 16 KiB
        cases.push(Case::new(
            format!("{route:?} balanced arrays"),
            with(format!(r#"{{"{field}":{balanced}}}"#)),
            413,
            "payload_too_large",
        ));
        cases.push(Case::new(
            format!("{route:?} balanced objects"),
            with(objects.clone()),
            413,
            "payload_too_large",
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
        Case::new(
            "quantity twice",
            place(r#"{"sku":"SKU-1","quantity":1,"quantity":1}"#),
            400,
            "invalid_request",
        ),
        Case::new(
            "sku twice",
            place(r#"{"sku":"SKU-2","quantity":1,"sku":"SKU-1"}"#),
            400,
            "invalid_request",
        ),
        Case::new(
            "stock twice",
            put(SKU, r#"{"name":"Hot phone","stock":5,"stock":5}"#),
            400,
            "invalid_request",
        ),
        Case::new(
            "name twice",
            put(SKU, r#"{"name":"a","name":"b","stock":5}"#),
            400,
            "invalid_request",
        ),
        Case::new(
            "optional field twice",
            put(SKU, r#"{"name":"a","stock":5,"shards":1,"shards":2}"#),
            400,
            "invalid_request",
        ),
        Case::new(
            "action key twice",
            world.pay(r#"{"a":1,"a":1}"#),
            400,
            "invalid_request",
        ),
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
            cases.push(Case::new(
                format!("{route:?} {field}"),
                req,
                400,
                "invalid_request",
            ));
        }
    }
    // THEN each is refused as invalid, and nothing is written or sent
    world.assert_refused(cases).await;
    assert_eq!(world.status(&world.pending), OrderStatus::Pending);
}

// --- The event envelope --------------------------------------------------------------------

/// `sam local generate-event apigateway aws-proxy --body '{"sku":"SKU-1","quantity":1}' --path
/// orders --resource /orders`: an API Gateway REST API (payload format 1.0) event, with the
/// headers a JSON client would add and the claims a REST API's authorizer puts in its context.
/// `multiValueHeaders` is trimmed to what matters.
const APIGW_V1_EVENT: &str = r#"{
  "body": "eyJza3UiOiJTS1UtMSIsInF1YW50aXR5IjoxfQ==",
  "resource": "/orders",
  "path": "/orders",
  "httpMethod": "POST",
  "isBase64Encoded": true,
  "queryStringParameters": {"foo": "bar"},
  "multiValueQueryStringParameters": {"foo": ["bar"]},
  "pathParameters": {"proxy": "/orders", "order_id": "0123456789abcdef0123456789abcdef", "action": "pay", "sku": "SKU-1"},
  "stageVariables": {"baz": "qux"},
  "headers": {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "Host": "1234567890.execute-api.us-east-1.amazonaws.com",
    "Idempotency-Key": "v1-key",
    "User-Agent": "Custom User Agent String",
    "X-Forwarded-For": "127.0.0.1, 127.0.0.2",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Proto": "https"
  },
  "multiValueHeaders": {
    "Content-Type": ["application/json"],
    "Idempotency-Key": ["v1-key"]
  },
  "requestContext": {
    "accountId": "123456789012",
    "resourceId": "123456",
    "stage": "prod",
    "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
    "requestTime": "09/Apr/2015:12:34:56 +0000",
    "requestTimeEpoch": 1428582896000,
    "authorizer": {"claims": {"sub": "alice", "scope": "flash-sale/admin"}},
    "identity": {
      "cognitoIdentityPoolId": null,
      "accountId": null,
      "cognitoIdentityId": null,
      "caller": null,
      "accessKey": null,
      "sourceIp": "127.0.0.1",
      "cognitoAuthenticationType": null,
      "cognitoAuthenticationProvider": null,
      "userArn": null,
      "userAgent": "Custom User Agent String",
      "user": null
    },
    "path": "/prod/orders",
    "resourcePath": "/orders",
    "httpMethod": "POST",
    "apiId": "1234567890",
    "protocol": "HTTP/1.1"
  }
}"#;

#[tokio::test]
async fn an_api_gateway_v1_event_never_acts_as_a_caller_on_a_v2_handler() {
    // GIVEN SKU-1 on sale, alice's pending order, and a REST API (payload 1.0) event whose
    // authorizer context claims alice as an admin
    let world = World::new().await;
    let before = world.written();
    // WHEN the runtime's parser reads it as what the functions take: lambda_http built with
    // only `apigw_http` knows the 2.0 payload alone
    let parsed = std::panic::catch_unwind(|| lambda_http::request::from_str(APIGW_V1_EVENT));
    // THEN it does not panic
    let parsed = parsed.expect("lambda_http panicked on a v1 event");
    match parsed {
        // AND it is refused before any handler runs: on Lambda the runtime reports an invocation
        // error (API Gateway answers 502), so no handler, store or queue is reached
        Err(e) => assert!(e.is_data(), "{e}"),
        // OR, if lambda_http was built to read 1.0 payloads too, every handler sees a request
        // without the 2.0 JWT claims: 401, whatever the 1.0 context claims
        Ok(_) => {
            for route in [Route::PlaceOrder, Route::Products, Route::AdvanceOrder] {
                let req = lambda_http::request::from_str(APIGW_V1_EVENT).expect("parsed above");
                let r = world.send_request(route, req).await;
                assert_eq!(r.error_mismatch(401, "unauthorized"), None, "{route:?}");
            }
            let req = lambda_http::request::from_str(APIGW_V1_EVENT).expect("parsed above");
            let r = GetOrder {
                store: world.store.clone(),
            }
            .handle(req)
            .await;
            assert_eq!(Resp::from(r).error_mismatch(401, "unauthorized"), None);
        }
    }
    // AND nothing is written or sent
    assert_eq!(world.written(), before);
}

#[tokio::test]
async fn a_v2_event_without_its_request_context_is_refused_by_the_parser() {
    // GIVEN the place-order fixture with the part only API Gateway writes removed or mangled
    let mut no_http = Req::place_order("alice", "k", ORDER).0;
    no_http["requestContext"]
        .as_object_mut()
        .expect("a context")
        .remove("http");
    let mut no_context = Req::place_order("alice", "k", ORDER).0;
    no_context
        .as_object_mut()
        .expect("an event")
        .remove("requestContext");
    let mut bad_method = Req::place_order("alice", "k", ORDER).0;
    bad_method["requestContext"]["http"]["method"] = json!("P O S T");
    // A control character is not allowed in a header value (RFC 9110); HTTP itself refuses it,
    // so an Idempotency-Key with DEL never reaches place-order.
    let del_in_header = Req::place_order("alice", "k\u{7f}", ORDER).0;
    for (what, e) in [
        ("no http", no_http),
        ("no context", no_context),
        ("bad method", bad_method),
        ("DEL in a header", del_in_header),
    ] {
        // WHEN lambda_http parses it
        let parsed = std::panic::catch_unwind(|| lambda_http::request::from_str(&e.to_string()));
        // THEN it is an error, not a panic and not a request with made-up parts
        let parsed = parsed.unwrap_or_else(|_| panic!("{what}: lambda_http panicked"));
        assert!(parsed.is_err(), "{what}: parsed");
    }
}

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

/// An SQS event of (message id, body) records; `None` is a record without a body.
fn sqs(records: &[(String, Option<String>)]) -> aws_lambda_events::event::sqs::SqsEvent {
    let mut e = event("process-orders");
    let template = e["Records"][0].clone();
    e["Records"] = records
        .iter()
        .map(|(id, body)| {
            let mut r = template.clone();
            r["messageId"] = json!(id);
            r["body"] = json!(body);
            r
        })
        .collect();
    serde_json::from_value(e).expect("a valid SQS event")
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
        let (alone, _) = processor
            .handle(
                &flash_tests::fake::FakeRedelivery::default(),
                sqs(&[("bad".into(), body.clone())]),
                flash_tests::fixtures::invocation_deadline(),
            )
            .await;
        // THEN it is reported failed, and nothing is written
        if failures(&alone) != ["bad"] {
            wrong.push(format!("{what} alone: failures {:?}", failures(&alone)));
        }
        if world.written() != before {
            wrong.push(format!("{what} alone: wrote"));
        }
        // WHEN it arrives between the two orders
        let batch = sqs(&[
            ("m-bob".into(), Some(message_body(&sent[0]))),
            ("bad".into(), body),
            ("m-carol".into(), Some(message_body(&sent[1]))),
        ]);
        let (resp, report) = processor
            .handle(
                &flash_tests::fake::FakeRedelivery::default(),
                batch,
                flash_tests::fixtures::invocation_deadline(),
            )
            .await;
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

fn failures(resp: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    resp.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

// --- The state machine ---------------------------------------------------------------------

/// Every (status, reason) an order can be stored with.
const STORED: &[(OrderStatus, Option<Reason>)] = &[
    (OrderStatus::Queued, None),
    (OrderStatus::Rejected, Some(Reason::SoldOut)),
    (OrderStatus::Rejected, Some(Reason::PurchaseLimit)),
    (OrderStatus::Rejected, Some(Reason::SaleNotOpen)),
    (OrderStatus::Pending, None),
    (OrderStatus::Paid, None),
    (OrderStatus::Shipped, None),
    (OrderStatus::Completed, None),
    (OrderStatus::Canceled, Some(Reason::BuyerCanceled)),
    (OrderStatus::Canceled, Some(Reason::PaymentTimeout)),
    (OrderStatus::Canceled, Some(Reason::Refunded)),
];

const ACTIONS: [&str; 5] = ["pay", "cancel", "refund", "ship", "confirm"];

/// What `API.md` allows, written out from its prose rather than taken from the domain: each
/// action's one source status, and what a repeat that already took effect looks like.
fn contract_allows(status: OrderStatus, reason: Option<Reason>, action: &str) -> bool {
    use OrderStatus::*;
    let first_time = matches!(
        (action, status),
        ("pay", Pending)
            | ("cancel", Pending)
            | ("refund", Paid)
            | ("ship", Paid)
            | ("confirm", Shipped)
    );
    let repeat = matches!(
        (action, status, reason),
        ("pay", Paid, _)
            | ("cancel", Canceled, Some(Reason::BuyerCanceled))
            | ("refund", Canceled, Some(Reason::Refunded))
            | ("ship", Shipped, _)
            | ("confirm", Completed, _)
    );
    first_time || repeat
}

/// alice's order stored directly in `status`, holding its unit when the status says so.
fn stored_order(status: OrderStatus, reason: Option<Reason>, key: &str) -> Order {
    let now = now_ms();
    let request = OrderRequest {
        sku: sku(SKU),
        quantity: Quantity::new(1).expect("valid quantity"),
    };
    Order {
        id: id_for("alice", key),
        owner: user("alice"),
        sku: request.sku.clone(),
        quantity: request.quantity,
        status,
        reason,
        created_at: now,
        updated_at: now,
        expires_at: (status == OrderStatus::Pending).then_some(now + 900_000),
        fingerprint: request.fingerprint(),
        takes: if status.holds_stock() {
            vec![ShardTake { shard: 0, units: 1 }]
        } else {
            Vec::new()
        },
        counted: false,
    }
}

#[tokio::test]
async fn every_action_the_state_machine_forbids_is_refused_naming_the_current_status_and_writes_nothing(
) {
    // GIVEN SKU-1, and one order of alice's stored in each status (and each reason)
    let store = FakeStore::new();
    let spec: ProductSpec = serde_json::from_str(SPEC).expect("a valid spec");
    let (product, stock): (Product, u64) = spec.into_product(sku(SKU)).expect("a valid product");
    store.seed_product(product, stock);
    let orders: Vec<Order> = STORED
        .iter()
        .enumerate()
        .map(|(i, &(status, reason))| stored_order(status, reason, &format!("k-{i}")))
        .collect();
    for o in &orders {
        store.seed_order(o.clone());
    }
    let handler = AdvanceOrder {
        store: store.clone(),
    };
    let (mut forbidden, mut wrong) = (0, Vec::new());
    for o in &orders {
        for action in ACTIONS {
            if contract_allows(o.status, o.reason, action) {
                continue;
            }
            forbidden += 1;
            // WHEN an admin, and (for what a buyer may do at all) the owner, takes a forbidden
            // action on it
            let callers: &[(&str, bool)] = if action == "ship" {
                &[("admin-1", true)]
            } else {
                &[("admin-1", true), ("alice", false)]
            };
            for &(who, admin) in callers {
                let before = store.snapshot();
                let req = Req::advance(who, admin, o.id.as_str(), action).build();
                let r = Resp::from(handler.handle(req).await);
                let what = format!("{who} {action} on {:?} {:?}", o.status, o.reason);
                // THEN it is refused as an invalid transition naming the status as it is
                if let Some(why) = r.error_mismatch(409, "invalid_transition") {
                    wrong.push(format!("{what}: {why}"));
                }
                let named = o.status.as_str();
                let message = r.body["error"]["message"].as_str().unwrap_or("");
                if r.body["error"]["status"] != named || !message.contains(named) {
                    wrong.push(format!("{what}: does not name {named}: {}", r.body));
                }
                // AND nothing is written: not the order, not the stock, not the counters
                if store.snapshot() != before {
                    wrong.push(format!("{what}: wrote"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    // 11 stored states × 5 actions, less 5 first-time transitions and 5 repeats.
    assert_eq!(forbidden, 45);
}
