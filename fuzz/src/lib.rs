//! What the fuzz targets share: API Gateway v2 events carrying a fuzzed body, a small world of
//! in-memory fakes for the handlers to run against, and the checks every answer must pass (a
//! status of the contract, and an error body with the code that status means and a message
//! that names nothing internal).

use flash_aws::http::ApiError;
use flash_domain::{OrderId, OrderMessage, OrderStatus, ProductSpec, Sku, UserId};
use flash_tests::fake::{FakeQueue, FakeStore};
use flash_tests::given::stored_order;
use flash_tests::response::INTERNAL_NAMES;
use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
use std::cell::Cell;
use std::future::Future;
use std::sync::Once;

/// The order id the `advance-order` and `get-order` fixtures name.
pub const FIXTURE_ORDER_ID: &str = "0123456789abcdef0123456789abcdef";
/// The order the first record of `events/process-orders.json` names.
pub const FIXTURE_QUEUED_ID: &str = "7c9e6679f4a84a5b9c6b0f3e1d2a4b5c";
/// The caller of the API fixtures.
pub const FIXTURE_USER: &str = "user-alice";

/// How the body travels in the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As text (`isBase64Encoded: false`); only for UTF-8 bodies.
    Text,
    /// Base64, as API Gateway sends a body of a binary media type.
    Base64,
}

/// A `POST /orders` event carrying `body`, in the shape of `events/place-order.json` cut down to
/// what lambda_http reads (a fuzz input is parsed three times, so the envelope is kept small),
/// read by lambda_http as the runtime would. `None` when the body cannot travel that way (text
/// that is not UTF-8).
pub fn place_order_request(
    body: &[u8],
    encoding: Encoding,
    content_type: Option<&str>,
) -> Option<Request> {
    let body = match encoding {
        Encoding::Text => serde_json::to_string(std::str::from_utf8(body).ok()?),
        // lambda_http's `Body` serialises binary data with the engine it decodes with.
        Encoding::Base64 => serde_json::to_string(&Body::Binary(body.to_vec())),
    }
    .ok()?;
    let content_type = content_type
        .map(|ct| format!(r#","content-type":{}"#, json!(ct)))
        .unwrap_or_default();
    let event = format!(
        r#"{{"version":"2.0","routeKey":"POST /orders","rawPath":"/orders","rawQueryString":"",
        "headers":{{"host":"a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
        "idempotency-key":"3f1c2b7e-0001"{content_type}}},
        "requestContext":{{"routeKey":"POST /orders","stage":"$default",
        "http":{{"method":"POST","path":"/orders","protocol":"HTTP/1.1","sourceIp":"203.0.113.10"}}}},
        "body":{body},"isBase64Encoded":{}}}"#,
        encoding == Encoding::Base64
    );
    let req = lambda_http::request::from_str(&event)
        .expect("an event with another body is still a v2 event");
    Some(req)
}

/// A Lambda invocation payload read as lambda_http reads it under the runtime: `None` when it is
/// not an API Gateway v2 event, and also when lambda_http panics turning it into a request.
///
/// lambda_http (1.3) unwraps and expects in that conversion: a base64 flag on a body that is
/// not base64, a `host` header or domain name that is not a valid host, a path or query that
/// does not make a valid URI. API Gateway does not produce those, and the runtime calls the
/// conversion inside its catch-panic layer, so such an event becomes an invocation error and no
/// handler sees it. A panic anywhere else (in the handlers) still aborts the fuzzer.
pub fn parse_event(text: &str) -> Option<Request> {
    thread_local! {
        static CONVERTING: Cell<bool> = const { Cell::new(false) };
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // libFuzzer's hook aborts on any panic; keep it for every panic but the conversion's.
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONVERTING.get() {
                fuzzer_hook(info);
            }
        }));
    });
    CONVERTING.set(true);
    let parsed = std::panic::catch_unwind(|| lambda_http::request::from_str(text));
    CONVERTING.set(false);
    parsed.ok()?.ok()
}

/// The error code the contract gives each error status.
fn codes_for(status: u16) -> &'static [&'static str] {
    match status {
        400 => &["invalid_request"],
        401 => &["unauthorized"],
        403 => &["forbidden"],
        404 => &["not_found"],
        409 => &["invalid_transition", "sold_out", "sale_not_open"],
        413 => &["payload_too_large"],
        415 => &["unsupported_media_type"],
        422 => &["idempotency_key_reused"],
        _ => &[],
    }
}

/// `e` is the contract's error for `status`, and its response says so.
pub fn check_error(e: ApiError, status: u16) {
    assert_eq!(e.status(), status, "{e:?}");
    check_response(e.into_response());
}

/// A handler's answer: a status of the contract (no 5xx: the fakes never fail), JSON, and for
/// an error the code its status means and a message that names nothing internal.
pub fn check_response(r: Response<Body>) {
    let status = r.status().as_u16();
    assert!(
        matches!(
            status,
            200 | 201 | 202 | 400 | 401 | 403 | 404 | 409 | 413 | 415 | 422
        ),
        "status {status}"
    );
    let content_type = r.headers().get("content-type").map(|v| v.as_bytes());
    assert_eq!(content_type, Some(&b"application/json"[..]));
    let body: Value = match r.body() {
        Body::Text(t) => serde_json::from_str(t).expect("a JSON body"),
        Body::Binary(b) => serde_json::from_slice(b).expect("a JSON body"),
        _ => panic!("no body"),
    };
    if status >= 400 {
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(codes_for(status).contains(&code), "{status} with {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{body}");
        for name in INTERNAL_NAMES {
            assert!(!message.contains(name), "the message names {name}: {body}");
        }
    }
}

/// Runs `f` to completion on this thread's runtime (one per thread, built once).
pub fn block_on<F: Future>(f: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime");
    }
    RUNTIME.with(|rt| rt.block_on(f))
}

/// A table and a queue in memory: SKU-1 on sale with 10 units, the fixtures' caller's pending
/// order under the id the fixtures name, and the queued order the first record of
/// `events/process-orders.json` names, with that record's message.
pub struct World {
    pub store: FakeStore,
    pub queue: FakeQueue,
    /// The message `place-order` sent for the queued order.
    pub queued: OrderMessage,
}

impl World {
    pub fn new() -> Self {
        let store = FakeStore::new();
        let spec: ProductSpec =
            serde_json::from_str(r#"{"name":"Hot phone","stock":10}"#).expect("a valid spec");
        let sku = Sku::parse("SKU-1").expect("a valid sku");
        let (product, stock) = spec.into_product(sku.clone()).expect("a valid product");
        store.seed_product(product, stock);
        let owner = UserId::parse(FIXTURE_USER).expect("a valid user");
        let pending = stored_order(
            OrderId::parse(FIXTURE_ORDER_ID).expect("a valid id"),
            owner.clone(),
            OrderStatus::Pending,
            None,
        );
        store.seed_order(pending);
        let queued = stored_order(
            OrderId::parse(FIXTURE_QUEUED_ID).expect("a valid id"),
            owner.clone(),
            OrderStatus::Queued,
            None,
        );
        let message = OrderMessage {
            order_id: queued.id.clone(),
            sku: queued.sku.clone(),
            quantity: queued.quantity,
            user_id: owner,
        };
        store.seed_order(queued);
        Self {
            store,
            queue: FakeQueue::new(),
            queued: message,
        }
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}
