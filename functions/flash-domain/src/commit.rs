//! Deciding a product's queued orders: plan, write one transaction, and when a condition fails
//! learn from the values DynamoDB returned and plan again. This is "group commit": one write to
//! a stock shard serves every order in the group.

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

/// Attempts before the group is handed back to the queue for a later retry. Each failed attempt
/// means another processor won a race for the same shard, so progress was made elsewhere.
const MAX_ATTEMPTS: usize = 40;
/// After a transaction conflict the next attempt waits a random time up to this, doubling with
/// each conflict up to `CONFLICT_BACKOFF_CAP` ("full jitter"), so the processors that collided
/// on a shard do not collide again at once.
const CONFLICT_BACKOFF: Duration = Duration::from_millis(4);
const CONFLICT_BACKOFF_CAP: Duration = Duration::from_millis(200);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupReport {
    pub accepted: Vec<OrderId>,
    pub rejected: Vec<(OrderId, Reason)>,
    /// Orders some earlier delivery already decided.
    pub already_decided: Vec<OrderId>,
    /// Transactions written (each writes every shard it takes from once).
    pub transactions: usize,
    pub refused: usize,
    /// Refused because another transaction held a shard at the same moment.
    pub conflicts: usize,
}

/// Decides every queued order in `orders` (all for `product`). On success each order is
/// decided; on error what was decided stays decided, the rest is unchanged, and the whole
/// group may be retried (a decided order is then a no-op).
/// `pause` waits between attempts after a transaction conflict.
pub async fn decide_group<S: Store, P: Future<Output = ()>>(
    store: &S,
    product: &Product,
    orders: &[Order],
    now: Millis,
    start_shard: usize,
    pause: impl Fn(Duration) -> P,
) -> PortResult<GroupReport> {
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
    // The window is judged at admission time, so a sale that closes while its last orders wait
    // in the queue still honours them.
    let (open, closed): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|c| product.sale_open(c.created_at));
    let closed: Vec<_> = closed
        .into_iter()
        .map(|c| (c.order_id, Reason::SaleNotOpen))
        .collect();
    reject_all(store, &mut report, &closed, now).await?;
    let mut pending = open;
    // First come, first served: storage returns orders in no particular order.
    pending.sort_by(|a, b| (a.created_at, &a.order_id).cmp(&(b.created_at, &b.order_id)));

    // `view` is what we believe the shards hold; `fresh` says it was read in this attempt, the
    // only time a sold-out rejection may be trusted.
    let mut view: Option<Vec<ShardStock>> = None;
    let mut flagged = product.sold_out;
    let mut attempts = 0;
    let expires_at = product.payment_due_at(now);
    while !pending.is_empty() {
        attempts += 1;
        if attempts > MAX_ATTEMPTS {
            return Err(PortError::Contention);
        }
        let fresh = view.is_none();
        let shards = match view.take() {
            Some(v) => v,
            None => store.read_shards(product).await?,
        };
        let bought = match product.per_user_limit {
            Some(_) => {
                let mut users: Vec<_> = pending.iter().map(|c| c.user.clone()).collect();
                users.sort();
                users.dedup();
                store.read_bought(&product.sku, &users).await?
            }
            None => HashMap::new(),
        };
        if fresh && !flagged && shards.iter().all(|s| s.available == 0) {
            flagged = store.mark_sold_out(product).await?;
        }
        let p = plan(
            &pending,
            &shards,
            product.per_user_limit,
            &bought,
            start_shard,
        );
        if !fresh && p.rejected.iter().any(|(_, r)| *r == Reason::SoldOut) {
            continue; // read the shards before telling anyone it is sold out
        }
        let mut done: HashSet<usize> = p.rejected.iter().map(|&(i, _)| i).collect();
        let rejected: Vec<_> = p
            .rejected
            .iter()
            .map(|&(i, reason)| (pending[i].order_id.clone(), reason))
            .collect();
        reject_all(store, &mut report, &rejected, now).await?;
        if !p.accepted.is_empty() {
            let commit = Commit {
                takes: p.takes.clone(),
                accepted: p
                    .accepted
                    .iter()
                    .map(|(i, takes)| Accepted {
                        order_id: pending[*i].order_id.clone(),
                        takes: takes.clone(),
                        expires_at,
                    })
                    .collect(),
                counters: p.counters.clone(),
                limit: product.per_user_limit,
                now,
            };
            match store.commit(&product.sku, &commit).await? {
                Ok(()) => {
                    report.transactions += 1;
                    for (i, _) in &p.accepted {
                        report.accepted.push(pending[*i].order_id.clone());
                        done.insert(*i);
                    }
                    let left = after_takes(shards, &p.takes);
                    if !flagged && left.iter().all(|s| s.available == 0) {
                        // Took the last units: from now on the API refuses without writing.
                        flagged = store.mark_sold_out(product).await?;
                    }
                    view = Some(left);
                }
                Err(refused) => {
                    report.refused += 1;
                    let decided: HashSet<&OrderId> = refused.decided.iter().collect();
                    for (i, c) in pending.iter().enumerate() {
                        if decided.contains(&c.order_id) {
                            report.already_decided.push(c.order_id.clone());
                            done.insert(i);
                        }
                    }
                    if refused.conflict {
                        report.conflicts += 1;
                        let n = u32::try_from(report.conflicts).unwrap_or(u32::MAX);
                        pause(jittered(CONFLICT_BACKOFF, CONFLICT_BACKOFF_CAP, n)).await;
                    }
                    // Learn what the failed shards hold from the returned values; a conflict
                    // tells us nothing, so read again.
                    view = (!refused.conflict).then(|| {
                        let mut v = shards;
                        for s in &refused.shards {
                            if let Some(x) = v.iter_mut().find(|x| x.shard == s.shard) {
                                x.available = s.available;
                            }
                        }
                        v
                    });
                }
            }
        }
        pending = pending
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !done.contains(i))
            .map(|(_, c)| c)
            .collect();
    }
    Ok(report)
}

fn after_takes(mut shards: Vec<ShardStock>, takes: &[crate::order::ShardTake]) -> Vec<ShardStock> {
    for t in takes {
        if let Some(s) = shards.iter_mut().find(|s| s.shard == t.shard) {
            s.available = s.available.saturating_sub(u64::from(t.units));
        }
    }
    shards
}

/// Rejects orders concurrently: each is its own conditional write, and none waits for another.
async fn reject_all<S: Store>(
    store: &S,
    report: &mut GroupReport,
    orders: &[(OrderId, Reason)],
    now: Millis,
) -> PortResult<()> {
    let written =
        futures::future::join_all(orders.iter().map(|(id, r)| store.reject(id, *r, now))).await;
    for ((id, reason), written) in orders.iter().zip(written) {
        if written? {
            report.rejected.push((id.clone(), *reason));
        } else {
            report.already_decided.push(id.clone());
        }
    }
    Ok(())
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
