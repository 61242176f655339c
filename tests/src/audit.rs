//! The invariant checker every scenario ends with. It reads the table itself, not what the
//! code under test believes, and lists each violation of the invariants in `DESIGN.md`.

use aws_sdk_dynamodb::types::AttributeValue;
use flash_aws::dynamo::{decode_order, decode_product, product_pk};
use flash_aws::DynamoStore;
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

    /// Invariants 1, 2, 3 and 5 (never oversell, conservation, one effect per order,
    /// consistent states). Panics listing every violation.
    pub fn assert_invariants(&self) -> &Self {
        assert!(
            self.violations.is_empty(),
            "invariants violated for {}:\n{}",
            self.sku,
            self.violations.join("\n")
        );
        self
    }

    /// Invariant 4: no order is left undecided.
    pub fn assert_all_decided(&self) -> &Self {
        assert_eq!(
            self.count(OrderStatus::Queued),
            0,
            "undecided orders for {}",
            self.sku
        );
        self
    }

    /// Nothing stranded: no order was refused as sold out while enough stock was left for it.
    /// Only meaningful when no stock came back after the sale (no cancels or refunds).
    pub fn assert_nothing_stranded(&self) -> &Self {
        for o in &self.orders {
            if o.reason == Some(Reason::SoldOut) {
                assert!(
                    i64::from(o.quantity.get()) > self.available,
                    "order {} for {} units rejected sold_out while {} were left",
                    o.id,
                    o.quantity.get(),
                    self.available
                );
            }
        }
        self
    }
}

fn n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// Reads everything the table holds about `sku` and checks it.
pub async fn audit(store: &DynamoStore, sku: &str) -> Audit {
    let client = store.client();
    let sku_t = Sku::parse(sku).expect("valid sku");
    let mut a = Audit {
        sku: sku.to_owned(),
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
            .expression_attribute_values(":pk", AttributeValue::S(product_pk(&sku_t)))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("query product partition");
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
            .expression_attribute_values(":sku", AttributeValue::S(sku.into()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan orders");
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
    a
}
