//! The invariant checker: reads everything the table holds about one product and lists each
//! violation of the invariants (never oversell, conservation, one effect per order, consistent
//! states, purchase counters and admission counts). Read-only; the tests end every scenario with it and the demo
//! refuses to report success without it.

use crate::dynamo::keys::{
    self, admitted_of, buyer_of, is_shard, order_of, product_of, product_pk, META, ORDER_PREFIX,
};
use crate::dynamo::{decode_order, decode_product, DynamoStore};
use aws_sdk_dynamodb::types::AttributeValue;
use flash_domain::ports::{PortError, PortResult};
use flash_domain::{Order, OrderId, OrderStatus, Reason, Sku};
use std::collections::{BTreeMap, HashMap, HashSet};

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

/// Everything the table holds about one product, as read: what [`check`] judges. The audit
/// reads it from DynamoDB; the tests' in-memory store builds it from its maps, so both are
/// judged by the same rules.
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

/// Reads everything the table holds about `sku` and checks it.
pub async fn audit(store: &DynamoStore, sku: &Sku) -> PortResult<Audit> {
    let client = store.client();
    let mut h = Holdings::default();
    // Items that could not be decoded: violations in their own right.
    let mut v = Vec::new();

    // A product's items span many partitions (its `META`, each shard, each buyer's
    // counters; see `dynamo`), and its orders live under their own keys: one consistent scan
    // finds them all.
    let mut admissions = Admissions::default();
    let meta_pk = product_pk(sku);
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(store.table())
            .filter_expression(
                "pk = :meta OR begins_with(pk, :items) OR (begins_with(pk, :o) AND sku = :sku)",
            )
            .expression_attribute_values(":meta", AttributeValue::S(meta_pk.clone()))
            .expression_attribute_values(":items", AttributeValue::S(format!("{meta_pk}#")))
            .expression_attribute_values(":o", AttributeValue::S(ORDER_PREFIX.into()))
            .expression_attribute_values(":sku", AttributeValue::S(sku.to_string()))
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| read_failed("dynamodb Scan")(e.into()))?;
        for item in page.items.unwrap_or_default() {
            if is_order(&item) {
                add_order_item(&mut h, &mut v, &item);
                admissions.add_order_item(&item);
            } else {
                add_product_item(&mut h, &mut v, &item);
                admissions.add_product_item(&item);
            }
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    let limit = h.per_user_limit;
    let mut a = check(sku, h);
    v.append(&mut a.violations);
    v.extend(admissions.check(&a, limit));
    a.violations = v;
    Ok(a)
}

/// The admission counts of one product (`ADMIT#{user}` items: units of a buyer's orders that
/// `place-order` counted against the per-user limit) and the orders counted in them (those
/// carrying `admitted`), as read.
#[derive(Debug, Default, Clone)]
pub struct Admissions {
    /// `admitted` of each count item, by user id.
    pub counts: HashMap<String, i64>,
    pub orders: HashSet<OrderId>,
}

impl Admissions {
    fn add_product_item(&mut self, item: &Item) {
        let sk = item.get("sk").and_then(|s| s.as_s().ok());
        if let Some(user) = sk.and_then(|sk| admitted_of(sk)) {
            self.counts
                .insert(user.to_owned(), n(item, "admitted").unwrap_or(i64::MIN));
        }
    }

    fn add_order_item(&mut self, item: &Item) {
        let admitted = item.get("admitted").and_then(|v| v.as_bool().ok()) == Some(&true);
        let id = item
            .get("pk")
            .and_then(|v| v.as_s().ok())
            .and_then(|pk| order_of(pk))
            .and_then(|id| OrderId::parse(id).ok());
        if let (true, Some(id)) = (admitted, id) {
            self.orders.insert(id);
        }
    }

    /// Each count equals the units of its buyer's counted orders that are still queued or
    /// hold stock (a rejection, cancel, refund or timeout gives them back, so none is
    /// stranded), and none passes the limit.
    pub fn check(&self, audit: &Audit, limit: Option<u32>) -> Vec<String> {
        let mut v = Vec::new();
        let mut live: HashMap<String, i64> = HashMap::new();
        for o in audit.orders.iter().filter(|o| self.orders.contains(&o.id)) {
            if o.status == OrderStatus::Queued || o.status.holds_stock() {
                *live.entry(o.owner.to_string()).or_default() += i64::from(o.quantity.get());
            }
        }
        for (user, count) in &self.counts {
            let held = live.get(user).copied().unwrap_or(0);
            if *count != held {
                v.push(format!(
                    "buyer {user}: admission count {count} but {held} units queued or held"
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
                    "buyer {user}: {held} units admitted but no admission count"
                ));
            }
        }
        v
    }
}

type Item = HashMap<String, AttributeValue>;

/// Adds one item of a product (`META`, a shard, a buyer counter) to `h`; an item
/// that cannot be read is noted in `unreadable`.
fn add_product_item(h: &mut Holdings, unreadable: &mut Vec<String>, item: &Item) {
    let sk = item
        .get("sk")
        .and_then(|s| s.as_s().ok())
        .cloned()
        .unwrap_or_default();
    if sk == META {
        match decode_product(item) {
            Ok(p) => {
                h.stock_added = p.stock_added;
                h.per_user_limit = p.per_user_limit;
            }
            Err(e) => unreadable.push(format!("product item unreadable: {e}")),
        }
    } else if is_shard(&sk) {
        h.shards.push(n(item, "available").unwrap_or(i64::MIN));
    } else if let Some(user) = buyer_of(&sk) {
        h.counters
            .insert(user.to_owned(), n(item, "units").unwrap_or(i64::MIN));
    }
}

fn is_order(item: &Item) -> bool {
    item.get("pk")
        .and_then(|v| v.as_s().ok())
        .is_some_and(|pk| keys::is_order(pk))
}

fn add_order_item(h: &mut Holdings, unreadable: &mut Vec<String>, item: &Item) {
    match decode_order(item) {
        Ok(o) => h.orders.push(o),
        Err(e) => unreadable.push(format!("order item unreadable: {e}")),
    }
}

/// Judges what the table holds about `sku`: every violation of the invariants, listed.
pub fn check(sku: &Sku, h: Holdings) -> Audit {
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
        available: shards.iter().sum(),
        shards,
        orders,
        ..Audit::default()
    };
    let mut v = Vec::new();
    for (i, s) in a.shards.iter().enumerate() {
        if *s < 0 {
            v.push(format!("shard {i} holds {s} units"));
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

/// [`check`] with the items that could not be read listed first, as [`audit`] reports them.
fn judge(sku: &str, h: Holdings, mut unreadable: Vec<String>) -> Audit {
    match Sku::parse(sku) {
        Ok(sku) => {
            let mut a = check(&sku, h);
            unreadable.append(&mut a.violations);
            a.violations = unreadable;
            a
        }
        // Only order items can get here, with an `sku` no product can have.
        Err(_) => {
            unreadable.push(format!(
                "{} order(s) name the invalid sku {sku:?}",
                h.orders.len()
            ));
            Audit {
                sku: sku.to_owned(),
                violations: unreadable,
                ..Audit::default()
            }
        }
    }
}

/// Every product in the table, and every SKU an order names, audited from one consistent
/// scan of the whole table (not one per product). A scan is not a snapshot: while stock
/// moves, a product can look wrong in it; [`audit_settled`] tells.
pub async fn audit_all(store: &DynamoStore) -> PortResult<Vec<Audit>> {
    let mut found: BTreeMap<String, (Holdings, Vec<String>)> = BTreeMap::new();
    let mut start = None;
    loop {
        let page = store
            .client()
            .scan()
            .table_name(store.table())
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| read_failed("dynamodb Scan")(e.into()))?;
        for item in page.items.unwrap_or_default() {
            let pk = item.get("pk").and_then(|v| v.as_s().ok());
            if let Some(sku) = pk.and_then(|pk| product_of(pk)) {
                let (h, v) = found.entry(sku.to_owned()).or_default();
                add_product_item(h, v, &item);
            } else if pk.is_some_and(|pk| keys::is_order(pk)) {
                let sku = item
                    .get("sku")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                let (h, v) = found.entry(sku).or_default();
                add_order_item(h, v, &item);
            }
            // Other items (rate buckets, ...) hold no stock.
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    Ok(found
        .into_iter()
        .map(|(sku, (h, unreadable))| judge(&sku, h, unreadable))
        .collect())
}

/// [`audit`] between two reads of the product's shards: `None` when stock moved meanwhile.
/// Every change that moves units between the shards and the orders (accept, cancel, refund,
/// timeout, new stock) writes a shard in the same transaction, so a reading between two
/// equal ones saw no such change half done (short of changes that cancel out exactly).
pub async fn audit_settled(store: &DynamoStore, sku: &Sku) -> PortResult<Option<Audit>> {
    use flash_domain::ports::Store;
    let Some(product) = store.get_product(sku).await? else {
        // No product item: the audit says what is wrong, and nothing moves stock.
        return audit(store, sku).await.map(Some);
    };
    let before = store.read_shards(&product).await?;
    let a = audit(store, sku).await?;
    let after = store.read_shards(&product).await?;
    Ok((before == after).then_some(a))
}

/// The reads the reconciler makes, behind a trait so it can run on the tests' in-memory
/// store. Read-only.
pub trait Ledger: Send + Sync {
    /// Every product, each audited (see [`audit_all`]).
    fn audit_all(&self) -> impl std::future::Future<Output = PortResult<Vec<Audit>>> + Send;
    /// One product, audited while its stock stood still (see [`audit_settled`]).
    fn audit_settled(
        &self,
        sku: &Sku,
    ) -> impl std::future::Future<Output = PortResult<Option<Audit>>> + Send;
}

impl Ledger for DynamoStore {
    async fn audit_all(&self) -> PortResult<Vec<Audit>> {
        audit_all(self).await
    }

    async fn audit_settled(&self, sku: &Sku) -> PortResult<Option<Audit>> {
        audit_settled(self, sku).await
    }
}
