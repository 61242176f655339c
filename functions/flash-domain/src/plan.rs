//! The group-commit planner: given the queued orders for one product, what the shards hold and
//! what each buyer already bought, decide which orders get stock, from which shards, and which
//! are rejected. Pure, so the property tests can throw any input at it.

use crate::clock::Millis;
use crate::ids::{OrderId, Quantity, UserId};
use crate::limits::TRANSACT_WRITE_MAX_ITEMS;
use crate::order::{Reason, ShardTake};
use crate::ports::ShardStock;
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub order_id: OrderId,
    pub user: UserId,
    pub quantity: Quantity,
    pub created_at: Millis,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Index into the candidates, and the units it takes from each shard.
    pub accepted: Vec<(usize, Vec<ShardTake>)>,
    pub rejected: Vec<(usize, Reason)>,
    /// Did not fit in this transaction's item budget; plan again after it commits.
    pub deferred: Vec<usize>,
    /// Total taken from each shard.
    pub takes: Vec<ShardTake>,
    /// Units added to each buyer's purchase counter (only when the product has a limit).
    pub counters: Vec<(UserId, u32)>,
}

/// Plans one transaction. Orders are served first come, first served; an order that does not
/// fit the remaining stock is rejected `sold_out` but a smaller one after it may still fit, so
/// the sale ends with exactly zero units left when demand exceeds supply. Stock is taken from
/// the shard at `start` first and from the next ones only when it runs dry, so concurrent
/// processors that start at different shards rarely write the same item.
pub fn plan(
    candidates: &[Candidate],
    shards: &[ShardStock],
    limit: Option<u32>,
    bought: &HashMap<UserId, u32>,
    start: usize,
) -> Plan {
    let mut p = Plan::default();
    let mut left: Vec<ShardStock> = shards.to_vec();
    if !left.is_empty() {
        left.rotate_left(start % shards.len());
    }
    let mut total: u64 = left.iter().map(|s| s.available).sum();
    let mut taken: HashMap<u32, u32> = HashMap::new();
    let mut bought: HashMap<UserId, u32> = bought.clone();
    let mut counted: HashMap<UserId, u32> = HashMap::new();
    let mut items = 0usize;

    for (i, c) in candidates.iter().enumerate() {
        let q = c.quantity.get();
        let already = bought.get(&c.user).copied().unwrap_or(0);
        if let Some(limit) = limit {
            if already.saturating_add(q) > limit {
                p.rejected.push((i, Reason::PurchaseLimit));
                continue;
            }
        }
        if u64::from(q) > total {
            p.rejected.push((i, Reason::SoldOut));
            continue;
        }
        // Items this order adds: itself, shards not yet written, and its buyer's counter.
        let mut new_shards = 0;
        let mut need = u64::from(q);
        for s in &left {
            if need == 0 {
                break;
            }
            if s.available > 0 {
                new_shards += usize::from(!taken.contains_key(&s.shard));
                need = need.saturating_sub(s.available);
            }
        }
        let new_counter = usize::from(limit.is_some() && !counted.contains_key(&c.user));
        if items + 1 + new_shards + new_counter > TRANSACT_WRITE_MAX_ITEMS {
            p.deferred.push(i);
            continue;
        }
        items += 1 + new_shards + new_counter;

        let mut need = q;
        let mut order_takes = Vec::new();
        for s in left.iter_mut() {
            if need == 0 {
                break;
            }
            let units = need.min(u32::try_from(s.available).unwrap_or(u32::MAX));
            if units > 0 {
                s.available -= u64::from(units);
                need -= units;
                *taken.entry(s.shard).or_default() += units;
                order_takes.push(ShardTake {
                    shard: s.shard,
                    units,
                });
            }
        }
        total -= u64::from(q);
        if limit.is_some() {
            bought.insert(c.user.clone(), already + q);
            *counted.entry(c.user.clone()).or_default() += q;
        }
        p.accepted.push((i, order_takes));
    }
    let mut takes: Vec<ShardTake> = taken
        .into_iter()
        .map(|(shard, units)| ShardTake { shard, units })
        .collect();
    takes.sort_by_key(|t| t.shard);
    p.takes = takes;
    let mut counters: Vec<(UserId, u32)> = counted.into_iter().collect();
    counters.sort();
    p.counters = counters;
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(i: usize, user: &str, q: u32) -> Candidate {
        Candidate {
            order_id: OrderId::parse(&format!("{i:032x}")).unwrap(),
            user: UserId::parse(user).unwrap(),
            quantity: Quantity::new(q).unwrap(),
            created_at: 0,
        }
    }

    fn shards(v: &[u64]) -> Vec<ShardStock> {
        v.iter()
            .enumerate()
            .map(|(i, &a)| ShardStock {
                shard: i as u32,
                available: a,
            })
            .collect()
    }

    #[test]
    fn takes_exactly_what_fits_and_rejects_the_rest_as_sold_out() {
        let c = vec![cand(0, "a", 2), cand(1, "b", 3), cand(2, "c", 1)];
        let p = plan(&c, &shards(&[3]), None, &HashMap::new(), 0);
        assert_eq!(
            p.accepted.iter().map(|a| a.0).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(p.rejected, vec![(1, Reason::SoldOut)]);
        assert_eq!(p.takes, vec![ShardTake { shard: 0, units: 3 }]);
    }

    #[test]
    fn an_order_may_span_shards_so_no_unit_is_stranded() {
        let c = vec![cand(0, "a", 3)];
        let p = plan(&c, &shards(&[2, 0, 2]), None, &HashMap::new(), 2);
        assert_eq!(
            p.accepted[0].1,
            vec![
                ShardTake { shard: 2, units: 2 },
                ShardTake { shard: 0, units: 1 }
            ]
        );
    }

    #[test]
    fn purchase_limit_counts_earlier_purchases_and_this_batch() {
        let c = vec![cand(0, "a", 1), cand(1, "a", 1), cand(2, "b", 2)];
        let bought = HashMap::from([(UserId::parse("a").unwrap(), 1)]);
        let p = plan(&c, &shards(&[10]), Some(2), &bought, 0);
        assert_eq!(p.rejected, vec![(1, Reason::PurchaseLimit)]);
        assert_eq!(p.counters.len(), 2);
    }

    #[test]
    fn a_transaction_never_exceeds_the_item_cap() {
        let c: Vec<_> = (0..150).map(|i| cand(i, &format!("u{i}"), 1)).collect();
        let p = plan(&c, &shards(&[1000]), Some(5), &HashMap::new(), 0);
        let items = p.takes.len() + p.accepted.len() + p.counters.len();
        assert!(items <= TRANSACT_WRITE_MAX_ITEMS);
        assert_eq!(p.accepted.len() + p.deferred.len(), 150);
    }

    proptest! {
        #[test]
        fn plans_never_oversell_and_leave_nothing_that_a_rejected_order_could_take(
            qs in prop::collection::vec((1u32..6, 0usize..4), 0..120),
            stock in prop::collection::vec(0u64..40, 1..6),
            limit in prop::option::of(1u32..8),
            start in 0usize..6,
        ) {
            let c: Vec<_> = qs.iter().enumerate().map(|(i, &(q, u))| cand(i, &format!("u{u}"), q)).collect();
            let s = shards(&stock);
            let p = plan(&c, &s, limit, &HashMap::new(), start);
            let total: u64 = stock.iter().sum();
            let sold: u64 = p.accepted.iter().map(|(i, _)| u64::from(c[*i].quantity.get())).sum();
            prop_assert!(sold <= total);
            for t in &p.takes {
                prop_assert!(u64::from(t.units) <= stock[t.shard as usize]);
            }
            for (i, takes) in &p.accepted {
                prop_assert_eq!(takes.iter().map(|t| t.units).sum::<u32>(), c[*i].quantity.get());
            }
            let items = p.takes.len() + p.accepted.len() + p.counters.len();
            prop_assert!(items <= TRANSACT_WRITE_MAX_ITEMS);
            // Every candidate is decided exactly once.
            let mut seen: Vec<usize> = p.accepted.iter().map(|a| a.0)
                .chain(p.rejected.iter().map(|r| r.0)).chain(p.deferred.iter().copied()).collect();
            seen.sort();
            prop_assert_eq!(seen, (0..c.len()).collect::<Vec<_>>());
            // A sold-out rejection means that order really did not fit what was left.
            let left = total - sold;
            for (i, r) in &p.rejected {
                if *r == Reason::SoldOut {
                    prop_assert!(u64::from(c[*i].quantity.get()) > left);
                }
            }
            if let Some(limit) = limit {
                for (_, units) in &p.counters {
                    prop_assert!(*units <= limit);
                }
            }
        }
    }
}
