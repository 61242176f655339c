//! Scenarios against the real local stack: DynamoDB Local and fauxqs over HTTP, driven
//! through the same handler code the Lambdas run. Every scenario ends with the invariant
//! checker reading the table.

use flash_aws::dynamo::WriteCounts;
use flash_aws::{DynamoStore, SqsQueue};
use flash_domain::{OrderStatus, Reason};
use flash_tests::audit::{audit, AuditAssertions};
use flash_tests::drain::{delete, drain, receive_batch};
use flash_tests::fixtures::{json_body as body, sqs_event, Req};
use flash_tests::stack::{self, unique_sku};
use lambda_http::{Body, Response};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

struct Sale {
    sku: String,
    store: DynamoStore,
    place: Arc<PlaceOrder<DynamoStore, SqsQueue>>,
    process: ProcessOrders<DynamoStore, flash_tests::fake_expiry::FakeTimeouts>,
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl Sale {
    /// GIVEN a product with `spec` (name and stock set here) and a queue of its own.
    async fn open(prefix: &str, spec: Value) -> Sale {
        // Its writes are counted, as the local stack counts the functions' writes.
        let store = stack::store().await.with_write_stats();
        let sku = unique_sku(prefix);
        let products = products::Products {
            store: store.clone(),
        };
        let resp = products
            .handle(Req::put_product(&sku, &spec.to_string()).build())
            .await;
        assert_eq!(resp.status(), 201, "{:?}", body(&resp));
        let (queue, url) = stack::test_queue(prefix).await;
        Sale {
            sku,
            place: Arc::new(PlaceOrder::new(store.clone(), queue)),
            process: ProcessOrders {
                store: store.clone(),
                timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
            },
            store,
            sqs: stack::sqs().await,
            url,
        }
    }

    /// The writes the sale's store has sent so far.
    fn writes(&self) -> WriteCounts {
        self.store
            .stats()
            .expect("a sale's store counts its writes")
            .snapshot()
    }

    /// `buyers` distinct buyers order `quantity(i)` units at once, at most `concurrency` in
    /// flight. Returns the order ids of the 202s.
    async fn rush(
        &self,
        buyers: usize,
        concurrency: usize,
        quantity: impl Fn(usize) -> u32,
    ) -> Vec<String> {
        let gate = Arc::new(Semaphore::new(concurrency));
        let tasks: Vec<_> = (0..buyers)
            .map(|i| {
                let (place, gate) = (self.place.clone(), gate.clone());
                let req = Req::place_order(
                    &format!("buyer-{i}"),
                    &format!("{}-key-{i}", self.sku),
                    &json!({"sku": self.sku, "quantity": quantity(i)}).to_string(),
                );
                tokio::spawn(async move {
                    let _permit = gate.acquire().await.expect("semaphore");
                    place.handle(req.build()).await
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            let resp = t.await.expect("task");
            assert_eq!(resp.status(), 202, "{:?}", body(&resp));
            ids.push(
                body(&resp)["order_id"]
                    .as_str()
                    .expect("order_id")
                    .to_owned(),
            );
        }
        ids
    }

    async fn drain(&self, consumers: usize) -> flash_tests::drain::DrainStats {
        let stats = drain(
            &self.process,
            &self.sqs,
            &self.url,
            consumers,
            100,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(stats.failures, 0, "{stats:?}");
        stats
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_flow_from_the_api_through_the_queue_to_a_decision() {
    // GIVEN 5 units and 8 buyers
    let sale = Sale::open("e2e", json!({"name": "Phone", "stock": 5})).await;
    // WHEN each orders one unit through place-order and the queue is drained by process-orders
    let ids = sale.rush(8, 8, |_| 1).await;
    sale.drain(1).await;
    // THEN get-order shows 5 pending orders and 3 rejected as sold out
    let get = get_order::GetOrder {
        store: sale.store.clone(),
    };
    let mut statuses = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let resp = get
            .handle(Req::get_order(&format!("buyer-{i}"), id).build())
            .await;
        assert_eq!(resp.status(), 200);
        let b = body(&resp);
        assert_eq!(b["order_id"], json!(id));
        statuses.push((
            b["status"].as_str().unwrap().to_owned(),
            b["reason"].clone(),
        ));
        if b["status"] == "pending" {
            assert!(b["expires_at"].is_string());
        }
    }
    assert_eq!(statuses.iter().filter(|s| s.0 == "pending").count(), 5);
    assert!(statuses
        .iter()
        .filter(|s| s.0 == "rejected")
        .all(|s| s.1 == json!("sold_out")));
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants()
        .assert_all_decided()
        .assert_nothing_stranded();
    assert_eq!(
        (a.available, a.units_held, a.rejected(Reason::SoldOut)),
        (0, 5, 3)
    );
}

/// A put of an order can meet another writer's transaction: a replay's, the processor's
/// transaction deciding the order it names; a new limited order's, the buyer's other orders on
/// their admission count. On DynamoDB that is a `TransactionConflict`; DynamoDB Local
/// serialises instead, so the conflicts are injected under the SDK. Neither gets a `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_put_that_meets_another_writers_transaction_is_not_answered_503() {
    use flash_tests::sdk_faults::{Rule, SdkFault, SdkFaults};
    for (limit, op) in [(None, "PutItem"), (Some(3), "TransactWriteItems")] {
        // GIVEN a product (with and without a per-user limit) and an order admitted by x
        let mut spec = json!({"name": "Phone", "stock": 10});
        if let Some(limit) = limit {
            spec["per_user_limit"] = json!(limit);
        }
        let sale = Sale::open("conflict", spec).await;
        let order = |key: &str| {
            Req::place_order(
                "x",
                &format!("{}-{key}", sale.sku),
                &json!({"sku": sale.sku, "quantity": 1}).to_string(),
            )
            .build()
        };
        let first = sale.place.handle(order("a")).await;
        assert_eq!(first.status(), 202, "{:?}", body(&first));
        // WHEN its replay's write, and then a new order's first two writes, meet a conflict
        // (three in a row outlast the SDK's own attempts, had it retried them)
        let faults = SdkFaults::new(vec![Rule {
            op,
            skip: 0,
            times: 3,
            fault: SdkFault::Conflict,
        }]);
        let store =
            DynamoStore::from_config(&stack::faulty_sdk(&faults).await, stack::var("TABLE_NAME"))
                .with_rate_limit(None);
        let (queue, _) = stack::test_queue("conflict").await;
        let place = PlaceOrder::new(store, queue);
        let replay = place.handle(order("a")).await;
        let faults_after_replay = faults.fired().values().sum::<usize>();
        let fresh = place.handle(order("b")).await;
        // THEN the replay is answered from the stored order, and the new order is written
        assert_eq!(faults_after_replay, 1, "{:?}", faults.fired());
        assert_eq!(replay.status(), 202, "{limit:?}: {:?}", body(&replay));
        assert_eq!(body(&replay)["order_id"], body(&first)["order_id"]);
        assert_eq!(fresh.status(), 202, "{limit:?}: {:?}", body(&fresh));
        assert_eq!(
            faults.fired().values().sum::<usize>(),
            3,
            "{:?}",
            faults.fired()
        );
        let id = body(&fresh)["order_id"]
            .as_str()
            .expect("order_id")
            .to_owned();
        let stored = flash_domain::ports::Store::get_order(
            &sale.store,
            &flash_domain::OrderId::parse(&id).expect("order id"),
        )
        .await
        .expect("read");
        assert_eq!(stored.map(|o| o.status), Some(OrderStatus::Queued));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_buyers_for_a_hundred_units_buy_exactly_a_hundred() {
    // GIVEN 100 units
    let sale = Sale::open("rush", json!({"name": "Console", "stock": 100})).await;
    // WHEN 1,000 buyers order at once and four processors drain the queue concurrently
    let ids = sale.rush(1000, 100, |_| 1).await;
    let stats = sale.drain(4).await;
    // THEN exactly 100 are sold, 900 rejected sold out, nothing is left, everything decided
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants()
        .assert_all_decided()
        .assert_nothing_stranded();
    let writes = sale.writes();
    println!(
        "1000 buyers / 100 units: accepted {} ({} units), rejected sold_out {}, available {}, \
         orders {}, {} batches, {} stock transactions, {} write requests, {} write units, \
         {} stock-item writes",
        a.count(OrderStatus::Pending),
        a.units_held,
        a.rejected(Reason::SoldOut),
        a.available,
        a.orders.len(),
        stats.batches,
        stats.transactions,
        writes.write_requests,
        writes.write_units,
        writes.stock_item_writes,
    );
    assert_eq!(ids.len(), 1000);
    assert_eq!(a.orders.len(), 1000);
    assert_eq!(a.count(OrderStatus::Pending), 100);
    assert_eq!(a.units_held, 100);
    assert_eq!(a.rejected(Reason::SoldOut), 900);
    assert_eq!(a.available, 0);
    // AND a rejected order expires (TTL) a week after its decision; a sold one never does
    for status in [OrderStatus::Rejected, OrderStatus::Pending] {
        let order = a.orders.iter().find(|o| o.status == status).expect("one");
        let item = sale
            .store
            .client()
            .get_item()
            .table_name(sale.store.table())
            .set_key(Some(flash_aws::dynamo::order_key(&order.id)))
            .send()
            .await
            .expect("GetItem")
            .item
            .expect("the order");
        let ttl = item
            .get("ttl")
            .and_then(|v| v.as_n().ok()?.parse::<i64>().ok());
        match status {
            OrderStatus::Rejected => {
                let expected = order.updated_at / 1000 + flash_aws::dynamo::REJECTED_KEPT_S;
                assert_eq!(ttl, Some(expected), "{item:?}");
            }
            _ => assert_eq!(ttl, None, "{item:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sharded_stock_with_mixed_quantities_sells_out_without_stranding_a_unit() {
    // GIVEN 97 units over 4 shards
    let sale = Sale::open(
        "shards",
        json!({"name": "Tablet", "stock": 97, "shards": 4}),
    )
    .await;
    // WHEN 150 buyers order 1 to 3 units each
    sale.rush(150, 50, |i| (i % 3) as u32 + 1).await;
    sale.drain(3).await;
    // THEN every unit is sold: a rejected order never fit in what was left
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants()
        .assert_all_decided()
        .assert_nothing_stranded();
    assert_eq!(a.shards.len(), 4);
    assert_eq!(a.available, 0, "{a:?}");
    assert_eq!(a.units_held, 97);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_delivered_three_times_some_concurrently_deducts_once() {
    // GIVEN 60 units, 200 queued orders, and every message taken off the queue
    let sale = Sale::open("dup", json!({"name": "Watch", "stock": 60})).await;
    sale.rush(200, 50, |_| 1).await;
    let mut msgs = Vec::new();
    loop {
        let batch = receive_batch(&sale.sqs, &sale.url, 100).await;
        if batch.is_empty() {
            break;
        }
        delete(&sale.sqs, &sale.url, &batch.iter().collect::<Vec<_>>()).await;
        msgs.extend(batch);
    }
    assert_eq!(msgs.len(), 200);
    // WHEN each is delivered three times, shuffled, in batches processed six at a time
    let mut copies: Vec<(String, String)> = Vec::new();
    for round in 0..3 {
        for m in &msgs {
            copies.push((
                format!("{}-{round}", m.message_id().unwrap()),
                m.body().unwrap().to_owned(),
            ));
        }
    }
    use rand::seq::SliceRandom;
    copies.shuffle(&mut rand::rng());
    let batches: Vec<_> = copies.chunks(25).map(sqs_event).collect();
    let process = Arc::new(ProcessOrders {
        store: sale.store.clone(),
        timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
    });
    let gate = Arc::new(Semaphore::new(6));
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|event| {
            let (process, gate) = (process.clone(), gate.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire().await.expect("semaphore");
                let redelivery = flash_tests::fake::FakeRedelivery::default();
                process
                    .handle(
                        &redelivery,
                        event,
                        flash_tests::fixtures::invocation_deadline(),
                    )
                    .await
                    .0
            })
        })
        .collect();
    for t in tasks {
        let resp = t.await.expect("task");
        assert!(
            resp.batch_item_failures.is_empty(),
            "{:?}",
            resp.batch_item_failures
        );
    }
    // THEN exactly 60 units are held, each order decided once, stock conserved
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants()
        .assert_all_decided()
        .assert_nothing_stranded();
    assert_eq!(
        (a.units_held, a.available, a.rejected(Reason::SoldOut)),
        (60, 0, 140)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cancels_and_refunds_return_each_unit_exactly_once() {
    // GIVEN 40 buyers holding one unit each, half of them paid
    let sale = Sale::open("cancel", json!({"name": "Camera", "stock": 40})).await;
    let ids = sale.rush(40, 40, |_| 1).await;
    sale.drain(2).await;
    let advance = Arc::new(advance_order::AdvanceOrder {
        store: sale.store.clone(),
    });
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let resp = advance
            .handle(Req::advance(&format!("buyer-{i}"), false, id, "pay").build())
            .await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(audit(&sale.store, &sale.sku).await.available, 0);
    // WHEN every buyer cancels (or refunds) three times at once, and an admin does too
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let action = if i % 2 == 0 { "refund" } else { "cancel" };
        let mut reqs: Vec<_> = (0..3)
            .map(|_| Req::advance(&format!("buyer-{i}"), false, id, action))
            .collect();
        reqs.push(Req::advance("admin-1", true, id, action));
        for req in reqs {
            let advance = advance.clone();
            tasks.push(tokio::spawn(
                async move { advance.handle(req.build()).await },
            ));
        }
    }
    for t in tasks {
        let resp = t.await.expect("task");
        assert_eq!(resp.status(), 200, "{:?}", body(&resp));
        assert_eq!(body(&resp)["status"], "canceled");
    }
    // THEN all 40 units are back, exactly once each
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!(
        (a.available, a.units_held, a.count(OrderStatus::Canceled)),
        (40, 0, 40)
    );
}

/// Sends `reqs` to `place` all at once; the responses in the same order.
async fn at_once(
    place: &Arc<PlaceOrder<DynamoStore, SqsQueue>>,
    reqs: Vec<Req>,
) -> Vec<Response<Body>> {
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|req| {
            let place = place.clone();
            tokio::spawn(async move { place.handle(req.build()).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// How many of `resps` have `status`; every other one must be a 409 `purchase_limit`.
fn count_admitted(resps: &[Response<Body>]) -> usize {
    for r in resps.iter().filter(|r| r.status() != 202) {
        assert_eq!(
            (r.status().as_u16(), body(r)["error"]["code"].clone()),
            (409, json!("purchase_limit"))
        );
    }
    resps.iter().filter(|r| r.status() == 202).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_buyer_sending_fifty_orders_at_once_with_a_limit_of_two_buys_exactly_two() {
    // GIVEN plenty of stock and a limit of 2 per buyer
    let sale = Sale::open(
        "flood",
        json!({"name": "Sneaker", "stock": 100, "per_user_limit": 2}),
    )
    .await;
    let before = sale.writes();
    // WHEN one buyer sends 50 orders of one unit at once, each with its own key
    let reqs = (0..50)
        .map(|i| {
            Req::place_order(
                "flooder",
                &format!("{}-k-{i}", sale.sku),
                &json!({"sku": sale.sku, "quantity": 1}).to_string(),
            )
        })
        .collect();
    let resps = at_once(&sale.place, reqs).await;
    // THEN exactly 2 are admitted and the other 48 are refused 409 purchase_limit
    assert_eq!(count_admitted(&resps), 2);
    // AND the 48 cost one refused transaction each, and nothing is stored or enqueued for them
    let writes = sale.writes();
    assert_eq!(writes.write_requests - before.write_requests, 50);
    let stats = sale.drain(2).await;
    assert_eq!(stats.messages, 2);
    // AND after processing exactly 2 units are sold, and every invariant holds
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!((a.orders.len(), a.units_held, a.available), (2, 2, 98));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purchase_limit_holds_for_buyers_ordering_concurrently() {
    // GIVEN a limit of 2 per buyer and plenty of stock
    let sale = Sale::open(
        "limit",
        json!({"name": "Sneaker", "stock": 500, "per_user_limit": 2}),
    )
    .await;
    // WHEN 10 buyers each place 6 orders of one unit with different keys, all at once
    let reqs = (0..60)
        .map(|i| {
            Req::place_order(
                &format!("buyer-{}", i % 10),
                &format!("{}-k-{i}", sale.sku),
                &json!({"sku": sale.sku, "quantity": 1}).to_string(),
            )
        })
        .collect();
    let resps = at_once(&sale.place, reqs).await;
    // THEN 2 per buyer are admitted, and once processed each buyer holds exactly 2 units
    assert_eq!(count_admitted(&resps), 20);
    sale.drain(4).await;
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!((a.units_held, a.rejected(Reason::PurchaseLimit)), (20, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_canceled_or_refunded_order_gives_its_admission_back() {
    // GIVEN one unit and a limit of 1; alice's order queued before bob's
    let sale = Sale::open(
        "readmit",
        json!({"name": "Watch", "stock": 1, "per_user_limit": 1}),
    )
    .await;
    let order = |who: &str, key: &str| {
        Req::place_order(
            who,
            &format!("{}-{key}", sale.sku),
            &json!({"sku": sale.sku, "quantity": 1}).to_string(),
        )
        .build()
    };
    let alice = body(&sale.place.handle(order("alice", "a1")).await)["order_id"].clone();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(sale.place.handle(order("bob", "b1")).await.status(), 202);
    // WHEN they are decided: alice gets the unit, bob is rejected sold out
    sale.drain(1).await;
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants();
    assert_eq!((a.units_held, a.rejected(Reason::SoldOut)), (1, 1));
    // THEN bob's rejection gave his admission back: with new stock he is admitted again
    let products = products::Products {
        store: sale.store.clone(),
    };
    let spec = json!({"name": "Watch", "stock": 1, "per_user_limit": 1}).to_string();
    let restock = products
        .handle(Req::put_product(&sale.sku, &spec).build())
        .await;
    assert_eq!(restock.status(), 200);
    tokio::time::sleep(place_order::PRODUCT_TTL).await;
    assert_eq!(sale.place.handle(order("bob", "b2")).await.status(), 202);
    // AND alice, at her limit, is refused until she cancels
    let refused = sale.place.handle(order("alice", "a2")).await;
    assert_eq!(body(&refused)["error"]["code"], "purchase_limit");
    let advance = advance_order::AdvanceOrder {
        store: sale.store.clone(),
    };
    let alice = alice.as_str().expect("order id").to_owned();
    let cancel = advance
        .handle(Req::advance("alice", false, &alice, "cancel").build())
        .await;
    assert_eq!(cancel.status(), 200, "{:?}", body(&cancel));
    assert_eq!(sale.place.handle(order("alice", "a3")).await.status(), 202);
    sale.drain(1).await;
    // THEN everything is decided and the counts agree with the orders
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!(a.units_held, 2);
    assert_eq!(a.count(OrderStatus::Canceled), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_gives_back_what_was_counted_even_when_the_limit_changed_midway() {
    // GIVEN alice admitted under a limit that was lifted before her order was decided (counted
    // at admission, not at commit), and carol admitted without a limit that was set before
    // hers was decided (counted at commit, not at admission)
    let sale = Sale::open(
        "midway",
        json!({"name": "Kettle", "stock": 10, "per_user_limit": 2}),
    )
    .await;
    let products = products::Products {
        store: sale.store.clone(),
    };
    let put = |spec: Value| {
        let req = Req::put_product(&sale.sku, &spec.to_string()).build();
        let products = &products;
        async move { assert_eq!(products.handle(req).await.status(), 200) }
    };
    let order = |who: &str| {
        Req::place_order(
            who,
            &format!("{}-{who}", sale.sku),
            &json!({"sku": sale.sku, "quantity": 1}).to_string(),
        )
        .build()
    };
    let alice = body(&sale.place.handle(order("alice")).await)["order_id"].clone();
    put(json!({"name": "Kettle", "stock": 1})).await;
    sale.drain(1).await;
    tokio::time::sleep(place_order::PRODUCT_TTL).await;
    let carol = body(&sale.place.handle(order("carol")).await)["order_id"].clone();
    put(json!({"name": "Kettle", "stock": 1, "per_user_limit": 2})).await;
    sale.drain(1).await;
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!(a.units_held, 2);
    // WHEN both cancel
    let advance = advance_order::AdvanceOrder {
        store: sale.store.clone(),
    };
    for (who, id) in [("alice", alice), ("carol", carol)] {
        let id = id.as_str().expect("order id");
        let resp = advance
            .handle(Req::advance(who, false, id, "cancel").build())
            .await;
        assert_eq!(resp.status(), 200, "{:?}", body(&resp));
    }
    // THEN each count gave back exactly what it had counted: every invariant holds
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants();
    assert_eq!(
        (a.units_held, a.available, a.count(OrderStatus::Canceled)),
        (0, 12, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_invariant_checker_catches_a_stranded_admission_count() {
    use aws_sdk_dynamodb::types::AttributeValue;
    // GIVEN a clean sale with a limit, one order admitted and decided
    let sale = Sale::open(
        "strand",
        json!({"name": "Lamp", "stock": 3, "per_user_limit": 2}),
    )
    .await;
    sale.rush(1, 1, |_| 1).await;
    sale.drain(1).await;
    audit(&sale.store, &sale.sku).await.assert_invariants();
    // WHEN the buyer's admission count keeps a unit no order holds
    sale.store
        .client()
        .update_item()
        .table_name(sale.store.table())
        .set_key(Some(flash_aws::dynamo::admit_key(
            &flash_domain::Sku::parse(&sale.sku).expect("sku"),
            &flash_domain::UserId::parse("buyer-0").expect("user"),
        )))
        .update_expression("ADD admitted :one")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .send()
        .await
        .expect("update");
    // THEN the checker reports it
    let a = audit(&sale.store, &sale.sku).await;
    assert!(
        a.violations
            .iter()
            .any(|v| v.contains("admission count 2 but 1 units")),
        "{:?}",
        a.violations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_in_dynamodb_admits_exactly_its_capacity_across_instances() {
    use flash_domain::token_bucket::TokenBucket;
    // GIVEN four place-order instances sharing one table, each caller with a bucket of 5
    // tokens that refills one every 1,000 s (none comes back during the test)
    let sale = Sale::open("rate", json!({"name": "Phone", "stock": 1000})).await;
    let bucket = TokenBucket::new(5, 0.001).expect("valid");
    let (queue, _) = stack::test_queue("rate").await;
    let mut instances = Vec::new();
    for _ in 0..4 {
        let store = stack::rate_limited_store(bucket).await;
        instances.push(Arc::new(PlaceOrder::new(store, queue.clone())));
    }
    // WHEN one caller sends 40 orders at once, spread over the instances (a caller of this
    // run's own: buckets are per caller, not per product)
    let rusher = format!("rusher-{}", sale.sku);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let place = instances[i % 4].clone();
            let req = Req::place_order(
                &rusher,
                &format!("{}-r-{i}", sale.sku),
                &json!({"sku": sale.sku, "quantity": 1}).to_string(),
            );
            tokio::spawn(async move { place.handle(req.build()).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let resp = t.await.expect("task");
        match resp.status().as_u16() {
            202 => admitted += 1,
            429 => {
                assert_eq!(body(&resp)["error"]["code"], "rate_limited");
                let secs: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("seconds");
                // About one refill interval; but a request whose clock was read a moment
                // before another's write may be refused a few milliseconds before the last
                // token comes free (to another caller's later clock), and is told 1 s.
                assert!((1..=1001).contains(&secs), "Retry-After {secs}");
            }
            other => panic!("unexpected {other}: {:?}", body(&resp)),
        }
    }
    // THEN exactly 5 got through, however the instances raced
    assert_eq!(admitted, 5);
    // AND another caller is not affected
    let other = instances[0]
        .handle(
            Req::place_order(
                &format!("calm-{}", sale.sku),
                &format!("{}-calm", sale.sku),
                &json!({"sku": sale.sku, "quantity": 1}).to_string(),
            )
            .build(),
        )
        .await;
    assert_eq!(other.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_invariant_checker_catches_a_lost_unit_and_a_broken_order() {
    use aws_sdk_dynamodb::types::AttributeValue;
    // GIVEN a clean sale of 3 units to 2 buyers
    let sale = Sale::open("audit", json!({"name": "Lamp", "stock": 3})).await;
    let ids = sale.rush(2, 2, |_| 1).await;
    sale.drain(1).await;
    audit(&sale.store, &sale.sku).await.assert_invariants();
    // WHEN a unit disappears from the shard behind the pipeline's back
    sale.store
        .client()
        .update_item()
        .table_name(sale.store.table())
        .set_key(Some(flash_aws::dynamo::shard_key(
            &flash_domain::Sku::parse(&sale.sku).expect("sku"),
            0,
        )))
        .update_expression("ADD available :m")
        .expression_attribute_values(":m", AttributeValue::N("-1".into()))
        .send()
        .await
        .expect("update");
    // AND an order is marked pending without the stock it should hold
    sale.store
        .client()
        .update_item()
        .table_name(sale.store.table())
        .set_key(Some(flash_aws::dynamo::order_key(
            &flash_domain::OrderId::parse(&ids[0]).expect("order id"),
        )))
        .update_expression("SET takes = :none")
        .expression_attribute_values(":none", AttributeValue::S(String::new()))
        .send()
        .await
        .expect("update");
    // THEN the checker reports both
    let a = audit(&sale.store, &sale.sku).await;
    assert!(
        a.violations.iter().any(|v| v.starts_with("conservation")),
        "{:?}",
        a.violations
    );
    assert!(
        a.violations.iter().any(|v| v.contains("took 0")),
        "{:?}",
        a.violations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_sold_out_a_storm_of_buyers_costs_no_writes_until_a_cancel_returns_stock() {
    // GIVEN 10 units sold out to the first 15 buyers
    let sale = Sale::open("storm", json!({"name": "Drone", "stock": 10})).await;
    let ids = sale.rush(15, 15, |_| 1).await;
    sale.drain(1).await;
    assert_eq!(audit(&sale.store, &sale.sku).await.available, 0);
    // WHEN 300 more buyers arrive (after the cached product expires)
    tokio::time::sleep(place_order::PRODUCT_TTL).await;
    let before = sale.writes();
    let late: Vec<_> = (0..300)
        .map(|i| {
            let place = sale.place.clone();
            let req = Req::place_order(
                &format!("late-{i}"),
                &format!("{}-late-{i}", sale.sku),
                &json!({"sku": sale.sku, "quantity": 1}).to_string(),
            );
            tokio::spawn(async move { place.handle(req.build()).await })
        })
        .collect();
    // THEN every one is refused sold_out and nothing was written or enqueued
    for t in late {
        let resp = t.await.expect("task");
        assert_eq!(resp.status(), 409);
        assert_eq!(body(&resp)["error"]["code"], "sold_out");
    }
    assert_eq!(sale.writes().write_requests, before.write_requests);
    assert!(receive_batch(&sale.sqs, &sale.url, 10).await.is_empty());
    // AND a replay of an early order still answers that order
    let replay = sale
        .place
        .handle(
            Req::place_order(
                "buyer-0",
                &format!("{}-key-0", sale.sku),
                &json!({"sku": sale.sku, "quantity": 1}).to_string(),
            )
            .build(),
        )
        .await;
    assert_eq!(
        (replay.status().as_u16(), body(&replay)["order_id"].clone()),
        (202, json!(ids[0]))
    );

    // WHEN one buyer cancels, returning a unit
    let advance = advance_order::AdvanceOrder {
        store: sale.store.clone(),
    };
    let held = audit(&sale.store, &sale.sku).await;
    let holder = held
        .orders
        .iter()
        .find(|o| o.status == OrderStatus::Pending)
        .expect("a sale");
    let resp = advance
        .handle(Req::advance(holder.owner.as_str(), false, holder.id.as_str(), "cancel").build())
        .await;
    assert_eq!(resp.status(), 200);
    // THEN within the cache period a new buyer is admitted again and gets the unit
    tokio::time::sleep(place_order::PRODUCT_TTL).await;
    let again = sale
        .place
        .handle(
            Req::place_order(
                "late-again",
                &format!("{}-again", sale.sku),
                &json!({"sku": sale.sku, "quantity": 1}).to_string(),
            )
            .build(),
        )
        .await;
    assert_eq!(again.status(), 202);
    sale.drain(1).await;
    let a = audit(&sale.store, &sale.sku).await;
    a.assert_invariants().assert_all_decided();
    assert_eq!((a.available, a.units_held), (0, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_process_orders_fails_comes_back_in_seconds_through_the_event_source_and_then_goes_to_the_dlq(
) {
    use local_gateway::config::SqsMapping;
    use local_gateway::event_source::EventSource;
    use local_gateway::functions::SqsFunction;
    use std::time::Instant;

    // GIVEN a queue whose visibility timeout is 180 s and whose records go to its DLQ after
    // 2 receives, consumed by process-orders through the local event source
    let name = format!("comes-back-{}", rand::random::<u32>());
    let (url, dlq, arn) = stack::queue_with_dlq(&stack::sqs().await, &name, 180, 2).await;
    let sdk = stack::sdk().await;
    let mapping = SqsMapping {
        function: "ProcessOrdersFunction".into(),
        binary: "process-orders".into(),
        timeout_s: 30,
        queue_url: url.clone(),
        queue_arn: arn,
        batch_size: 10,
        batching_window_s: 0,
        max_concurrency: 1,
        report_batch_item_failures: true,
        enabled: true,
    };
    let function = SqsFunction::ProcessOrders(
        ProcessOrders {
            store: stack::store().await,
            timeouts: flash_aws::SqsTimeouts::from_config(
                &sdk,
                stack::var("PAYMENT_TIMEOUTS_QUEUE_URL"),
            ),
        },
        SqsQueue::from_config(&sdk, &url),
    );
    let poller = local_gateway::event_source::poller_client(&sdk);
    let source = Arc::new(EventSource::new(
        mapping,
        poller,
        Arc::new(function),
        "us-east-1",
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pollers = source.spawn(&stopped);

    // WHEN a record that is no order arrives: process-orders reports it failed every time
    let sqs = stack::sqs().await;
    sqs.send_message()
        .queue_url(&url)
        .message_body("not an order")
        .send()
        .await
        .expect("SendMessage");
    let sent = Instant::now();

    // THEN it came back after 2 s (first receive) and 4 s (second), not 180 s, and the third
    // receive moved it to the DLQ: about 6 s after it was sent
    let mut in_dlq = None;
    while sent.elapsed() < Duration::from_secs(20) {
        let got = receive_batch(&sqs, &dlq, 1).await;
        if let Some(m) = got.first() {
            in_dlq = Some((sent.elapsed(), m.body().unwrap_or_default().to_owned()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    for p in pollers {
        let _ = p.await;
    }
    let (after, body) = in_dlq.expect("the record reached the DLQ within 20 s, not 2 x 180 s");
    assert_eq!(body, "not an order");
    assert!(
        after >= Duration::from_secs(5) && after < Duration::from_secs(15),
        "in the DLQ after {after:?}: the backoff should be 2 s, then 4 s"
    );
}

/// place-order as the local gateway builds it: by the constructor its `main.rs` calls, from
/// the environment gateway.json gives it (template.yaml's, resolved for this stack), with
/// `knobs` set over it as the caller's are. It sends to a queue of this test's own.
async fn gateway_place_order(knobs: &[(&str, &str)]) -> PlaceOrder<DynamoStore, SqsQueue> {
    use local_gateway::config::GatewayConfig;
    use local_gateway::functions::HttpFunction;
    let config = GatewayConfig::load(&stack::state_dir()).expect("the stack's gateway.json");
    let route = config
        .routes
        .iter()
        .find(|r| r.binary == "place-order")
        .expect("a place-order route");
    let knobs: Vec<(String, String)> = knobs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = config
        .environment(&route.function, &knobs)
        .expect("the template declares place-order's environment");
    let aws = flash_aws::Aws::new(stack::sdk().await);
    let Ok(Some(HttpFunction::PlaceOrder(place))) = HttpFunction::build("place-order", &aws, &env)
    else {
        panic!("place-order did not start from {env:?}");
    };
    let mut place = *place;
    place.queue = stack::test_queue("wired").await.0;
    place
}

/// `n` orders of one unit by one caller, one after another: how many were admitted before the
/// first refusal, and the codes of the refusals.
async fn rapid_orders(place: PlaceOrder<DynamoStore, SqsQueue>, n: usize) -> (usize, Vec<Value>) {
    let sku = unique_sku("wired");
    let products = products::Products {
        store: stack::store().await,
    };
    let resp = products
        .handle(Req::put_product(&sku, &json!({"name": "Phone", "stock": 100}).to_string()).build())
        .await;
    assert_eq!(resp.status(), 201, "{:?}", body(&resp));
    let caller = format!("rapid-{sku}");
    let (mut admitted, mut refused) = (0, Vec::new());
    for i in 0..n {
        let req = Req::place_order(
            &caller,
            &format!("{sku}-{i}"),
            &json!({"sku": sku, "quantity": 1}).to_string(),
        );
        let resp = place.handle(req.build()).await;
        match resp.status().as_u16() {
            202 if refused.is_empty() => admitted += 1,
            429 => refused.push(body(&resp)["error"]["code"].clone()),
            other => panic!("unexpected {other}: {:?}", body(&resp)),
        }
    }
    (admitted, refused)
}

// A token comes back every 1,000 s in these two: none returns while the requests run, however
// slow the machine.
#[tokio::test]
async fn the_gateways_place_order_refuses_the_11th_rapid_request_as_the_template_declares() {
    // GIVEN place-order built as the local gateway builds it, from the template's environment
    // (a burst of 10 per caller)
    let place = gateway_place_order(&[("RATE_LIMIT_PER_SECOND", "0.001")]).await;
    // WHEN one caller sends 11 orders
    let (admitted, refused) = rapid_orders(place, 11).await;
    // THEN ten are admitted and the 11th is refused 429 rate_limited
    assert_eq!(admitted, 10);
    assert_eq!(refused, [json!("rate_limited")]);
}

#[tokio::test]
async fn the_gateways_place_order_takes_its_rate_limit_and_breakers_from_its_environment() {
    // GIVEN place-order built as the gateway builds it, with a burst of 3 and breakers that
    // open on the first failure set over the template's environment
    let settings = [
        ("RATE_LIMIT_CAPACITY", "3"),
        ("RATE_LIMIT_PER_SECOND", "0.001"),
        ("BREAKER_FAILURES", "1"),
    ];
    let place = gateway_place_order(&settings).await;
    // THEN both its breakers have those settings
    let breakers =
        flash_aws::config::breakers(&flash_aws::Env::from_iter(settings)).expect("valid settings");
    assert_eq!(breakers.failures, 1);
    assert_eq!(place.breakers().0.config(), breakers);
    assert_eq!(place.breakers().1.config(), breakers);
    // AND WHEN one caller sends 4 orders, the 4th is refused
    let (admitted, refused) = rapid_orders(place, 4).await;
    assert_eq!(admitted, 3);
    assert_eq!(refused, [json!("rate_limited")]);
}
