//! Handler tests: every function's handler driven by requests and SQS events built from the
//! `events/` fixtures, against the in-memory store and queue. Each test owns its fakes, so the
//! tests run in parallel and need no network. They check the HTTP contract of `API.md` (status,
//! `error.code`, `Retry-After`) and what each call leaves in the store.

use ::advance_order::AdvanceOrder;
use ::get_order::GetOrder;
use ::place_order::{product_ttl, PlaceOrder, LOW_STOCK_TTL, PRODUCT_TTL, REDRIVE_AFTER};
use ::process_orders::{BatchReport, ProcessOrders};
use ::products::Products;
use flash_domain::clock::parse_rfc3339;
use flash_domain::ports::Store;
use flash_domain::{OrderId, OrderMessage, OrderStatus, Quantity, Reason};
use flash_tests::drain::invoke;
use flash_tests::fake::{message_body, FakeQueue, FakeStore, InjectFaults};
use flash_tests::fixtures::{sqs_event, Req};
use flash_tests::given::{failures, id_for, sku, user};
use flash_tests::response::{assert_error, Resp};
use serde_json::{json, Value};
use std::collections::BTreeSet;

mod advance_order;
mod breaker;
mod fake_store;
mod get_order;
mod place_order;
mod process_orders;
mod products;
mod rate_limit;
mod sample_events;

const SKU: &str = "SKU-1";
const ONE: &str = r#"{"sku":"SKU-1","quantity":1}"#;

/// The invariant checker (`flash_domain::invariant_check`'s rules, admission counts included) finds
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

/// One test's world: a table and a queue, and every handler over them.
#[derive(Default)]
struct Env {
    store: FakeStore,
    queue: FakeQueue,
}

impl Env {
    /// The usual world: `SKU-1`, a hot phone with 10 units, on sale.
    async fn on_sale() -> Self {
        Self::with_product(r#"{"name":"Hot phone","stock":10}"#).await
    }

    /// A world with `SKU-1` created by an admin's `PUT` of `spec`.
    async fn with_product(spec: &str) -> Self {
        let env = Self::default();
        env.put_product(spec, 201).await;
        env
    }

    /// An admin's `PUT` of `spec` for `SKU-1`, which must answer `status`.
    async fn put_product(&self, spec: &str, status: u16) -> Resp {
        let r = self.products(Req::put_product(SKU, spec)).await;
        assert_eq!(r.status, status, "body: {}", r.body);
        r
    }

    async fn place(&self, req: Req) -> Resp {
        // A handler per request: its product cache never outlives a test's step.
        let h = PlaceOrder::new(self.store.clone(), self.queue.clone())
            .with_rate_limit(self.store.clone());
        Resp::from(h.handle(req.build()).await)
    }

    async fn products(&self, req: Req) -> Resp {
        let h = Products::new(self.store.clone()).with_rate_limit(self.store.clone());
        Resp::from(h.handle(req.build()).await)
    }

    async fn get_order(&self, req: Req) -> Resp {
        let h = GetOrder {
            store: self.store.clone(),
        };
        Resp::from(h.handle(req.build()).await)
    }

    async fn advance(&self, req: Req) -> Resp {
        let h = AdvanceOrder::new(self.store.clone()).with_rate_limit(self.store.clone());
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
        let (resp, report) = invoke(&h, event).await;
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

    /// SKU-1 on sale and alice's pending order of one unit under `k-1`; the world and its id.
    async fn with_alices_pending_order() -> (Self, OrderId) {
        let env = Self::on_sale().await;
        let id = env.pending_order("alice", "k-1", 1).await;
        (env, id)
    }

    /// Alice pays for her order `id` with `body`.
    async fn alice_pays_with(&self, id: &OrderId, body: &str) -> Resp {
        self.advance(Req::advance("alice", false, id.as_str(), "pay").body(body))
            .await
    }

    /// Alice asks for `action` on her order `id`, with no body.
    async fn alice_does(&self, id: &OrderId, action: &str) -> Resp {
        self.advance(Req::advance("alice", false, id.as_str(), action))
            .await
    }

    fn status(&self, id: &OrderId) -> OrderStatus {
        self.store.order(id).expect("the order exists").status
    }

    fn available(&self) -> u64 {
        self.store.available(&sku(SKU))
    }

    /// Alice's order with `body` under key `k` is refused as invalid and leaves the table and
    /// the queue untouched.
    async fn assert_invalid_order(&self, body: &str) {
        self.assert_body_refused(body, 400, "invalid_request").await;
    }

    /// Alice's order with `body` under key `k` is refused with `status`/`code` and leaves the
    /// table and the queue untouched.
    async fn assert_body_refused(&self, body: &str, status: u16, code: &str) {
        let req = Req::place_order("alice", "k", body);
        self.assert_place_refused(req, status, code).await;
    }

    /// Alice reusing her key `k-1` with `body` is refused 422 `idempotency_key_reused` and
    /// leaves the table and the queue untouched.
    async fn assert_k1_reused(&self, body: &str) {
        let req = Req::place_order("alice", "k-1", body);
        self.assert_place_refused(req, 422, "idempotency_key_reused")
            .await;
    }

    /// `req(case)` on the order route is refused with `status`/`code` for each of `cases`, and
    /// none of them changes the table.
    async fn assert_each_advance_refused(
        &self,
        cases: &[&str],
        req: impl Fn(&str) -> Req,
        status: u16,
        code: &str,
    ) {
        let before = self.store.snapshot();
        for case in cases {
            let r = self.advance(req(case)).await;
            assert_error(&r, status, code);
            assert_eq!(self.store.snapshot(), before, "{case} changed the order");
        }
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
