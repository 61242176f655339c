//! Every port: the narrow interfaces the functions need from storage ([`Store`]), the
//! per-caller rate limit ([`RateLimit`]), the orders queue ([`Queue`]), the payment-timeouts
//! queue ([`PaymentTimeouts`]), a consumer's hand-back of failed records ([`Redelivery`]) and
//! the reconciler's reads ([`Ledger`]).
//! The AWS adapters implement them over DynamoDB and SQS; tests implement them in memory.

use crate::clock::Millis;
use crate::expiry::PaymentDue;
use crate::ids::{OrderId, Sku, UserId};
use crate::invariant_check::{Audit, Deadlines};
use crate::order::{Order, OrderMessage, Reason, ShardTake, Transition};
use crate::product::{Product, ProductPut};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A dependency failed. Business outcomes (sold out, already processed, wrong status) are never
/// errors: they come back as values.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{what} failed")]
    Unavailable {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// The dependency is overloaded or out of reach: throttled, timed out, a 5xx, no
    /// connection. The failures a circuit breaker counts; retrying at once would add load.
    #[error("{what} failed: dependency degraded")]
    Degraded {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// Retries ran out against concurrent writers; the work is safe to redo later.
    #[error("gave up after repeated write conflicts")]
    Contention,
}

impl PortError {
    pub fn unavailable(what: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            what,
            source: source.into(),
        }
    }

    pub fn degraded(what: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Degraded {
            what,
            source: source.into(),
        }
    }

    /// Whether this failure says the dependency is struggling (see [`PortError::Degraded`]).
    pub fn is_degraded(&self) -> bool {
        matches!(self, Self::Degraded { .. })
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// The units one stock shard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardStock {
    pub shard: u32,
    pub available: u64,
}

pub enum CreateOrder {
    Created,
    /// An order with that id exists already (a replay, or a reused key).
    Exists(Order),
    /// Not written: the buyer's queued and held orders of this product already come so close
    /// to its per-user limit that this one would pass it.
    LimitReached {
        admitted: u32,
    },
}

/// One group commit: the stock it takes, the orders it accepts, and the purchase counters it
/// raises, written in one transaction.
#[derive(Debug, Clone)]
pub struct Commit {
    pub takes: Vec<ShardTake>,
    pub accepted: Vec<Accepted>,
    /// (buyer, units added in this commit); each counter may not pass `limit`.
    pub counters: Vec<(UserId, u32)>,
    pub limit: Option<u32>,
    pub now: Millis,
}

#[derive(Debug, Clone)]
pub struct Accepted {
    pub order_id: OrderId,
    pub takes: Vec<ShardTake>,
    pub expires_at: Millis,
}

/// Why a commit did not happen, from the values DynamoDB returned with the failed conditions.
#[derive(Debug, Clone, Default)]
pub struct CommitRefused {
    /// Shards whose condition failed, with what they hold now.
    pub shards: Vec<ShardStock>,
    /// Buyers whose counter would have passed the limit, with what they bought so far.
    pub counters: Vec<(UserId, u32)>,
    /// Orders that were no longer `queued`: a duplicate delivery already decided them.
    pub decided: Vec<OrderId>,
    /// Another transaction touched the same items at the same time.
    pub conflict: bool,
}

/// What an admin's `Idempotency-Key` leaves beside the product write it came with, written in
/// the same transaction: a retry finds it and adds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The caller and the key ([`crate::ids::key_digest`]).
    pub id: String,
    /// The request's [`ProductPut::fingerprint`].
    pub fingerprint: String,
    /// Whether the request created the product (it answered `201`; a restock `200`).
    pub created: bool,
}

/// How a product write went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductWrite {
    Written,
    /// Nothing written: the product was created meanwhile (a create), or is missing or had its
    /// sale window changed since it was read (a restock). Read it again.
    Raced,
    /// Nothing written: the key came with an earlier write, recorded so.
    KeyUsed(KeyRecord),
}

pub enum Advance {
    Done(Order),
    /// The order changed since it was read (or is not the caller's): read it again.
    Stale,
}

pub trait Store: Send + Sync {
    fn get_product(&self, sku: &Sku) -> impl Future<Output = PortResult<Option<Product>>> + Send;
    /// Several products, read consistently; unknown ones are left out. A batch of orders
    /// spanning many products reads them all at once (DynamoDB: one `BatchGetItem` per 100).
    /// The default reads them one by one.
    fn get_products(
        &self,
        skus: &[Sku],
    ) -> impl Future<Output = PortResult<HashMap<Sku, Product>>> + Send {
        async move {
            let mut out = HashMap::new();
            for sku in skus {
                if let Some(p) = self.get_product(sku).await? {
                    out.insert(sku.clone(), p);
                }
            }
            Ok(out)
        }
    }
    /// Creates the product with its first stock (`stock`: units per shard), and `key`'s
    /// record in the same write; `Raced` when the product exists already.
    fn create_product(
        &self,
        product: &Product,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> impl Future<Output = PortResult<ProductWrite>> + Send;
    /// Adds `put.stock` units (`stock`: units per shard) to the product, sets its name,
    /// changes the settings `put` names and keeps the others, and writes `key`'s record, all
    /// in one write. `Raced` when the product is missing, or when a sale window bound `put`
    /// keeps no longer fits the one it sets (it changed since the caller checked them).
    fn add_stock(
        &self,
        put: &ProductPut,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> impl Future<Output = PortResult<ProductWrite>> + Send;
    /// Flags the product sold out, on condition that no stock came back since `product` was
    /// read (its `restocks` count has not moved); `false` if some did. The caller must have
    /// seen every shard empty in a read made after reading `product`.
    fn mark_sold_out(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send;
    /// Raises the product's `restocks` count and clears its sold-out flag: the write that
    /// follows every stock return ([`Store::advance`] makes it). Whoever finds an order
    /// already canceled makes it again, since the process that canceled it may have stopped
    /// between the two writes; repeating it is harmless.
    fn clear_sold_out(&self, sku: &Sku) -> impl Future<Output = PortResult<()>> + Send;
    /// Sets the product's low-stock hint ([`Product::low_stock`]); a missing product is left
    /// missing.
    fn mark_low_stock(&self, sku: &Sku) -> impl Future<Output = PortResult<()>> + Send;
    /// What each of `product`'s shards holds, read consistently, in shard order.
    fn read_shards(
        &self,
        product: &Product,
    ) -> impl Future<Output = PortResult<Vec<ShardStock>>> + Send;
    /// [`Store::read_shards`] of several products at once (DynamoDB: one `BatchGetItem` per
    /// 100 shards), by SKU. The default reads them product by product.
    fn read_shards_of(
        &self,
        products: &[&Product],
    ) -> impl Future<Output = PortResult<HashMap<Sku, Vec<ShardStock>>>> + Send {
        async move {
            let mut out = HashMap::new();
            for p in products {
                out.insert(p.sku.clone(), self.read_shards(p).await?);
            }
            Ok(out)
        }
    }
    /// Units each buyer has bought of `sku`, read consistently; absent means none.
    fn read_bought(
        &self,
        sku: &Sku,
        users: &[UserId],
    ) -> impl Future<Output = PortResult<HashMap<UserId, u32>>> + Send;

    /// Writes a new `queued` order unless one with its id exists (the idempotency key).
    fn create_order(&self, order: &Order) -> impl Future<Output = PortResult<CreateOrder>> + Send;
    /// [`Store::create_order`] for a product with a per-user limit: in the same write, raises
    /// the buyer's admission counter for the product (units in their queued and held orders)
    /// on condition that it stays within `limit`. A replay answers `Exists` whatever the
    /// counter says. Rejecting, cancelling or refunding an order so admitted lowers the
    /// counter in the write that changes its status, so the buyer may order again.
    fn create_limited_order(
        &self,
        order: &Order,
        limit: u32,
    ) -> impl Future<Output = PortResult<CreateOrder>> + Send;
    fn get_order(&self, id: &OrderId) -> impl Future<Output = PortResult<Option<Order>>> + Send;
    /// Several orders, read consistently; missing ones are left out.
    fn get_orders(&self, ids: &[OrderId]) -> impl Future<Output = PortResult<Vec<Order>>> + Send;

    fn commit(
        &self,
        sku: &Sku,
        commit: &Commit,
    ) -> impl Future<Output = PortResult<Result<(), CommitRefused>>> + Send;
    /// `queued` → `rejected`; `false` when the order was no longer queued.
    fn reject(
        &self,
        id: &OrderId,
        reason: Reason,
        now: Millis,
    ) -> impl Future<Output = PortResult<bool>> + Send;
    /// Applies `t` to `order` (as read) with a condition on its status and, unless
    /// `owner` is `None`, its owner. Stock comes back in the same write when `t` says so, and
    /// then the product's sold-out flag is cleared right after ([`Store::clear_sold_out`]);
    /// conflicts with other writers of the same items are retried before giving up.
    fn advance(
        &self,
        order: &Order,
        t: &Transition,
        owner: Option<&UserId>,
        now: Millis,
    ) -> impl Future<Output = PortResult<Advance>> + Send;
}

/// Where a queue consumer hands back the messages it reports failed, so they are delivered
/// again after a delay of its choosing rather than the queue's whole visibility timeout
/// (SQS's `ChangeMessageVisibility`).
pub trait Redelivery: Send + Sync {
    /// Each received message, named by its receipt handle, becomes visible again once its
    /// delay has passed.
    fn redeliver_after(
        &self,
        messages: &[(String, Duration)],
    ) -> impl Future<Output = PortResult<()>> + Send;
}

pub trait Queue: Send + Sync {
    fn send(&self, msg: &OrderMessage) -> impl Future<Output = PortResult<()>> + Send;
    /// Sends `msg` to be delivered no earlier than `delay` from now (SQS holds a message back
    /// for at most [`SQS_MAX_DELAY_SECONDS`](crate::limits::SQS_MAX_DELAY_SECONDS)).
    fn send_later(
        &self,
        msg: &OrderMessage,
        delay: Duration,
    ) -> impl Future<Output = PortResult<()>> + Send;
}

/// The per-caller rate limit on the write routes: a token bucket per caller, shared by every
/// instance of every write route. Its setting is the edge's: each function's constructor
/// chooses it from its environment.
pub trait RateLimit: Send + Sync {
    /// Takes one token from `caller`'s bucket at `now`; `Err(wait)` when it is empty and the
    /// next token comes after `wait`. At most one small write.
    fn take_token(
        &self,
        caller: &UserId,
        now: Millis,
    ) -> impl Future<Output = PortResult<Result<(), Duration>>> + Send;
}

/// No rate limit: every request gets its token, and nothing is reached to give it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl RateLimit for Unlimited {
    async fn take_token(&self, _: &UserId, _: Millis) -> PortResult<Result<(), Duration>> {
        Ok(Ok(()))
    }
}

/// A limit that may be switched off (`None`: [`Unlimited`]), as the settings allow.
impl<R: RateLimit> RateLimit for Option<R> {
    async fn take_token(&self, caller: &UserId, now: Millis) -> PortResult<Result<(), Duration>> {
        match self {
            Some(limit) => limit.take_token(caller, now).await,
            None => Ok(Ok(())),
        }
    }
}

/// Timeouts that were not scheduled, and the first reason why. The caller keeps the work
/// that needed them unfinished (an SQS record reported failed), so it is retried.
#[derive(Debug, thiserror::Error)]
#[error("{} payment timeout(s) not scheduled", orders.len())]
pub struct Unscheduled {
    pub orders: Vec<OrderId>,
    #[source]
    pub cause: PortError,
}

/// Where payment timeouts wait until they are due (the payment-timeouts queue).
pub trait PaymentTimeouts: Send + Sync {
    /// Schedules one timeout message per entry, delivered after
    /// `min(delay_seconds(expires_at, now), SQS_MAX_DELAY_SECONDS)`. Scheduling an order twice is
    /// harmless: the timeout is conditional.
    fn schedule_timeouts(
        &self,
        due: &[PaymentDue],
        now: Millis,
    ) -> impl Future<Output = Result<(), Unscheduled>> + Send;
}

/// The reads the reconciler makes (read-only). The DynamoDB adapter implements them over the
/// table, the tests over the in-memory store; both judge by [`crate::invariant_check`].
pub trait Ledger: Send + Sync {
    /// Every product, and every SKU an order names, judged from one pass over the table in
    /// memory that does not grow with the number of orders ([`crate::invariant_check::Tally`]).
    /// The pass is not a snapshot: while stock moves a product can look wrong in it, and
    /// [`Ledger::audit_settled`] tells.
    fn tally_all(
        &self,
        deadlines: &Deadlines,
    ) -> impl Future<Output = PortResult<Vec<Audit>>> + Send;
    /// One product re-read and judged whole ([`crate::invariant_check::check_at`], buyers named),
    /// or `None` when stock or a disagreeing buyer's counts moved while it was read.
    fn audit_settled(
        &self,
        sku: &Sku,
        deadlines: &Deadlines,
    ) -> impl Future<Output = PortResult<Option<Audit>>> + Send;
}
