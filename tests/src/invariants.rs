//! The invariant checker for the fault suite: the table's invariants, judged by the same rules
//! as `flash_domain::invariant_check` (for the in-memory store too), and the ledger of the changes the
//! functions made (from [`crate::failpoint::Tracer`]), replayed order by order: created once,
//! one deduction, at most one restore and one payment, every change from the status the order
//! was in.

use crate::failpoint::Entry;
use crate::fake::{per_user, State};
use flash_domain::invariant_check::{check, Audit, Holdings};
use flash_domain::{Order, OrderId, OrderStatus, Reason, Sku};
use std::collections::{BTreeMap, HashMap};

/// What the in-memory table holds about `sku`, in the audit's terms.
pub fn holdings(state: &State, sku: &Sku) -> Holdings {
    Holdings {
        stock_added: state.products.get(sku).map_or(0, |p| p.stock_added),
        per_user_limit: state.products.get(sku).and_then(|p| p.per_user_limit),
        shards: state
            .shards
            .iter()
            .filter(|((s, _), _)| s == sku)
            .map(|(_, a)| i64::try_from(*a).unwrap_or(i64::MAX))
            .collect(),
        counters: per_user(&state.bought, sku),
        orders: state
            .orders
            .values()
            .filter(|o| o.sku == *sku)
            .cloned()
            .collect(),
    }
}

/// The audit of the in-memory table.
pub fn audit_state(state: &State, sku: &Sku) -> Audit {
    check(sku, holdings(state, sku))
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    pub created: u32,
    pub deducted: u32,
    pub restored: u32,
    pub paid: u32,
}

/// Per order, what the ledger says happened to it.
pub fn effects(ledger: &[Entry]) -> HashMap<OrderId, Effects> {
    let mut out: HashMap<OrderId, Effects> = HashMap::new();
    for e in ledger {
        let x = out.entry(e.order().clone()).or_default();
        match e {
            Entry::Created(_) => x.created += 1,
            Entry::Deducted(..) => x.deducted += 1,
            Entry::Rejected(..) => {}
            Entry::Advanced(_, t, ..) => {
                x.restored += u32::from(t.restores_stock);
                x.paid += u32::from(t.to == OrderStatus::Paid);
            }
        }
    }
    out
}

/// Replays the ledger against the stored orders. `exact`: every change the store made is in
/// the ledger (the in-memory store); otherwise (DynamoDB behind a fault injector, where a
/// change can be applied while its caller saw a timeout) only the upper bounds are checked.
pub fn check_ledger(
    ledger: &[Entry],
    orders: &BTreeMap<OrderId, Order>,
    exact: bool,
) -> Vec<String> {
    let mut v = Vec::new();
    let mut status: HashMap<&OrderId, OrderStatus> = HashMap::new();
    for e in ledger {
        let id = e.order();
        let current = status.get(id).copied();
        let (from, to) = match e {
            Entry::Created(_) => {
                if current.is_some() {
                    v.push(format!("order {id} created twice"));
                }
                status.insert(id, OrderStatus::Queued);
                continue;
            }
            Entry::Deducted(_, units) => {
                if let Some(o) = orders.get(id) {
                    if *units != o.quantity.get() {
                        v.push(format!(
                            "order {id} of {} units took {units}",
                            o.quantity.get()
                        ));
                    }
                }
                (OrderStatus::Queued, OrderStatus::Pending)
            }
            Entry::Rejected(..) => (OrderStatus::Queued, OrderStatus::Rejected),
            Entry::Advanced(_, t, now, expires_at) => {
                // Pay only while the window is open, the timeout only once it has closed.
                if let Some(w) = t.window() {
                    if !w.holds(*expires_at, *now) {
                        v.push(format!(
                            "order {id}: {:?} -> {:?} written at {now} with deadline {expires_at:?}",
                            t.from, t.to
                        ));
                    }
                }
                (t.from, t.to)
            }
        };
        if exact && current != Some(from) {
            v.push(format!(
                "order {id}: {from:?} -> {to:?} applied while it was {current:?}"
            ));
        }
        status.insert(id, to);
    }
    for (id, x) in effects(ledger) {
        if x.created > 1 || x.deducted > 1 || x.restored > 1 || x.paid > 1 {
            v.push(format!("order {id}: more than one effect of a kind: {x:?}"));
        }
        if x.restored > x.deducted && exact {
            v.push(format!(
                "order {id}: stock restored without a deduction: {x:?}"
            ));
        }
        let Some(o) = orders.get(&id) else {
            v.push(format!("order {id} is in the ledger but not in the table"));
            continue;
        };
        if exact {
            if status.get(&id) != Some(&o.status) {
                v.push(format!(
                    "order {id} is {:?} but its changes lead to {:?}",
                    o.status,
                    status.get(&id)
                ));
            }
            let paid = matches!(
                o.status,
                OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Completed
            ) || o.reason == Some(Reason::Refunded);
            if x.paid != u32::from(paid) {
                v.push(format!(
                    "order {id} is {:?} ({:?}) after {} payments",
                    o.status, o.reason, x.paid
                ));
            }
            let holds = i64::from(x.deducted) - i64::from(x.restored);
            if holds != i64::from(o.status.holds_stock()) {
                v.push(format!(
                    "order {id} is {:?} after {} deductions and {} restores",
                    o.status, x.deducted, x.restored
                ));
            }
        }
    }
    if exact {
        for id in orders.keys() {
            if !status.contains_key(id) {
                v.push(format!("order {id} is in the table but was never created"));
            }
        }
    }
    v
}
