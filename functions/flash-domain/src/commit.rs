//! Deciding a product's queued orders: plan, write one transaction, and when a condition fails
//! learn from the values DynamoDB returned and plan again. This is "group commit": one write to
//! a stock shard serves every order in the group.
//!
//! The order of the steps is the point of this file. A rejection is final (the buyer is told,
//! and the order can never be accepted later), while an acceptance is only a plan until its
//! commit lands. So the loop is plan → commit → (re-read) → reject:
//!
//! - A plan that accepts orders writes only its commit. The orders it would reject stay queued:
//!   their rejection assumed the accepted ones take their stock, which is true only once the
//!   commit lands, and a refused commit (a condition moved, a conflict, a cancel returning
//!   stock) can make them fit after all.
//! - Rejections are written only from a plan that accepts nothing, made on shards and purchase
//!   counters read in that attempt, after every commit of ours. Each such rejection is then true
//!   of the stock and the counters as they stand, whoever wrote them.
//!
//! A batch with stock to spare commits once and is done; a batch that sells out commits, reads
//! the shards once more and writes its rejections concurrently; a batch of a sold-out product
//! reads and rejects. One transaction per stock write, as before; the extra read is what makes
//! each rejection true.
//!
//! Throttling and conflicts are retried here, with jittered backoff, until the invocation's
//! [`Deadline`]: handing the group back to SQS costs its buyers the queue's visibility timeout.

use crate::backoff::jittered;
use crate::clock::Millis;
use crate::ids::{OrderId, Sku};
use crate::order::{Order, OrderStatus, Reason};
use crate::plan::{plan, Candidate};
use crate::ports::{Accepted, Commit, PortError, PortResult, ShardStock, Store};
use crate::product::Product;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

/// After a transaction conflict the next attempt waits a random time up to this, doubling with
/// each setback up to `CONFLICT_BACKOFF_CAP` ("full jitter"), so the processors that collided
/// on a shard do not collide again at once.
const CONFLICT_BACKOFF: Duration = Duration::from_millis(4);
const CONFLICT_BACKOFF_CAP: Duration = Duration::from_millis(200);
/// After throttling: the SDK has already retried the call itself (3 attempts with its own
/// backoff), so the table or partition is over its budget for longer than that. Start higher
/// and cap at a second, so a 30 s invocation still gets many tries at a budget that refills
/// every second.
const THROTTLE_BACKOFF: Duration = Duration::from_millis(50);
const THROTTLE_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Until when a group may keep trying, and how it tells the time and waits. The deployed
/// function passes its Lambda deadline less a margin, the wall clock and `tokio::time::sleep`;
/// tests pass a clock of their own.
pub struct Deadline<N, P> {
    /// Epoch milliseconds: no attempt starts, and no wait begins that would end, after this.
    pub at: Millis,
    pub now: N,
    pub pause: P,
}

impl<N, P, F> Deadline<N, P>
where
    N: Fn() -> Millis,
    P: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    fn passed(&self) -> bool {
        (self.now)() >= self.at
    }

    /// Waits `d`, or answers `false` at once when the wait would end past the deadline.
    async fn wait(&self, d: Duration) -> bool {
        let ms = Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX);
        if (self.now)().saturating_add(ms) >= self.at {
            return false;
        }
        (self.pause)(d).await;
        true
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupReport {
    pub accepted: Vec<OrderId>,
    pub rejected: Vec<(OrderId, Reason)>,
    /// Orders some earlier delivery already decided.
    pub already_decided: Vec<OrderId>,
    /// Among `already_decided`, orders found `pending` after a commit of ours failed without
    /// an answer: that commit may have accepted them, so their payment timeout must be
    /// scheduled as for `accepted` (a second timeout message is harmless).
    pub found_pending: Vec<Order>,
    /// Transactions written (each writes every shard it takes from once).
    pub transactions: usize,
    pub refused: usize,
    /// Refused because another transaction held a shard at the same moment.
    pub conflicts: usize,
    /// Store calls that failed as throttled or timed out and were tried again.
    pub throttled: usize,
}

/// Decides every queued order in `orders` (all for `product`). On success each order is
/// decided; on error what was decided stays decided, the rest is unchanged (in particular no
/// order is rejected on the strength of a commit that did not land), and the whole group may be
/// retried (a decided order is then a no-op). Throttling and conflicts are retried until
/// `deadline`; past it the last such error is returned ([`PortError::Contention`] for
/// conflicts).
///
/// `shards`, when given, is what the product's shards held when the caller read them (one
/// read for a whole batch's products). They are taken as learned values, like those a refused
/// commit returns: good enough to plan a commit on, whose conditions guard the stock, never to
/// reject an order on, so a group that cannot take anything from them still reads its shards
/// again before it tells any buyer no.
pub async fn decide_group<S, N, P, F>(
    store: &S,
    product: &Product,
    orders: &[Order],
    now: Millis,
    start_shard: usize,
    deadline: &Deadline<N, P>,
    shards: Option<Vec<ShardStock>>,
) -> PortResult<GroupReport>
where
    S: Store,
    N: Fn() -> Millis,
    P: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    let mut g = Group::new(product, orders);
    // An empty view (no shards read) plans nothing; leave it to the group's own read.
    g.view = shards.filter(|v| !v.is_empty());
    let mut setbacks: u32 = 0;
    let mut last: Option<PortError> = None;
    while !g.is_done() {
        if deadline.passed() {
            return Err(last.unwrap_or(PortError::Contention));
        }
        let (base, cap, error) = match g.attempt(store, now, start_shard).await {
            Ok(Next::Again) => continue,
            Ok(Next::Conflict) => (
                CONFLICT_BACKOFF,
                CONFLICT_BACKOFF_CAP,
                PortError::Contention,
            ),
            // Both are the table shedding load (or a batch read it kept handing back): safe
            // to redo, since every write here is conditional on the order still being queued.
            Err(e) if e.is_degraded() || matches!(e, PortError::Contention) => {
                g.report.throttled += 1;
                (THROTTLE_BACKOFF, THROTTLE_BACKOFF_CAP, e)
            }
            Err(e) => return Err(e),
        };
        setbacks = setbacks.saturating_add(1);
        if !deadline.wait(jittered(base, cap, setbacks)).await {
            return Err(error);
        }
        last = Some(error);
    }
    Ok(g.report)
}

/// What one attempt left to do.
enum Next {
    /// Go on at once (with what was learned, or with a fresh read).
    Again,
    /// The commit met another transaction: back off, then read again.
    Conflict,
}

/// A group being decided: what is still undecided and what the attempts so far learned.
struct Group<'a> {
    product: &'a Product,
    /// Still queued as far as we know, first come first served.
    pending: Vec<Candidate>,
    /// Outside the sale window, still to be written.
    closed: Vec<(OrderId, Reason)>,
    /// What we believe the shards hold, learned from the last commit or its refusal; `None`
    /// means read them, the only view a rejection may rest on.
    view: Option<Vec<ShardStock>>,
    flagged: bool,
    /// The product carries its low-stock hint, or this group wrote it.
    hinted: bool,
    /// Orders of a commit that failed without an answer: it may have landed.
    unsure: Vec<OrderId>,
    report: GroupReport,
}

impl<'a> Group<'a> {
    fn new(product: &'a Product, orders: &[Order]) -> Self {
        let mut report = GroupReport::default();
        let mut pending: Vec<Candidate> = Vec::new();
        let mut seen = HashSet::new();
        for o in orders {
            if o.status != OrderStatus::Queued {
                report.already_decided.push(o.id.clone());
            } else if seen.insert(o.id.clone()) {
                pending.push(Candidate {
                    order_id: o.id.clone(),
                    user: o.owner.clone(),
                    quantity: o.quantity,
                    created_at: o.created_at,
                });
            }
        }
        // The window is judged at admission time, so a sale that closes while its last orders
        // wait in the queue still honours them. No commit bears on it, so these rejections
        // need not wait for one.
        let (open, closed): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|c| product.sale_open(c.created_at));
        let closed = closed
            .into_iter()
            .map(|c| (c.order_id, Reason::SaleNotOpen))
            .collect();
        let mut pending = open;
        // First come, first served: storage returns orders in no particular order.
        pending.sort_by(|a, b| (a.created_at, &a.order_id).cmp(&(b.created_at, &b.order_id)));
        Self {
            product,
            pending,
            closed,
            view: None,
            flagged: product.sold_out,
            hinted: product.low_stock,
            unsure: Vec::new(),
            report,
        }
    }

    fn is_done(&self) -> bool {
        self.pending.is_empty() && self.closed.is_empty()
    }

    fn sku(&self) -> &Sku {
        &self.product.sku
    }

    /// One step towards deciding the group. Every error leaves the group as it was or further
    /// on, so the caller may call again.
    async fn attempt<S: Store>(
        &mut self,
        store: &S,
        now: Millis,
        start_shard: usize,
    ) -> PortResult<Next> {
        if !self.closed.is_empty() {
            let closed = std::mem::take(&mut self.closed);
            let (unwritten, failed) = self.reject_all(store, closed, now).await;
            self.closed = unwritten;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if !self.unsure.is_empty() {
            self.settle_unsure(store).await?;
        }
        if self.pending.is_empty() {
            return Ok(Next::Again);
        }
        let fresh = self.view.is_none();
        let shards = match self.view.take() {
            Some(v) => v,
            None => store.read_shards(self.product).await?,
        };
        let bought = match self.product.per_user_limit {
            Some(_) => {
                let mut users: Vec<_> = self.pending.iter().map(|c| c.user.clone()).collect();
                users.sort();
                users.dedup();
                store.read_bought(self.sku(), &users).await?
            }
            None => HashMap::new(),
        };
        if fresh && !self.flagged && shards.iter().all(|s| s.available == 0) {
            self.flagged = store.mark_sold_out(self.product).await?;
        }
        let p = plan(
            &self.pending,
            &shards,
            self.product.per_user_limit,
            &bought,
            start_shard,
        );

        if p.accepted.is_empty() {
            if !fresh {
                // Learned values are good enough to try a commit on (its conditions guard the
                // stock), never to tell a buyer no: read before rejecting.
                return Ok(Next::Again);
            }
            // Read in this attempt, after every commit of ours, and the plan takes nothing from
            // it: each order it rejects does not fit the stock (or the buyer's counter) as it
            // stands now.
            let rejected = p
                .rejected
                .iter()
                .map(|&(i, reason)| (self.pending[i].order_id.clone(), reason))
                .collect();
            let (unwritten, failed) = self.reject_all(store, rejected, now).await;
            let unwritten: HashSet<OrderId> = unwritten.into_iter().map(|(id, _)| id).collect();
            let decided: HashSet<usize> = p
                .rejected
                .iter()
                .map(|&(i, _)| i)
                .filter(|&i| !unwritten.contains(&self.pending[i].order_id))
                .collect();
            self.drop_pending(&decided);
            // Those whose write failed stay pending, to be read for and planned again.
            return failed.map_or(Ok(Next::Again), Err);
        }

        // The plan's rejections are not written: they assume this commit lands.
        let commit = Commit {
            takes: p.takes.clone(),
            accepted: p
                .accepted
                .iter()
                .map(|(i, takes)| Accepted {
                    order_id: self.pending[*i].order_id.clone(),
                    takes: takes.clone(),
                    expires_at: self.product.payment_due_at(now),
                })
                .collect(),
            counters: p.counters.clone(),
            limit: self.product.per_user_limit,
            now,
        };
        let refused = match store.commit(self.sku(), &commit).await {
            Ok(Ok(())) => {
                self.report.transactions += 1;
                let mut done = HashSet::new();
                for (i, _) in &p.accepted {
                    self.report.accepted.push(self.pending[*i].order_id.clone());
                    done.insert(*i);
                }
                self.drop_pending(&done);
                let left = after_takes(shards, &p.takes);
                let units_left: u64 = left.iter().map(|s| s.available).sum();
                if !self.flagged && units_left == 0 {
                    // Took the last units: from now on the API refuses without writing.
                    self.flagged = store.mark_sold_out(self.product).await?;
                } else if !self.hinted && self.product.is_low(units_left) {
                    // The sell-out is near: the API re-reads the product more often from now
                    // on. Tried once; a hint that fails to land only leaves the usual pace.
                    self.hinted = true;
                    let _unhinted = store.mark_low_stock(self.sku()).await;
                }
                // Deferred orders may be planned on what is left; the orders this plan
                // rejected will be planned again and, if still refused, read before rejecting.
                self.view = Some(left);
                return Ok(Next::Again);
            }
            Ok(Err(refused)) => refused,
            Err(e) => {
                // Throttled or timed out: the transaction may have landed all the same.
                self.unsure
                    .extend(commit.accepted.iter().map(|a| a.order_id.clone()));
                return Err(e);
            }
        };
        self.report.refused += 1;
        let decided: HashSet<&OrderId> = refused.decided.iter().collect();
        let mut done = HashSet::new();
        for (i, c) in self.pending.iter().enumerate() {
            if decided.contains(&c.order_id) {
                self.report.already_decided.push(c.order_id.clone());
                done.insert(i);
            }
        }
        self.drop_pending(&done);
        if refused.conflict {
            self.report.conflicts += 1;
            // A conflict tells us nothing about the shards: read again after the backoff.
            return Ok(Next::Conflict);
        }
        // Learn what the failed shards hold from the returned values.
        let mut v = shards;
        for s in &refused.shards {
            if let Some(x) = v.iter_mut().find(|x| x.shard == s.shard) {
                x.available = s.available;
            }
        }
        self.view = Some(v);
        Ok(Next::Again)
    }

    /// Reads back the orders of a commit that failed without an answer, so the next commit
    /// does not name orders it may already have decided (a refused transaction still costs the
    /// hot shard a write).
    async fn settle_unsure<S: Store>(&mut self, store: &S) -> PortResult<()> {
        let orders = store.get_orders(&self.unsure).await?;
        self.unsure.clear();
        let settled: HashMap<&OrderId, &Order> = orders
            .iter()
            .filter(|o| o.status != OrderStatus::Queued)
            .map(|o| (&o.id, o))
            .collect();
        let mut done = HashSet::new();
        for (i, c) in self.pending.iter().enumerate() {
            if let Some(o) = settled.get(&c.order_id) {
                self.report.already_decided.push(o.id.clone());
                if o.status == OrderStatus::Pending {
                    self.report.found_pending.push((*o).clone());
                }
                done.insert(i);
            }
        }
        self.drop_pending(&done);
        Ok(())
    }

    fn drop_pending(&mut self, done: &HashSet<usize>) {
        if done.is_empty() {
            return;
        }
        self.pending = std::mem::take(&mut self.pending)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !done.contains(i))
            .map(|(_, c)| c)
            .collect();
    }

    /// Rejects orders concurrently: each is its own conditional write, and none waits for
    /// another. Answers the ones not written and the first failure among them.
    async fn reject_all<S: Store>(
        &mut self,
        store: &S,
        orders: Vec<(OrderId, Reason)>,
        now: Millis,
    ) -> (Vec<(OrderId, Reason)>, Option<PortError>) {
        let written =
            futures::future::join_all(orders.iter().map(|(id, r)| store.reject(id, *r, now))).await;
        let (mut unwritten, mut failed) = (Vec::new(), None);
        for ((id, reason), written) in orders.into_iter().zip(written) {
            match written {
                Ok(true) => self.report.rejected.push((id, reason)),
                Ok(false) => self.report.already_decided.push(id),
                Err(e) => {
                    failed.get_or_insert(e);
                    unwritten.push((id, reason));
                }
            }
        }
        (unwritten, failed)
    }
}

fn after_takes(mut shards: Vec<ShardStock>, takes: &[crate::order::ShardTake]) -> Vec<ShardStock> {
    for t in takes {
        if let Some(s) = shards.iter_mut().find(|s| s.shard == t.shard) {
            s.available = s.available.saturating_sub(u64::from(t.units));
        }
    }
    shards
}

/// Groups orders by product, keeping arrival order inside each group.
pub fn by_product(orders: Vec<Order>) -> Vec<(Sku, Vec<Order>)> {
    let mut groups: Vec<(Sku, Vec<Order>)> = Vec::new();
    for o in orders {
        match groups.iter_mut().find(|(s, _)| *s == o.sku) {
            Some((_, g)) => g.push(o),
            None => groups.push((o.sku.clone(), vec![o])),
        }
    }
    groups
}
