//! The payment timeout and the reconciler against the real local stack: DynamoDB Local and
//! fauxqs over HTTP, driven through the handlers the Lambdas run, with real `DelaySeconds` on
//! the payment-timeouts queue. Every scenario ends with the invariant checker.

use advance_order::AdvanceOrder;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use expire_orders::{ExpireOrders, ExpiryReport};
use flash_aws::{DynamoStore, SqsQueue, SqsTimeouts};
use flash_domain::clock::now_ms;
use flash_domain::{OrderId, OrderStatus, Reason, Sku};
use flash_tests::drain::{delete, queue_count, receive_batch, received_event};
use flash_tests::fake_expiry::timeout_body;
use flash_tests::fixtures::{json_body as body, sqs_event, Req};
use flash_tests::invariant_assertions::{assert_conservation_broken, audit, AuditAssertions};
use flash_tests::stack::{self, unique_sku};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use reconcile::Reconcile;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One product on `store`, an orders queue and a payment-timeouts queue of its own.
struct Sale {
    sku: String,
    store: DynamoStore,
    place: Arc<PlaceOrder<DynamoStore, SqsQueue>>,
    process: ProcessOrders<DynamoStore, SqsTimeouts>,
    timeouts: SqsTimeouts,
    expire: Arc<ExpireOrders<DynamoStore, SqsTimeouts>>,
    sqs: aws_sdk_sqs::Client,
    orders_url: String,
}

impl Sale {
    async fn open(store: DynamoStore, prefix: &str, spec: Value) -> Sale {
        let sku = unique_sku(prefix);
        stack::create_product(&store, &sku, &spec).await;
        let (queue, orders_url) = stack::test_queue(&format!("{prefix}-orders")).await;
        let (_, timeouts_url) = stack::test_queue(&format!("{prefix}-timeouts")).await;
        let sqs = stack::sqs().await;
        let timeouts = SqsTimeouts::new(sqs.clone(), timeouts_url);
        Sale {
            sku,
            place: Arc::new(PlaceOrder::new(store.clone(), queue)),
            process: ProcessOrders {
                store: store.clone(),
                timeouts: timeouts.clone(),
            },
            expire: Arc::new(ExpireOrders {
                store: store.clone(),
                timeouts: timeouts.clone(),
            }),
            timeouts,
            store,
            sqs,
            orders_url,
        }
    }

    /// `buyers` buyers order `quantity` units each; their order ids.
    async fn order(&self, buyers: usize, quantity: u32) -> Vec<OrderId> {
        let mut ids = Vec::new();
        for i in 0..buyers {
            let req = Req::place_order(
                &format!("buyer-{i}"),
                &format!("{}-{i}", self.sku),
                &json!({"sku": self.sku, "quantity": quantity}).to_string(),
            );
            let resp = self.place.handle(req.build()).await;
            assert_eq!(resp.status(), 202, "{:?}", body(&resp));
            ids.push(OrderId::parse(body(&resp)["order_id"].as_str().expect("id")).expect("id"));
        }
        ids
    }

    /// Drains the orders queue through process-orders as deployed (deciding, then scheduling
    /// the payment timeouts).
    async fn decide(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let msgs = receive_batch(&self.sqs, &self.orders_url, 100).await;
            if msgs.is_empty() {
                break;
            }
            let (resp, _) = self
                .process
                .handle(
                    &flash_tests::fake::FakeRedelivery::default(),
                    received_event(&msgs),
                    flash_tests::fixtures::invocation_deadline(),
                )
                .await;
            assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
            let done: Vec<_> = msgs.iter().collect();
            delete(&self.sqs, &self.orders_url, &done).await;
            assert!(Instant::now() < until, "orders queue never drained");
        }
    }

    /// Messages on the timeouts queue, delayed ones included.
    async fn timeouts_waiting(&self) -> u64 {
        let counts = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ];
        queue_count(&self.sqs, self.timeouts.url(), &counts).await
    }

    /// Plays the event source mapping of expire-orders until the timeouts queue is empty.
    async fn drain_timeouts(&self, deadline: Duration) -> (usize, ExpiryReport) {
        let until = Instant::now() + deadline;
        let (mut messages, mut total) = (0, ExpiryReport::default());
        while Instant::now() < until {
            let msgs = receive_batch(&self.sqs, self.timeouts.url(), 100).await;
            if msgs.is_empty() {
                if self.timeouts_waiting().await == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let (resp, report) = self.expire.process(received_event(&msgs)).await;
            let failed: HashSet<&str> = resp
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.as_str())
                .collect();
            assert!(failed.is_empty(), "{resp:?}");
            let done: Vec<_> = msgs.iter().collect();
            delete(&self.sqs, self.timeouts.url(), &done).await;
            messages += msgs.len();
            total.expired += report.expired;
            total.settled += report.settled;
            total.rescheduled += report.rescheduled;
        }
        (messages, total)
    }

    async fn pay(&self, who: &str, id: &OrderId) -> u16 {
        let h = AdvanceOrder::new(self.store.clone());
        h.handle(Req::advance(who, false, id.as_str(), "pay").build())
            .await
            .status()
            .as_u16()
    }

    async fn status(&self, id: &OrderId) -> (OrderStatus, Option<Reason>) {
        use flash_domain::ports::Store;
        let o = self
            .store
            .get_order(id)
            .await
            .expect("read")
            .expect("exists");
        (o.status, o.reason)
    }

    async fn product(&self) -> Value {
        let h = products::Products::new(self.store.clone());
        let resp = h
            .handle(Req::get_product("buyer-0", &self.sku).build())
            .await;
        body(&resp)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpaid_order_is_canceled_when_its_one_second_window_closes_and_its_stock_returns() {
    // GIVEN 3 units with a 1 s payment window, all taken by two buyers
    let sale = Sale::open(
        stack::store().await,
        "timeout",
        json!({"name": "Phone", "stock": 3, "payment_window_seconds": 1}),
    )
    .await;
    let ids = sale.order(2, 1).await;
    let more = sale.order(1, 1).await; // buyer-0 again: same key, same order
    assert_eq!(more[0], ids[0]);
    let late = {
        let req = Req::place_order(
            "buyer-9",
            &format!("{}-late", sale.sku),
            &json!({"sku": sale.sku, "quantity": 1}).to_string(),
        );
        let resp = sale.place.handle(req.build()).await;
        assert_eq!(resp.status(), 202, "{:?}", body(&resp));
        OrderId::parse(body(&resp)["order_id"].as_str().expect("id")).expect("id")
    };
    let scheduled_at = Instant::now();
    sale.decide().await;
    assert_eq!(sale.product().await["available"], json!(0));
    // WHEN buyer-0 pays at once and the others never do
    assert_eq!(sale.pay("buyer-0", &ids[0]).await, 200);
    // THEN no timeout arrives before its order's window closes...
    for m in receive_batch(&sale.sqs, sale.timeouts.url(), 10).await {
        let now = now_ms();
        let id: Value = serde_json::from_str(m.body().unwrap_or_default()).expect("JSON");
        let id = OrderId::parse(id["order_id"].as_str().expect("id")).expect("id");
        let order = flash_domain::ports::Store::get_order(&sale.store, &id).await;
        let expires_at = order.expect("read").expect("exists").expires_at;
        assert!(
            expires_at.is_none_or(|e| e <= now),
            "early by {:?} ms",
            expires_at.map(|e| e - now)
        );
    }
    let (messages, report) = sale.drain_timeouts(Duration::from_secs(30)).await;
    // ...then each pending order is canceled for the timeout, the paid one is left alone
    assert!(scheduled_at.elapsed() >= Duration::from_secs(1));
    assert!(messages >= 3, "one timeout per accepted order: {messages}");
    assert_eq!((report.expired, report.settled), (2, messages - 2));
    assert_eq!(sale.status(&ids[0]).await, (OrderStatus::Paid, None));
    for id in [&ids[1], &late] {
        assert_eq!(
            sale.status(id).await,
            (OrderStatus::Canceled, Some(Reason::PaymentTimeout))
        );
    }
    // AND their units are back and on sale again
    let product = sale.product().await;
    assert_eq!(
        (product["available"].clone(), product["sold_out"].clone()),
        (json!(2), json!(false))
    );
    audit(&sale.store, &sale.sku)
        .await
        .assert_invariants()
        .assert_all_decided();
    // AND a timeout delivered again long after changes nothing
    let again = sqs_event(&[("again".to_owned(), timeout_body(&ids[1]))]);
    let (resp, report) = sale.expire.process(again).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!((report.expired, report.settled), (0, 1));
    assert_eq!(sale.product().await["available"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pay_racing_the_timeout_at_the_deadline_has_exactly_one_winner_in_fifty_rounds() {
    // GIVEN 50 pending orders with a 3 s window (time to set every race up before it closes)
    let rounds = 50;
    let sale = Arc::new(
        Sale::open(
            stack::store().await,
            "race",
            json!({"name": "Phone", "stock": rounds, "shards": 4, "payment_window_seconds": 3}),
        )
        .await,
    );
    let ids = sale.order(rounds, 1).await;
    sale.decide().await;
    // One batch accepted them all, so their deadlines coincide: move them 80 ms apart (as if
    // accepted one by one), so that each race runs on its own, not 100 requests at once.
    let first = now_ms() + 1_500;
    let deadline = |i: usize| first + 80 * i as i64;
    for (i, id) in ids.iter().enumerate() {
        sale.store
            .client()
            .update_item()
            .table_name(sale.store.table())
            .set_key(Some(flash_aws::dynamo::order_key(id)))
            .update_expression("SET expires_at = :e")
            .expression_attribute_values(":e", AttributeValue::N(deadline(i).to_string()))
            .send()
            .await
            .expect("UpdateItem");
    }
    // WHEN for each, pay and the timeout run at once, within 30 ms of its deadline (and, so
    // that both sides surely win some, 300 ms before or after it)
    const OFFSETS_MS: [i64; 10] = [-300, -30, -20, -10, -5, 0, 5, 10, 20, 300];
    let mut races = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (sale, id, deadline) = (sale.clone(), id.clone(), deadline(i));
        races.push(tokio::spawn(async move {
            let offset = OFFSETS_MS[i % OFFSETS_MS.len()];
            let wait = deadline + offset - now_ms();
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
            let who = format!("buyer-{i}");
            let timeout = sqs_event(&[(format!("t{i}"), timeout_body(&id))]);
            let (paid, (resp, report)) =
                tokio::join!(sale.pay(&who, &id), sale.expire.process(timeout));
            assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
            (id, offset, paid, report)
        }));
    }
    // THEN every order was paid or timed out, never both, never neither
    let (mut paid, mut expired) = (0, 0);
    for race in races {
        let (id, offset, pay_status, report) = race.await.expect("race");
        match sale.status(&id).await {
            (OrderStatus::Paid, None) => {
                paid += 1;
                assert_eq!((pay_status, report.expired), (200, 0), "offset {offset}");
            }
            (OrderStatus::Canceled, Some(Reason::PaymentTimeout)) => {
                expired += 1;
                assert_eq!(pay_status, 409, "offset {offset}");
            }
            other => panic!("offset {offset}: order left {other:?}"),
        }
    }
    println!("pay vs timeout: {paid} paid, {expired} timed out, of {rounds}");
    assert_eq!(paid + expired, rounds);
    // 300 ms from the deadline, each side wins.
    assert!(paid > 0 && expired > 0, "{paid} paid, {expired} timed out");
    // AND each timed-out unit came back exactly once
    assert_eq!(sale.product().await["available"], json!(expired));
    // AND the scheduled timeouts (sent ten to a SendMessageBatch) find every order settled,
    // except the ones the early calls sent again, which find them settled later
    let (messages, report) = sale.drain_timeouts(Duration::from_secs(30)).await;
    assert!(messages >= rounds, "{messages} timeouts delivered");
    assert_eq!(report.expired, 0);
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!(a.count(OrderStatus::Paid), paid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_takes_pay_only_before_the_deadline_and_the_timeout_only_from_it() {
    use flash_domain::order::{transition, Event};
    use flash_domain::ports::{Advance, Store};
    let sale = Sale::open(
        stack::store().await,
        "deadline",
        json!({"name": "Phone", "stock": 5}),
    )
    .await;
    let ids = sale.order(1, 2).await;
    sale.decide().await;
    let order = sale
        .store
        .get_order(&ids[0])
        .await
        .expect("read")
        .expect("exists");
    let deadline = order.expires_at.expect("pending");
    let pay = transition(order.status, order.reason, Event::Pay).expect("allowed");
    let timeout = transition(order.status, order.reason, Event::PaymentTimeout).expect("allowed");
    // A payment at the deadline and a timeout a millisecond before it are refused.
    let late_pay = sale
        .store
        .advance(&order, &pay, Some(&order.owner), deadline)
        .await;
    assert!(matches!(late_pay, Ok(Advance::Stale)));
    let early = sale
        .store
        .advance(&order, &timeout, None, deadline - 1)
        .await;
    assert!(matches!(early, Ok(Advance::Stale)));
    assert_eq!(sale.product().await["available"], json!(3));
    // The timeout at the deadline applies, once.
    let on_time = sale.store.advance(&order, &timeout, None, deadline).await;
    assert!(matches!(on_time, Ok(Advance::Done(_))));
    let twice = sale.store.advance(&order, &timeout, None, deadline).await;
    assert!(matches!(twice, Ok(Advance::Stale)));
    assert_eq!(sale.product().await["available"], json!(5));
    audit(&sale.store, &sale.sku).await.assert_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_finds_nothing_on_a_clean_table_and_a_violation_after_a_shard_is_corrupted()
{
    // GIVEN two products on a table of their own, with orders accepted, paid and timed out
    let store = stack::fresh_table().await;
    let sale = Sale::open(
        store.clone(),
        "recon",
        json!({"name": "Phone", "stock": 20, "shards": 2, "payment_window_seconds": 1}),
    )
    .await;
    let other = Sale::open(store.clone(), "recon2", json!({"name": "Case", "stock": 7})).await;
    let ids = sale.order(5, 2).await;
    other.order(3, 1).await;
    sale.decide().await;
    other.decide().await;
    assert_eq!(sale.pay("buyer-0", &ids[0]).await, 200);
    sale.drain_timeouts(Duration::from_secs(30)).await;
    let reconciler = Reconcile::new(store.clone()).with_confirm_pause(Duration::from_millis(50));
    // WHEN the reconciler runs
    let (summary, products) = reconciler.run(now_ms()).await.expect("reads");
    // THEN both products are conserved and it reports 0
    assert_eq!(
        (summary.products, summary.violations, summary.unsettled),
        (2, 0, 0),
        "{products:?}"
    );
    let p = products.iter().find(|p| p.sku == sale.sku).expect("listed");
    assert_eq!((p.stock_added, p.available, p.units_held), (20, 18, 2));
    assert_eq!(reconciler.handle().await.expect("reads").violations, 0);

    // WHEN 5 units appear in a shard that no delivery added
    store
        .client()
        .update_item()
        .table_name(store.table())
        .set_key(Some(flash_aws::dynamo::shard_key(
            &Sku::parse(&sale.sku).expect("sku"),
            1,
        )))
        .update_expression("ADD available :five")
        .expression_attribute_values(":five", AttributeValue::N("5".into()))
        .send()
        .await
        .expect("UpdateItem");
    // THEN the reconciler reports that product, settled, and counts it in the metric
    let (summary, products) = reconciler.run(now_ms()).await.expect("reads");
    assert!(summary.violations > 0, "{summary:?}");
    assert_eq!(
        (summary.products_with_violations, summary.unsettled),
        (1, 0)
    );
    let p = assert_conservation_broken(&products, &sale.sku, &other.sku);
    assert!(p.settled);
    assert_eq!(
        reconciler.handle().await.expect("reads").violations,
        summary.violations
    );
    let sku = Sku::parse(&sale.sku).expect("valid");
    assert_eq!(
        flash_aws::dynamo::ledger::audit(&store, &sku)
            .await
            .expect("reads")
            .violations,
        p.violations
    );
}
