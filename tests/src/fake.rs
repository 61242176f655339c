//! In-memory fakes of the store and the queue for handler tests. `FakeStore` keeps the
//! semantics of `flash_aws::dynamo::DynamoStore` item for item: every write checks all its
//! conditions first and then applies everything or nothing, and a failed condition answers with
//! the same values the adapter decodes from DynamoDB. Both fakes can be told to fail, so tests
//! can check what a handler leaves behind when a dependency is down.

use crate::fixtures::sqs_event;
use aws_lambda_events::event::sqs::SqsEvent;
use flash_aws::dynamo::keys;
use flash_domain::clock::Millis;
use flash_domain::invariant_check::Admissions;
use flash_domain::limits::TRANSACT_WRITE_MAX_ITEMS;
use flash_domain::order::Transition;
use flash_domain::ports::{
    Advance, Commit, CommitRefused, CreateOrder, KeyRecord, PortError, PortResult, ProductWrite,
    Queue, RateLimit, Redelivery, ShardStock, Store,
};
use flash_domain::product::{Change, DEFAULT_PAYMENT_WINDOW_SECONDS};
use flash_domain::token_bucket::{micros, TokenBucket};
use flash_domain::{
    Order, OrderId, OrderMessage, OrderStatus, Product, ProductPut, Reason, Sku, UserId,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Everything the table holds, one map per item kind of the single-table layout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub products: BTreeMap<Sku, Product>,
    /// `available` of each stock shard item.
    pub shards: BTreeMap<(Sku, u32), u64>,
    /// `units` of each buyer counter item. Signed, as DynamoDB's `ADD` allows, so a bug that
    /// gives back more than was counted shows up instead of being clamped away.
    pub bought: BTreeMap<(Sku, UserId), i64>,
    pub orders: BTreeMap<OrderId, Order>,
    /// `admitted` of each admission count item (signed, like `bought`).
    pub admitted: BTreeMap<(Sku, UserId), i64>,
    /// Orders whose item carries the `admitted` flag.
    pub admitted_orders: BTreeSet<OrderId>,
    /// `tat` of each caller's rate-limit bucket item.
    pub rate: BTreeMap<UserId, i64>,
    /// The record of each admin `Idempotency-Key` that came with a product write.
    pub restock_keys: BTreeMap<String, KeyRecord>,
}

impl State {
    /// The state with every product's sold-out flag and `restocks` count left out: a
    /// payment timeout that finds its order already canceled clears the flag again and raises
    /// the count (`Store::clear_sold_out`), however early it comes, and changes nothing else.
    pub fn without_sold_out_flags(mut self) -> State {
        for p in self.products.values_mut() {
            p.sold_out = false;
            p.restocks = 0;
        }
        self
    }

    /// The admission counts of `sku` and the orders counted in them, in the audit's terms.
    pub fn admissions(&self, sku: &Sku) -> Admissions {
        Admissions {
            counts: per_user(&self.admitted, sku),
            orders: self
                .admitted_orders
                .iter()
                .filter(|id| self.orders.get(*id).is_some_and(|o| o.sku == *sku))
                .cloned()
                .collect(),
        }
    }
}

/// The items of `sku` in `counts` (buyer counters, or admission counts), by user id, as the
/// audit takes them.
pub fn per_user(counts: &BTreeMap<(Sku, UserId), i64>, sku: &Sku) -> HashMap<String, i64> {
    counts
        .iter()
        .filter(|((s, _), _)| s == sku)
        .map(|((_, u), n)| (u.to_string(), *n))
        .collect()
}

/// Fails the next `n` calls (of one operation, or of any); the `degraded` ones as a throttled
/// or timed-out dependency would, the others as one that refused the request.
#[derive(Default)]
pub struct Faults {
    any: AtomicUsize,
    by_op: Mutex<HashMap<&'static str, usize>>,
    degraded: AtomicUsize,
    degraded_by_op: Mutex<HashMap<&'static str, usize>>,
}

/// Takes one from `op`'s count in `map`, if it has any left.
fn take_one(map: &Mutex<HashMap<&'static str, usize>>, op: &'static str) -> bool {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    match map.get_mut(op) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

impl Faults {
    fn check(&self, op: &'static str) -> PortResult<()> {
        if self
            .degraded
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
            || take_one(&self.degraded_by_op, op)
        {
            return Err(PortError::degraded(op, "injected throttling"));
        }
        let by_op = take_one(&self.by_op, op);
        let hit = by_op
            || self
                .any
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if hit {
            Err(PortError::unavailable(op, "injected fault"))
        } else {
            Ok(())
        }
    }
}

/// The faults a fake can be told to inject, the same for the store and the queue.
pub trait InjectFaults {
    fn faults(&self) -> &Faults;

    /// The next `n` calls, whatever they are, fail as an unavailable dependency.
    fn fail(&self, n: usize) {
        self.faults().any.store(n, Ordering::SeqCst);
    }

    /// The next `n` calls fail as DynamoDB or SQS throttling or timing out would
    /// ([`PortError::Degraded`], what a circuit breaker counts).
    fn throttle(&self, n: usize) {
        self.faults().degraded.store(n, Ordering::SeqCst);
    }

    /// The next `n` calls of one operation (`"create_order"`, `"commit"`, ... as named by the
    /// [`Store`] method; `"send"` or `"send_later"` on the queue) fail; other operations still
    /// work.
    fn fail_on(&self, op: &'static str, n: usize) {
        lock(&self.faults().by_op).insert(op, n);
    }

    /// The next `n` calls of one operation fail as throttling would; other operations still
    /// work.
    fn throttle_on(&self, op: &'static str, n: usize) {
        lock(&self.faults().degraded_by_op).insert(op, n);
    }
}

/// The guarded value, even when a panicking test poisoned the lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct StoreInner {
    state: Mutex<State>,
    faults: Faults,
    calls: AtomicUsize,
    rate_limit: Mutex<Option<TokenBucket>>,
}

/// The DynamoDB store in memory. Clones share one table, so every handler in a test can hold
/// its own copy.
#[derive(Clone, Default)]
pub struct FakeStore {
    inner: Arc<StoreInner>,
}

impl InjectFaults for FakeStore {
    fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}

impl FakeStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rate-limits callers with `bucket` from now on (`None`, the default: no limit), when
    /// the store is a handler's rate limit too.
    pub fn set_rate_limit(&self, bucket: Option<TokenBucket>) {
        *self
            .inner
            .rate_limit
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = bucket;
    }

    /// The admission count of (`sku`, `user`); 0 when it was never written.
    pub fn admitted(&self, sku: &Sku, user: &UserId) -> i64 {
        self.state()
            .admitted
            .get(&(sku.clone(), user.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// How many store calls were made, failed ones included.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// The whole table, for "wrote nothing" comparisons.
    pub fn snapshot(&self) -> State {
        self.state().clone()
    }

    pub fn order(&self, id: &OrderId) -> Option<Order> {
        self.state().orders.get(id).cloned()
    }

    pub fn orders(&self) -> Vec<Order> {
        self.state().orders.values().cloned().collect()
    }

    pub fn product(&self, sku: &Sku) -> Option<Product> {
        self.state().products.get(sku).cloned()
    }

    /// Units left over all shards of `sku`.
    pub fn available(&self, sku: &Sku) -> u64 {
        self.state()
            .shards
            .iter()
            .filter(|((s, _), _)| s == sku)
            .map(|(_, a)| *a)
            .sum()
    }

    /// The buyer counter of (`sku`, `user`); 0 when it was never written.
    pub fn bought(&self, sku: &Sku, user: &UserId) -> i64 {
        self.state()
            .bought
            .get(&(sku.clone(), user.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// Writes a product and its shards directly, as an admin's first `PUT` would.
    pub fn seed_product(&self, product: Product, stock: u64) {
        let mut st = self.state();
        for shard in 0..product.shards {
            st.shards.insert((product.sku.clone(), shard), 0);
        }
        for (shard, units) in product.split(stock) {
            st.shards.insert((product.sku.clone(), shard), units);
        }
        st.products.insert(product.sku.clone(), product);
    }

    /// Writes (or overwrites) an order directly.
    pub fn seed_order(&self, order: Order) {
        self.state().orders.insert(order.id.clone(), order);
    }

    /// Overwrites the admission count of (`sku`, `user`), as a write no order explains would.
    pub fn set_admitted(&self, sku: &Sku, user: &UserId, admitted: i64) {
        self.state()
            .admitted
            .insert((sku.clone(), user.clone()), admitted);
    }

    /// Changes a stored product in place (e.g. to close its sale window).
    pub fn edit_product(&self, sku: &Sku, edit: impl FnOnce(&mut Product)) {
        if let Some(p) = self.state().products.get_mut(sku) {
            edit(p);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide the state from the others.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call goes through here: count it, then maybe fail it.
    fn enter(&self, op: &'static str) -> PortResult<MutexGuard<'_, State>> {
        self.inner.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.faults.check(op)?;
        Ok(self.state())
    }
}

/// DynamoDB refuses a transaction that is empty, too large, or names one item twice; the
/// adapter reports that as an SDK error, i.e. unavailable.
fn check_transaction(op: &'static str, keys: &[String]) -> PortResult<()> {
    let unique: HashSet<&String> = keys.iter().collect();
    if keys.is_empty() || keys.len() > TRANSACT_WRITE_MAX_ITEMS || unique.len() != keys.len() {
        return Err(PortError::unavailable(
            op,
            format!(
                "ValidationException: invalid transaction of {} items",
                keys.len()
            ),
        ));
    }
    Ok(())
}

impl Store for FakeStore {
    async fn get_product(&self, sku: &Sku) -> PortResult<Option<Product>> {
        let st = self.enter("get_product")?;
        Ok(st.products.get(sku).cloned())
    }

    async fn create_product(
        &self,
        product: &Product,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> PortResult<ProductWrite> {
        let mut st = self.enter("create_product")?;
        let sku = &product.sku;
        // The key's record first, then one put per shard, each `attribute_not_exists(pk)`,
        // like the product item itself.
        if let Some(earlier) = key.and_then(|k| st.restock_keys.get(&k.id)) {
            return Ok(ProductWrite::KeyUsed(earlier.clone()));
        }
        if st.products.contains_key(sku)
            || (0..product.shards).any(|i| st.shards.contains_key(&(sku.clone(), i)))
        {
            return Ok(ProductWrite::Raced);
        }
        for shard in 0..product.shards {
            let units = stock
                .iter()
                .find(|(s, _)| *s == shard)
                .map_or(0, |(_, u)| *u);
            st.shards.insert((sku.clone(), shard), units);
        }
        st.products.insert(sku.clone(), product.clone());
        if let Some(key) = key {
            st.restock_keys.insert(key.id.clone(), key.clone());
        }
        Ok(ProductWrite::Written)
    }

    async fn add_stock(
        &self,
        put: &ProductPut,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> PortResult<ProductWrite> {
        let mut st = self.enter("add_stock")?;
        let keys: Vec<String> = key
            .map(|_| keys::RESTOCK_SK.to_owned())
            .into_iter()
            .chain(std::iter::once(keys::META.to_owned()))
            .chain(stock.iter().map(|(s, _)| keys::shard_sk(*s)))
            .collect();
        check_transaction("add_stock", &keys)?;
        if let Some(earlier) = key.and_then(|k| st.restock_keys.get(&k.id)) {
            return Ok(ProductWrite::KeyUsed(earlier.clone()));
        }
        let sku = &put.sku;
        let Some(meta) = st.products.get_mut(sku) else {
            return Ok(ProductWrite::Raced);
        };
        // The adapter's conditions: a window bound the request keeps still fits the one it
        // sets.
        let s = put.settings;
        let fits = match (s.sale_starts_at, s.sale_ends_at) {
            (Change::Set(start), Change::Keep) => meta.sale_ends_at.is_none_or(|e| e > start),
            (Change::Keep, Change::Set(end)) => meta.sale_starts_at.is_none_or(|b| b < end),
            _ => true,
        };
        if !fits {
            return Ok(ProductWrite::Raced);
        }
        // It sets the name and the settings named, adds to stock_added; the shard count
        // never changes.
        meta.name.clone_from(&put.name);
        meta.per_user_limit = s.per_user_limit.apply(meta.per_user_limit);
        meta.sale_starts_at = s.sale_starts_at.apply(meta.sale_starts_at);
        meta.sale_ends_at = s.sale_ends_at.apply(meta.sale_ends_at);
        meta.payment_window_seconds = s
            .payment_window_seconds
            .apply(Some(meta.payment_window_seconds))
            .unwrap_or(DEFAULT_PAYMENT_WINDOW_SECONDS);
        meta.stock_added += put.stock;
        meta.sold_out = false;
        meta.low_stock = false;
        meta.restocks += 1;
        for &(shard, units) in stock {
            *st.shards.entry((sku.clone(), shard)).or_default() += units;
        }
        if let Some(key) = key {
            st.restock_keys.insert(key.id.clone(), key.clone());
        }
        Ok(ProductWrite::Written)
    }

    async fn mark_sold_out(&self, product: &Product) -> PortResult<bool> {
        let mut st = self.enter("mark_sold_out")?;
        // The adapter's condition: no stock came back since `product` was read.
        match st.products.get_mut(&product.sku) {
            Some(meta) if meta.restocks == product.restocks => {
                meta.sold_out = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn clear_sold_out(&self, sku: &Sku) -> PortResult<()> {
        let mut st = self.enter("clear_sold_out")?;
        // `attribute_exists(pk)`: no product item is created.
        if let Some(meta) = st.products.get_mut(sku) {
            meta.sold_out = false;
            meta.restocks += 1;
        }
        Ok(())
    }

    async fn mark_low_stock(&self, sku: &Sku) -> PortResult<()> {
        let mut st = self.enter("mark_low_stock")?;
        if let Some(meta) = st.products.get_mut(sku) {
            meta.low_stock = true;
        }
        Ok(())
    }

    async fn read_shards(&self, product: &Product) -> PortResult<Vec<ShardStock>> {
        let st = self.enter("read_shards")?;
        // One BatchGetItem of the product's shard keys.
        Ok(st
            .shards
            .iter()
            .filter(|((s, shard), _)| *s == product.sku && *shard < product.shards)
            .map(|((_, shard), available)| ShardStock {
                shard: *shard,
                available: *available,
            })
            .collect())
    }

    async fn read_bought(&self, sku: &Sku, users: &[UserId]) -> PortResult<HashMap<UserId, u32>> {
        let st = self.enter("read_bought")?;
        Ok(users
            .iter()
            .filter_map(|u| {
                let units = st.bought.get(&(sku.clone(), u.clone()))?;
                // The adapter reads the counter as u32 and takes anything else as 0.
                Some((u.clone(), u32::try_from(*units).unwrap_or(0)))
            })
            .collect())
    }

    async fn create_order(&self, order: &Order) -> PortResult<CreateOrder> {
        let mut st = self.enter("create_order")?;
        if let Some(old) = st.orders.get(&order.id) {
            return Ok(CreateOrder::Exists(old.clone()));
        }
        st.orders.insert(order.id.clone(), order.clone());
        Ok(CreateOrder::Created)
    }

    async fn create_limited_order(&self, order: &Order, limit: u32) -> PortResult<CreateOrder> {
        let mut st = self.enter("create_limited_order")?;
        let q = order.quantity.get();
        let Some(max) = limit.checked_sub(q) else {
            return Ok(CreateOrder::LimitReached { admitted: 0 });
        };
        // One transaction: the put's condition first (a replay answers the order), then the
        // counter's `attribute_not_exists(admitted) OR admitted <= :max`.
        if let Some(old) = st.orders.get(&order.id) {
            return Ok(CreateOrder::Exists(old.clone()));
        }
        let counter = (order.sku.clone(), order.owner.clone());
        let admitted = st.admitted.get(&counter).copied();
        if admitted.is_some_and(|a| a > i64::from(max)) {
            return Ok(CreateOrder::LimitReached {
                admitted: admitted.and_then(|a| u32::try_from(a).ok()).unwrap_or(0),
            });
        }
        st.orders.insert(order.id.clone(), order.clone());
        st.admitted_orders.insert(order.id.clone());
        *st.admitted.entry(counter).or_default() += i64::from(q);
        Ok(CreateOrder::Created)
    }

    async fn get_order(&self, id: &OrderId) -> PortResult<Option<Order>> {
        let st = self.enter("get_order")?;
        Ok(st.orders.get(id).cloned())
    }

    async fn get_orders(&self, ids: &[OrderId]) -> PortResult<Vec<Order>> {
        let st = self.enter("get_orders")?;
        let mut unique: Vec<&OrderId> = ids.iter().collect();
        unique.sort();
        unique.dedup();
        Ok(unique
            .into_iter()
            .filter_map(|id| st.orders.get(id).cloned())
            .collect())
    }

    async fn commit(&self, sku: &Sku, c: &Commit) -> PortResult<Result<(), CommitRefused>> {
        let mut st = self.enter("commit")?;
        let limit = c.limit;
        let counters: &[(UserId, u32)] = if limit.is_some() { &c.counters } else { &[] };
        let keys: Vec<String> = c
            .takes
            .iter()
            .map(|t| keys::shard_sk(t.shard))
            .chain(c.accepted.iter().map(|a| keys::order_pk(&a.order_id)))
            .chain(counters.iter().map(|(u, _)| keys::buyer_sk(u)))
            .collect();
        check_transaction("commit", &keys)?;

        let mut refused = CommitRefused::default();
        for t in &c.takes {
            // A missing shard fails `available >= :u` and comes back without an item: 0.
            let available = st.shards.get(&(sku.clone(), t.shard)).copied();
            if available.is_none_or(|a| a < u64::from(t.units)) {
                refused.shards.push(ShardStock {
                    shard: t.shard,
                    available: available.unwrap_or(0),
                });
            }
        }
        for a in &c.accepted {
            let queued = st
                .orders
                .get(&a.order_id)
                .is_some_and(|o| o.status == OrderStatus::Queued);
            if !queued {
                refused.decided.push(a.order_id.clone());
            }
        }
        if let Some(limit) = limit {
            for (user, units) in counters {
                // `attribute_not_exists(units) OR units <= :max`, :max = limit - units (saturating).
                let current = st.bought.get(&(sku.clone(), user.clone())).copied();
                let max = i64::from(limit.saturating_sub(*units));
                if current.is_some_and(|cur| cur > max) {
                    refused.counters.push((
                        user.clone(),
                        current.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
                    ));
                }
            }
        }
        if !refused.shards.is_empty() || !refused.decided.is_empty() || !refused.counters.is_empty()
        {
            return Ok(Err(refused));
        }

        for t in &c.takes {
            if let Some(a) = st.shards.get_mut(&(sku.clone(), t.shard)) {
                *a -= u64::from(t.units);
            }
        }
        for a in &c.accepted {
            if let Some(o) = st.orders.get_mut(&a.order_id) {
                o.status = OrderStatus::Pending;
                o.updated_at = c.now;
                o.expires_at = Some(a.expires_at);
                o.takes.clone_from(&a.takes);
                o.counted = limit.is_some();
            }
        }
        for (user, units) in counters {
            *st.bought.entry((sku.clone(), user.clone())).or_default() += i64::from(*units);
        }
        Ok(Ok(()))
    }

    async fn reject(&self, id: &OrderId, reason: Reason, now: Millis) -> PortResult<bool> {
        let mut st = self.enter("reject")?;
        let admitted = st.admitted_orders.contains(id);
        let Some(o) = st
            .orders
            .get_mut(id)
            .filter(|o| o.status == OrderStatus::Queued)
        else {
            return Ok(false);
        };
        o.status = OrderStatus::Rejected;
        o.reason = Some(reason);
        o.updated_at = now;
        // An order counted at admission gives its units back in the same write.
        let counter = (o.sku.clone(), o.owner.clone());
        let q = i64::from(o.quantity.get());
        if admitted {
            *st.admitted.entry(counter).or_default() -= q;
        }
        Ok(true)
    }

    async fn advance(
        &self,
        order: &Order,
        t: &Transition,
        owner: Option<&UserId>,
        now: Millis,
    ) -> PortResult<Advance> {
        let mut st = self.enter("advance")?;
        let admitted = st.admitted_orders.contains(&order.id);
        if t.restores_stock {
            // The product item is written after the transaction, not in it.
            let mut keys = vec![keys::order_pk(&order.id)];
            keys.extend(order.takes.iter().map(|t| keys::shard_sk(t.shard)));
            if order.counted {
                keys.push(keys::buyer_sk(&order.owner));
            }
            if admitted {
                keys.push(keys::admit_sk(&order.owner));
            }
            check_transaction("advance", &keys)?;
        }
        let Some(stored) = st.orders.get_mut(&order.id) else {
            return Ok(Advance::Stale);
        };
        if stored.status != t.from || owner.is_some_and(|o| *o != stored.owner) {
            return Ok(Advance::Stale);
        }
        // The deadline condition: `expires_at > :now` for pay, `expires_at <= :now` for the
        // payment timeout.
        if t.window().is_some_and(|w| !w.holds(stored.expires_at, now)) {
            return Ok(Advance::Stale);
        }
        // `SET status, updated_at[, reason]` and `REMOVE expires_at` unless the order stays
        // pending: a transition without a reason leaves the stored one as it was.
        stored.status = t.to;
        stored.updated_at = now;
        if let Some(r) = t.reason {
            stored.reason = Some(r);
        }
        if t.to != OrderStatus::Pending {
            stored.expires_at = None;
        }
        if !t.restores_stock {
            // UpdateItem with ALL_NEW: the item as stored now.
            return Ok(Advance::Done(stored.clone()));
        }
        // The transaction's answer is the order as read with the transition applied, and the
        // stock comes back from what the order as read says it took.
        for take in &order.takes {
            *st.shards
                .entry((order.sku.clone(), take.shard))
                .or_default() += u64::from(take.units);
        }
        if let Some(meta) = st.products.get_mut(&order.sku) {
            meta.sold_out = false;
            meta.restocks += 1;
        }
        if order.counted {
            *st.bought
                .entry((order.sku.clone(), order.owner.clone()))
                .or_default() -= i64::from(order.quantity.get());
        }
        if admitted {
            *st.admitted
                .entry((order.sku.clone(), order.owner.clone()))
                .or_default() -= i64::from(order.quantity.get());
        }
        let mut updated = order.clone();
        updated.apply(t, now);
        Ok(Advance::Done(updated))
    }
}

/// The rate-limit buckets are items of the same table, as `DynamoRateLimit` keeps them.
impl RateLimit for FakeStore {
    async fn take_token(&self, caller: &UserId, now: Millis) -> PortResult<Result<(), Duration>> {
        let bucket = *self
            .inner
            .rate_limit
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = bucket else {
            return Ok(Ok(()));
        };
        let mut st = self.enter("take_token")?;
        let stored = st.rate.get(caller).copied();
        Ok(bucket.take(stored, micros(now)).map(|tat| {
            st.rate.insert(caller.clone(), tat);
        }))
    }
}

#[derive(Default)]
struct QueueInner {
    sent: Mutex<Vec<OrderMessage>>,
    /// Sent with a delay, with it: not delivered until a test takes them.
    later: Mutex<Vec<(OrderMessage, Duration)>>,
    faults: Faults,
    calls: AtomicUsize,
}

/// The orders queue in memory: records what was sent. Clones share one queue.
#[derive(Clone, Default)]
pub struct FakeQueue {
    inner: Arc<QueueInner>,
}

impl FakeQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many sends were tried, failed ones included.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Everything sent so far, oldest first.
    pub fn sent(&self) -> Vec<OrderMessage> {
        self.messages().clone()
    }

    /// Removes and returns everything sent so far, as a consumer receiving it would.
    pub fn take(&self) -> Vec<OrderMessage> {
        std::mem::take(&mut *self.messages())
    }

    /// Takes everything sent so far as one SQS event, message ids `m0`, `m1`, ...
    pub fn take_event(&self) -> SqsEvent {
        let messages: Vec<(String, String)> = self
            .take()
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("m{i}"), message_body(m)))
            .collect();
        sqs_event(&messages)
    }

    fn messages(&self) -> MutexGuard<'_, Vec<OrderMessage>> {
        self.inner.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes and returns what was sent with a delay, with the delay, as if it had passed.
    pub fn take_later(&self) -> Vec<(OrderMessage, Duration)> {
        std::mem::take(&mut *self.inner.later.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl InjectFaults for FakeQueue {
    fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}

/// Where a consumer hands its failed records back (SQS's `ChangeMessageVisibility`) in
/// memory: records each call's (receipt handle, delay) pairs.
/// One call: (receipt handle, delay) per message.
type HandBack = Vec<(String, Duration)>;

#[derive(Clone, Default)]
pub struct FakeRedelivery {
    calls: Arc<Mutex<Vec<HandBack>>>,
}

impl FakeRedelivery {
    /// Every message handed back so far, in call order.
    pub fn handed_back(&self) -> Vec<(String, Duration)> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.iter().flatten().cloned().collect()
    }
}

impl Redelivery for FakeRedelivery {
    async fn redeliver_after(&self, messages: &[(String, Duration)]) -> PortResult<()> {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.push(messages.to_vec());
        Ok(())
    }
}

/// The SQS body `place-order` sends for `m`.
pub fn message_body(m: &OrderMessage) -> String {
    serde_json::to_string(m).unwrap_or_default()
}

impl Queue for FakeQueue {
    async fn send(&self, msg: &OrderMessage) -> PortResult<()> {
        self.inner.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.faults.check("send")?;
        self.messages().push(msg.clone());
        Ok(())
    }

    async fn send_later(&self, msg: &OrderMessage, delay: Duration) -> PortResult<()> {
        self.inner.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.faults.check("send_later")?;
        let mut later = self.inner.later.lock().unwrap_or_else(|e| e.into_inner());
        later.push((msg.clone(), delay));
        Ok(())
    }
}
