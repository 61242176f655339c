//! The reconciler against DynamoDB Local and fauxqs, each test on a table of its own: it
//! reports every kind of violation planted in the table, naming the product and an order; it
//! reports none while sales with purchase limits run and end in a backlog of rejections; and
//! its streaming pass holds its peak memory whatever the number of orders.

use aws_sdk_dynamodb::types::AttributeValue;
use flash_aws::dynamo::ledger::PagedLedger;
use flash_aws::dynamo::{admit_key, encode_order, order_key, product_key, shard_key};
use flash_aws::{DynamoStore, SqsQueue};
use flash_domain::clock::now_ms;
use flash_domain::invariant_check::QUEUED_MARGIN_MS;
use flash_domain::ports::Store;
use flash_domain::{IdempotencyKey, Order, OrderId, OrderStatus, Quantity, Sku, UserId};
use flash_tests::drain::drain;
use flash_tests::fake_expiry::FakeTimeouts;
use flash_tests::fixtures::{json_body as body, Req};
use flash_tests::stack::{self, unique_sku};
use futures::stream::{self, StreamExt};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use reconcile::{ProductCheck, Reconcile};
use serde_json::{json, Value};
use std::time::Duration;

/// One product on `store`, its orders queue, and the functions that take and decide orders.
struct Sale {
    sku: String,
    place: PlaceOrder<DynamoStore, SqsQueue>,
    process: ProcessOrders<DynamoStore, FakeTimeouts>,
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl Sale {
    async fn open(store: &DynamoStore, prefix: &str, spec: Value) -> Sale {
        let sku = unique_sku(prefix);
        let products = products::Products::new(store.clone());
        let resp = products
            .handle(Req::put_product(&sku, &spec.to_string()).build())
            .await;
        assert_eq!(resp.status(), 201, "{:?}", body(&resp));
        let (queue, url) = stack::test_queue(prefix).await;
        Sale {
            sku,
            place: PlaceOrder::new(store.clone(), queue),
            process: ProcessOrders {
                store: store.clone(),
                timeouts: FakeTimeouts::new(),
            },
            sqs: stack::sqs().await,
            url,
        }
    }

    /// `who` orders `quantity` units under `key`: the status and the order id, if any.
    async fn order(&self, who: &str, key: &str, quantity: u32) -> (u16, Option<OrderId>) {
        let req = Req::place_order(
            who,
            &format!("{}-{key}", self.sku),
            &json!({"sku": self.sku, "quantity": quantity}).to_string(),
        );
        let resp = self.place.handle(req.build()).await;
        let id = body(&resp)["order_id"]
            .as_str()
            .and_then(|id| OrderId::parse(id).ok());
        (resp.status().as_u16(), id)
    }

    async fn decide(&self) {
        drain(
            &self.process,
            &self.sqs,
            &self.url,
            2,
            10,
            Duration::from_secs(60),
        )
        .await;
    }

    fn sku(&self) -> Sku {
        Sku::parse(&self.sku).expect("valid sku")
    }
}

async fn update(store: &DynamoStore, key: flash_aws::dynamo::Item, expr: &str, value: i64) {
    store
        .client()
        .update_item()
        .table_name(store.table())
        .set_key(Some(key))
        .update_expression(expr)
        .expression_attribute_values(":v", AttributeValue::N(value.to_string()))
        .send()
        .await
        .expect("UpdateItem");
}

fn reconciler(store: &DynamoStore) -> Reconcile<DynamoStore> {
    Reconcile::new(store.clone()).with_confirm_pause(Duration::from_millis(50))
}

/// A queued order of `who`, created `age_ms` ago, written as place-order writes one.
fn queued_order(sku: &Sku, who: &str, key: &str, age_ms: i64) -> Order {
    let owner = UserId::parse(who).expect("user");
    let created = now_ms() - age_ms;
    Order {
        id: OrderId::derive(&owner, &IdempotencyKey::parse(key).expect("key")),
        owner,
        sku: sku.clone(),
        quantity: Quantity::new(1).expect("quantity"),
        status: OrderStatus::Queued,
        reason: None,
        created_at: created,
        updated_at: created,
        expires_at: None,
        fingerprint: "f".into(),
        takes: Vec::new(),
        counted: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_planted_violation_is_reported_by_the_next_run_naming_its_product_and_order() {
    // GIVEN five products with a purchase limit, each with two accepted orders
    let store = stack::fresh_table().await;
    let mut sales = Vec::new();
    for prefix in ["stale", "overdue", "oversell", "conserve", "admit"] {
        let sale = Sale::open(
            &store,
            prefix,
            json!({"name": "Phone", "stock": 10, "per_user_limit": 3}),
        )
        .await;
        let (_, alice) = sale.order("alice", "a", 1).await;
        let (_, bob) = sale.order("bob", "b", 2).await;
        sale.decide().await;
        sales.push((sale, alice.expect("placed"), bob.expect("placed")));
    }
    let (summary, _) = reconciler(&store).run(now_ms()).await.expect("reads");
    assert_eq!(
        (summary.products, summary.violations),
        (5, 0),
        "{summary:?}"
    );

    // WHEN each has one violation planted
    let [stale, overdue, oversell, conserve, admit] = &sales[..] else {
        unreachable!()
    };
    // an order whose messages were both lost: queued past the re-drive delay and its margin
    let lost = queued_order(
        &stale.0.sku(),
        "carol",
        "lost",
        900_000 + QUEUED_MARGIN_MS + 60_000,
    );
    store.create_order(&lost).await.expect("written");
    // a pending order whose payment timeout was lost two hours ago
    update(
        &store,
        order_key(&overdue.1),
        "SET expires_at = :v",
        now_ms() - 7_200_000,
    )
    .await;
    // more units held than were ever added
    update(
        &store,
        product_key(&oversell.0.sku()),
        "SET stock_added = :v",
        1,
    )
    .await;
    // units appearing in a shard
    update(
        &store,
        shard_key(&conserve.0.sku(), 0),
        "ADD available :v",
        5,
    )
    .await;
    // an admission count no order explains
    let alice = UserId::parse("alice").expect("user");
    update(
        &store,
        admit_key(&admit.0.sku(), &alice),
        "SET admitted = :v",
        3,
    )
    .await;

    // THEN the next run reports each, settled, naming the product and an order of it
    let (summary, products) = reconciler(&store).run(now_ms()).await.expect("reads");
    assert_eq!(summary.products_with_violations, 5, "{products:#?}");
    assert_eq!(
        (
            summary.stale_queued,
            summary.overdue_pending,
            summary.unsettled
        ),
        (1, 1, 0)
    );
    let find =
        |sku: &str| -> &ProductCheck { products.iter().find(|p| p.sku == sku).expect("reported") };
    let expect = |sale: &Sale, what: &str, order: &OrderId| {
        let p = find(&sale.sku);
        assert!(p.settled, "{p:?}");
        assert!(
            p.violations
                .iter()
                .any(|v| v.contains(what) && v.contains(order.as_str())),
            "{}: no violation with {what:?} naming {order}: {:?}",
            sale.sku,
            p.violations
        );
    };
    expect(&stale.0, "queued for", &lost.id);
    expect(&overdue.0, "past its payment deadline", &overdue.1);
    expect(
        &oversell.0,
        "oversold: 3 units held, 1 ever added",
        &oversell.2,
    );
    expect(
        &conserve.0,
        "conservation: added 10 != available 12 + held 3",
        &conserve.2,
    );
    expect(
        &admit.0,
        "buyer alice: admission count 3 but 1 units",
        &admit.1,
    );
    // AND the alarmed metric counts them all, the overdue orders included
    assert_eq!(
        reconcile::metric_record(&summary, 0)[reconcile::METRIC],
        json!(summary.violations as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_runs_during_sales_with_purchase_limits_and_a_rejection_backlog_report_no_violation()
{
    // GIVEN two products with a limit of 2 per buyer, far more wanted than there is
    let store = stack::fresh_table().await;
    let spec = json!({"name": "Phone", "stock": 30, "per_user_limit": 2, "shards": 3});
    let a = Sale::open(&store, "busy-a", spec.clone()).await;
    let b = Sale::open(&store, "busy-b", spec).await;
    let buyers = 60;
    // WHEN buyers order (two units each, a third refused by the limit) while a slow processor
    // decides, and the rejections pile up after the sell-outs
    let sell = |sale: &'static Sale| async move {
        let orders = stream::iter(0..buyers)
            .map(|i| async move {
                let who = format!("buyer-{i}");
                let mut statuses = Vec::new();
                for key in ["x", "y", "z"] {
                    statuses.push(sale.order(&who, key, 1).await.0);
                }
                statuses
            })
            .buffer_unordered(6)
            .collect::<Vec<_>>();
        let deciding = async {
            for _ in 0..200 {
                drain(
                    &sale.process,
                    &sale.sqs,
                    &sale.url,
                    1,
                    5,
                    Duration::from_millis(300),
                )
                .await;
            }
        };
        let (statuses, ()) = tokio::join!(orders, deciding);
        statuses
    };
    let a: &'static Sale = Box::leak(Box::new(a));
    let b: &'static Sale = Box::leak(Box::new(b));
    let sales = async { tokio::join!(sell(a), sell(b)) };
    // Pages of 20 items, so the sales' transactions fall between the pages of a pass (a page
    // of DynamoDB Local is read at one instant), as they do on a large table.
    let paged = Reconcile::new(PagedLedger {
        store: store.clone(),
        page_items: 20,
    })
    .with_confirm_pause(Duration::from_millis(50));
    let runs = async {
        let mut reports = Vec::new();
        for _ in 0..20 {
            reports.push(paged.run(now_ms()).await.expect("reads"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        reports
    };
    let ((sa, sb), reports) = tokio::join!(sales, runs);
    // THEN no run reports a violation
    for (i, (summary, products)) in reports.iter().enumerate() {
        let bad: Vec<_> = products
            .iter()
            .filter(|p| p.settled && !p.violations.is_empty())
            .collect();
        assert_eq!(summary.violations, 0, "run {i}: {summary:?} {bad:#?}");
    }
    let unsettled: usize = reports.iter().map(|(s, _)| s.unsettled).sum();
    println!("20 runs during the sales: 0 violations, {unsettled} product readings unsettled");
    // AND the sales did what the test says: every buyer's third order refused by the limit,
    // the stock sold out, and orders rejected after it
    for statuses in sa.iter().chain(&sb) {
        assert!(
            statuses.iter().filter(|s| **s == 202).count() <= 2,
            "{statuses:?}"
        );
    }
    assert!(sa.contains(&vec![202, 202, 409]), "{sa:?}");
    for sale in [a, b] {
        sale.decide().await;
        let audit = flash_tests::invariant_assertions::audit(&store, &sale.sku).await;
        assert_eq!(audit.available, 0);
        let backlog = audit.rejected(flash_domain::Reason::SoldOut);
        println!("{}: {backlog} orders rejected after the sell-out", sale.sku);
        assert!(backlog > 0, "{audit:?}");
    }
    // AND once everything is decided a run is settled and clean
    let (summary, _) = reconciler(&store).run(now_ms()).await.expect("reads");
    assert_eq!((summary.violations, summary.unsettled), (0, 0));
}

/// Peak resident memory (kB) of `flashctl reconcile` over `table`, as `/usr/bin/time -v`
/// reports it.
fn reconcile_peak_kb(table: &str) -> u64 {
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(flash_tests::stack::flashctl_bin())
        .args([
            "--env-file",
            &stack::env_file().to_string_lossy(),
            "--table",
            table,
            "--json",
        ])
        .arg("reconcile")
        .output()
        .expect("/usr/bin/time runs flashctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "reconcile failed: {stderr}");
    stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in {stderr}"))
}

/// Writes `n` queued orders of one product, 25 to a `BatchWriteItem`, 8 of them at a time.
async fn seed_orders(store: &DynamoStore, sku: &Sku, n: usize) {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let orders: Vec<_> = (0..n)
        .map(|i| queued_order(sku, &format!("seed-{}", i % 1000), &format!("k{i}"), 0))
        .collect();
    stream::iter(orders.chunks(25))
        .map(|chunk| async move {
            let mut writes: Vec<WriteRequest> = chunk
                .iter()
                .map(|o| {
                    let put = PutRequest::builder()
                        .set_item(Some(encode_order(o)))
                        .build()
                        .expect("put");
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            while !writes.is_empty() {
                let resp = store
                    .client()
                    .batch_write_item()
                    .request_items(store.table(), writes)
                    .send()
                    .await
                    .expect("BatchWriteItem");
                writes = resp
                    .unprocessed_items
                    .and_then(|mut u| u.remove(store.table()))
                    .unwrap_or_default();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

/// The streaming pass holds no order: its peak memory over ten times the orders stays
/// within a few megabytes of the smaller run's. `RECONCILE_MEMORY_ORDERS=10000,100000`
/// measures the figures the README gives (about a minute of seeding per 100,000 orders).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_streaming_pass_keeps_its_peak_memory_whatever_the_number_of_orders() {
    let sizes: Vec<usize> = std::env::var("RECONCILE_MEMORY_ORDERS")
        .unwrap_or_else(|_| "2000,10000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("a number of orders"))
        .collect();
    let mut peaks = Vec::new();
    for n in &sizes {
        let store = stack::fresh_table().await;
        let sale = Sale::open(&store, "memory", json!({"name": "Phone", "stock": 10})).await;
        seed_orders(&store, &sale.sku(), *n).await;
        let peak = reconcile_peak_kb(store.table());
        println!("reconcile over {n} orders: peak resident memory {peak} kB");
        peaks.push(peak);
    }
    let (small, large) = (peaks[0], peaks[peaks.len() - 1]);
    assert!(
        large < small + 4_096,
        "peak memory grows with the orders: {peaks:?} kB for {sizes:?} orders"
    );
}
