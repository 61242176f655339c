//! The invariant rules fed one item at a time, in any order, in memory that does not grow with
//! the number of orders or buyers: the reconciler's streaming pass. The rules are
//! [`crate::invariant_check`]'s; only the per-buyer checks take another form ([`BuyerSums`]).

use crate::invariant_check::{Audit, Deadlines, Latest};
use crate::order::Order;
use crate::Sku;
use std::hash::{BuildHasher, RandomState};

/// Per-buyer counts against the buyers' orders, in constant memory: for each buyer `u` the
/// count `c_u` must equal the units `h_u` of their orders that it covers. Both sides are
/// summed as `Σ w(u)·x_u` with a weight `w` drawn from a random-keyed hash, so the two sums
/// agree when every buyer agrees and differ, with probability 1 − 2⁻⁶⁴ or so, when any one
/// does not (a random linear combination of a nonzero vector is almost never zero). It tells
/// *that* a product has a disagreeing buyer; [`crate::invariant_check::check`] on a re-read
/// names them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BuyerSums {
    counted: u64,
    covered: u64,
    /// Σ c_u − Σ h_u, for the message.
    units: i64,
}

impl BuyerSums {
    fn count(&mut self, w: u64, units: i64) {
        self.counted = self.counted.wrapping_add(w.wrapping_mul(units as u64));
        self.units += units;
    }

    fn cover(&mut self, w: u64, units: i64) {
        self.covered = self.covered.wrapping_add(w.wrapping_mul(units as u64));
        self.units -= units;
    }

    fn agree(&self) -> bool {
        self.counted == self.covered
    }
}

/// A product judged from its items fed one at a time, in any order: what the reconciler's
/// streaming pass keeps per product. Memory: the shard values, a few sums, and at most
/// [`crate::invariant_check::NAMED_VIOLATIONS`] lines, whatever the number of orders and buyers.
#[derive(Debug, Clone)]
pub struct Tally {
    audit: Audit,
    deadlines: Deadlines,
    product_seen: bool,
    limit: Option<u32>,
    latest: Latest,
    weights: RandomState,
    /// Buyer counters against the units of counted orders that hold stock.
    bought: BuyerSums,
    /// Admission counts against the units of admitted orders still queued or holding stock.
    admitted: BuyerSums,
    /// The highest counter and admission count, and whose: the limit is judged at the end,
    /// since the product's item may come after its buyers'.
    max_counter: Option<(String, i64)>,
    max_admitted: Option<(String, i64)>,
}

fn keep_max(max: &mut Option<(String, i64)>, user: &str, units: i64) {
    if max.as_ref().is_none_or(|(_, m)| units > *m) {
        *max = Some((user.to_owned(), units));
    }
}

impl Tally {
    pub fn new(sku: &str, deadlines: Deadlines) -> Self {
        Self {
            audit: Audit {
                sku: sku.to_owned(),
                ..Audit::default()
            },
            deadlines,
            product_seen: false,
            limit: None,
            latest: Latest::default(),
            weights: RandomState::new(),
            bought: BuyerSums::default(),
            admitted: BuyerSums::default(),
            max_counter: None,
            max_admitted: None,
        }
    }

    fn weight(&self, user: &str) -> u64 {
        self.weights.hash_one(user)
    }

    /// The product's own item: what was ever added, and its per-user limit.
    pub fn product(&mut self, stock_added: u64, per_user_limit: Option<u32>) {
        self.product_seen = true;
        self.audit.stock_added = stock_added;
        self.limit = per_user_limit;
    }

    pub fn shard(&mut self, available: i64) {
        self.audit.shards.push(available);
    }

    /// A buyer's purchase counter (units of their accepted orders).
    pub fn counter(&mut self, user: &str, units: i64) {
        let w = self.weight(user);
        self.bought.count(w, units);
        keep_max(&mut self.max_counter, user, units);
    }

    /// A buyer's admission count (units of their queued and accepted orders).
    pub fn admission(&mut self, user: &str, admitted: i64) {
        let w = self.weight(user);
        self.admitted.count(w, admitted);
        keep_max(&mut self.max_admitted, user, admitted);
    }

    /// An order; `admitted`: counted in its buyer's admission count.
    pub fn order(&mut self, o: &Order, admitted: bool) {
        self.audit.add_order(o, Some(&self.deadlines));
        self.latest.add(o);
        let (w, q) = (self.weight(o.owner.as_str()), i64::from(o.quantity.get()));
        if o.counted && o.status.holds_stock() {
            self.bought.cover(w, q);
        }
        if admitted && o.status.admission_live() {
            self.admitted.cover(w, q);
        }
    }

    /// An item that belongs to the product but could not be read.
    pub fn unreadable(&mut self, why: String) {
        self.audit.violation(why);
    }

    /// The verdict, once every item has been fed.
    pub fn finish(mut self) -> Audit {
        if !self.product_seen && Sku::parse(&self.audit.sku).is_err() {
            let n = self.audit.orders_seen;
            self.audit.violation(format!(
                "{n} order(s) name the invalid sku {:?}",
                self.audit.sku
            ));
            return self.audit;
        }
        self.audit.judge_stock(&self.latest.describe());
        if let Some(limit) = self.limit {
            if let Some((user, units)) = self.max_counter.take().filter(|m| m.1 > i64::from(limit))
            {
                self.audit.violation(format!(
                    "buyer {user}: {units} units, above the limit {limit}"
                ));
            }
            if let Some((user, n)) = self.max_admitted.take().filter(|m| m.1 > i64::from(limit)) {
                self.audit.violation(format!(
                    "buyer {user}: {n} units admitted, above the limit {limit}"
                ));
            }
        }
        if !self.bought.agree() {
            self.audit.violation(format!(
                "buyers' counters disagree with their held orders ({:+} units over all buyers)",
                self.bought.units
            ));
        }
        if !self.admitted.agree() {
            self.audit.violation(format!(
                "buyers' admission counts disagree with their queued and held orders ({:+} units over all buyers)",
                self.admitted.units
            ));
        }
        self.audit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariant_check::{check_at, Holdings};
    use crate::order::{OrderStatus, ShardTake};
    use crate::{OrderId, Quantity, UserId};

    const NOW: i64 = 1_800_000_000_000;

    fn order(n: u32, who: &str, status: OrderStatus, quantity: u32) -> Order {
        let holds = status.holds_stock() || status == OrderStatus::Canceled;
        Order {
            id: OrderId::parse(&format!("{n:032x}")).expect("id"),
            owner: UserId::parse(who).expect("user"),
            sku: Sku::parse("P-1").expect("sku"),
            quantity: Quantity::new(quantity).expect("quantity"),
            status,
            reason: match status {
                OrderStatus::Rejected => Some(crate::Reason::SoldOut),
                OrderStatus::Canceled => Some(crate::Reason::BuyerCanceled),
                _ => None,
            },
            created_at: NOW - 1_000,
            updated_at: NOW - 1_000 + i64::from(n),
            expires_at: (status == OrderStatus::Pending).then_some(NOW + 60_000),
            fingerprint: String::new(),
            takes: if holds {
                vec![ShardTake {
                    shard: 0,
                    units: quantity,
                }]
            } else {
                Vec::new()
            },
            counted: holds,
        }
    }

    /// A product of 10 units with a limit of 3: alice holds 2, bob 1 and has 1 queued.
    fn holdings() -> Holdings {
        Holdings {
            stock_added: 10,
            per_user_limit: Some(3),
            shards: vec![7],
            counters: [("alice".to_owned(), 2), ("bob".to_owned(), 1)].into(),
            orders: vec![
                order(1, "alice", OrderStatus::Pending, 2),
                order(2, "bob", OrderStatus::Paid, 1),
                order(3, "bob", OrderStatus::Queued, 1),
                order(4, "carol", OrderStatus::Rejected, 1),
            ],
        }
    }

    fn tally(h: &Holdings, admissions: &[(&str, i64)]) -> Audit {
        let d = Deadlines::new(NOW, 900);
        let mut t = Tally::new("P-1", d);
        // The product's own item last: the limit is judged once everything is in.
        for (u, n) in &h.counters {
            t.counter(u, *n);
        }
        for (u, n) in admissions {
            t.admission(u, *n);
        }
        for o in &h.orders {
            t.order(o, o.status != OrderStatus::Rejected);
        }
        for s in &h.shards {
            t.shard(*s);
        }
        t.product(h.stock_added, h.per_user_limit);
        t.finish()
    }

    #[test]
    fn a_tally_of_a_clean_product_finds_what_the_whole_check_finds() {
        let h = holdings();
        let t = tally(&h, &[("alice", 2), ("bob", 2)]);
        let c = check_at(
            &Sku::parse("P-1").expect("sku"),
            h,
            Some(&Deadlines::new(NOW, 900)),
        );
        assert!(t.violations.is_empty(), "{:?}", t.violations);
        assert_eq!(
            (
                t.available,
                t.units_held,
                t.orders_seen,
                &t.by_status,
                &t.rejected_by
            ),
            (
                c.available,
                c.units_held,
                c.orders.len(),
                &c.by_status,
                &c.rejected_by
            )
        );
        assert!(t.orders.is_empty(), "a tally keeps no order");
    }

    #[test]
    fn one_buyer_off_by_one_is_found_even_when_another_is_off_the_other_way() {
        // Counters: alice one too many, bob one too few: the plain sums agree.
        let mut h = holdings();
        h.counters = [("alice".to_owned(), 3), ("bob".to_owned(), 0)].into();
        let t = tally(&h, &[("alice", 2), ("bob", 2)]);
        assert!(
            t.violations
                .iter()
                .any(|v| v.starts_with("buyers' counters disagree") && v.contains("+0 units")),
            "{:?}",
            t.violations
        );
        // Admission counts: bob's queued order not counted.
        let t = tally(&holdings(), &[("alice", 2), ("bob", 1)]);
        assert!(
            t.violations
                .iter()
                .any(|v| v.starts_with("buyers' admission counts disagree")),
            "{:?}",
            t.violations
        );
    }

    #[test]
    fn overdue_orders_oversell_and_the_limit_are_named_in_a_tally() {
        let mut h = holdings();
        h.orders[2].created_at = NOW - 900_000 - crate::invariant_check::QUEUED_MARGIN_MS - 1;
        h.orders[0].expires_at = Some(NOW - crate::invariant_check::PENDING_GRACE_MS - 1);
        h.stock_added = 2;
        h.shards = vec![0];
        h.counters.insert("alice".into(), 4);
        let t = tally(&h, &[("alice", 2), ("bob", 2)]);
        let all = t.violations.join("\n");
        for want in [
            format!("order {} queued for", h.orders[2].id),
            format!("order {} pending", h.orders[0].id),
            "oversold: 3 units held, 2 ever added; orders changed last: ".to_owned(),
            "buyer alice: 4 units, above the limit 3".to_owned(),
        ] {
            assert!(all.contains(&want), "{want:?} missing from:\n{all}");
        }
        assert_eq!((t.stale_queued, t.overdue_pending), (1, 1));
    }
}
