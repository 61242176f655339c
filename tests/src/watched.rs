//! One decorator for the store and the other ports, [`Watched`]: every call goes through its
//! [`Watch`], which may interleave it with other tasks, fail it or answer in its place, and is
//! told each change the call made. The failpoints of the fault suite
//! ([`crate::failpoint::Invocation`]) and the group commit's race rig are watches over it, so
//! the two share every method of every port.

use flash_domain::clock::Millis;
use flash_domain::expiry::PaymentDue;
use flash_domain::order::Transition;
use flash_domain::ports::{
    Advance, Commit, CommitRefused, CreateOrder, KeyRecord, PaymentTimeouts, PortError, PortResult,
    ProductWrite, Queue, RateLimit, ShardStock, Store, Unscheduled,
};
use flash_domain::{Order, OrderId, OrderMessage, Product, ProductPut, Reason, Sku, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The guarded value, even when a panicking test poisoned the lock: a panicking scenario must
/// not hide its record from the report that explains it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Yields before each call as a seed decides (0 to 3 times), so on a single-threaded runtime
/// every run of a seed takes the same interleaving of concurrent tasks, and different seeds
/// take others. Unseeded, it never yields.
#[derive(Default)]
pub struct Interleave(Mutex<Option<StdRng>>);

impl Interleave {
    pub fn seeded(seed: u64) -> Self {
        Self(Mutex::new(Some(StdRng::seed_from_u64(seed))))
    }

    pub async fn step(&self) {
        let yields = lock(&self.0)
            .as_mut()
            .map_or(0, |rng| rng.random_range(0..4));
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
    }
}

/// A change a wrapped store call made, as its watch is told of it.
pub enum Saw<'a> {
    /// The shards of a product were read.
    Shards(&'a Product),
    Created(&'a Order),
    /// A group commit reached the store, with its answer: landed, refused, or failed.
    Committed(&'a Commit, &'a PortResult<Result<(), CommitRefused>>),
    /// A queued order was rejected.
    Rejected(&'a OrderId, Reason),
    /// `order`, as read, took the transition at `now`.
    Advanced(&'a Order, &'a Transition, Millis),
}

/// What a [`Watched`] port does around each call.
pub trait Watch: Send + Sync {
    /// Runs `call` as the step `op`.
    fn step<R: Send>(
        &self,
        op: &'static str,
        call: impl Future<Output = PortResult<R>> + Send,
    ) -> impl Future<Output = PortResult<R>> + Send;

    /// Runs the group commit `call`; by default a step like any other.
    fn commit(
        &self,
        call: impl Future<Output = PortResult<Result<(), CommitRefused>>> + Send,
    ) -> impl Future<Output = PortResult<Result<(), CommitRefused>>> + Send {
        self.step("commit", call)
    }

    /// A change the call made. Told from inside the step, as the change is made: a failure the
    /// step puts after the call does not undo it.
    fn saw(&self, what: Saw<'_>);
}

/// A port whose every call goes through `watch`.
#[derive(Clone)]
pub struct Watched<T, W> {
    inner: T,
    watch: W,
}

impl<T, W> Watched<T, W> {
    pub fn new(inner: T, watch: W) -> Self {
        Self { inner, watch }
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }

    pub fn watch(&self) -> &W {
        &self.watch
    }
}

impl<T, W: Watch> Watched<T, W> {
    /// The answer `r` to a put of `order`: the watch sees the order if it was created.
    fn put(&self, order: &Order, r: PortResult<CreateOrder>) -> PortResult<CreateOrder> {
        if let Ok(CreateOrder::Created) = &r {
            self.watch.saw(Saw::Created(order));
        }
        r
    }
}

impl<S: Store, W: Watch> Store for Watched<S, W> {
    async fn get_product(&self, sku: &Sku) -> PortResult<Option<Product>> {
        let call = self.inner.get_product(sku);
        self.watch.step("get_product", call).await
    }

    async fn create_product(
        &self,
        product: &Product,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> PortResult<ProductWrite> {
        let call = self.inner.create_product(product, stock, key);
        self.watch.step("create_product", call).await
    }

    async fn add_stock(
        &self,
        put: &ProductPut,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> PortResult<ProductWrite> {
        let call = self.inner.add_stock(put, stock, key);
        self.watch.step("add_stock", call).await
    }

    async fn mark_sold_out(&self, product: &Product) -> PortResult<bool> {
        let call = self.inner.mark_sold_out(product);
        self.watch.step("mark_sold_out", call).await
    }

    async fn clear_sold_out(&self, sku: &Sku) -> PortResult<()> {
        let call = self.inner.clear_sold_out(sku);
        self.watch.step("clear_sold_out", call).await
    }

    async fn mark_low_stock(&self, sku: &Sku) -> PortResult<()> {
        let call = self.inner.mark_low_stock(sku);
        self.watch.step("mark_low_stock", call).await
    }

    async fn read_shards(&self, product: &Product) -> PortResult<Vec<ShardStock>> {
        self.watch
            .step("read_shards", async {
                let r = self.inner.read_shards(product).await;
                if r.is_ok() {
                    self.watch.saw(Saw::Shards(product));
                }
                r
            })
            .await
    }

    async fn read_bought(&self, sku: &Sku, users: &[UserId]) -> PortResult<HashMap<UserId, u32>> {
        let call = self.inner.read_bought(sku, users);
        self.watch.step("read_bought", call).await
    }

    async fn create_order(&self, order: &Order) -> PortResult<CreateOrder> {
        self.watch
            .step("create_order", async {
                self.put(order, self.inner.create_order(order).await)
            })
            .await
    }

    async fn create_limited_order(&self, order: &Order, limit: u32) -> PortResult<CreateOrder> {
        self.watch
            .step("create_limited_order", async {
                self.put(order, self.inner.create_limited_order(order, limit).await)
            })
            .await
    }

    async fn get_order(&self, id: &OrderId) -> PortResult<Option<Order>> {
        let call = self.inner.get_order(id);
        self.watch.step("get_order", call).await
    }

    async fn get_orders(&self, ids: &[OrderId]) -> PortResult<Vec<Order>> {
        let call = self.inner.get_orders(ids);
        self.watch.step("get_orders", call).await
    }

    async fn commit(&self, sku: &Sku, c: &Commit) -> PortResult<Result<(), CommitRefused>> {
        self.watch
            .commit(async {
                let r = self.inner.commit(sku, c).await;
                self.watch.saw(Saw::Committed(c, &r));
                r
            })
            .await
    }

    async fn reject(&self, id: &OrderId, reason: Reason, now: Millis) -> PortResult<bool> {
        self.watch
            .step("reject", async {
                let r = self.inner.reject(id, reason, now).await;
                if let Ok(true) = &r {
                    self.watch.saw(Saw::Rejected(id, reason));
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
        self.watch
            .step("advance", async {
                let r = self.inner.advance(order, t, owner, now).await;
                if let Ok(Advance::Done(_)) = &r {
                    self.watch.saw(Saw::Advanced(order, t, now));
                }
                r
            })
            .await
    }
}

impl<R: RateLimit, W: Watch> RateLimit for Watched<R, W> {
    async fn take_token(&self, caller: &UserId, now: Millis) -> PortResult<Result<(), Duration>> {
        let call = self.inner.take_token(caller, now);
        self.watch.step("take_token", call).await
    }
}

impl<Q: Queue, W: Watch> Queue for Watched<Q, W> {
    async fn send(&self, msg: &OrderMessage) -> PortResult<()> {
        self.watch.step("send", self.inner.send(msg)).await
    }

    async fn send_later(&self, msg: &OrderMessage, delay: Duration) -> PortResult<()> {
        let call = self.inner.send_later(msg, delay);
        self.watch.step("send_later", call).await
    }
}

impl<T: PaymentTimeouts, W: Watch> PaymentTimeouts for Watched<T, W> {
    async fn schedule_timeouts(&self, due: &[PaymentDue], now: Millis) -> Result<(), Unscheduled> {
        let mut unscheduled = None;
        let r = self
            .watch
            .step("schedule_timeouts", async {
                self.inner.schedule_timeouts(due, now).await.map_err(|e| {
                    let cause = PortError::unavailable("schedule_timeouts", e.cause.to_string());
                    unscheduled = Some(e.orders);
                    cause
                })
            })
            .await;
        r.map_err(|cause| Unscheduled {
            // A step that fails leaves every timeout of the call unscheduled, as far as the
            // caller knows; the port's own failure names the ones it missed.
            orders: unscheduled.unwrap_or_else(|| due.iter().map(|d| d.order_id.clone()).collect()),
            cause,
        })
    }
}
