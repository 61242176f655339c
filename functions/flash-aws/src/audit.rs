//! The invariant checker: reads everything the table holds about one product and lists each
//! violation of the invariants (never oversell, conservation, one effect per order, consistent
//! states, purchase counters). Read-only; the tests end every scenario with it and the demo
//! refuses to report success without it.

use crate::dynamo::{decode_order, decode_product, product_pk, DynamoStore};
use aws_sdk_dynamodb::types::AttributeValue;
use flash_domain::ports::{PortError, PortResult};
use flash_domain::{Order, OrderStatus, Reason, Sku};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub struct Audit {
    pub sku: String,
    pub stock_added: u64,
    /// What each shard holds (signed: a negative value is a violation, not a panic).
    pub shards: Vec<i64>,
    pub available: i64,
    /// Units in orders that hold stock (pending, paid, shipped, completed).
    pub units_held: u64,
    pub orders: Vec<Order>,
    pub by_status: BTreeMap<&'static str, usize>,
    pub rejected_by: BTreeMap<&'static str, usize>,
    pub violations: Vec<String>,
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

    /// Units left over while an order that would have fit them was refused as sold out. Only
    /// meaningful when no stock came back after the sale (no cancels or refunds).
    pub fn stranded(&self) -> u64 {
        let refused_fit = self.orders.iter().any(|o| {
            o.reason == Some(Reason::SoldOut) && i64::from(o.quantity.get()) <= self.available
        });
        if refused_fit {
            self.available.max(0) as u64
        } else {
            0
        }
    }

    /// Units held beyond what was ever added.
    pub fn oversold(&self) -> u64 {
        self.units_held.saturating_sub(self.stock_added)
    }
}

fn n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn read_failed(what: &'static str) -> impl FnOnce(aws_sdk_dynamodb::Error) -> PortError {
    move |e| PortError::unavailable(what, e)
}

/// Reads everything the table holds about `sku` and checks it.
pub async fn audit(store: &DynamoStore, sku: &Sku) -> PortResult<Audit> {
    let client = store.client();
    let mut a = Audit {
        sku: sku.to_string(),
        ..Audit::default()
    };
    let mut v = Vec::new();

    let mut product_items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .query()
            .table_name(store.table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(product_pk(sku)))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| read_failed("dynamodb Query")(e.into()))?;
        product_items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    let mut limit = None;
    let mut counters: HashMap<String, i64> = HashMap::new();
    for item in &product_items {
        let sk = item
            .get("sk")
            .and_then(|s| s.as_s().ok())
            .cloned()
            .unwrap_or_default();
        if sk == "META" {
            match decode_product(item) {
                Ok(p) => {
                    a.stock_added = p.stock_added;
                    limit = p.per_user_limit;
                }
                Err(e) => v.push(format!("product item unreadable: {e}")),
            }
        } else if sk.starts_with("SHARD#") {
            a.shards.push(n(item, "available").unwrap_or(i64::MIN));
        } else if let Some(user) = sk.strip_prefix("BUYER#") {
            counters.insert(user.to_owned(), n(item, "units").unwrap_or(i64::MIN));
        }
    }
    a.available = a.shards.iter().sum();
    for (i, s) in a.shards.iter().enumerate() {
        if *s < 0 {
            v.push(format!("shard {i} holds {s} units"));
        }
    }

    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(store.table())
            .filter_expression("begins_with(pk, :o) AND sku = :sku")
            .expression_attribute_values(":o", AttributeValue::S("ORDER#".into()))
            .expression_attribute_values(":sku", AttributeValue::S(sku.to_string()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| read_failed("dynamodb Scan")(e.into()))?;
        for item in page.items.unwrap_or_default() {
            match decode_order(&item) {
                Ok(o) => a.orders.push(o),
                Err(e) => v.push(format!("order item unreadable: {e}")),
            }
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }

    let mut held_by_user: HashMap<String, i64> = HashMap::new();
    for o in &a.orders {
        *a.by_status.entry(o.status.as_str()).or_default() += 1;
        if let Some(r) = o.reason.filter(|_| o.status == OrderStatus::Rejected) {
            *a.rejected_by.entry(r.as_str()).or_default() += 1;
        }
        let q = o.quantity.get();
        let taken: u32 = o.takes.iter().map(|t| t.units).sum();
        if o.status.holds_stock() {
            a.units_held += u64::from(q);
            if taken != q {
                v.push(format!("order {} holds {q} units but took {taken}", o.id));
            }
            if o.counted {
                *held_by_user.entry(o.owner.to_string()).or_default() += i64::from(q);
            }
        }
        match o.status {
            OrderStatus::Queued | OrderStatus::Rejected if taken != 0 => {
                v.push(format!("{} order {} took stock", o.status.as_str(), o.id))
            }
            OrderStatus::Canceled if taken != q => {
                v.push(format!("canceled order {} never held its units", o.id))
            }
            _ => {}
        }
        let reason_expected = matches!(o.status, OrderStatus::Rejected | OrderStatus::Canceled);
        if o.reason.is_some() != reason_expected {
            v.push(format!(
                "order {} is {} with reason {:?}",
                o.id,
                o.status.as_str(),
                o.reason
            ));
        }
        if o.expires_at.is_some() != (o.status == OrderStatus::Pending) {
            v.push(format!(
                "order {} is {} with expires_at {:?}",
                o.id,
                o.status.as_str(),
                o.expires_at
            ));
        }
    }
    if a.units_held > a.stock_added {
        v.push(format!(
            "oversold: {} units held, {} ever added",
            a.units_held, a.stock_added
        ));
    }
    if i128::from(a.stock_added) != i128::from(a.available) + i128::from(a.units_held) {
        v.push(format!(
            "conservation: added {} != available {} + held {}",
            a.stock_added, a.available, a.units_held
        ));
    }
    for (user, units) in &counters {
        let held = held_by_user.get(user).copied().unwrap_or(0);
        if *units != held {
            v.push(format!(
                "buyer {user}: counter {units} but holds {held} units"
            ));
        }
        if let Some(limit) = limit {
            if *units > i64::from(limit) {
                v.push(format!(
                    "buyer {user}: {units} units, above the limit {limit}"
                ));
            }
        }
    }
    for (user, held) in &held_by_user {
        if !counters.contains_key(user) && *held != 0 {
            v.push(format!(
                "buyer {user}: holds {held} counted units but has no counter"
            ));
        }
    }
    a.violations = v;
    Ok(a)
}
