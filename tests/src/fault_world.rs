//! The fault suite's in-memory world ([`World`]): one scenario's table, queues, payment timer
//! and tracer, with every function's handler wrapped in failpoints, driven by buyers, admins,
//! processors and the timer interleaved as the scenario's seed decides; and the check of
//! every answer a caller got against where its order ended.

use crate::drain::invoke;
use crate::failpoint::{At, Entry, Failpoint, Fired, Tracer};
use crate::fake::{message_body, FakeQueue, FakeStore, State};
use crate::fixtures::{sqs_event, Req};
use crate::invariants::audit_state;
use crate::sqs_sim::{Delivery, SimQueue, TimeoutsQueue};
use aws_lambda_events::event::sqs::SqsEvent;
use expire_orders::ExpireOrders;
use flash_domain::clock::now_ms;
use flash_domain::expiry::TimeoutMessage;
use flash_domain::invariant_check::Audit;
use flash_domain::order::transition;
use flash_domain::ports::Unlimited;
use flash_domain::{Order, OrderId, OrderMessage, OrderStatus, Quantity, Sku};
use get_order::GetOrder;
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use products::Products;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fault_suite::*;
use crate::given::{id_for, user};
use crate::response::parts;

/// One scenario over the in-memory store.
pub struct World {
    pub label: String,
    pub sku: Sku,
    pub spec: Value,
    pub store: FakeStore,
    /// What `place-order` sends; pumped into `sqs`.
    pub sent: FakeQueue,
    pub sqs: SimQueue,
    pub timeouts: Arc<SimQueue>,
    pub tracer: Tracer,
    pub rng: Mutex<StdRng>,
    pub fault_rate: f64,
    pub targets: Mutex<Vec<Target>>,
    /// Tasks of the current phase that may still need the processors.
    pub clients: AtomicUsize,
    /// The order whose message an outage sends to the DLQ (redriven after the sale).
    pub outage: Mutex<Option<OrderId>>,
    pub poison: Mutex<BTreeSet<String>>,
    pub answers: Mutex<Vec<Answer>>,
    pub accepted: Mutex<BTreeMap<OrderId, String>>,
    pub kinds: Mutex<BTreeMap<Kind, usize>>,
}

impl World {
    /// The table as it is now and its audit of `sku`; the scenario fails if the audit finds an
    /// invariant broken (`when` says after what, for the report).
    pub fn audited(&self, sku: &Sku, when: &str) -> (State, Audit) {
        let state = self.store.snapshot();
        let audit = audit_state(&state, sku);
        if !audit.violations.is_empty() {
            self.fail(format!(
                "invariants violated{when}:\n{}",
                audit.violations.join("\n")
            ));
        }
        (state, audit)
    }

    pub fn fail(&self, what: impl std::fmt::Display) -> ! {
        let fired: Vec<String> = self
            .tracer
            .fired()
            .iter()
            .map(|f| format!("{}/{} {:?} {:?}", f.function, f.op, f.phase, f.effect))
            .collect();
        panic!("{}: {what}\nfailpoints fired: {fired:?}", self.label)
    }

    pub fn rng(&self) -> MutexGuard<'_, StdRng> {
        lock(&self.rng)
    }

    pub fn chance(&self, p: f64) -> bool {
        self.rng().random_bool(p)
    }

    pub fn tally(&self, k: Kind) {
        *lock(&self.kinds).entry(k).or_default() += 1;
    }

    /// The failpoint for the next invocation of `function`, if the scenario arms one: most
    /// often at the first call of one the run has not yet failed that way, else at a random
    /// step.
    pub fn failpoint(&self, function: &'static str) -> Option<Failpoint> {
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

    pub fn order(&self, id: &OrderId) -> Order {
        self.store
            .order(id)
            .unwrap_or_else(|| self.fail(format!("order {id} is missing")))
    }

    // --- Callers: each retries on 503 or no answer, as a client behind API Gateway would.

    pub async fn place(&self, who: &str, key: &str, body: &str) -> (u16, Value) {
        for _ in 0..TRIES {
            let inv = self
                .tracer
                .invocation("place-order", self.failpoint("place-order"));
            let h = PlaceOrder::new(inv.wrap(self.store.clone()), inv.wrap(self.sent.clone()))
                .with_rate_limit(inv.wrap(Unlimited));
            let resp = h.handle(Req::place_order(who, key, body).build()).await;
            let (status, body) = parts(resp);
            if inv.crashed() || status == 503 {
                continue;
            }
            return (status, body);
        }
        self.fail(format!("POST /orders by {who} (key {key}) never answered"))
    }

    pub async fn act(&self, who: &str, admin: bool, id: &OrderId, action: &'static str) -> Answer {
        for _ in 0..TRIES {
            let inv = self
                .tracer
                .invocation("advance-order", self.failpoint("advance-order"));
            let (status, body) = inv
                .advance(self.store.clone(), who, admin, id, action)
                .await;
            if inv.crashed() || status == 503 {
                continue;
            }
            let a = Answer::of(id, action, status, &body);
            if !matches!(status, 200 | 409) {
                self.fail(format!("{action} of {id} answered {status}: {body}"));
            }
            lock(&self.answers).push(a.clone());
            return a;
        }
        self.fail(format!("{action} of {id} never answered"))
    }

    /// `GET /orders/{id}` until the order is no longer queued; its status.
    pub async fn wait_decided(&self, who: &str, id: &OrderId) -> OrderStatus {
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

    pub async fn put_product(&self, spec: &Value) -> u16 {
        for _ in 0..TRIES {
            let inv = self
                .tracer
                .invocation("products", self.failpoint("products"));
            let h =
                Products::new(inv.wrap(self.store.clone())).with_rate_limit(inv.wrap(Unlimited));
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
    pub async fn process(&self, batch: &[Delivery], faults: bool) -> (HashSet<String>, bool) {
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
        let (resp, report) = invoke(&h, event).await;
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
    pub async fn expire_batch(&self, event: SqsEvent) -> (HashSet<String>, bool) {
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
    pub async fn consumer(&self, max_batch: usize, faults: bool) {
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
    pub async fn drain(&self, consumers: usize, max_batch: usize, faults: bool) {
        futures::future::join_all((0..consumers).map(|_| self.consumer(max_batch, faults))).await;
    }

    /// One `expire-orders` invocation on timeout messages for `ids`, retried until none
    /// fails; returns when done.
    pub async fn expire(&self, ids: &[OrderId]) {
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
    pub async fn expire_early(&self) {
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
    pub async fn drain_timeouts(&self) {
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
    pub async fn buy(&self, b: &Buyer) -> Option<OrderId> {
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
        let expected = id_for(&b.user, &b.key);
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

    pub async fn buyer(&self, b: &Buyer) {
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
    pub async fn replay(&self, b: &Buyer, id: &OrderId) {
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

    pub async fn restock(&self, units: u32) {
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
    pub fn poison(&self) -> String {
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
                let id = id_for("ghost-buyer", "ghost-key");
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
    pub async fn poison_batch(&self) {
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

/// Every `200` an action got is consistent with where the order ended; with an exact ledger,
/// the transition it reports happened.
pub fn check_answers(
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
