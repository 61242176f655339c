//! Handler tests for the payment timeout (process-orders scheduling it, expire-orders applying
//! it, pay racing it through advance-order) and for the reconciler, against the in-memory
//! store and queues. Every scenario ends with the audit of the in-memory table.

use advance_order::AdvanceOrder;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use expire_orders::{ExpireOrders, ExpiryReport};
use flash_domain::clock::{now_ms, Millis};
use flash_domain::invariant_check::QUEUED_MARGIN_MS;
use flash_domain::limits::SQS_MAX_DELAY_SECONDS;
use flash_domain::{Order, OrderId, OrderStatus, Reason, Sku, UserId};
use flash_tests::drain::invoke;
use flash_tests::fake::{FakeQueue, FakeRedelivery, FakeStore, InjectFaults};
use flash_tests::fake_expiry::{timeout_body, FakeTimeouts};
use flash_tests::fixtures::{invocation_deadline, sqs_event, Req};
use flash_tests::invariant_assertions::assert_conservation_broken;
use flash_tests::invariants::audit_state;
use lambda_http::Body;
use place_order::PlaceOrder;
use process_orders::{BatchReport, ProcessOrders};
use products::Products;
use reconcile::{metric_record, Reconcile, METRIC};
use serde_json::{json, Value};
use std::time::Duration;

const SKU: &str = "SKU-1";

fn sku() -> Sku {
    Sku::parse(SKU).expect("valid")
}

fn failures(resp: &SqsBatchResponse) -> Vec<String> {
    let mut ids: Vec<String> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    ids.sort();
    ids
}

/// One test's world: the table, the orders queue, the payment-timeouts queue.
#[derive(Default)]
struct Env {
    store: FakeStore,
    queue: FakeQueue,
    timeouts: FakeTimeouts,
}

impl Env {
    /// `SKU-1` created by an admin's `PUT` of `spec`.
    async fn with_product(spec: Value) -> Self {
        let env = Self::default();
        let h = Products::new(env.store.clone()).with_rate_limit(env.store.clone());
        let r = h
            .handle(Req::put_product(SKU, &spec.to_string()).build())
            .await;
        assert_eq!(r.status(), 201);
        env
    }

    async fn place(&self, who: &str, key: &str, quantity: u32) -> OrderId {
        let h = PlaceOrder::new(self.store.clone(), self.queue.clone())
            .with_rate_limit(self.store.clone());
        let body = json!({"sku": SKU, "quantity": quantity}).to_string();
        let r = h.handle(Req::place_order(who, key, &body).build()).await;
        assert_eq!(r.status(), 202);
        let Body::Text(text) = r.body() else {
            panic!("a JSON body")
        };
        let b: Value = serde_json::from_str(text).expect("JSON");
        OrderId::parse(b["order_id"].as_str().expect("order_id")).expect("valid")
    }

    fn processor(&self) -> ProcessOrders<FakeStore, FakeTimeouts> {
        ProcessOrders {
            store: self.store.clone(),
            timeouts: self.timeouts.clone(),
        }
    }

    /// process-orders as deployed, on `event`.
    async fn process(&self, event: SqsEvent) -> (Vec<String>, BatchReport) {
        let (resp, report) = invoke(&self.processor(), event).await;
        (failures(&resp), report)
    }

    fn expirer(&self) -> ExpireOrders<FakeStore, FakeTimeouts> {
        ExpireOrders {
            store: self.store.clone(),
            timeouts: self.timeouts.clone(),
        }
    }

    /// expire-orders on `event`.
    async fn expire(&self, event: SqsEvent) -> (Vec<String>, ExpiryReport) {
        let (resp, report) = self.expirer().process(event).await;
        (failures(&resp), report)
    }

    /// A timeout message for each of `ids`, as one batch.
    fn timeout_event(ids: &[&OrderId]) -> SqsEvent {
        let records: Vec<(String, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("t{i}"), timeout_body(id)))
            .collect();
        sqs_event(&records)
    }

    /// An order of `who`, placed and not yet decided.
    async fn queued(&self, who: &str, key: &str, quantity: u32) -> OrderId {
        let id = self.place(who, key, quantity).await;
        self.queue.take_event();
        id
    }

    /// An order of `who`, accepted (pending) and its timeout scheduled.
    async fn pending(&self, who: &str, key: &str, quantity: u32) -> OrderId {
        let id = self.place(who, key, quantity).await;
        let (failed, _) = self.process(self.queue.take_event()).await;
        assert!(failed.is_empty(), "failed: {failed:?}");
        assert_eq!(self.order(&id).status, OrderStatus::Pending);
        id
    }

    fn order(&self, id: &OrderId) -> Order {
        self.store.order(id).expect("the order exists")
    }

    /// Moves an order's payment deadline (as if time had passed).
    fn set_deadline(&self, id: &OrderId, expires_at: Millis) {
        let mut o = self.order(id);
        o.expires_at = Some(expires_at);
        self.store.seed_order(o);
    }

    fn available(&self) -> u64 {
        self.store.available(&sku())
    }

    fn assert_invariants(&self) {
        let a = audit_state(&self.store.snapshot(), &sku());
        assert!(a.violations.is_empty(), "{:?}", a.violations);
    }

    async fn pay(&self, who: &str, id: &OrderId) -> (u16, Value) {
        let h = AdvanceOrder::new(self.store.clone()).with_rate_limit(self.store.clone());
        let r = h
            .handle(Req::advance(who, false, id.as_str(), "pay").build())
            .await;
        let body = match r.body() {
            Body::Text(t) => serde_json::from_str(t).expect("JSON"),
            _ => Value::Null,
        };
        (r.status().as_u16(), body)
    }
}

#[tokio::test]
async fn the_expire_orders_fixture_names_no_order_on_an_empty_store_and_fails_alone() {
    let env = Env::default();
    let event: SqsEvent =
        serde_json::from_value(flash_tests::fixtures::event("expire-orders")).expect("SQS event");
    let (failed, report) = env.expire(event).await;
    assert_eq!(
        failed,
        vec!["9d2b7c1e-3f4a-4b5c-8d6e-7f8091a2b301".to_owned()]
    );
    assert_eq!(report.expired, 0);
}

// --- process-orders schedules one timeout per accepted order ------------------------------

#[tokio::test]
async fn an_accepted_order_gets_one_timeout_due_when_its_window_closes() {
    // GIVEN a product with a 60 s payment window and one order
    let env =
        Env::with_product(json!({"name": "Phone", "stock": 5, "payment_window_seconds": 60})).await;
    // WHEN process-orders accepts it
    let id = env.pending("alice", "k1", 1).await;
    // THEN one timeout is scheduled for that order, due at its deadline, 60 s out
    let scheduled = env.timeouts.scheduled();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].order_id, id);
    assert_eq!(Some(scheduled[0].expires_at), env.order(&id).expires_at);
    assert!(
        (59..=60).contains(&scheduled[0].delay_seconds),
        "{scheduled:?}"
    );
    env.assert_invariants();
}

#[tokio::test]
async fn a_window_longer_than_fifteen_minutes_is_scheduled_for_the_longest_delay_sqs_allows() {
    let env =
        Env::with_product(json!({"name": "Phone", "stock": 5, "payment_window_seconds": 7200}))
            .await;
    env.pending("alice", "k1", 1).await;
    assert_eq!(
        env.timeouts.scheduled()[0].delay_seconds,
        SQS_MAX_DELAY_SECONDS
    );
}

#[tokio::test]
async fn a_rejected_order_gets_no_timeout() {
    // GIVEN one unit and two buyers
    let env = Env::with_product(json!({"name": "Phone", "stock": 1})).await;
    let a = env.place("alice", "k1", 1).await;
    let b = env.place("bob", "k1", 1).await;
    // WHEN both are decided in one batch
    let (failed, report) = env.process(env.queue.take_event()).await;
    // THEN only the accepted one has a timeout
    assert!(failed.is_empty());
    assert_eq!((report.accepted, report.rejected), (1, 1));
    let accepted = if env.order(&a).status == OrderStatus::Pending {
        a
    } else {
        b
    };
    assert_eq!(env.timeouts.orders(), [accepted].into_iter().collect());
}

#[tokio::test]
async fn a_redelivery_after_a_crash_before_scheduling_schedules_the_pending_order() {
    // GIVEN an order committed by a processor that died before it scheduled the timeout
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.place("alice", "k1", 1).await;
    let event = env.queue.take_event();
    // (its timeouts go to a queue of their own, which the crash loses)
    let crashing = ProcessOrders {
        store: env.store.clone(),
        timeouts: FakeTimeouts::new(),
    };
    let (_, crashed) = invoke(&crashing, event.clone()).await;
    assert_eq!(crashed.accepted, 1);
    assert_eq!(env.timeouts.calls(), 0);
    // WHEN SQS delivers the same message again
    let (failed, report) = env.process(event).await;
    // THEN nothing is deducted twice, and the timeout is scheduled now
    assert!(failed.is_empty());
    assert_eq!(report.accepted, 0);
    assert_eq!(env.timeouts.orders(), [id].into_iter().collect());
    assert_eq!(env.available(), 4);
    env.assert_invariants();
}

#[tokio::test]
async fn a_timeout_that_cannot_be_scheduled_fails_its_record_and_the_retry_schedules_it() {
    // GIVEN the payment-timeouts queue down for one call
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.place("alice", "k1", 1).await;
    let event = env.queue.take_event();
    env.timeouts.fail(1);
    // WHEN the order is processed
    let (failed, _) = env.process(event.clone()).await;
    // THEN it is accepted but its record is failed, so SQS delivers it again...
    assert_eq!(failed, vec!["m0".to_owned()]);
    assert_eq!(env.order(&id).status, OrderStatus::Pending);
    assert!(env.timeouts.scheduled().is_empty());
    // ...and the redelivery schedules the timeout without deducting again
    let (failed, _) = env.process(event).await;
    assert!(failed.is_empty());
    assert_eq!(env.timeouts.orders(), [id].into_iter().collect());
    assert_eq!(env.available(), 4);
    env.assert_invariants();
}

// --- expire-orders applies it exactly once -------------------------------------------------

#[tokio::test]
async fn a_due_timeout_cancels_the_order_and_returns_its_stock_exactly_once() {
    // GIVEN the last two units in alice's pending order, her window closed
    let env = Env::with_product(json!({"name": "Phone", "stock": 2})).await;
    let id = env.pending("alice", "k1", 2).await;
    assert!(env.store.product(&sku()).expect("product").sold_out);
    env.set_deadline(&id, now_ms() - 1);
    // WHEN its timeout arrives, twice (at-least-once delivery)
    let event = env.timeouts.take_event();
    let (failed, first) = env.expire(event.clone()).await;
    let (failed_again, second) = env.expire(event).await;
    // THEN the order is canceled for the timeout, the units are back once, and the product
    // is no longer sold out
    assert!(failed.is_empty() && failed_again.is_empty());
    assert_eq!((first.expired, second.expired, second.settled), (1, 0, 1));
    let o = env.order(&id);
    assert_eq!(
        (o.status, o.reason, o.expires_at),
        (OrderStatus::Canceled, Some(Reason::PaymentTimeout), None)
    );
    assert_eq!(env.available(), 2);
    assert!(!env.store.product(&sku()).expect("product").sold_out);
    env.assert_invariants();
}

#[tokio::test]
async fn a_timeout_for_an_order_paid_or_canceled_meanwhile_changes_no_order_and_no_stock() {
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let paid = env.pending("alice", "k1", 1).await;
    let canceled = env.pending("bob", "k1", 1).await;
    assert_eq!(env.pay("alice", &paid).await.0, 200);
    let h = AdvanceOrder::new(env.store.clone()).with_rate_limit(env.store.clone());
    let r = h
        .handle(Req::advance("bob", false, canceled.as_str(), "cancel").build())
        .await;
    assert_eq!(r.status(), 200);
    let before = env.store.snapshot();
    // WHEN both timeouts arrive
    let (failed, report) = env.expire(Env::timeout_event(&[&paid, &canceled])).await;
    // THEN both are settled, no order and no stock changed, and the canceled one cleared the
    // product's sold-out flag again (in case the cancel stopped before it did)
    assert!(failed.is_empty());
    assert_eq!((report.expired, report.settled), (0, 2));
    let after = env.store.snapshot();
    let restocks = |s: &flash_tests::fake::State| s.products[&sku()].restocks;
    assert_eq!(restocks(&after), restocks(&before) + 1);
    assert_eq!(
        after.without_sold_out_flags(),
        before.without_sold_out_flags()
    );
    assert_eq!(env.order(&canceled).reason, Some(Reason::BuyerCanceled));
    env.assert_invariants();
}

#[tokio::test]
async fn a_timeout_that_arrives_before_the_deadline_is_sent_again_for_what_remains() {
    // GIVEN two pending orders whose windows close in 30 s and in 2 h
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let soon = env.pending("alice", "k1", 1).await;
    let later = env.pending("bob", "k1", 1).await;
    let now = now_ms();
    env.set_deadline(&soon, now + 30_000);
    env.set_deadline(&later, now + 7_200_000);
    env.timeouts.take_event();
    // WHEN their timeouts arrive now
    let (failed, report) = env.expire(Env::timeout_event(&[&soon, &later])).await;
    // THEN both stay pending and are scheduled again: 30 s, and SQS's longest delay
    assert!(failed.is_empty());
    assert_eq!(report.rescheduled, 2);
    assert_eq!(env.order(&soon).status, OrderStatus::Pending);
    let mut delays: Vec<(OrderId, u32)> = env
        .timeouts
        .scheduled()
        .into_iter()
        .map(|s| (s.order_id, s.delay_seconds))
        .collect();
    delays.sort();
    let mut expected = vec![(soon, 30), (later, SQS_MAX_DELAY_SECONDS)];
    expected.sort();
    assert_eq!(delays, expected);
    assert_eq!(env.available(), 3);
}

#[tokio::test]
async fn an_early_timeout_that_cannot_be_sent_again_fails_its_record() {
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.pending("alice", "k1", 1).await;
    env.timeouts.take_event();
    env.timeouts.fail(1);
    let (failed, report) = env.expire(Env::timeout_event(&[&id])).await;
    assert_eq!(failed, vec!["t0".to_owned()]);
    assert_eq!(report.rescheduled, 0);
    assert_eq!(env.order(&id).status, OrderStatus::Pending);
}

#[tokio::test]
async fn a_message_that_is_no_timeout_or_names_no_order_fails_alone() {
    // GIVEN a due order, and in the same batch garbage and a timeout for an unknown order
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.pending("alice", "k1", 1).await;
    env.set_deadline(&id, now_ms() - 1);
    let unknown = OrderId::parse("ffffffffffffffffffffffffffffffff").expect("valid");
    let event = sqs_event(&[
        ("good".to_owned(), timeout_body(&id)),
        ("garbage".to_owned(), r#"{"order_id":"nope"}"#.to_owned()),
        ("order-message".to_owned(), r#"{"order_id":"ffffffffffffffffffffffffffffffff","sku":"SKU-1","quantity":1,"user_id":"alice"}"#.to_owned()),
        ("unknown".to_owned(), timeout_body(&unknown)),
    ]);
    // WHEN the batch is processed
    let (failed, report) = env.expire(event).await;
    // THEN only the bad ones fail, and the good one is applied
    assert_eq!(failed, vec!["garbage", "order-message", "unknown"]);
    assert_eq!(report.expired, 1);
    assert_eq!(env.order(&id).status, OrderStatus::Canceled);
    env.assert_invariants();
}

#[tokio::test]
async fn a_pending_order_without_a_deadline_is_kept_for_the_dlq_not_guessed() {
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.pending("alice", "k1", 1).await;
    let mut o = env.order(&id);
    o.expires_at = None;
    env.store.seed_order(o);
    let before = env.store.snapshot();
    let (failed, _) = env.expire(Env::timeout_event(&[&id])).await;
    assert_eq!(failed, vec!["t0".to_owned()]);
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn a_store_outage_fails_every_record_and_writes_nothing() {
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let a = env.pending("alice", "k1", 1).await;
    let b = env.pending("bob", "k1", 1).await;
    env.set_deadline(&a, now_ms() - 1);
    env.set_deadline(&b, now_ms() - 1);
    let before = env.store.snapshot();
    env.store.fail_on("get_orders", 1);
    let (failed, _) = env.expire(Env::timeout_event(&[&a, &b])).await;
    assert_eq!(failed, vec!["t0", "t1"]);
    assert_eq!(env.store.snapshot(), before);
    // A failed write of one order fails its record alone.
    env.store.fail_on("advance", 1);
    let (failed, report) = env.expire(Env::timeout_event(&[&a, &b])).await;
    assert_eq!((failed.len(), report.expired), (1, 1));
    env.assert_invariants();
}

// --- failures come back in seconds, not after the visibility timeout ------------------------

/// `event` with each record's receipt handle `rh-<message id>` and the receive counts given,
/// in order, as SQS would deliver a batch some of whose records came back before.
fn received(mut event: SqsEvent, counts: &[u32]) -> SqsEvent {
    for (r, n) in event.records.iter_mut().zip(counts) {
        r.receipt_handle = Some(format!("rh-{}", r.message_id.clone().unwrap_or_default()));
        r.attributes
            .insert("ApproximateReceiveCount".into(), n.to_string());
    }
    event
}

#[tokio::test]
async fn process_orders_hands_failed_records_back_after_a_backoff_from_their_receive_count() {
    // GIVEN two orders whose records SQS delivered once and seven times, and a store that
    // cannot read them
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    env.place("alice", "k1", 1).await;
    env.place("bob", "k1", 1).await;
    let event = received(env.queue.take_event(), &[1, 7]);
    env.store.fail_on("get_orders", 1);
    // WHEN process-orders runs as deployed
    let redelivery = FakeRedelivery::default();
    let (resp, _) = env
        .processor()
        .handle(&redelivery, event, invocation_deadline())
        .await;
    // THEN both records fail and are handed back: the first after 2 s, the second after the
    // one-minute cap (2^7 s would be over two minutes)
    assert_eq!(failures(&resp), ["m0", "m1"]);
    let mut handed = redelivery.handed_back();
    handed.sort();
    assert_eq!(
        handed,
        [
            ("rh-m0".to_owned(), Duration::from_secs(2)),
            ("rh-m1".to_owned(), Duration::from_secs(60))
        ]
    );
}

#[tokio::test]
async fn process_orders_hands_nothing_back_when_every_record_succeeds() {
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    env.place("alice", "k1", 1).await;
    let redelivery = FakeRedelivery::default();
    let (resp, _) = env
        .processor()
        .handle(&redelivery, env.queue.take_event(), invocation_deadline())
        .await;
    assert!(failures(&resp).is_empty());
    assert!(redelivery.handed_back().is_empty());
}

#[tokio::test]
async fn expire_orders_hands_a_failed_record_back_after_a_backoff_from_its_receive_count() {
    // GIVEN a batch of a due timeout and a record that is no timeout, delivered for the
    // third time
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.pending("alice", "k1", 1).await;
    env.set_deadline(&id, now_ms() - 1);
    let event = sqs_event(&[
        ("t0".into(), timeout_body(&id)),
        ("junk".into(), "not a timeout".into()),
    ]);
    let event = received(event, &[3, 3]);
    // WHEN expire-orders runs as deployed
    let redelivery = FakeRedelivery::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let resp = env.expirer().handle(&redelivery, event, deadline).await;
    // THEN only the junk fails, handed back to come again after 2^3 s
    assert_eq!(failures(&resp), ["junk"]);
    assert_eq!(
        redelivery.handed_back(),
        [("rh-junk".to_owned(), Duration::from_secs(8))]
    );
    assert_eq!(env.order(&id).status, OrderStatus::Canceled);
    env.assert_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_throttled_timeout_is_retried_within_the_invocation_and_applied() {
    // GIVEN a due timeout whose write DynamoDB throttles five times running
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.pending("alice", "k1", 1).await;
    env.set_deadline(&id, now_ms() - 1);
    env.store.throttle_on("advance", 5);
    // WHEN expire-orders runs with time left
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (resp, report) = env
        .expirer()
        .process_by(Env::timeout_event(&[&id]), deadline)
        .await;
    // THEN the sixth try cancels the order and nothing fails
    assert!(failures(&resp).is_empty());
    assert_eq!(report.expired, 1);
    assert_eq!(env.order(&id).status, OrderStatus::Canceled);
    env.assert_invariants();
}

#[tokio::test(start_paused = true)]
async fn throttling_that_outlasts_the_invocation_fails_the_record_before_the_deadline() {
    // GIVEN a due timeout whose write DynamoDB keeps throttling
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.pending("alice", "k1", 1).await;
    env.set_deadline(&id, now_ms() - 1);
    env.store.throttle_on("advance", usize::MAX);
    // WHEN expire-orders has three seconds
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(3);
    let (resp, _) = env
        .expirer()
        .process_by(Env::timeout_event(&[&id]), deadline)
        .await;
    // THEN it retried for a while, then gave the record back failed before the deadline
    assert_eq!(failures(&resp), ["t0"]);
    let spent = started.elapsed();
    assert!(
        spent > Duration::from_secs(1) && spent < Duration::from_secs(3),
        "{spent:?}"
    );
    assert!(env.store.calls() > 5);
    assert_eq!(env.order(&id).status, OrderStatus::Pending);
    env.assert_invariants();
}

#[test]
fn the_retry_deadline_keeps_a_safety_margin_before_lambdas_deadline() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let now = tokio::time::Instant::now();
        let lambda = std::time::SystemTime::now() + Duration::from_secs(30);
        let left = expire_orders::retry_deadline(lambda) - now;
        let expected = Duration::from_secs(30) - expire_orders::SAFETY_MARGIN;
        let slack = Duration::from_millis(100);
        assert!(
            left < expected + slack && left > expected - slack,
            "{left:?}"
        );
        // A deadline already passed leaves no time at all, never a panic.
        let past = std::time::SystemTime::now() - Duration::from_secs(5);
        assert!(expire_orders::retry_deadline(past) <= tokio::time::Instant::now());
    });
}

// --- pay against the deadline ------------------------------------------------------------------

#[tokio::test]
async fn paying_after_the_deadline_is_refused_and_the_order_times_out_at_once() {
    // GIVEN alice's pending order whose window has closed, its timeout not yet arrived
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.pending("alice", "k1", 1).await;
    env.set_deadline(&id, now_ms() - 1);
    // WHEN she pays
    let (status, body) = env.pay("alice", &id).await;
    // THEN 409: the order is canceled for the timeout, its unit back
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "invalid_transition");
    let o = env.order(&id);
    assert_eq!(
        (o.status, o.reason),
        (OrderStatus::Canceled, Some(Reason::PaymentTimeout))
    );
    assert_eq!(env.available(), 5);
    // AND the late timeout message changes nothing
    let (failed, report) = env.expire(env.timeouts.take_event()).await;
    assert!(failed.is_empty());
    assert_eq!((report.expired, report.settled), (0, 1));
    assert_eq!(env.available(), 5);
    env.assert_invariants();
}

#[tokio::test]
async fn paying_before_the_deadline_wins_and_the_timeout_then_changes_nothing() {
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.pending("alice", "k1", 1).await;
    assert_eq!(env.pay("alice", &id).await.0, 200);
    env.set_deadline(&id, now_ms() - 1); // a paid order has none; as if the clock passed it
    let (_, report) = env.expire(env.timeouts.take_event()).await;
    assert_eq!(report.settled, 1);
    assert_eq!(env.order(&id).status, OrderStatus::Paid);
    assert_eq!(env.available(), 4);
}

#[tokio::test]
async fn the_store_writes_pay_only_before_the_deadline_and_the_timeout_only_from_it() {
    use flash_domain::order::{transition, Event};
    use flash_domain::ports::{Advance, Store};
    let env = Env::with_product(json!({"name": "Phone", "stock": 5})).await;
    let id = env.pending("alice", "k1", 1).await;
    let order = env.order(&id);
    let deadline = order.expires_at.expect("pending orders have one");
    let pay = transition(order.status, order.reason, Event::Pay).expect("allowed");
    let timeout = transition(order.status, order.reason, Event::PaymentTimeout).expect("allowed");
    let before = env.store.snapshot();
    // A payment at the deadline and a timeout a millisecond before it are both refused.
    let late_pay = env
        .store
        .advance(&order, &pay, Some(&order.owner), deadline)
        .await;
    let early_timeout = env
        .store
        .advance(&order, &timeout, None, deadline - 1)
        .await;
    assert!(matches!(late_pay, Ok(Advance::Stale)));
    assert!(matches!(early_timeout, Ok(Advance::Stale)));
    assert_eq!(env.store.snapshot(), before);
    // The timeout at the deadline applies.
    let on_time = env.store.advance(&order, &timeout, None, deadline).await;
    assert!(matches!(on_time, Ok(Advance::Done(ref o)) if o.status == OrderStatus::Canceled));
    assert_eq!(env.available(), 5);
    env.assert_invariants();
}

#[tokio::test]
async fn pay_and_the_timeout_racing_at_the_deadline_have_exactly_one_winner() {
    // GIVEN orders whose deadlines fall around the moment pay and the timeout run
    let env = Env::with_product(json!({"name": "Phone", "stock": 200})).await;
    let rounds = 100;
    let (mut paid, mut expired) = (0, 0);
    for i in 0..rounds {
        let who = format!("buyer-{i}");
        let id = env.pending(&who, "k", 1).await;
        env.set_deadline(&id, now_ms() + (i % 5) as i64 - 2);
        // WHEN both run at once
        let expirer = env.expirer();
        let event = Env::timeout_event(&[&id]);
        let ((pay_status, _), (resp, report)) =
            tokio::join!(env.pay(&who, &id), expirer.process(event));
        // THEN exactly one of them took effect, and the loser says so
        assert!(resp.batch_item_failures.is_empty());
        let o = env.order(&id);
        match o.status {
            OrderStatus::Paid => {
                paid += 1;
                assert_eq!(pay_status, 200);
                assert_eq!(report.expired, 0);
            }
            OrderStatus::Canceled => {
                expired += 1;
                assert_eq!(o.reason, Some(Reason::PaymentTimeout));
                assert_eq!(pay_status, 409);
            }
            other => panic!("round {i}: order left {other:?}"),
        }
    }
    assert_eq!(paid + expired, rounds);
    // Each restore happened once: stock = 200 - paid.
    assert_eq!(env.available(), 200 - paid as u64);
    env.assert_invariants();
}

// --- the reconciler -----------------------------------------------------------------------------

mod reconciler {
    use super::*;
    use flash_domain::invariant_check::{Audit, Deadlines};
    use flash_domain::ports::Ledger;
    use flash_domain::ports::{PortError, PortResult};

    fn reconciler(env: &Env) -> Reconcile<FakeStore> {
        Reconcile::new(env.store.clone()).with_confirm_pause(Duration::ZERO)
    }

    #[tokio::test]
    async fn a_clean_table_has_no_violations_and_the_metric_says_zero() {
        // GIVEN a sale with accepted, paid, canceled and timed-out orders
        let env = Env::with_product(json!({"name": "Phone", "stock": 10})).await;
        let a = env.pending("alice", "k1", 2).await;
        let b = env.pending("bob", "k1", 1).await;
        env.pending("carol", "k1", 3).await;
        env.pay("alice", &a).await;
        env.set_deadline(&b, now_ms() - 1);
        env.expire(env.timeouts.take_event()).await;
        // WHEN the reconciler runs
        let (summary, products) = reconciler(&env).run(now_ms()).await.expect("reads");
        // THEN one product, conserved, no violations
        assert_eq!((summary.products, summary.violations), (1, 0));
        let p = &products[0];
        assert_eq!(
            (p.stock_added, p.available, p.units_held),
            (10, 5, 5),
            "{p:?}"
        );
        assert!(p.settled && p.violations.is_empty());
        let record = metric_record(&summary, 1_800_000_000_000);
        assert_eq!(record[METRIC], json!(0.0));
        assert_eq!(
            record["_aws"]["CloudWatchMetrics"],
            json!([{
                "Namespace": "FlashSale",
                "Dimensions": [[]],
                "Metrics": [
                    {"Name": "ReconcilerViolations", "Unit": "Count"},
                    {"Name": "StaleQueuedOrders", "Unit": "Count"},
                    {"Name": "OverduePendingOrders", "Unit": "Count"},
                ],
            }])
        );
    }

    #[tokio::test]
    async fn stock_corrupted_in_a_shard_is_reported_and_counted() {
        // GIVEN a clean sale, then a shard given 5 units no delivery added
        let env = Env::with_product(json!({"name": "Phone", "stock": 10, "shards": 2})).await;
        env.pending("alice", "k1", 2).await;
        let product = env.store.product(&sku()).expect("product");
        env.store.seed_product(product.clone(), 8 + 5);
        // AND a second, clean product
        let other = Products::new(env.store.clone()).with_rate_limit(env.store.clone());
        let r = other
            .handle(Req::put_product("SKU-2", r#"{"name":"Case","stock":3}"#).build())
            .await;
        assert_eq!(r.status(), 201);
        // WHEN the reconciler runs
        let (summary, products) = reconciler(&env).run(now_ms()).await.expect("reads");
        // THEN the corrupted product's conservation violation is counted, the other is clean
        assert_eq!(summary.products, 2);
        assert_eq!(summary.products_with_violations, 1);
        assert!(summary.violations >= 1);
        assert_conservation_broken(&products, SKU, "SKU-2");
        assert_eq!(
            metric_record(&summary, 0)[METRIC],
            json!(summary.violations as f64)
        );
        // AND the scheduled run answers the same summary
        assert_eq!(reconciler(&env).handle().await.expect("reads"), summary);
    }

    #[tokio::test]
    async fn a_pending_order_past_its_deadline_and_grace_is_a_violation_that_names_it() {
        // GIVEN a pending order whose payment timeout was lost an hour ago
        let env = Env::with_product(json!({"name": "Phone", "stock": 10})).await;
        let id = env.pending("alice", "k1", 1).await;
        env.set_deadline(&id, now_ms() - 3_600_000);
        // AND one just past its deadline, whose timeout may still be on its way
        let fresh = env.pending("bob", "k1", 1).await;
        env.set_deadline(&fresh, now_ms() - 60_000);
        // WHEN the reconciler runs
        let (summary, products) = reconciler(&env).run(now_ms()).await.expect("reads");
        // THEN the lost one is a violation, counted in the alarmed metric, naming the order
        assert_eq!((summary.overdue_pending, summary.violations), (1, 1));
        assert_eq!(metric_record(&summary, 0)[METRIC], json!(1.0));
        let v = &products[0].violations;
        assert!(
            v.len() == 1 && v[0].contains(id.as_str()) && v[0].contains("pending"),
            "{v:?}"
        );
    }

    #[tokio::test]
    async fn a_queued_order_older_than_its_redrive_and_margin_is_a_violation_that_names_it() {
        // GIVEN an order whose messages were both lost: queued, never decided
        let env = Env::with_product(json!({"name": "Phone", "stock": 10})).await;
        let order = env.queued("alice", "k1", 1).await;
        let (summary, _) = reconciler(&env).run(now_ms()).await.expect("reads");
        assert_eq!(summary.violations, 0, "a young queued order is on its way");
        // WHEN the reconciler runs after the re-drive delay and its margin have passed
        let later = now_ms() + 900_000 + QUEUED_MARGIN_MS + 1_000;
        let (summary, products) = reconciler(&env).run(later).await.expect("reads");
        // THEN it is a violation naming the product and the order
        assert_eq!((summary.stale_queued, summary.violations), (1, 1));
        assert_eq!(products[0].sku, SKU);
        assert!(
            products[0].violations[0].contains(order.as_str()),
            "{:?}",
            products[0].violations
        );
    }

    #[tokio::test]
    async fn a_buyer_whose_admission_count_disagrees_is_reported_by_name() {
        // GIVEN a product with a purchase limit, one order admitted and queued
        let env =
            Env::with_product(json!({"name": "Phone", "stock": 10, "per_user_limit": 3})).await;
        let order = env.queued("alice", "k1", 1).await;
        let (summary, _) = reconciler(&env).run(now_ms()).await.expect("reads");
        assert_eq!(summary.violations, 0);
        // WHEN alice's admission count is raised by a write no order explains
        env.store
            .set_admitted(&sku(), &UserId::parse("alice").expect("user"), 3);
        let (summary, products) = reconciler(&env).run(now_ms()).await.expect("reads");
        // THEN the re-read names alice and her order
        assert!(summary.violations >= 1, "{summary:?}");
        let v = products[0].violations.join("\n");
        assert!(
            v.contains("buyer alice: admission count 3 but 1 units") && v.contains(order.as_str()),
            "{v}"
        );
    }

    #[tokio::test]
    async fn a_failed_read_fails_the_run_instead_of_reporting_zero() {
        struct Down;
        impl Ledger for Down {
            async fn tally_all(&self, _: &Deadlines) -> PortResult<Vec<Audit>> {
                Err(PortError::unavailable("dynamodb Scan", "down"))
            }
            async fn audit_settled(&self, _: &Sku, _: &Deadlines) -> PortResult<Option<Audit>> {
                Ok(None)
            }
        }
        assert!(Reconcile::new(Down).handle().await.is_err());
    }

    #[tokio::test]
    async fn a_product_that_never_settles_is_reported_unsettled_not_violating() {
        // A first pass that saw a sale half done, and stock still moving on every re-read.
        struct Busy;
        impl Ledger for Busy {
            async fn tally_all(&self, _: &Deadlines) -> PortResult<Vec<Audit>> {
                Ok(vec![Audit {
                    sku: SKU.into(),
                    violations: vec!["conservation: added 10 != available 9 + held 0".into()],
                    ..Audit::default()
                }])
            }
            async fn audit_settled(&self, _: &Sku, _: &Deadlines) -> PortResult<Option<Audit>> {
                Ok(None)
            }
        }
        let r = Reconcile::new(Busy).with_confirm_pause(Duration::ZERO);
        let (summary, products) = r.run(now_ms()).await.expect("reads");
        assert_eq!((summary.unsettled, summary.violations), (1, 0));
        assert!(!products[0].settled);
    }
}
