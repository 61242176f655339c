//! The invariant rules, pure: given what the table holds about one product, every violation of
//! the invariants (never oversell, conservation, one effect per order, consistent states,
//! purchase counters and admission counts, and, with [`Deadlines`], no order left undecided or
//! unpaid past the time its safety nets should have acted). The storage adapter only reads;
//! the tests' in-memory store feeds the same rules. Two ways to judge:
//!
//! - [`check`]: everything about a product held at once ([`Holdings`]); it names the buyers a
//!   counter disagrees with. The tests end every scenario with it, and the reconciler re-reads
//!   a product that looks wrong with it.
//! - [`Tally`] (`invariant_tally`): items fed one at a time, in any order, in memory that does not grow with the
//!   number of orders: the reconciler's streaming pass over the table.

use crate::clock::Millis;
use crate::ids::{OrderId, Sku};
use crate::order::{Order, OrderStatus, Reason};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How long after its creation an order may still be `queued`, beyond the re-drive delay: the
/// re-drive copy arrives after the delay, and the processor retries a failed record up to
/// `maxReceiveCount` (5) times 180 s of visibility before the DLQ takes it.
pub const QUEUED_MARGIN_MS: Millis = 20 * 60 * 1000;
/// How long past its payment deadline an order may still be `pending`: the payment-timeouts
/// queue retries for up to 5 × 180 s before its DLQ.
pub const PENDING_GRACE_MS: Millis = 20 * 60 * 1000;
/// Violations named one by one per product; beyond that they are counted.
pub const NAMED_VIOLATIONS: usize = 50;
/// Orders named beside a violation of the whole product (the last ones changed).
const LATEST_NAMED: usize = 3;

/// When an undecided or unpaid order is overdue, as seen at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub now: Millis,
    /// A `queued` order older than this has outlived its re-drive copy.
    pub queued_for_ms: Millis,
    /// A `pending` order this long past its `expires_at` lost its payment timeout.
    pub pending_grace_ms: Millis,
}

impl Deadlines {
    /// The deadlines at `now` for a pipeline whose re-drive copy is sent `redrive_delay_s` late.
    pub fn new(now: Millis, redrive_delay_s: u32) -> Self {
        Self {
            now,
            queued_for_ms: i64::from(redrive_delay_s) * 1000 + QUEUED_MARGIN_MS,
            pending_grace_ms: PENDING_GRACE_MS,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Audit {
    pub sku: String,
    pub stock_added: u64,
    /// What each shard holds (signed: a negative value is a violation, not a panic).
    pub shards: Vec<i64>,
    pub available: i64,
    /// Units in orders that hold stock (pending, paid, shipped, completed).
    pub units_held: u64,
    /// The orders, when judged by [`check`]; a [`Tally`] keeps none.
    pub orders: Vec<Order>,
    /// Orders judged, by either way.
    pub orders_seen: usize,
    pub by_status: BTreeMap<&'static str, usize>,
    pub rejected_by: BTreeMap<&'static str, usize>,
    /// `queued` orders older than [`Deadlines::queued_for_ms`] (each also a violation).
    pub stale_queued: usize,
    /// `pending` orders past their deadline and its grace (each also a violation).
    pub overdue_pending: usize,
    /// The smallest order refused as sold out, for [`Audit::stranded`].
    pub smallest_sold_out: Option<u32>,
    pub violations: Vec<String>,
    /// Violations beyond the [`NAMED_VIOLATIONS`] listed.
    pub unnamed_violations: usize,
}

impl Audit {
    pub fn count(&self, status: OrderStatus) -> usize {
        self.by_status.get(status.as_str()).copied().unwrap_or(0)
    }

    pub fn rejected(&self, reason: Reason) -> usize {
        self.rejected_by.get(reason.as_str()).copied().unwrap_or(0)
    }

    /// Orders not yet decided (invariant 4 once the queue is drained).
    pub fn undecided(&self) -> usize {
        self.count(OrderStatus::Queued)
    }

    /// Every violation found, the named ones and those only counted.
    pub fn violation_count(&self) -> usize {
        self.violations.len() + self.unnamed_violations
    }

    /// Units left over while an order that would have fit them was refused as sold out. Only
    /// meaningful when no stock came back after the sale (no cancels or refunds).
    pub fn stranded(&self) -> u64 {
        match self.smallest_sold_out {
            Some(q) if i64::from(q) <= self.available => self.available.max(0) as u64,
            _ => 0,
        }
    }

    /// Units held beyond what was ever added.
    pub fn oversold(&self) -> u64 {
        self.units_held.saturating_sub(self.stock_added)
    }

    pub(crate) fn violation(&mut self, v: String) {
        if self.violations.len() < NAMED_VIOLATIONS {
            self.violations.push(v);
        } else {
            self.unnamed_violations += 1;
        }
    }

    /// Counts `o` and lists what is wrong with it alone.
    pub(crate) fn add_order(&mut self, o: &Order, deadlines: Option<&Deadlines>) {
        self.orders_seen += 1;
        *self.by_status.entry(o.status.as_str()).or_default() += 1;
        if let Some(r) = o.reason.filter(|_| o.status == OrderStatus::Rejected) {
            *self.rejected_by.entry(r.as_str()).or_default() += 1;
            if r == Reason::SoldOut {
                let q = o.quantity.get();
                self.smallest_sold_out = Some(self.smallest_sold_out.map_or(q, |s| s.min(q)));
            }
        }
        let q = o.quantity.get();
        let taken: u32 = o.takes.iter().map(|t| t.units).sum();
        if o.status.holds_stock() {
            self.units_held += u64::from(q);
            if taken != q {
                self.violation(format!("order {} holds {q} units but took {taken}", o.id));
            }
        }
        match o.status {
            OrderStatus::Queued | OrderStatus::Rejected if taken != 0 => {
                self.violation(format!("{} order {} took stock", o.status.as_str(), o.id))
            }
            OrderStatus::Canceled if taken != q => {
                self.violation(format!("canceled order {} never held its units", o.id))
            }
            _ => {}
        }
        let reason_expected = matches!(o.status, OrderStatus::Rejected | OrderStatus::Canceled);
        if o.reason.is_some() != reason_expected {
            self.violation(format!(
                "order {} is {} with reason {:?}",
                o.id,
                o.status.as_str(),
                o.reason
            ));
        }
        if o.expires_at.is_some() != (o.status == OrderStatus::Pending) {
            self.violation(format!(
                "order {} is {} with expires_at {:?}",
                o.id,
                o.status.as_str(),
                o.expires_at
            ));
        }
        let Some(d) = deadlines else { return };
        match (o.status, o.expires_at) {
            (OrderStatus::Queued, _) if d.now - o.created_at > d.queued_for_ms => {
                self.stale_queued += 1;
                self.violation(format!(
                    "order {} queued for {} s without a decision (its re-drive copy is due within {} s)",
                    o.id,
                    (d.now - o.created_at) / 1000,
                    d.queued_for_ms / 1000
                ));
            }
            (OrderStatus::Pending, Some(e)) if d.now - e > d.pending_grace_ms => {
                self.overdue_pending += 1;
                self.violation(format!(
                    "order {} pending {} s past its payment deadline (its timeout is due within {} s)",
                    o.id,
                    (d.now - e) / 1000,
                    d.pending_grace_ms / 1000
                ));
            }
            _ => {}
        }
    }

    /// The shards, oversell and conservation, once every item is in; `latest` names the
    /// orders changed last, where a violation of the whole product likely came from.
    pub(crate) fn judge_stock(&mut self, latest: &str) {
        for (i, s) in self.shards.clone().iter().enumerate() {
            if *s < 0 {
                self.violation(format!("shard {i} holds {s} units"));
            }
        }
        self.available = self.shards.iter().sum();
        if self.units_held > self.stock_added {
            self.violation(format!(
                "oversold: {} units held, {} ever added{latest}",
                self.units_held, self.stock_added
            ));
        }
        if i128::from(self.stock_added) != i128::from(self.available) + i128::from(self.units_held)
        {
            self.violation(format!(
                "conservation: added {} != available {} + held {}{latest}",
                self.stock_added, self.available, self.units_held
            ));
        }
    }
}

/// Everything the table holds about one product, as read: what [`check`] judges.
#[derive(Debug, Default, Clone)]
pub struct Holdings {
    pub stock_added: u64,
    pub per_user_limit: Option<u32>,
    /// `available` of each shard item (signed: a negative value is a violation, not a panic).
    pub shards: Vec<i64>,
    /// `units` of each buyer counter item, by user id.
    pub counters: HashMap<String, i64>,
    pub orders: Vec<Order>,
}

/// Judges what the table holds about `sku`: every violation of the invariants, listed.
pub fn check(sku: &Sku, h: Holdings) -> Audit {
    check_at(sku, h, None)
}

/// [`check`], and with `deadlines` the orders left undecided or unpaid too long.
pub fn check_at(sku: &Sku, h: Holdings, deadlines: Option<&Deadlines>) -> Audit {
    let Holdings {
        stock_added,
        per_user_limit: limit,
        shards,
        counters,
        orders,
    } = h;
    let mut a = Audit {
        sku: sku.to_string(),
        stock_added,
        shards,
        ..Audit::default()
    };
    let mut held_by_user: HashMap<String, i64> = HashMap::new();
    let mut latest = Latest::default();
    for o in &orders {
        a.add_order(o, deadlines);
        latest.add(o);
        if o.status.holds_stock() && o.counted {
            *held_by_user.entry(o.owner.to_string()).or_default() += i64::from(o.quantity.get());
        }
    }
    a.judge_stock(&latest.describe());
    for (user, units) in &counters {
        let held = held_by_user.get(user).copied().unwrap_or(0);
        if *units != held {
            a.violation(format!(
                "buyer {user}: counter {units} but holds {held} units{}",
                orders_of(&orders, user)
            ));
        }
        if let Some(limit) = limit {
            if *units > i64::from(limit) {
                a.violation(format!(
                    "buyer {user}: {units} units, above the limit {limit}"
                ));
            }
        }
    }
    for (user, held) in &held_by_user {
        if !counters.contains_key(user) && *held != 0 {
            a.violation(format!(
                "buyer {user}: holds {held} counted units but has no counter{}",
                orders_of(&orders, user)
            ));
        }
    }
    a.orders = orders;
    a
}

/// `" (orders a, b)"`: the orders of `user`, for a violation that names the buyer.
fn orders_of(orders: &[Order], user: &str) -> String {
    let ids: Vec<&str> = orders
        .iter()
        .filter(|o| o.owner.as_str() == user)
        .map(|o| o.id.as_str())
        .take(LATEST_NAMED * 2)
        .collect();
    if ids.is_empty() {
        String::new()
    } else {
        format!(" (orders {})", ids.join(", "))
    }
}

/// The admission counts of one product (units of a buyer's orders that `place-order` counted
/// against the per-user limit) and the orders counted in them (those carrying `admitted`), as
/// read.
#[derive(Debug, Default, Clone)]
pub struct Admissions {
    /// `admitted` of each count item, by user id.
    pub counts: HashMap<String, i64>,
    pub orders: HashSet<OrderId>,
}

impl Admissions {
    /// Each count equals the units of its buyer's counted orders that are still queued or
    /// hold stock (a rejection, cancel, refund or timeout gives them back, so none is
    /// stranded), and none passes the limit.
    pub fn check(&self, audit: &Audit, limit: Option<u32>) -> Vec<String> {
        let mut v = Vec::new();
        let mut live: HashMap<String, i64> = HashMap::new();
        for o in audit.orders.iter().filter(|o| self.orders.contains(&o.id)) {
            if o.status.admission_live() {
                *live.entry(o.owner.to_string()).or_default() += i64::from(o.quantity.get());
            }
        }
        for (user, count) in &self.counts {
            let held = live.get(user).copied().unwrap_or(0);
            if *count != held {
                v.push(format!(
                    "buyer {user}: admission count {count} but {held} units queued or held{}",
                    orders_of(&audit.orders, user)
                ));
            }
            if let Some(limit) = limit {
                if *count > i64::from(limit) {
                    v.push(format!(
                        "buyer {user}: {count} units admitted, above the limit {limit}"
                    ));
                }
            }
        }
        for (user, held) in &live {
            if !self.counts.contains_key(user) {
                v.push(format!(
                    "buyer {user}: {held} units admitted but no admission count{}",
                    orders_of(&audit.orders, user)
                ));
            }
        }
        v
    }
}

/// The orders changed last (by `updated_at`), kept a few at a time.
#[derive(Debug, Default, Clone)]
pub(crate) struct Latest(Vec<(Millis, OrderId)>);

impl Latest {
    pub(crate) fn add(&mut self, o: &Order) {
        self.0.push((o.updated_at, o.id.clone()));
        self.0.sort_by_key(|e| std::cmp::Reverse(e.0));
        self.0.truncate(LATEST_NAMED);
    }

    pub(crate) fn describe(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let ids: Vec<&str> = self.0.iter().map(|(_, id)| id.as_str()).collect();
        format!("; orders changed last: {}", ids.join(", "))
    }
}

pub use crate::invariant_tally::{BuyerSums, Tally};
