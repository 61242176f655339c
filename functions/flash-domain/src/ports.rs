//! The narrow interfaces the functions need from storage and the queue. The AWS adapters
//! implement them over DynamoDB and SQS; tests implement them in memory.

use crate::clock::Millis;
use crate::ids::{OrderId, Sku, UserId};
use crate::order::{Order, OrderMessage, Reason, ShardTake, Transition};
use crate::product::Product;
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

pub enum Advance {
    Done(Order),
    /// The order changed since it was read (or is not the caller's): read it again.
    Stale,
}

pub trait Store: Send + Sync {
    fn get_product(&self, sku: &Sku) -> impl Future<Output = PortResult<Option<Product>>> + Send;
    /// Creates the product with its first stock; `false` when it exists already.
    fn create_product(
        &self,
        product: &Product,
        stock: &[(u32, u64)],
    ) -> impl Future<Output = PortResult<bool>> + Send;
    /// Updates the product's settings and adds stock to its shards; `false` when it does not
    /// exist.
    fn add_stock(
        &self,
        product: &Product,
        added: u64,
        stock: &[(u32, u64)],
    ) -> impl Future<Output = PortResult<bool>> + Send;
    /// Flags the product sold out, on condition that no stock came back since `product` was
    /// read (its `restocks` count has not moved); `false` if some did. The caller must have
    /// seen every shard empty in a read made after reading `product`.
    fn mark_sold_out(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send;
    /// Raises the product's `restocks` count and clears its sold-out flag: the write that
    /// follows every stock return ([`Store::advance`] makes it). Whoever finds an order
    /// already canceled makes it again, since the process that canceled it may have stopped
    /// between the two writes; repeating it is harmless.
    fn clear_sold_out(&self, sku: &Sku) -> impl Future<Output = PortResult<()>> + Send;
    /// What each of `product`'s shards holds, read consistently, in shard order.
    fn read_shards(
        &self,
        product: &Product,
    ) -> impl Future<Output = PortResult<Vec<ShardStock>>> + Send;
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

    /// Takes one token from `caller`'s rate-limit bucket (shared by every instance of every
    /// write route) at `now`; `Err(wait)` when it is empty and the next token comes after
    /// `wait`. At most one small write; always `Ok(())` when the store has no limit set.
    fn take_token(
        &self,
        caller: &UserId,
        now: Millis,
    ) -> impl Future<Output = PortResult<Result<(), Duration>>> + Send;
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
    /// for at most 15 minutes).
    fn send_later(
        &self,
        msg: &OrderMessage,
        delay: Duration,
    ) -> impl Future<Output = PortResult<()>> + Send;
}
