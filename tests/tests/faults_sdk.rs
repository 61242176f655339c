//! The fault-injection suite against the local stack: seeded like its in-memory half
//! (`faults_in_memory.rs`; `FAULT_SEED` picks the run), every scenario followed by the
//! invariant checker.
//!
//! [`sdk_faults_against_dynamodb_local_keep_every_invariant`]: `SDK_SCENARIOS` scenarios
//! against DynamoDB Local and fauxqs over HTTP, with throttling, `TransactionConflict`, HTTP
//! 500 and timeouts after the server committed injected under the SDK. It needs the local
//! stack (`make test` starts it) and fails, never skips, without it.
//!
//! After every scenario: no shard negative and nothing oversold; conservation (stock added =
//! available + units held by live orders); nothing stranded when no stock came back; every
//! accepted order decided once the queue is drained; the DLQ holds exactly the poison
//! messages injected; the ledger of changes shows one deduction, at most one restore and at
//! most one payment per order, each from the status the order was in, pay only before the
//! deadline and the timeout only after; every `200` a caller got is consistent with where
//! the order ended; replays of one key answered one order; and a message redelivered long
//! after the fact changes nothing.

use expire_orders::ExpireOrders;
use flash_aws::DynamoStore;
use flash_domain::clock::now_ms;
use flash_domain::expiry::TimeoutMessage;
use flash_domain::ports::Unlimited;
use flash_domain::{Order, OrderId, OrderMessage, OrderStatus, Sku};
use flash_tests::drain::invoke;
use flash_tests::drain::received_event;
use flash_tests::failpoint::{Faulty, Tracer};
use flash_tests::fake::{message_body, FakeRedelivery};
use flash_tests::fake_expiry::FakeTimeouts;
use flash_tests::fixtures::{sqs_event, Req};
use flash_tests::invariant_assertions::audit;
use flash_tests::invariants::check_ledger;
use flash_tests::sdk_faults::{Rule, SdkFault, SdkFaults};
use flash_tests::sqs_sim::{SimQueue, TimeoutsQueue};
use flash_tests::stack;
use futures::StreamExt;
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use products::Products;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use flash_tests::fault_suite::*;
use flash_tests::given::id_for;
use flash_tests::response::parts;

// --- DynamoDB Local and fauxqs, with SDK faults ------------------------------------------

/// Operations every scenario sends, so a rule on them always fires.
const ALWAYS: [&str; 6] = [
    "GetItem",
    "PutItem",
    "TransactWriteItems",
    "BatchGetItem",
    "SendMessage",
    "UpdateItem",
];
const SOMETIMES: [&str; 1] = ["Query"];

/// The clients every live scenario shares: the table and the queues without faults.
struct Stack {
    table: String,
    clean: DynamoStore,
    sqs: aws_sdk_sqs::Client,
}

/// Reaches the local stack or fails loudly: these scenarios never skip.
async fn stack() -> Stack {
    let endpoint = stack::var("AWS_ENDPOINT_URL_DYNAMODB");
    let clean = stack::store().await;
    if let Err(e) = clean
        .client()
        .describe_table()
        .table_name(clean.table())
        .send()
        .await
    {
        panic!(
            "DynamoDB Local does not answer at {endpoint} ({e:?}). The SDK-fault scenarios need \
             the local stack: `make test` starts it, or `make stack-up STATE=.local/faults` and \
             STACK_ENV=.local/faults/stack.env"
        );
    }
    let sqs = stack::sqs().await;
    if let Err(e) = sqs.list_queues().send().await {
        panic!(
            "fauxqs does not answer at {} ({e:?})",
            stack::var("AWS_ENDPOINT_URL_SQS")
        );
    }
    Stack {
        table: stack::var("TABLE_NAME"),
        clean,
        sqs,
    }
}

/// Everything in a queue, received (and left to come back after its visibility timeout).
async fn peek_all(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut all = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("ReceiveMessage")
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

/// One live scenario's world: the handlers over a store and a queue with SDK faults.
struct Live {
    label: String,
    sku: Sku,
    clean: DynamoStore,
    store: DynamoStore,
    queue: flash_aws::SqsQueue,
    tracer: Tracer,
    answers: Mutex<Vec<Answer>>,
    kinds: Mutex<BTreeMap<Kind, usize>>,
}

impl Live {
    async fn pause_ms(ms: u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }

    /// `expire-orders` on the timeout message of `id`, until it reports no failure.
    async fn expire(&self, id: &OrderId) {
        let body = serde_json::to_string(&TimeoutMessage {
            order_id: id.clone(),
        })
        .unwrap_or_default();
        for _ in 0..20 {
            let inv = self.tracer.invocation("expire-orders", None);
            let h = ExpireOrders {
                store: inv.wrap(self.store.clone()),
                timeouts: TimeoutsQueue(Arc::new(SimQueue::new(MAX_RECEIVES))),
            };
            let (resp, _) = h.process(sqs_event(&[("t-0".into(), body.clone())])).await;
            if resp.batch_item_failures.is_empty() {
                return;
            }
            Self::pause_ms(20).await;
        }
        Api::fail(self, format!("the payment timeout of {id} kept failing"))
    }

    async fn put_product(&self, spec: &Value) {
        for _ in 0..20 {
            let inv = self.tracer.invocation("products", None);
            let h =
                Products::new(inv.wrap(self.store.clone())).with_rate_limit(inv.wrap(Unlimited));
            let resp = h
                .handle(Req::put_product(self.sku.as_str(), &spec.to_string()).build())
                .await;
            match parts(resp) {
                (200 | 201, _) => return,
                (503, _) => Self::pause_ms(20).await,
                (status, body) => {
                    Api::fail(self, format!("PUT /products answered {status}: {body}"))
                }
            }
        }
        Api::fail(self, "PUT /products kept failing")
    }

    async fn place(&self, b: &Buyer) -> Option<OrderId> {
        let body = json!({"sku": self.sku, "quantity": b.quantity}).to_string();
        let expected = id_for(&b.user, &b.key);
        let once = || async {
            for _ in 0..20 {
                let inv = self.tracer.invocation("place-order", None);
                let h = PlaceOrder::new(inv.wrap(self.store.clone()), inv.wrap(self.queue.clone()))
                    .with_rate_limit(inv.wrap(Unlimited));
                let (status, answer) = parts(
                    h.handle(Req::place_order(&b.user, &b.key, &body).build())
                        .await,
                );
                match status {
                    503 => Self::pause_ms(20).await,
                    202 if answer["order_id"].as_str() == Some(expected.as_str()) => return true,
                    409 if answer["error"]["code"] == "sold_out" => return false,
                    _ => Api::fail(self, format!("POST /orders answered {status}: {answer}")),
                }
            }
            Api::fail(self, format!("POST /orders by {} kept failing", b.user))
        };
        let accepted = if b.twice {
            Api::tally(self, Kind::ConcurrentDuplicateRequest);
            let (x, y) = futures::join!(once(), once());
            x || y
        } else {
            once().await
        };
        accepted.then_some(expected)
    }
}

impl Api for Live {
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("{}: {what}", self.label)
    }

    fn tally(&self, k: Kind) {
        *lock(&self.kinds).entry(k).or_default() += 1;
    }

    async fn act(&self, who: &str, admin: bool, id: &OrderId, action: &'static str) -> Answer {
        for _ in 0..20 {
            let inv = self.tracer.invocation("advance-order", None);
            let (status, body) = inv
                .advance(self.store.clone(), who, admin, id, action)
                .await;
            match status {
                503 => Self::pause_ms(20).await,
                200 | 409 => {
                    let a = Answer::of(id, action, status, &body);
                    lock(&self.answers).push(a.clone());
                    return a;
                }
                _ => Api::fail(self, format!("{action} of {id} answered {status}: {body}")),
            }
        }
        Api::fail(self, format!("{action} of {id} kept failing"))
    }

    async fn wait_decided(&self, _who: &str, id: &OrderId) -> OrderStatus {
        use flash_domain::ports::Store;
        for _ in 0..2_000 {
            match self.clean.get_order(id).await {
                Ok(Some(o)) if o.status != OrderStatus::Queued => return o.status,
                Ok(_) => {}
                Err(e) => Api::fail(self, format!("reading order {id}: {e}")),
            }
            Self::pause_ms(30).await;
        }
        Api::fail(self, format!("order {id} was never decided"))
    }

    async fn race_timeout(&self, who: &str, id: &OrderId, action: &'static str, closes_in: i64) {
        // The product's window is one second: wait for the deadline (give or take), then the
        // buyer acts while the timeout's message is processed.
        use flash_domain::ports::Store;
        let Ok(Some(o)) = self.clean.get_order(id).await else {
            Api::fail(self, format!("order {id} vanished"));
        };
        let wait = o.expires_at.unwrap_or(0) - closes_in - now_ms();
        Self::pause_ms(u64::try_from(wait).unwrap_or(0)).await;
        futures::join!(self.act(who, false, id, action), self.expire(id));
    }

    async fn pause(&self) {
        Self::pause_ms(20).await;
    }
}

/// Plays the event source mapping on `url` until the queue is empty: batches of up to 10,
/// some delivered to two processors at once, some messages sent again (duplicates), only the
/// succeeded ones deleted.
async fn live_drain(
    live: &Live,
    processor: &ProcessOrders<Faulty<DynamoStore>, FakeTimeouts>,
    stack: &Stack,
    url: &str,
    seed: u64,
) {
    use flash_tests::drain::{delete, queue_empty, receive_batch};
    let mut rng = StdRng::seed_from_u64(seed);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < until {
        let msgs = receive_batch(&stack.sqs, url, 10).await;
        if msgs.is_empty() {
            if queue_empty(&stack.sqs, url).await {
                return;
            }
            Live::pause_ms(50).await;
            continue;
        }
        for m in &msgs {
            let body = m.body().unwrap_or_default();
            let order = serde_json::from_str::<OrderMessage>(body).is_ok();
            if order && rng.random_bool(0.15) {
                stack
                    .sqs
                    .send_message()
                    .queue_url(url)
                    .message_body(body)
                    .send()
                    .await
                    .expect("SendMessage");
                live.tally(Kind::DuplicateDelivery);
            }
        }
        // This loop plays the event source: what the function hands back is only recorded.
        let redelivery = FakeRedelivery::default();
        let failed = if rng.random_bool(0.3) {
            live.tally(Kind::ConcurrentDuplicateDelivery);
            let (a, b) = futures::join!(
                processor.handle(
                    &redelivery,
                    received_event(&msgs),
                    flash_tests::fixtures::invocation_deadline()
                ),
                processor.handle(
                    &redelivery,
                    received_event(&msgs),
                    flash_tests::fixtures::invocation_deadline()
                )
            );
            failed_ids(&a.0).union(&failed_ids(&b.0)).cloned().collect()
        } else {
            failed_ids(
                &processor
                    .handle(
                        &redelivery,
                        received_event(&msgs),
                        flash_tests::fixtures::invocation_deadline(),
                    )
                    .await
                    .0,
            )
        };
        let done: Vec<&aws_sdk_sqs::types::Message> = msgs
            .iter()
            .filter(|m| !failed.contains(m.message_id().unwrap_or_default()))
            .collect();
        delete(&stack.sqs, url, &done).await;
    }
    live.fail("the queue did not drain within 60 s")
}

/// Nine valid messages and the poison one in one batch: only the poison fails; the nine are
/// deleted and the rest of the queue (the poison included) becomes visible again.
async fn live_poison_batch(live: &Live, stack: &Stack, url: &str) {
    let all = peek_all(&stack.sqs, url).await;
    let is_poison = |m: &aws_sdk_sqs::types::Message| {
        serde_json::from_str::<OrderMessage>(m.body().unwrap_or_default()).is_err()
    };
    let mut seen = HashSet::new();
    let valid: Vec<&aws_sdk_sqs::types::Message> = all
        .iter()
        .filter(|m| !is_poison(m))
        .filter(|m| seen.insert(m.body().unwrap_or_default().to_owned()))
        .take(9)
        .collect();
    let poison: Vec<&aws_sdk_sqs::types::Message> = all.iter().filter(|m| is_poison(m)).collect();
    if valid.len() != 9 || poison.len() != 1 {
        live.fail(format!(
            "{} messages queued ({} valid orders, {} poison): not a batch of 10",
            all.len(),
            valid.len(),
            poison.len()
        ));
    }
    let batch: Vec<&aws_sdk_sqs::types::Message> =
        valid.iter().copied().chain(poison.clone()).collect();
    let event = received_event(batch.iter().copied());
    let h = ProcessOrders {
        store: stack.clean.clone(),
        timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
    };
    let (resp, _) = invoke(&h, event).await;
    let expected: HashSet<String> = poison.iter().filter_map(|m| m.message_id.clone()).collect();
    if failed_ids(&resp) != expected {
        live.fail(format!(
            "a batch of 10 with one poison message failed {:?}, expected {expected:?}",
            failed_ids(&resp)
        ));
    }
    flash_tests::drain::delete(&stack.sqs, url, &valid).await;
    for m in all
        .iter()
        .filter(|m| !valid.iter().any(|v| v.message_id == m.message_id))
    {
        stack
            .sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(m.receipt_handle().unwrap_or_default())
            .visibility_timeout(0)
            .send()
            .await
            .expect("ChangeMessageVisibility");
    }
    live.tally(Kind::PoisonInBatchOfTen);
}

/// What one live scenario injected and exercised.
#[derive(Default)]
struct LiveReport {
    faults: BTreeMap<(String, SdkFault), usize>,
    kinds: BTreeMap<Kind, usize>,
}

async fn live_scenario(run: u64, i: usize, stack: &Stack) -> LiveReport {
    let seed = mix(run, 7, i);
    let mut rng = StdRng::seed_from_u64(seed);
    let label = format!("FAULT_SEED={run} scenario {i} (DynamoDB Local)");
    // One rule always fires, so every fault kind is seen each run; the others land anywhere.
    let first = SdkFault::ALL[i % SdkFault::ALL.len()];
    let candidates: Vec<&str> = ALWAYS
        .iter()
        .copied()
        .filter(|op| first.applies_to(op))
        .collect();
    let mut rules = vec![Rule {
        op: candidates[rng.random_range(0..candidates.len())],
        skip: rng.random_range(0..2),
        times: rng.random_range(1..=4),
        fault: first,
    }];
    for _ in 0..rng.random_range(1..=3) {
        let fault = SdkFault::ALL[rng.random_range(0..SdkFault::ALL.len())];
        let ops: Vec<&str> = ALWAYS
            .iter()
            .chain(&SOMETIMES)
            .copied()
            .filter(|op| fault.applies_to(op))
            .collect();
        rules.push(Rule {
            op: ops[rng.random_range(0..ops.len())],
            skip: rng.random_range(0..6),
            times: rng.random_range(1..=4),
            fault,
        });
    }
    let faults = SdkFaults::new(rules.clone());
    let sdk = stack::faulty_sdk(&faults).await;
    let sku_text = stack::unique_sku(&format!("FAULT{i}"));
    // A visibility timeout of 1 s, so failed messages come back quickly.
    let (url, dlq, _) = stack::queue_with_dlq(
        &stack.sqs,
        &format!("faults-{i}-{}", &sku_text[sku_text.len() - 8..]),
        1,
        MAX_RECEIVES,
    )
    .await;
    let live = Live {
        label: format!("{label} rules {rules:?}"),
        sku: Sku::parse(&sku_text).expect("valid sku"),
        clean: stack.clean.clone(),
        store: DynamoStore::from_config(&sdk, &stack.table),
        queue: flash_aws::SqsQueue::from_config(&sdk, &url),
        tracer: Tracer::default(),
        answers: Mutex::default(),
        kinds: Mutex::default(),
    };
    let stock: u32 = rng.random_range(2..=10);
    let shards: u32 = rng.random_range(1..=3).min(stock);
    // Every fifth scenario sells with a one-second payment window, so pay and cancel can race
    // the timeout for real; the others keep the default window and never time out.
    let short_window = i % 5 == 2;
    let mut spec = json!({"name": "Phone", "stock": stock, "shards": shards});
    if short_window {
        spec["payment_window_seconds"] = json!(1);
    }
    live.put_product(&spec).await;
    let poison = i.is_multiple_of(15);
    let buyers_n = if poison {
        rng.random_range(9..=10)
    } else {
        rng.random_range(3..=8)
    };
    let buyers: Vec<Buyer> = (0..buyers_n)
        .map(|b| Buyer {
            user: format!("buyer-{b}"),
            key: format!("{sku_text}-{b}"),
            quantity: rng.random_range(1..=2),
            twice: rng.random_bool(0.2),
            reuse: false,
            replay: false,
            // The timeout races (the last two scripts) need the short window; there, half the
            // buyers race it.
            script: if short_window && rng.random_bool(0.5) {
                SCRIPTS[SCRIPTS.len() - rng.random_range(1..=2)]
            } else {
                SCRIPTS[rng.random_range(0..SCRIPTS.len() - 2)]
            },
        })
        .collect();

    // WHEN the buyers order (with duplicate requests), one poison message may join them,
    let ids = futures::future::join_all(buyers.iter().map(|b| live.place(b))).await;
    let mut poison_body = None;
    if poison {
        let body = "{not an order".to_owned();
        stack
            .sqs
            .send_message()
            .queue_url(&url)
            .message_body(&body)
            .send()
            .await
            .expect("SendMessage");
        poison_body = Some(body);
        live_poison_batch(&live, stack, &url).await;
    }
    // and the processors drain the queue while the buyers act on their orders
    let processor = ProcessOrders {
        store: live
            .tracer
            .invocation("process-orders", None)
            .wrap(live.store.clone()),
        timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
    };
    let scripts = buyers.iter().zip(&ids).map(|(b, id)| {
        let live = &live;
        async move {
            if let Some(id) = id {
                script(live, b, id).await;
            }
        }
    });
    futures::join!(
        futures::future::join_all(scripts),
        live_drain(&live, &processor, stack, &url, mix(seed, 8, 0)),
        live_drain(&live, &processor, stack, &url, mix(seed, 8, 1)),
    );
    // (a message that failed comes back after its visibility timeout: drain again)
    live_drain(&live, &processor, stack, &url, mix(seed, 8, 2)).await;

    // THEN every invariant holds on the table as DynamoDB Local has it
    let a = audit(&stack.clean, &sku_text).await;
    if !a.violations.is_empty() {
        live.fail(format!("invariants violated:\n{}", a.violations.join("\n")));
    }
    if a.undecided() != 0 {
        live.fail(format!("{} accepted orders undecided", a.undecided()));
    }
    let canceled = a.orders.iter().any(|o| o.status == OrderStatus::Canceled);
    if !canceled && a.stranded() != 0 {
        live.fail(format!("{} units stranded: {a:?}", a.stranded()));
    }
    let orders: BTreeMap<OrderId, Order> =
        a.orders.iter().map(|o| (o.id.clone(), o.clone())).collect();
    let problems = check_ledger(&live.tracer.ledger(), &orders, false);
    if !problems.is_empty() {
        live.fail(format!("ledger:\n{}", problems.join("\n")));
    }
    for id in ids.iter().flatten() {
        if !orders.contains_key(id) {
            live.fail(format!("order {id} was accepted (202) but is not stored"));
        }
    }
    for ans in lock(&live.answers).iter().filter(|a| a.status == 200) {
        let end = orders[&ans.order].status;
        if !ans.shown.is_some_and(|s| reachable(s, end)) {
            live.fail(format!("{ans:?} but the order ended {end:?}"));
        }
    }
    // AND the DLQ holds exactly the poison message
    let dead = peek_all(&stack.sqs, &dlq).await;
    let dead_bodies: Vec<String> = dead.iter().filter_map(|m| m.body.clone()).collect();
    if dead_bodies != poison_body.iter().cloned().collect::<Vec<_>>() {
        live.fail(format!(
            "the DLQ holds {dead_bodies:?}, expected {poison_body:?}"
        ));
    }
    // AND messages redelivered long after the fact (and the poison, from the DLQ) change
    // nothing: the decided orders stay as they are, the poison fails again, alone.
    live.tally(Kind::LateRedelivery);
    let late: Vec<(String, String)> = orders
        .values()
        .take(3)
        .enumerate()
        .map(|(n, o)| (format!("late-{n}"), message_body(&OrderMessage::of(o))))
        .chain(dead.iter().map(|m| {
            (
                m.message_id.clone().unwrap_or_default(),
                m.body.clone().unwrap_or_default(),
            )
        }))
        .collect();
    let before = audit(&stack.clean, &sku_text).await;
    let clean = ProcessOrders {
        store: stack.clean.clone(),
        timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
    };
    let (resp, _) = invoke(&clean, sqs_event(&late)).await;
    let expected: HashSet<String> = dead.iter().filter_map(|m| m.message_id.clone()).collect();
    if failed_ids(&resp) != expected {
        live.fail(format!(
            "a late redelivery failed {:?}, expected {expected:?}",
            failed_ids(&resp)
        ));
    }
    let after = audit(&stack.clean, &sku_text).await;
    let view = |a: &flash_domain::invariant_check::Audit| {
        let mut o: Vec<(OrderId, OrderStatus, i64)> = a
            .orders
            .iter()
            .map(|o| (o.id.clone(), o.status, o.updated_at))
            .collect();
        o.sort_by(|x, y| x.0.cmp(&y.0));
        (a.shards.clone(), o)
    };
    if view(&before) != view(&after) {
        live.fail("a late redelivery changed the table");
    }
    for q in [&url, &dlq] {
        let _ = stack.sqs.delete_queue().queue_url(q).send().await;
    }
    let kinds = lock(&live.kinds).clone();
    LiveReport {
        faults: faults.fired(),
        kinds,
    }
}

#[test]
fn sdk_faults_against_dynamodb_local_keep_every_invariant() {
    on_a_deep_stack(sdk_suite);
}

fn sdk_suite() {
    let run = run_seed();
    announce(&format!(
        "fault suite (DynamoDB Local + fauxqs over HTTP): FAULT_SEED={run}, {SDK_SCENARIOS} \
         scenarios; SDK faults injected under the SDK: {}; with duplicate requests, a poison \
         message in a batch of 10 (to the DLQ), cancel racing the processor, double cancel, \
         cancel vs ship, refund vs ship, pay vs cancel, double refund, pay and cancel racing the \
         payment timeout, late redelivery",
        SdkFault::ALL.map(SdkFault::name).join(", ")
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_stack_size(SUITE_STACK_BYTES)
        .enable_all()
        .build()
        .expect("a runtime");
    let started = std::time::Instant::now();
    let reports: Vec<LiveReport> = rt.block_on(async {
        let stack = stack().await;
        let stack = &stack;
        // Boxed: each scenario is a deep future (every function's handler inside), too large
        // for the test thread's stack in a debug build when four are held inline.
        futures::stream::iter(0..SDK_SCENARIOS)
            .map(|i| Box::pin(live_scenario(run, i, stack)))
            .buffer_unordered(4)
            .collect()
            .await
    });
    let mut fired: BTreeMap<(String, SdkFault), usize> = BTreeMap::new();
    let mut kinds: BTreeMap<Kind, usize> = BTreeMap::new();
    for r in reports {
        for (k, n) in r.faults {
            *fired.entry(k).or_default() += n;
        }
        for (k, n) in r.kinds {
            *kinds.entry(k).or_default() += n;
        }
    }
    announce(&format!(
        "fault suite (DynamoDB Local): {SDK_SCENARIOS} scenarios passed in {:.1} s; injected: {}; \
         exercised: {}",
        started.elapsed().as_secs_f64(),
        fired
            .iter()
            .map(|((op, f), n)| format!("{op} {} x{n}", f.name()))
            .collect::<Vec<_>>()
            .join(", "),
        kinds
            .iter()
            .map(|(k, n)| format!("{} x{n}", k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for f in SdkFault::ALL {
        assert!(
            fired.keys().any(|(_, g)| *g == f),
            "FAULT_SEED={run}: {} was never injected",
            f.name()
        );
    }
}
