//! The fault-injection suite: seeded, repeatable, every scenario followed by the invariant
//! checker. `FAULT_SEED` (decimal or `0x` hex) picks the run; the default is [`DEFAULT_SEED`].
//! Each part prints its seed, its scenario count and the fault kinds it covers before it
//! starts, and a failure names the seed, the scenario and the failpoints that fired.
//! `FAULT_VERBOSE=1` prints each in-memory scenario's time, `FAULT_TRACE=1` each batch.
//!
//! - [`faults_against_the_fakes_keep_every_invariant`]: [`FAKE_SCENARIOS`] randomized flash
//!   sales over the in-memory store and an in-memory SQS with its DLQ, on one thread. Buyers,
//!   processors, admins and the payment timer run concurrently, interleaved at every port call
//!   as the seed decides: a seed replays the same scenarios, faults and interleaving choices
//!   (what stays the machine's: the wall clock in timestamps, and the iteration order of the
//!   handlers' own hash maps). Failpoints fire before and after
//!   every store call and send of every function, as errors and as crashes; the suite fails
//!   unless each (function, call) it saw was hit in each of those four ways.
//! - [`sdk_faults_against_dynamodb_local_keep_every_invariant`]: [`SDK_SCENARIOS`] scenarios
//!   against DynamoDB Local and fauxqs over HTTP, with throttling, `TransactionConflict`, HTTP
//!   500 and timeouts after the server committed injected under the SDK. It needs the local
//!   stack (`make test` starts it) and fails, never skips, without it.
//!
//! After every scenario: no shard negative and nothing oversold; conservation (stock added =
//! available + units held by live orders); nothing stranded when no stock came back; every
//! accepted order decided once the queue is drained; the DLQ holds exactly the poison
//! messages injected; the ledger of changes shows one deduction, at most one restore and at
//! most one payment per order, each from the status the order was in, pay only before the
//! deadline and the timeout only after; every `200` a caller got is consistent with where
//! the order ended; replays of one key answered one order; and a message redelivered long
//! after the fact changes nothing.

use advance_order::AdvanceOrder;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use expire_orders::ExpireOrders;
use flash_aws::DynamoStore;
use flash_domain::clock::now_ms;
use flash_domain::expiry::TimeoutMessage;
use flash_domain::order::{transition, Event};
use flash_domain::{
    IdempotencyKey, Order, OrderId, OrderMessage, OrderStatus, Quantity, Reason, Sku, UserId,
};
use flash_tests::audit::audit;
use flash_tests::drain::received_event;
use flash_tests::failpoint::{At, Effect, Entry, Failpoint, Faulty, Fired, Phase, Tracer};
use flash_tests::fake::{message_body, FakeQueue, FakeRedelivery, FakeStore};
use flash_tests::fake_expiry::FakeTimeouts;
use flash_tests::fixtures::{sqs_event, Req};
use flash_tests::invariants::{audit_state, check_ledger, effects};
use flash_tests::sdk_faults::{Rule, SdkFault, SdkFaults};
use flash_tests::sqs_sim::{Delivery, SimQueue, TimeoutsQueue};
use flash_tests::stack;
use futures::StreamExt;
use get_order::GetOrder;
use lambda_http::{Body, Response};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use products::Products;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reconcile::Reconcile;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const DEFAULT_SEED: u64 = 20_261_124;
const FAKE_SCENARIOS: usize = 240;
const SDK_SCENARIOS: usize = 30;
/// `maxReceiveCount` of the orders queue's redrive policy in template.yaml.
const MAX_RECEIVES: u32 = 5;
/// Failpoints a queue consumer may fire in one scenario: fewer than `MAX_RECEIVES`, so a
/// valid message never fails its way into the DLQ and every accepted order must be decided.
const MAX_FAULTS: usize = 4;
/// Failpoints each API function may fire in one scenario.
const MAX_API_FAULTS: usize = 6;
/// Tries a caller makes (on `503` or no answer) before the suite calls it a failure. Each
/// failed try spends a failpoint, so this is never reached unless something is wrong.
const TRIES: usize = MAX_API_FAULTS + 2;
const API_FUNCTIONS: [&str; 4] = ["place-order", "advance-order", "get-order", "products"];
/// Polls of an order before the suite says it was never decided.
const POLLS: usize = 50_000;

fn run_seed() -> u64 {
    match std::env::var("FAULT_SEED") {
        Ok(s) if !s.trim().is_empty() => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).map_err(|e| e.to_string()),
                None => s.parse::<u64>().map_err(|e| e.to_string()),
            };
            parsed.unwrap_or_else(|e| panic!("FAULT_SEED={s:?} is not a number: {e}"))
        }
        _ => DEFAULT_SEED,
    }
}

/// A scenario's own seed, from the run's (splitmix64).
fn mix(seed: u64, part: u64, i: usize) -> u64 {
    let mut z = seed ^ part.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes past the test harness's capture, so `make test` always shows the seed and what ran.
fn announce(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// A response's status and JSON body.
fn parts(resp: Response<Body>) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::Null),
        Body::Binary(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, body)
}

/// The SQS event a consumer gets for `batch`.
fn delivered(batch: &[Delivery]) -> SqsEvent {
    sqs_event(
        &batch
            .iter()
            .map(|d| (d.message_id.clone(), d.body.clone()))
            .collect::<Vec<_>>(),
    )
}

fn failed_ids(resp: &SqsBatchResponse) -> HashSet<String> {
    resp.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

fn user(s: &str) -> UserId {
    UserId::parse(s).expect("test users are valid")
}

fn order_id(who: &str, key: &str) -> OrderId {
    OrderId::derive(
        &user(who),
        &IdempotencyKey::parse(key).expect("test keys are valid"),
    )
}

/// Whether an order shown as `seen` can still end as `end` (a `200` answered with `seen`
/// must not be contradicted by where the order ended).
fn reachable(seen: OrderStatus, end: OrderStatus) -> bool {
    let mut todo = vec![(seen, None::<Reason>)];
    let mut done = HashSet::new();
    while let Some((s, r)) = todo.pop() {
        if s == end {
            return true;
        }
        if !done.insert(s) {
            continue;
        }
        for e in Event::ALL {
            if let Ok(t) = transition(s, r, e) {
                todo.push((t.to, t.reason));
            }
        }
    }
    false
}

/// The event an action's `200` says happened (at some point, by this call or an earlier one).
fn event_of(action: &str) -> Event {
    match action {
        "pay" => Event::Pay,
        "cancel" => Event::Cancel,
        "refund" => Event::Refund,
        "ship" => Event::Ship,
        _ => Event::Confirm,
    }
}

// --- What the suite covers --------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    DuplicateDelivery,
    ConcurrentDuplicateDelivery,
    ConcurrentDuplicateRequest,
    KeyReusedWithAnotherBody,
    FailpointError,
    FailpointCrash,
    PoisonInBatchOfTen,
    CancelRacingProcessor,
    DoubleCancel,
    CancelVsShip,
    RefundVsShip,
    PayVsCancel,
    DoubleRefund,
    PayRacingTimeout,
    CancelRacingTimeout,
    Restock,
    DlqRedriveLongAfter,
    LateRedelivery,
    LateReplay,
    TimeoutsAfterTheSale,
}

impl Kind {
    const ALL: [Kind; 20] = [
        Self::DuplicateDelivery,
        Self::ConcurrentDuplicateDelivery,
        Self::ConcurrentDuplicateRequest,
        Self::KeyReusedWithAnotherBody,
        Self::FailpointError,
        Self::FailpointCrash,
        Self::PoisonInBatchOfTen,
        Self::CancelRacingProcessor,
        Self::DoubleCancel,
        Self::CancelVsShip,
        Self::RefundVsShip,
        Self::PayVsCancel,
        Self::DoubleRefund,
        Self::PayRacingTimeout,
        Self::CancelRacingTimeout,
        Self::Restock,
        Self::DlqRedriveLongAfter,
        Self::LateRedelivery,
        Self::LateReplay,
        Self::TimeoutsAfterTheSale,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::DuplicateDelivery => "duplicate delivery xN",
            Self::ConcurrentDuplicateDelivery => "concurrent duplicate deliveries of one batch",
            Self::ConcurrentDuplicateRequest => "concurrent duplicate requests (one key)",
            Self::KeyReusedWithAnotherBody => "key reused with another body (422)",
            Self::FailpointError => "failpoint before/after a call: error",
            Self::FailpointCrash => "failpoint before/after a call: crash",
            Self::PoisonInBatchOfTen => "poison message in a batch of 10",
            Self::CancelRacingProcessor => "cancel racing the processor",
            Self::DoubleCancel => "double cancel",
            Self::CancelVsShip => "cancel vs pay+ship",
            Self::RefundVsShip => "cancel (refund) of a paid order vs ship",
            Self::PayVsCancel => "pay vs cancel",
            Self::DoubleRefund => "double refund",
            Self::PayRacingTimeout => "pay racing the payment timeout",
            Self::CancelRacingTimeout => "cancel racing the payment timeout",
            Self::Restock => "stock added during the sale",
            Self::DlqRedriveLongAfter => "message redriven from the DLQ long after the fact",
            Self::LateRedelivery => "decided orders' messages redelivered long after",
            Self::LateReplay => "a request replayed after its order was decided",
            Self::TimeoutsAfterTheSale => "payment timeouts (duplicated) after the sale",
        }
    }
}

/// What the whole run covered: every (function, call) seen, and the failpoints fired.
#[derive(Default)]
struct Coverage {
    steps: BTreeSet<(&'static str, &'static str)>,
    fired: BTreeSet<Fired>,
    fired_total: usize,
    kinds: BTreeMap<Kind, usize>,
}

const MODES: [(Phase, Effect); 4] = [
    (Phase::Before, Effect::Error),
    (Phase::After, Effect::Error),
    (Phase::Before, Effect::Crash),
    (Phase::After, Effect::Crash),
];

type Target = (&'static str, &'static str, Phase, Effect);

impl Coverage {
    /// (function, call, phase, effect) not yet fired, for every call seen so far.
    fn missing(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for &(f, op) in &self.steps {
            for (phase, effect) in MODES {
                let fired = Fired {
                    function: f,
                    op,
                    phase,
                    effect,
                };
                if !self.fired.contains(&fired) {
                    out.push((f, op, phase, effect));
                }
            }
        }
        out
    }

    fn absorb(&mut self, tracer: &Tracer, kinds: &BTreeMap<Kind, usize>) {
        self.steps.extend(tracer.steps());
        let fired = tracer.fired();
        self.fired_total += fired.len();
        for f in &fired {
            let k = match f.effect {
                Effect::Error => Kind::FailpointError,
                Effect::Crash => Kind::FailpointCrash,
            };
            *self.kinds.entry(k).or_default() += 1;
        }
        self.fired.extend(fired);
        for (k, n) in kinds {
            *self.kinds.entry(*k).or_default() += n;
        }
    }
}

// --- The in-memory world ---------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Idle,
    Pay,
    PayShipConfirm,
    Cancel,
    DoubleCancel,
    CancelRacingProcessor,
    PayRefund,
    PayDoubleRefund,
    RefundVsShip,
    CancelVsPayShip,
    PayVsCancel,
    PayVsTimeout,
    CancelVsTimeout,
}

const SCRIPTS: [Script; 13] = [
    Script::Idle,
    Script::Pay,
    Script::PayShipConfirm,
    Script::Cancel,
    Script::DoubleCancel,
    Script::CancelRacingProcessor,
    Script::PayRefund,
    Script::PayDoubleRefund,
    Script::RefundVsShip,
    Script::CancelVsPayShip,
    Script::PayVsCancel,
    Script::PayVsTimeout,
    Script::CancelVsTimeout,
];

#[derive(Debug, Clone)]
struct Buyer {
    user: String,
    key: String,
    quantity: u32,
    /// Sends its request twice at once.
    twice: bool,
    /// Then reuses its key with another body.
    reuse: bool,
    /// Replays its request once its script is done.
    replay: bool,
    script: Script,
}

/// A caller's answer to an action.
#[derive(Debug, Clone)]
struct Answer {
    order: OrderId,
    action: &'static str,
    status: u16,
    shown: Option<OrderStatus>,
}

/// One scenario over the in-memory store.
struct World {
    label: String,
    sku: Sku,
    spec: Value,
    store: FakeStore,
    /// What `place-order` sends; pumped into `sqs`.
    sent: FakeQueue,
    sqs: SimQueue,
    timeouts: Arc<SimQueue>,
    tracer: Tracer,
    rng: Mutex<StdRng>,
    fault_rate: f64,
    targets: Mutex<Vec<Target>>,
    /// Tasks of the current phase that may still need the processors.
    clients: AtomicUsize,
    /// The order whose message an outage sends to the DLQ (redriven after the sale).
    outage: Mutex<Option<OrderId>>,
    poison: Mutex<BTreeSet<String>>,
    answers: Mutex<Vec<Answer>>,
    accepted: Mutex<BTreeMap<OrderId, String>>,
    kinds: Mutex<BTreeMap<Kind, usize>>,
}

impl World {
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        let fired: Vec<String> = self
            .tracer
            .fired()
            .iter()
            .map(|f| format!("{}/{} {:?} {:?}", f.function, f.op, f.phase, f.effect))
            .collect();
        panic!("{}: {what}\nfailpoints fired: {fired:?}", self.label)
    }

    fn rng(&self) -> MutexGuard<'_, StdRng> {
        lock(&self.rng)
    }

    fn chance(&self, p: f64) -> bool {
        self.rng().random_bool(p)
    }

    fn tally(&self, k: Kind) {
        *lock(&self.kinds).entry(k).or_default() += 1;
    }

    /// The failpoint for the next invocation of `function`, if the scenario arms one: most
    /// often at the first call of one the run has not yet failed that way, else at a random
    /// step.
    fn failpoint(&self, function: &'static str) -> Option<Failpoint> {
        if self.tracer.budget(function) == 0 || !self.chance(self.fault_rate) {
            return None;
        }
        let fired: BTreeSet<Fired> = self.tracer.fired().into_iter().collect();
        let targets = lock(&self.targets);
        let mine: Vec<&Target> = targets
            .iter()
            .filter(|t| {
                let f = Fired {
                    function: t.0,
                    op: t.1,
                    phase: t.2,
                    effect: t.3,
                };
                t.0 == function && !fired.contains(&f)
            })
            .collect();
        let mut rng = self.rng();
        if !mine.is_empty() && rng.random_bool(0.75) {
            let &(_, _, phase, effect) = mine[rng.random_range(0..mine.len())];
            let ops = mine
                .iter()
                .filter(|t| (t.2, t.3) == (phase, effect))
                .map(|t| t.1)
                .collect();
            return Some(Failpoint {
                at: At::First(ops),
                phase,
                effect,
            });
        }
        let (phase, effect) = MODES[rng.random_range(0..MODES.len())];
        Some(Failpoint {
            at: At::Step(rng.random_range(0..7)),
            phase,
            effect,
        })
    }

    fn order(&self, id: &OrderId) -> Order {
        self.store
            .order(id)
            .unwrap_or_else(|| self.fail(format!("order {id} is missing")))
    }

    // --- Callers: each retries on 503 or no answer, as a client behind API Gateway would.

    async fn place(&self, who: &str, key: &str, body: &str) -> (u16, Value) {
        for _ in 0..TRIES {
            let inv = self
                .tracer
                .invocation("place-order", self.failpoint("place-order"));
            let h = PlaceOrder::new(inv.wrap(self.store.clone()), inv.wrap(self.sent.clone()));
            let resp = h.handle(Req::place_order(who, key, body).build()).await;
            let (status, body) = parts(resp);
            if inv.crashed() || status == 503 {
                continue;
            }
            return (status, body);
        }
        self.fail(format!("POST /orders by {who} (key {key}) never answered"))
    }

    async fn act(&self, who: &str, admin: bool, id: &OrderId, action: &'static str) -> Answer {
        for _ in 0..TRIES {
            let inv = self
                .tracer
                .invocation("advance-order", self.failpoint("advance-order"));
            let h = AdvanceOrder {
                store: inv.wrap(self.store.clone()),
            };
            let resp = h
                .handle(Req::advance(who, admin, id.as_str(), action).build())
                .await;
            let (status, body) = parts(resp);
            if inv.crashed() || status == 503 {
                continue;
            }
            let shown = body["status"]
                .as_str()
                .or(body["error"]["status"].as_str())
                .and_then(OrderStatus::parse);
            let a = Answer {
                order: id.clone(),
                action,
                status,
                shown,
            };
            if !matches!(status, 200 | 409) {
                self.fail(format!("{action} of {id} answered {status}: {body}"));
            }
            lock(&self.answers).push(a.clone());
            return a;
        }
        self.fail(format!("{action} of {id} never answered"))
    }

    /// `GET /orders/{id}` until the order is no longer queued; its status.
    async fn wait_decided(&self, who: &str, id: &OrderId) -> OrderStatus {
        for _ in 0..POLLS {
            let inv = self
                .tracer
                .invocation("get-order", self.failpoint("get-order"));
            let h = GetOrder {
                store: inv.wrap(self.store.clone()),
            };
            let (status, body) = parts(h.handle(Req::get_order(who, id.as_str()).build()).await);
            if !inv.crashed() && status == 200 {
                match body["status"].as_str().and_then(OrderStatus::parse) {
                    Some(OrderStatus::Queued) => {}
                    Some(s) => return s,
                    None => self.fail(format!("GET /orders/{id} answered {body}")),
                }
            } else if !inv.crashed() && status != 503 {
                self.fail(format!("GET /orders/{id} answered {status}: {body}"));
            }
            tokio::task::yield_now().await;
        }
        self.fail(format!("order {id} was never decided"))
    }

    async fn put_product(&self, spec: &Value) -> u16 {
        for _ in 0..TRIES {
            let inv = self
                .tracer
                .invocation("products", self.failpoint("products"));
            let h = Products {
                store: inv.wrap(self.store.clone()),
            };
            let resp = h
                .handle(Req::put_product(self.sku.as_str(), &spec.to_string()).build())
                .await;
            let (status, body) = parts(resp);
            if inv.crashed() || status == 503 {
                continue;
            }
            if !matches!(status, 200 | 201) {
                self.fail(format!("PUT /products answered {status}: {body}"));
            }
            return status;
        }
        self.fail("PUT /products never answered")
    }

    // --- The queue's consumers

    /// One `process-orders` invocation on `batch`: the failed message ids, and whether it
    /// crashed (then every message of the batch comes back).
    async fn process(&self, batch: &[Delivery], faults: bool) -> (HashSet<String>, bool) {
        let point = if faults {
            self.failpoint("process-orders")
        } else {
            None
        };
        let inv = self.tracer.invocation("process-orders", point);
        let h = ProcessOrders {
            store: inv.wrap(self.store.clone()),
            timeouts: inv.wrap(TimeoutsQueue(self.timeouts.clone())),
        };
        let event = delivered(batch);
        // The world plays SQS itself: what the function hands back is only recorded.
        let (resp, report) = h
            .handle(
                &FakeRedelivery::default(),
                event,
                flash_tests::fixtures::invocation_deadline(),
            )
            .await;
        if std::env::var_os("FAULT_TRACE").is_some() {
            let ids: Vec<&str> = batch.iter().map(|d| d.message_id.as_str()).collect();
            println!(
                "{}: process-orders {ids:?}: failed {:?}, crashed {}, accepted {}, rejected {}",
                self.label,
                failed_ids(&resp),
                inv.crashed(),
                report.accepted,
                report.rejected
            );
        }
        (failed_ids(&resp), inv.crashed())
    }

    /// One `expire-orders` invocation on `event`, with failpoints: the failed message ids, and
    /// whether it crashed.
    async fn expire_batch(&self, event: SqsEvent) -> (HashSet<String>, bool) {
        let inv = self
            .tracer
            .invocation("expire-orders", self.failpoint("expire-orders"));
        let h = ExpireOrders {
            store: inv.wrap(self.store.clone()),
            timeouts: inv.wrap(TimeoutsQueue(self.timeouts.clone())),
        };
        let (resp, _) = h.process(event).await;
        (failed_ids(&resp), inv.crashed())
    }

    /// Plays the event source mapping until the queue is empty and no caller needs it.
    async fn consumer(&self, max_batch: usize, faults: bool) {
        let mut idle = 0;
        loop {
            self.sqs.pump(&self.sent);
            if self.sqs.idle() && self.clients.load(Ordering::SeqCst) == 0 {
                return;
            }
            let batch = {
                let mut rng = self.rng();
                let n = rng.random_range(1..=max_batch);
                self.sqs.receive(n, &mut *rng)
            };
            if batch.is_empty() {
                idle += 1;
                if idle > POLLS {
                    self.fail(format!(
                        "the queue stayed empty while {} callers waited for a decision: an \
                         accepted order was never enqueued, or its message was lost",
                        self.clients.load(Ordering::SeqCst)
                    ));
                }
                tokio::task::yield_now().await;
                continue;
            }
            idle = 0;
            let mut batch = batch;
            let outage = lock(&self.outage).clone();
            if let Some(id) = outage {
                let named = |d: &Delivery| d.body.contains(id.as_str());
                if let Some(i) = batch.iter().position(named) {
                    // The outage: this message fails until its receives run out.
                    self.sqs.dead_letter(batch.remove(i));
                    *lock(&self.outage) = None;
                }
            }
            if faults {
                // Only on a first receive, so copies of a failing message do not multiply.
                for d in batch.iter().filter(|d| d.receives == 1) {
                    if self.chance(0.12) {
                        let copies = self.rng().random_range(1..=3);
                        self.sqs.duplicate(d, copies);
                        self.tally(Kind::DuplicateDelivery);
                    }
                }
            }
            let (failed, crashed) = if faults && self.chance(0.1) {
                // The same batch to two consumers at once.
                self.tally(Kind::ConcurrentDuplicateDelivery);
                let (a, b) = futures::join!(self.process(&batch, true), self.process(&batch, true));
                (a.0.union(&b.0).cloned().collect(), a.1 || b.1)
            } else {
                self.process(&batch, faults).await
            };
            self.sqs.settle(batch, &failed, crashed);
        }
    }

    /// Several consumers until the queue drains.
    async fn drain(&self, consumers: usize, max_batch: usize, faults: bool) {
        futures::future::join_all((0..consumers).map(|_| self.consumer(max_batch, faults))).await;
    }

    /// One `expire-orders` invocation on timeout messages for `ids`, retried until none
    /// fails; returns when done.
    async fn expire(&self, ids: &[OrderId]) {
        let batch: Vec<(String, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let body = serde_json::to_string(&TimeoutMessage {
                    order_id: id.clone(),
                })
                .unwrap_or_default();
                (format!("t-{i}"), body)
            })
            .collect();
        for _ in 0..TRIES {
            let (failed, crashed) = self.expire_batch(sqs_event(&batch)).await;
            if !crashed && failed.is_empty() {
                return;
            }
        }
        self.fail(format!("the payment timeouts of {ids:?} kept failing"))
    }

    /// Delivers some payment timeouts before they are due: `expire-orders` must only send them
    /// again.
    async fn expire_early(&self) {
        let before = self.store.snapshot();
        let batch = {
            let mut rng = self.rng();
            let n = rng.random_range(1..=5);
            self.timeouts.receive(n, &mut *rng)
        };
        let (failed, crashed) = if batch.is_empty() {
            (HashSet::new(), false)
        } else {
            self.expire_batch(delivered(&batch)).await
        };
        self.timeouts.settle(batch, &failed, crashed);
        if self.store.snapshot().without_sold_out_flags() != before.without_sold_out_flags() {
            self.fail("a payment timeout delivered before its deadline changed the table");
        }
    }

    /// Drains the payment-timeouts queue through `expire-orders`, with failpoints and
    /// duplicates, as the timeouts' event source would once they are due.
    async fn drain_timeouts(&self) {
        let mut rounds = 0;
        while !self.timeouts.idle() {
            rounds += 1;
            if rounds > POLLS {
                self.fail("the payment-timeouts queue never drained");
            }
            let batch = {
                let mut rng = self.rng();
                let n = rng.random_range(1..=10);
                self.timeouts.receive(n, &mut *rng)
            };
            for d in batch.iter().filter(|d| d.receives == 1) {
                if self.chance(0.1) {
                    self.timeouts.duplicate(d, 1);
                }
            }
            let (failed, crashed) = self.expire_batch(delivered(&batch)).await;
            self.timeouts.settle(batch, &failed, crashed);
        }
        let dead = self.timeouts.dlq();
        if !dead.is_empty() {
            self.fail(format!("payment timeouts reached their DLQ: {dead:?}"));
        }
    }

    // --- Buyers and admins

    /// Places `b`'s order; its id when accepted.
    async fn buy(&self, b: &Buyer) -> Option<OrderId> {
        let body = json!({"sku": self.sku, "quantity": b.quantity}).to_string();
        let answers = if b.twice {
            self.tally(Kind::ConcurrentDuplicateRequest);
            let (x, y) = futures::join!(
                self.place(&b.user, &b.key, &body),
                self.place(&b.user, &b.key, &body)
            );
            vec![x, y]
        } else {
            vec![self.place(&b.user, &b.key, &body).await]
        };
        let expected = order_id(&b.user, &b.key);
        let mut accepted = false;
        for (status, body) in &answers {
            match status {
                202 => {
                    if body["order_id"].as_str() != Some(expected.as_str()) {
                        self.fail(format!("key {} answered another order: {body}", b.key));
                    }
                    accepted = true;
                }
                409 if matches!(
                    body["error"]["code"].as_str(),
                    Some("sold_out" | "purchase_limit")
                ) => {}
                _ => self.fail(format!("POST /orders answered {status}: {body}")),
            }
        }
        if !accepted {
            return None;
        }
        lock(&self.accepted).insert(expected.clone(), b.user.clone());
        if b.reuse {
            self.tally(Kind::KeyReusedWithAnotherBody);
            let other = json!({"sku": self.sku, "quantity": b.quantity + 1}).to_string();
            let (status, body) = self.place(&b.user, &b.key, &other).await;
            if (status, body["error"]["code"].as_str()) != (422, Some("idempotency_key_reused")) {
                self.fail(format!("a reused key answered {status}: {body}"));
            }
        }
        Some(expected)
    }

    async fn buyer(&self, b: &Buyer) {
        if let Some(id) = self.buy(b).await {
            script(self, b, &id).await;
            if b.replay {
                self.replay(b, &id).await;
            }
        }
        self.clients.fetch_sub(1, Ordering::SeqCst);
    }

    /// The same request again, later: the same order, as it is now (even once the product is
    /// sold out, when the answer comes without a write).
    async fn replay(&self, b: &Buyer, id: &OrderId) {
        self.tally(Kind::LateReplay);
        let body = json!({"sku": self.sku, "quantity": b.quantity}).to_string();
        let (status, answer) = self.place(&b.user, &b.key, &body).await;
        let now = self.order(id).status;
        // As it was when answered: it may have moved on since.
        let shown = answer["status"].as_str().and_then(OrderStatus::parse);
        if status != 202
            || answer["order_id"].as_str() != Some(id.as_str())
            || !shown.is_some_and(|s| reachable(s, now))
        {
            self.fail(format!(
                "a replay of {id} ({now:?}) answered {status}: {answer}"
            ));
        }
    }

    async fn restock(&self, units: u32) {
        let wait = self.rng().random_range(0..40);
        for _ in 0..wait {
            tokio::task::yield_now().await;
        }
        self.tally(Kind::Restock);
        let mut spec = self.spec.clone();
        spec["stock"] = json!(units);
        if self.put_product(&spec).await != 200 {
            self.fail("adding stock to an existing product did not answer 200");
        }
        self.clients.fetch_sub(1, Ordering::SeqCst);
    }

    // --- Poison

    /// A message the processor must fail alone: its id.
    fn poison(&self) -> String {
        // (A message naming no order, or disagreeing with the order it names, is not poison:
        // it is the re-drive copy of an order never written, or of a refused request that
        // reused a key, and the processor acknowledges it.)
        let kind = self.rng().random_range(0..3);
        let body = match kind {
            0 => "{not json".to_owned(),
            1 => json!({"hello": "world"}).to_string(),
            _ => {
                // A stored order of a product that does not exist.
                let ghost = Sku::parse("GHOST-1").expect("valid sku");
                let id = order_id("ghost-buyer", "ghost-key");
                let now = now_ms();
                self.store.seed_order(Order {
                    id: id.clone(),
                    owner: user("ghost-buyer"),
                    sku: ghost.clone(),
                    quantity: Quantity::new(1).expect("1 is a quantity"),
                    status: OrderStatus::Queued,
                    reason: None,
                    created_at: now,
                    updated_at: now,
                    expires_at: None,
                    fingerprint: String::new(),
                    takes: Vec::new(),
                    counted: false,
                });
                message_body(&OrderMessage {
                    order_id: id,
                    sku: ghost,
                    quantity: Quantity::new(1).expect("1 is a quantity"),
                    user_id: user("ghost-buyer"),
                })
            }
        };
        let id = self.sqs.send(body);
        lock(&self.poison).insert(id.clone());
        id
    }

    /// Nine valid messages and one poison message in one batch: only the poison fails.
    async fn poison_batch(&self) {
        self.sqs.pump(&self.sent);
        let nine = {
            let mut rng = self.rng();
            self.sqs.receive(9, &mut *rng)
        };
        if nine.len() != 9 {
            self.fail(format!(
                "only {} messages queued for the poison batch",
                nine.len()
            ));
        }
        let orders: Vec<OrderId> = nine
            .iter()
            .filter_map(|d| serde_json::from_str::<OrderMessage>(&d.body).ok())
            .map(|m| m.order_id)
            .collect();
        let poison = self.poison();
        let mut batch = nine;
        let p = self
            .sqs
            .receive_id(&poison)
            .unwrap_or_else(|| self.fail("the poison message vanished"));
        let at = self.rng().random_range(0..=batch.len());
        batch.insert(at, p);
        let (failed, crashed) = self.process(&batch, false).await;
        let expected: HashSet<String> = [poison].into();
        if crashed || failed != expected {
            self.fail(format!(
                "a batch of 10 with one poison message failed {failed:?}, expected {expected:?}"
            ));
        }
        for id in &orders {
            if self.order(id).status == OrderStatus::Queued {
                self.fail(format!("order {id} of the poison batch was not decided"));
            }
        }
        self.tally(Kind::PoisonInBatchOfTen);
        self.sqs.settle(batch, &failed, false);
    }
}

impl Api for World {
    fn fail(&self, what: impl std::fmt::Display) -> ! {
        World::fail(self, what)
    }

    fn tally(&self, k: Kind) {
        World::tally(self, k);
    }

    async fn act(&self, who: &str, admin: bool, id: &OrderId, action: &'static str) -> Answer {
        World::act(self, who, admin, id, action).await
    }

    async fn wait_decided(&self, who: &str, id: &OrderId) -> OrderStatus {
        World::wait_decided(self, who, id).await
    }

    async fn race_timeout(&self, who: &str, id: &OrderId, action: &'static str, closes_in: i64) {
        // The clock reaches the deadline: the timeout's message arrives while the buyer acts.
        let mut o = self.order(id);
        o.expires_at = Some(now_ms() + closes_in);
        self.store.seed_order(o);
        futures::join!(
            World::act(self, who, false, id, action),
            self.expire(std::slice::from_ref(id))
        );
    }

    async fn pause(&self) {
        tokio::task::yield_now().await;
    }
}

/// What a buyer's script needs from the world it runs in.
trait Api {
    fn fail(&self, what: impl std::fmt::Display) -> !;
    fn tally(&self, k: Kind);
    async fn act(&self, who: &str, admin: bool, id: &OrderId, action: &'static str) -> Answer;
    async fn wait_decided(&self, who: &str, id: &OrderId) -> OrderStatus;
    /// The payment window closes (`closes_in` ms from now) while the buyer takes `action`.
    async fn race_timeout(&self, who: &str, id: &OrderId, action: &'static str, closes_in: i64);
    /// Lets the others run a little.
    async fn pause(&self);
}

/// A buyer's actions on their accepted order.
async fn script<A: Api>(api: &A, b: &Buyer, id: &OrderId) {
    let who = b.user.as_str();
    if b.script == Script::CancelRacingProcessor {
        api.tally(Kind::CancelRacingProcessor);
        for _ in 0..POLLS {
            let a = api.act(who, false, id, "cancel").await;
            if a.status == 409 && a.shown == Some(OrderStatus::Queued) {
                api.pause().await;
                continue;
            }
            return;
        }
        api.fail(format!("order {id} stayed queued"));
    }
    if b.script == Script::Idle || api.wait_decided(who, id).await != OrderStatus::Pending {
        return;
    }
    match b.script {
        Script::Pay => {
            api.act(who, false, id, "pay").await;
        }
        Script::PayShipConfirm => {
            api.act(who, false, id, "pay").await;
            api.act("admin-1", true, id, "ship").await;
            api.act(who, false, id, "confirm").await;
        }
        Script::Cancel => {
            api.act(who, false, id, "cancel").await;
        }
        Script::DoubleCancel => {
            api.tally(Kind::DoubleCancel);
            futures::join!(
                api.act(who, false, id, "cancel"),
                api.act(who, false, id, "cancel")
            );
        }
        Script::PayRefund => {
            api.act(who, false, id, "pay").await;
            api.act(who, false, id, "refund").await;
        }
        Script::PayDoubleRefund => {
            api.tally(Kind::DoubleRefund);
            api.act(who, false, id, "pay").await;
            futures::join!(
                api.act(who, false, id, "refund"),
                api.act(who, false, id, "refund")
            );
        }
        Script::RefundVsShip => {
            api.tally(Kind::RefundVsShip);
            api.act(who, false, id, "pay").await;
            futures::join!(
                api.act(who, false, id, "refund"),
                api.act("admin-1", true, id, "ship")
            );
        }
        Script::CancelVsPayShip => {
            api.tally(Kind::CancelVsShip);
            futures::join!(api.act(who, false, id, "cancel"), async {
                api.act(who, false, id, "pay").await;
                api.act("admin-1", true, id, "ship").await;
            });
        }
        Script::PayVsCancel => {
            api.tally(Kind::PayVsCancel);
            futures::join!(
                api.act(who, false, id, "pay"),
                api.act(who, false, id, "cancel")
            );
        }
        Script::PayVsTimeout => {
            api.tally(Kind::PayRacingTimeout);
            // The window closes now, give or take a millisecond.
            let closes_in = i64::from(id.as_str().as_bytes()[0] % 3) - 1;
            api.race_timeout(who, id, "pay", closes_in).await;
        }
        Script::CancelVsTimeout => {
            api.tally(Kind::CancelRacingTimeout);
            api.race_timeout(who, id, "cancel", -1).await;
        }
        Script::Idle | Script::CancelRacingProcessor => {}
    }
}

// --- One in-memory scenario ------------------------------------------------------------

async fn fake_scenario(run: u64, i: usize, coverage: &mut Coverage) {
    let seed = mix(run, 1, i);
    let mut rng = StdRng::seed_from_u64(seed);
    let label = format!("FAULT_SEED={run} scenario {i} (fakes)");
    let sku = Sku::parse(&format!("FAULT-{i}")).expect("valid sku");
    let stock: u32 = rng.random_range(1..=14);
    let shards: u32 = rng.random_range(1..=3).min(stock);
    let limit: Option<u32> = rng.random_bool(0.25).then(|| rng.random_range(1..=3));
    let poison = rng.random_bool(0.15);
    let buyers_n = if poison {
        rng.random_range(10..=13)
    } else {
        rng.random_range(2..=12)
    };
    let max_q = limit.unwrap_or(3).min(3);
    let mut spec = json!({"name": "Phone", "stock": stock, "shards": shards});
    if let Some(l) = limit {
        spec["per_user_limit"] = json!(l);
    }
    let fault_free = rng.random_bool(0.08);
    let budget = if fault_free {
        0
    } else {
        rng.random_range(1..=MAX_FAULTS)
    };
    let api_budget = if fault_free {
        0
    } else {
        rng.random_range(1..=MAX_API_FAULTS)
    };
    let world = World {
        label: label.clone(),
        sku: sku.clone(),
        spec: spec.clone(),
        store: FakeStore::new(),
        sent: FakeQueue::new(),
        sqs: SimQueue::new(MAX_RECEIVES),
        timeouts: Arc::new(SimQueue::new(MAX_RECEIVES)),
        tracer: Tracer::interleaving(mix(seed, 2, 0)),
        rng: Mutex::new(StdRng::seed_from_u64(mix(seed, 3, 0))),
        fault_rate: rng.random_range(0.15..0.5),
        targets: Mutex::new(coverage.missing()),
        clients: AtomicUsize::new(0),
        outage: Mutex::new(None),
        poison: Mutex::default(),
        answers: Mutex::default(),
        accepted: Mutex::default(),
        kinds: Mutex::default(),
    };
    world.tracer.set_budget("process-orders", budget);
    world.tracer.set_budget("expire-orders", budget);
    for f in API_FUNCTIONS {
        world.tracer.set_budget(f, api_budget);
    }
    let buyers: Vec<Buyer> = (0..buyers_n)
        .map(|b| Buyer {
            user: format!("buyer-{b}"),
            key: format!("key-{i}-{b}"),
            quantity: rng.random_range(1..=max_q),
            twice: rng.random_bool(0.2),
            reuse: rng.random_bool(0.05),
            replay: rng.random_bool(0.2),
            script: SCRIPTS[rng.random_range(0..SCRIPTS.len())],
        })
        .collect();
    let restock = (!poison && rng.random_bool(0.15)).then(|| rng.random_range(1..=5));
    let outage = rng.random_bool(0.1);
    let consumers = rng.random_range(1..=3);
    let max_batch = rng.random_range(1..=10);

    // GIVEN the product, created through PUT /products (failpoints included).
    if world.put_product(&spec).await != 201 && world.store.product(&sku).is_none() {
        world.fail("the product was not created");
    }

    if poison {
        // WHEN the orders are placed first, then one batch of 10 carries a poison message
        world.clients.store(buyers.len(), Ordering::SeqCst);
        let ids: Vec<Option<OrderId>> =
            futures::future::join_all(buyers.iter().map(|b| world.buy(b))).await;
        world.poison_batch().await;
        // and the buyers act while the processors drain the rest
        world.clients.store(buyers.len(), Ordering::SeqCst);
        let w = &world;
        let scripts = buyers.iter().zip(&ids).map(|(b, id)| async move {
            if let Some(id) = id {
                script(w, b, id).await;
            }
            w.clients.fetch_sub(1, Ordering::SeqCst);
        });
        futures::join!(
            futures::future::join_all(scripts),
            world.drain(consumers, max_batch, true)
        );
    } else {
        // WHEN buyers, processors and an admin all run at once
        let extra = usize::from(restock.is_some()) + usize::from(outage);
        world.clients.store(buyers.len() + extra, Ordering::SeqCst);
        let outage_buyer = outage.then(|| Buyer {
            user: "buyer-outage".into(),
            key: format!("key-{i}-outage"),
            quantity: 1,
            twice: false,
            reuse: false,
            replay: false,
            script: Script::Idle,
        });
        if let Some(b) = &outage_buyer {
            *lock(&world.outage) = Some(order_id(&b.user, &b.key));
        }
        futures::join!(
            futures::future::join_all(buyers.iter().chain(&outage_buyer).map(|b| world.buyer(b))),
            world.drain(consumers, max_batch, true),
            async {
                if let Some(units) = restock {
                    world.restock(units).await;
                }
            }
        );
    }

    // The outage is over: the operator redrives the DLQ's valid messages, long after.
    let dead = world.sqs.take_dlq();
    let poison_ids = lock(&world.poison).clone();
    let mut poison_left = Vec::new();
    for d in dead {
        if poison_ids.contains(&d.message_id) {
            poison_left.push(d);
        } else {
            world.tally(Kind::DlqRedriveLongAfter);
            world.sqs.send(d.body);
        }
    }
    world.drain(1, 10, false).await;

    // THEN every invariant holds
    let ledger = world.tracer.ledger();
    let state = world.store.snapshot();
    let audit = audit_state(&state, &sku);
    if !audit.violations.is_empty() {
        world.fail(format!(
            "invariants violated:\n{}",
            audit.violations.join("\n")
        ));
    }
    if audit.undecided() != 0 {
        world.fail(format!("{} accepted orders undecided", audit.undecided()));
    }
    let restored = effects(&ledger).values().any(|x| x.restored > 0);
    if !restored && restock.is_none() && audit.stranded() != 0 {
        world.fail(format!("{} units stranded: {audit:?}", audit.stranded()));
    }
    let ours: BTreeMap<OrderId, Order> = state
        .orders
        .iter()
        .filter(|(_, o)| o.sku == sku)
        .map(|(id, o)| (id.clone(), o.clone()))
        .collect();
    let problems = check_ledger(&ledger, &ours, true);
    if !problems.is_empty() {
        world.fail(format!("ledger:\n{}", problems.join("\n")));
    }
    for id in lock(&world.accepted).keys() {
        if !ours.contains_key(id) {
            world.fail(format!("order {id} was accepted (202) but is not stored"));
        }
    }
    // Every order still waiting for its payment has its timeout scheduled (one that left
    // `pending` before a redelivery could schedule it needs none).
    let scheduled: HashSet<OrderId> = world
        .timeouts
        .archive()
        .iter()
        .filter_map(|(_, b)| serde_json::from_str::<TimeoutMessage>(b).ok())
        .map(|m| m.order_id)
        .collect();
    for o in ours.values() {
        if o.status == OrderStatus::Pending && !scheduled.contains(&o.id) {
            world.fail(format!(
                "order {} is pending but its payment timeout was never scheduled",
                o.id
            ));
        }
    }
    check_answers(&world, &lock(&world.answers), &ours, Some(&ledger));
    let dlq: BTreeSet<String> = poison_left.iter().map(|d| d.message_id.clone()).collect();
    if dlq != poison_ids {
        world.fail(format!(
            "the DLQ holds {dlq:?}, expected exactly the poison {poison_ids:?}"
        ));
    }

    // AND messages redelivered long after the fact (and the DLQ's poison again) change nothing
    let before = world.store.snapshot();
    let archive = world.sqs.archive();
    let mut late: Vec<Delivery> = Vec::new();
    let picks = world.rng().random_range(1..=4);
    for _ in 0..picks {
        let (id, body) = archive[world.rng().random_range(0..archive.len())].clone();
        if !poison_ids.contains(&id) {
            late.push(Delivery {
                message_id: format!("late-{id}"),
                body,
                receives: 1,
            });
        }
    }
    late.extend(poison_left.iter().cloned());
    world.tally(Kind::LateRedelivery);
    let (failed, _) = world.process(&late, false).await;
    let expected: HashSet<String> = poison_left.iter().map(|d| d.message_id.clone()).collect();
    if failed != expected {
        world.fail(format!(
            "a late redelivery failed {failed:?}, expected {expected:?}"
        ));
    }
    if world.store.snapshot() != before {
        world.fail("a late redelivery changed the table");
    }

    // AND when every payment window closes, the timeouts (duplicated, with failpoints) cancel
    // exactly the unpaid orders and bring their stock back once.
    world.tally(Kind::TimeoutsAfterTheSale);
    // The timeouts' own queue, so a budget of its own (the race above spent little of it).
    world.tracer.set_budget("expire-orders", budget);
    // Some arrive early (a window longer than SQS's longest delay): sent again, nothing else.
    world.expire_early().await;
    let now = now_ms();
    let unpaid: Vec<Order> = world
        .store
        .orders()
        .into_iter()
        .filter(|o| o.sku == sku && o.status == OrderStatus::Pending)
        .collect();
    for mut o in unpaid.clone() {
        o.expires_at = Some(now - 1);
        world.store.seed_order(o);
    }
    world.drain_timeouts().await;
    let state = world.store.snapshot();
    let audit = audit_state(&state, &sku);
    if !audit.violations.is_empty() {
        world.fail(format!(
            "invariants violated after the timeouts:\n{}",
            audit.violations.join("\n")
        ));
    }
    for o in &unpaid {
        let now = world.order(&o.id);
        if (now.status, now.reason) != (OrderStatus::Canceled, Some(Reason::PaymentTimeout)) {
            world.fail(format!("unpaid order {} ended {:?}", o.id, now.status));
        }
    }
    let ours: BTreeMap<OrderId, Order> = state
        .orders
        .into_iter()
        .filter(|(_, o)| o.sku == sku)
        .collect();
    let problems = check_ledger(&world.tracer.ledger(), &ours, true);
    if !problems.is_empty() {
        world.fail(format!(
            "ledger after the timeouts:\n{}",
            problems.join("\n")
        ));
    }
    // AND the reconciler, reading the same table, finds nothing wrong either.
    let (summary, _) = Reconcile::new(world.store.clone())
        .run(now_ms())
        .await
        .unwrap_or_else(|e| world.fail(format!("the reconciler failed: {e}")));
    if summary.violations != 0 || summary.overdue_pending != 0 {
        world.fail(format!("the reconciler reports {summary:?}"));
    }
    let kinds = lock(&world.kinds).clone();
    coverage.absorb(&world.tracer, &kinds);
}

/// Every `200` an action got is consistent with where the order ended; with an exact ledger,
/// the transition it reports happened.
fn check_answers(
    world: &World,
    answers: &[Answer],
    orders: &BTreeMap<OrderId, Order>,
    ledger: Option<&[Entry]>,
) {
    for a in answers.iter().filter(|a| a.status == 200) {
        let Some(o) = orders.get(&a.order) else {
            world.fail(format!("{a:?} names a missing order"));
        };
        let shown = a
            .shown
            .unwrap_or_else(|| world.fail(format!("{a:?} shows no status")));
        if !reachable(shown, o.status) {
            world.fail(format!(
                "{} of {} answered 200 ({shown:?}) but the order ended {:?}",
                a.action, a.order, o.status
            ));
        }
        if let Some(ledger) = ledger {
            let e = event_of(a.action);
            let happened = ledger.iter().any(|x| match x {
                Entry::Advanced(id, t, ..) => {
                    id == &a.order && transition(t.from, None, e).is_ok_and(|u| u == *t)
                }
                _ => false,
            });
            if !happened {
                world.fail(format!(
                    "{} of {} answered 200 but never took effect",
                    a.action, a.order
                ));
            }
        }
    }
}

#[test]
fn faults_against_the_fakes_keep_every_invariant() {
    let run = run_seed();
    announce(&format!(
        "fault suite (in-memory store and SQS): FAULT_SEED={run}, {FAKE_SCENARIOS} scenarios; \
         fault kinds: {}; failpoints before and after every call of place-order, \
         process-orders, advance-order, get-order, products and expire-orders, as error and \
         as crash",
        Kind::ALL.map(Kind::name).join(", ")
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let mut coverage = Coverage::default();
    let started = std::time::Instant::now();
    let verbose = std::env::var_os("FAULT_VERBOSE").is_some();
    for i in 0..FAKE_SCENARIOS {
        let t = std::time::Instant::now();
        rt.block_on(fake_scenario(run, i, &mut coverage));
        if verbose {
            println!(
                "  scenario {i}: {:.0} ms",
                t.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
    let missing = coverage.missing();
    announce(&format!(
        "fault suite (in-memory): {FAKE_SCENARIOS} scenarios passed in {:.1} s; {} failpoints \
         fired over {} (function, call) steps, {} of {} (step, before/after, error/crash) \
         combinations; by kind: {}",
        started.elapsed().as_secs_f64(),
        coverage.fired_total,
        coverage.steps.len(),
        coverage.steps.len() * MODES.len() - missing.len(),
        coverage.steps.len() * MODES.len(),
        Kind::ALL
            .iter()
            .map(|k| format!("{} x{}", k.name(), coverage.kinds.get(k).unwrap_or(&0)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for &(f, op) in &coverage.steps {
        let fired = MODES
            .iter()
            .filter(|(phase, effect)| {
                coverage.fired.contains(&Fired {
                    function: f,
                    op,
                    phase: *phase,
                    effect: *effect,
                })
            })
            .count();
        println!("  failpoints at {f}/{op}: {fired} of 4 (before/after x error/crash)");
    }
    assert!(
        missing.is_empty(),
        "FAULT_SEED={run}: failpoints never fired at {missing:?}"
    );
    let absent: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| !coverage.kinds.contains_key(k))
        .map(|k| k.name())
        .collect();
    assert!(
        absent.is_empty(),
        "FAULT_SEED={run}: never exercised: {absent:?}"
    );
}

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
            let h = Products {
                store: inv.wrap(self.store.clone()),
            };
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
        let expected = order_id(&b.user, &b.key);
        let once = || async {
            for _ in 0..20 {
                let inv = self.tracer.invocation("place-order", None);
                let h = PlaceOrder::new(inv.wrap(self.store.clone()), inv.wrap(self.queue.clone()));
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
            let h = AdvanceOrder {
                store: inv.wrap(self.store.clone()),
            };
            let resp = h
                .handle(Req::advance(who, admin, id.as_str(), action).build())
                .await;
            let (status, body) = parts(resp);
            match status {
                503 => Self::pause_ms(20).await,
                200 | 409 => {
                    let shown = body["status"]
                        .as_str()
                        .or(body["error"]["status"].as_str())
                        .and_then(OrderStatus::parse);
                    let a = Answer {
                        order: id.clone(),
                        action,
                        status,
                        shown,
                    };
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
    let (resp, _) = h
        .handle(
            &FakeRedelivery::default(),
            event,
            flash_tests::fixtures::invocation_deadline(),
        )
        .await;
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
        store: DynamoStore::from_config(&sdk, &stack.table).with_rate_limit(None),
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
    let (resp, _) = clean
        .handle(
            &FakeRedelivery::default(),
            sqs_event(&late),
            flash_tests::fixtures::invocation_deadline(),
        )
        .await;
    let expected: HashSet<String> = dead.iter().filter_map(|m| m.message_id.clone()).collect();
    if failed_ids(&resp) != expected {
        live.fail(format!(
            "a late redelivery failed {:?}, expected {expected:?}",
            failed_ids(&resp)
        ));
    }
    let after = audit(&stack.clean, &sku_text).await;
    let view = |a: &flash_aws::audit::Audit| {
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
