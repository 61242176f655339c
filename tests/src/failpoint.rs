//! Failpoints at every step of every function. [`Faulty`] wraps a [`Store`] or a [`Queue`] for
//! one invocation of one function and can make one of its calls fail: *before* it takes effect
//! (nothing written, the caller sees an error) or *after* (written, but the caller sees an
//! error, as when the reply is lost), either as an error the function handles or as a crash
//! (that call and every later one fail, and the driver throws the function's answer away, as
//! when a Lambda dies mid-invocation). It works over the in-memory store and DynamoDB alike.
//!
//! A [`Tracer`], shared by every invocation of a scenario, records what the wrapped calls did
//! (the ledger the invariant checker replays: one deduction, at most one restore and one
//! payment per order), which failpoints fired, and which (function, call) pairs exist, so the
//! suite can prove it put a failpoint at every step. It also interleaves concurrent
//! invocations: before each call it yields a seeded number of times, so on a single-threaded
//! runtime every run of a seed takes the same interleaving, and different seeds take others.

use crate::fixtures::Req;
use crate::response::parts;
use advance_order::AdvanceOrder;
use flash_domain::clock::Millis;
use flash_domain::expiry::PaymentDue;
use flash_domain::order::Transition;
use flash_domain::ports::{
    Advance, Commit, CommitRefused, CreateOrder, KeyRecord, PaymentTimeouts, PortError, PortResult,
    ProductWrite, Queue, RateLimit, ShardStock, Store, Unlimited, Unscheduled,
};
use flash_domain::{Order, OrderId, OrderMessage, Product, ProductPut, Reason, Sku, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Nothing happened; the caller sees an error.
    Before,
    /// The call took effect; the caller sees an error.
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    /// The call fails; the function carries on with its own error handling.
    Error,
    /// The function dies there: this call and every later one fail, its answer is lost.
    Crash,
}

/// Which call of an invocation a failpoint hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// The n-th call (from 0), whatever it is.
    Step(usize),
    /// The first call of any of these operations.
    First(Vec<&'static str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failpoint {
    pub at: At,
    pub phase: Phase,
    pub effect: Effect,
}

/// A failpoint that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fired {
    pub function: &'static str,
    pub op: &'static str,
    pub phase: Phase,
    pub effect: Effect,
}

/// A change a wrapped call reported as made (a failpoint after it does not undo it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Created(OrderId),
    /// Accepted by a group commit: its units left the stock.
    Deducted(OrderId, u32),
    Rejected(OrderId, Reason),
    /// The transition, when it was written, and the payment deadline of the order as read.
    Advanced(OrderId, Transition, Millis, Option<Millis>),
}

impl Entry {
    pub fn order(&self) -> &OrderId {
        match self {
            Self::Created(id)
            | Self::Deducted(id, _)
            | Self::Rejected(id, _)
            | Self::Advanced(id, ..) => id,
        }
    }
}

#[derive(Default)]
struct TracerInner {
    /// Failpoints that may still fire, per function (unlimited when absent).
    budgets: Mutex<HashMap<&'static str, usize>>,
    ledger: Mutex<Vec<Entry>>,
    fired: Mutex<Vec<Fired>>,
    steps: Mutex<BTreeSet<(&'static str, &'static str)>>,
    interleave: Mutex<Option<StdRng>>,
}

/// What one scenario's wrapped calls did. Clones share one record.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Arc<TracerInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking scenario must not hide the record from the report that explains it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tracer {
    /// A tracer that yields before each call as `seed` decides (0 to 3 times).
    pub fn interleaving(seed: u64) -> Self {
        let t = Self::default();
        *lock(&t.inner.interleave) = Some(StdRng::seed_from_u64(seed));
        t
    }

    /// From now on at most `n` failpoints fire in `function` (armed ones beyond that stay
    /// silent), so a scenario can bound how often one message fails or one caller retries.
    pub fn set_budget(&self, function: &'static str, n: usize) {
        lock(&self.inner.budgets).insert(function, n);
    }

    /// Failpoints that may still fire in `function`.
    pub fn budget(&self, function: &'static str) -> usize {
        lock(&self.inner.budgets)
            .get(function)
            .copied()
            .unwrap_or(usize::MAX)
    }

    /// Spends one failpoint of `function`'s budget; `false` when none is left.
    fn spend(&self, function: &'static str) -> bool {
        match lock(&self.inner.budgets).get_mut(function) {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }

    pub fn ledger(&self) -> Vec<Entry> {
        lock(&self.inner.ledger).clone()
    }

    pub fn fired(&self) -> Vec<Fired> {
        lock(&self.inner.fired).clone()
    }

    /// Every (function, operation) pair called so far.
    pub fn steps(&self) -> BTreeSet<(&'static str, &'static str)> {
        lock(&self.inner.steps).clone()
    }

    fn record(&self, e: Entry) {
        lock(&self.inner.ledger).push(e);
    }

    async fn interleave(&self) {
        let yields = lock(&self.inner.interleave)
            .as_mut()
            .map_or(0, |rng| rng.random_range(0..4));
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
    }

    /// A new invocation of `function`, with `point` armed (or none).
    pub fn invocation(&self, function: &'static str, point: Option<Failpoint>) -> Invocation {
        Invocation {
            inner: Arc::new(InvocationInner {
                tracer: self.clone(),
                function,
                point,
                steps: AtomicUsize::new(0),
                crashed: AtomicBool::new(false),
                fired: AtomicBool::new(false),
            }),
        }
    }
}

struct InvocationInner {
    tracer: Tracer,
    function: &'static str,
    point: Option<Failpoint>,
    steps: AtomicUsize,
    crashed: AtomicBool,
    fired: AtomicBool,
}

/// One run of one function. Wrap each port it gets with [`Invocation::wrap`]; afterwards ask
/// whether it crashed.
#[derive(Clone)]
pub struct Invocation {
    inner: Arc<InvocationInner>,
}

impl Invocation {
    pub fn wrap<T>(&self, port: T) -> Faulty<T> {
        Faulty {
            inner: port,
            inv: self.clone(),
        }
    }

    /// `who` asks `advance-order` for `action` on `id`, in this invocation over `store` (with no
    /// rate limit): the answer's status and body.
    pub async fn advance<S: Store>(
        &self,
        store: S,
        who: &str,
        admin: bool,
        id: &OrderId,
        action: &str,
    ) -> (u16, serde_json::Value) {
        let h = AdvanceOrder::new(self.wrap(store)).with_rate_limit(self.wrap(Unlimited));
        let resp = h
            .handle(Req::advance(who, admin, id.as_str(), action).build())
            .await;
        parts(resp)
    }

    /// The function died at a failpoint: its answer never reached anyone.
    pub fn crashed(&self) -> bool {
        self.inner.crashed.load(Ordering::SeqCst)
    }

    pub fn fired(&self) -> bool {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Counts the call and says whether the failpoint hits it.
    fn arm(&self, op: &'static str) -> Option<Failpoint> {
        let i = &self.inner;
        lock(&i.tracer.inner.steps).insert((i.function, op));
        let step = i.steps.fetch_add(1, Ordering::SeqCst);
        let point = i.point.as_ref()?;
        let hit = match &point.at {
            At::Step(k) => *k == step,
            At::First(ops) => ops.contains(&op),
        };
        if !hit || i.fired.swap(true, Ordering::SeqCst) {
            return None;
        }
        i.tracer.spend(i.function).then(|| point.clone())
    }

    fn fire(&self, op: &'static str, point: &Failpoint) -> PortError {
        let i = &self.inner;
        lock(&i.tracer.inner.fired).push(Fired {
            function: i.function,
            op,
            phase: point.phase,
            effect: point.effect,
        });
        if point.effect == Effect::Crash {
            i.crashed.store(true, Ordering::SeqCst);
        }
        let when = match point.phase {
            Phase::Before => "before",
            Phase::After => "after",
        };
        PortError::unavailable(op, format!("injected failpoint {when} {op}"))
    }
}

/// A port of one invocation, with its failpoint.
#[derive(Clone)]
pub struct Faulty<T> {
    inner: T,
    inv: Invocation,
}

impl<T> Faulty<T> {
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Runs `call` as step `op`: fails it before or after, as the failpoint says.
    async fn step<R>(
        &self,
        op: &'static str,
        call: impl Future<Output = PortResult<R>>,
    ) -> PortResult<R> {
        self.inv.inner.tracer.interleave().await;
        if self.inv.crashed() {
            return Err(PortError::unavailable(op, "the function crashed earlier"));
        }
        let point = self.inv.arm(op);
        if let Some(p) = point.as_ref().filter(|p| p.phase == Phase::Before) {
            return Err(self.inv.fire(op, p));
        }
        let result = call.await;
        match point {
            Some(p) => Err(self.inv.fire(op, &p)),
            None => result,
        }
    }

    fn record(&self, e: Entry) {
        self.inv.inner.tracer.record(e);
    }

    /// `put`, a put of `order`, as step `op`; an order it created goes in the ledger.
    async fn create(
        &self,
        op: &'static str,
        order: &Order,
        put: impl Future<Output = PortResult<CreateOrder>>,
    ) -> PortResult<CreateOrder> {
        self.step(op, async {
            let r = put.await;
            if let Ok(CreateOrder::Created) = &r {
                self.record(Entry::Created(order.id.clone()));
            }
            r
        })
        .await
    }
}

impl<S: Store> Store for Faulty<S> {
    async fn get_product(&self, sku: &Sku) -> PortResult<Option<Product>> {
        self.step("get_product", self.inner.get_product(sku)).await
    }

    async fn create_product(
        &self,
        product: &Product,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> PortResult<ProductWrite> {
        self.step(
            "create_product",
            self.inner.create_product(product, stock, key),
        )
        .await
    }

    async fn add_stock(
        &self,
        put: &ProductPut,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> PortResult<ProductWrite> {
        self.step("add_stock", self.inner.add_stock(put, stock, key))
            .await
    }

    async fn mark_sold_out(&self, product: &Product) -> PortResult<bool> {
        self.step("mark_sold_out", self.inner.mark_sold_out(product))
            .await
    }

    async fn clear_sold_out(&self, sku: &Sku) -> PortResult<()> {
        self.step("clear_sold_out", self.inner.clear_sold_out(sku))
            .await
    }

    async fn read_shards(&self, product: &Product) -> PortResult<Vec<ShardStock>> {
        self.step("read_shards", self.inner.read_shards(product))
            .await
    }

    async fn read_bought(&self, sku: &Sku, users: &[UserId]) -> PortResult<HashMap<UserId, u32>> {
        self.step("read_bought", self.inner.read_bought(sku, users))
            .await
    }

    async fn create_order(&self, order: &Order) -> PortResult<CreateOrder> {
        let put = self.inner.create_order(order);
        self.create("create_order", order, put).await
    }

    async fn create_limited_order(&self, order: &Order, limit: u32) -> PortResult<CreateOrder> {
        let put = self.inner.create_limited_order(order, limit);
        self.create("create_limited_order", order, put).await
    }

    async fn get_order(&self, id: &OrderId) -> PortResult<Option<Order>> {
        self.step("get_order", self.inner.get_order(id)).await
    }

    async fn get_orders(&self, ids: &[OrderId]) -> PortResult<Vec<Order>> {
        self.step("get_orders", self.inner.get_orders(ids)).await
    }

    async fn commit(&self, sku: &Sku, c: &Commit) -> PortResult<Result<(), CommitRefused>> {
        self.step("commit", async {
            let r = self.inner.commit(sku, c).await;
            if let Ok(Ok(())) = &r {
                for a in &c.accepted {
                    let units = a.takes.iter().map(|t| t.units).sum();
                    self.record(Entry::Deducted(a.order_id.clone(), units));
                }
            }
            r
        })
        .await
    }

    async fn reject(&self, id: &OrderId, reason: Reason, now: Millis) -> PortResult<bool> {
        self.step("reject", async {
            let r = self.inner.reject(id, reason, now).await;
            if let Ok(true) = &r {
                self.record(Entry::Rejected(id.clone(), reason));
            }
            r
        })
        .await
    }

    async fn advance(
        &self,
        order: &Order,
        t: &Transition,
        owner: Option<&UserId>,
        now: Millis,
    ) -> PortResult<Advance> {
        self.step("advance", async {
            let r = self.inner.advance(order, t, owner, now).await;
            if let Ok(Advance::Done(_)) = &r {
                self.record(Entry::Advanced(order.id.clone(), *t, now, order.expires_at));
            }
            r
        })
        .await
    }
}

impl<R: RateLimit> RateLimit for Faulty<R> {
    async fn take_token(&self, caller: &UserId, now: Millis) -> PortResult<Result<(), Duration>> {
        self.step("take_token", self.inner.take_token(caller, now))
            .await
    }
}

impl<Q: Queue> Queue for Faulty<Q> {
    async fn send(&self, msg: &OrderMessage) -> PortResult<()> {
        self.step("send", self.inner.send(msg)).await
    }

    async fn send_later(&self, msg: &OrderMessage, delay: Duration) -> PortResult<()> {
        self.step("send_later", self.inner.send_later(msg, delay))
            .await
    }
}

impl<T: PaymentTimeouts> PaymentTimeouts for Faulty<T> {
    async fn schedule_timeouts(&self, due: &[PaymentDue], now: Millis) -> Result<(), Unscheduled> {
        let mut unscheduled = None;
        let r = self
            .step("schedule_timeouts", async {
                self.inner.schedule_timeouts(due, now).await.map_err(|e| {
                    let cause = PortError::unavailable("schedule_timeouts", e.cause.to_string());
                    unscheduled = Some(e.orders);
                    cause
                })
            })
            .await;
        r.map_err(|cause| Unscheduled {
            // A failpoint leaves every timeout of the call unscheduled, as far as the caller
            // knows; the port's own failure names the ones it missed.
            orders: unscheduled.unwrap_or_else(|| due.iter().map(|d| d.order_id.clone()).collect()),
            cause,
        })
    }
}
