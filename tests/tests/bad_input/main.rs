//! Bad input, case by case: every malformed request the HTTP API can receive gets the 4xx JSON
//! error of `API.md` and leaves the table and the queue exactly as they were; every SQS record
//! that is not an order is reported as the only failure of its batch; and every (status, action)
//! pair the state machine forbids is refused naming the current status. Cases are tables run
//! against one world per test; a table reports every case that failed, not only the first.
//! `handlers.rs` covers the POST /orders cases one by one; here each kind of bad input is sent to
//! every route that reads a body.

use advance_order::AdvanceOrder;
use flash_domain::{
    Order, OrderId, OrderMessage, OrderStatus, Product, ProductSpec, Quantity, Reason,
};
use flash_tests::drain::invoke;
use flash_tests::fake::{message_body, FakeQueue, FakeStore, State};
use flash_tests::fixtures::Req;
use flash_tests::given::{failures, id_for, sku, stored_order, user};
use flash_tests::response::{Resp, INTERNAL_NAMES};
use get_order::GetOrder;
use lambda_http::Body;
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use products::Products;
use serde_json::{json, Value};

mod bodies;
mod envelope;
mod numbers_and_names;
mod sqs_records;
mod state_machine;

const SKU: &str = "SKU-1";
const ORDER: &str = r#"{"sku":"SKU-1","quantity":1}"#;
const SPEC: &str = r#"{"name":"Hot phone","stock":5}"#;
/// The largest body in the table cases: 1 MiB, well over the contract's 16 KiB but under the
/// 6 MB Lambda invocation payload, so it does reach the function.
const ONE_MIB: usize = 1024 * 1024;
/// How deep the nesting cases go: far past serde_json's recursion limit of 128.
const DEEP: usize = 10_000;

/// The contract's promise for an error answer, checked case by case.
trait ContractError {
    /// How this response differs from the contract's error `status`/`code`, if it does.
    fn error_mismatch(&self, status: u16, code: &str) -> Option<String>;
}

impl ContractError for Resp {
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

    /// A request the contract refuses as `400 invalid_request`.
    fn invalid(what: impl Into<String>, req: (Route, Req)) -> Self {
        Self::new(what, req, 400, "invalid_request")
    }

    /// A request the contract refuses as `413 payload_too_large`.
    fn too_large(what: impl Into<String>, req: (Route, Req)) -> Self {
        Self::new(what, req, 413, "payload_too_large")
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
        let (resp, _) = invoke(&processor, world.queue.take_event()).await;
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
                    .with_rate_limit(self.store.clone())
                    .handle(req)
                    .await
            }
            Route::Products => {
                Products::new(self.store.clone())
                    .with_rate_limit(self.store.clone())
                    .handle(req)
                    .await
            }
            Route::AdvanceOrder => {
                AdvanceOrder::new(self.store.clone())
                    .with_rate_limit(self.store.clone())
                    .handle(req)
                    .await
            }
        };
        Resp::lenient(resp)
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

/// What the checklist sends where a count of units belongs.
const BAD_COUNTS: &[&str] = &["0", "-1", "1.5", "\"1\"", "1e9", "4294967296", "null"];

/// `text` base64-encoded, as a string.
fn encode(text: &str) -> String {
    serde_json::to_value(Body::Binary(text.as_bytes().to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("base64 text")
}
