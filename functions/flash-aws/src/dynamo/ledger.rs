//! The reads behind the invariant checks (the [`Ledger`] port, and [`audit`] for the tests, the
//! demo and the bench). Only reads: the rules are `flash_domain::invariant_check`'s.
//!
//! - [`tally_all`]: one streaming pass (a paginated consistent Scan, each page judged and
//!   dropped) feeding every item to its product's [`Tally`]; memory holds a tally per product,
//!   never the orders.
//! - [`audit_settled`]: one product re-read whole, between two reads of its shards, with each
//!   buyer whose counts disagree confirmed by one `TransactGetItems` (a serializable snapshot
//!   of their counters and orders). A product's orders live under their own keys, so without
//!   an index on the product (which every order write would pay for, on a hot product's
//!   single index partition) the re-read is a Scan filtered on the product.

use super::codec::{get_n, get_s, is_admitted};
use super::keys::{
    admit_key, admitted_of, buyer_key, buyer_of, is_order, is_shard, order_key, order_of,
    product_of, product_pk, Item, META, ORDER_PREFIX,
};
use super::{decode_order, decode_product, DynamoStore};
use aws_sdk_dynamodb::types::{AttributeValue, Get, TransactGetItem};
use flash_domain::invariant_check::{check_at, Admissions, Audit, Deadlines, Holdings, Tally};
use flash_domain::ports::{Ledger, PortError, PortResult};
use flash_domain::{OrderId, Sku, UserId};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Items per page of the streaming pass: what it holds at once (DynamoDB's own limit, 1 MB
/// a page, decodes to several times that).
const PAGE_ITEMS: i32 = 500;
/// `TransactGetItems` reads at most 100 items: a buyer's two counters and this many orders.
const CONFIRM_ORDERS: usize = 98;

fn scan_failed(e: impl Into<aws_sdk_dynamodb::Error>) -> PortError {
    PortError::unavailable("dynamodb Scan", e.into())
}

/// Everything the table holds about one product, read whole.
#[derive(Debug, Default)]
struct ProductRead {
    holdings: Holdings,
    admissions: Admissions,
    /// Items that could not be decoded: violations in their own right.
    unreadable: Vec<String>,
}

impl ProductRead {
    fn add(&mut self, item: &Item) {
        if get_s(item, "pk").is_some_and(is_order) {
            match decode_order(item) {
                Ok(o) => {
                    if is_admitted(item) {
                        self.admissions.orders.insert(o.id.clone());
                    }
                    self.holdings.orders.push(o);
                }
                Err(e) => self.unreadable.push(format!("order item unreadable: {e}")),
            }
            return;
        }
        let sk = get_s(item, "sk").unwrap_or_default();
        if sk == META {
            match decode_product(item) {
                Ok(p) => {
                    self.holdings.stock_added = p.stock_added;
                    self.holdings.per_user_limit = p.per_user_limit;
                }
                Err(e) => self
                    .unreadable
                    .push(format!("product item unreadable: {e}")),
            }
        } else if is_shard(sk) {
            self.holdings.shards.push(units(item, "available"));
        } else if let Some(user) = buyer_of(sk) {
            self.holdings
                .counters
                .insert(user.to_owned(), units(item, "units"));
        } else if let Some(user) = admitted_of(sk) {
            self.admissions
                .counts
                .insert(user.to_owned(), units(item, "admitted"));
        }
    }

    fn judge(self, sku: &Sku, deadlines: Option<&Deadlines>) -> Audit {
        let limit = self.holdings.per_user_limit;
        let mut a = check_at(sku, self.holdings, deadlines);
        let mut v = self.unreadable;
        v.append(&mut a.violations);
        v.extend(self.admissions.check(&a, limit));
        a.violations = v;
        a
    }

    /// Buyers whose counter or admission count disagrees with their orders as read, with
    /// what was read of them: (counter, admission count, counted units held, admitted units
    /// queued or held, their orders).
    fn buyers_in_doubt(&self) -> BTreeMap<String, Doubt> {
        let mut held: HashMap<&str, (i64, i64, Vec<&str>)> = HashMap::new();
        for o in &self.holdings.orders {
            let q = i64::from(o.quantity.get());
            let e = held.entry(o.owner.as_str()).or_default();
            e.2.push(o.id.as_str());
            if o.counted && o.status.holds_stock() {
                e.0 += q;
            }
            if self.admissions.orders.contains(&o.id) && o.status.admission_live() {
                e.1 += q;
            }
        }
        let users: BTreeSet<&str> = held
            .keys()
            .copied()
            .chain(self.holdings.counters.keys().map(String::as_str))
            .chain(self.admissions.counts.keys().map(String::as_str))
            .collect();
        let mut doubts = BTreeMap::new();
        for user in users {
            let counter = self.holdings.counters.get(user).copied();
            let count = self.admissions.counts.get(user).copied();
            let (counted, live, mut orders) = held.get(user).cloned().unwrap_or_default();
            if counter.unwrap_or(0) != counted || count.unwrap_or(0) != live {
                orders.sort_unstable();
                let orders = orders.into_iter().map(str::to_owned).collect();
                doubts.insert(user.to_owned(), (counter, count, counted, live, orders));
            }
        }
        doubts
    }
}

type Doubt = (Option<i64>, Option<i64>, i64, i64, Vec<String>);

/// A counter's value; an unreadable one is a value no rule accepts.
fn units(item: &Item, name: &str) -> i64 {
    get_n(item, name).unwrap_or(i64::MIN)
}

/// A consistent Scan of the table, filtered by `filter` (an expression and its values) if
/// given, `page_items` items a page if given: each item handed to `each` as its page arrives,
/// each page dropped before the next is read.
pub async fn scan_each(
    store: &DynamoStore,
    filter: Option<(&str, &[(&str, String)])>,
    page_items: Option<i32>,
    mut each: impl FnMut(&Item),
) -> PortResult<()> {
    let mut start = None;
    loop {
        let mut scan = store
            .client()
            .scan()
            .table_name(store.table())
            .consistent_read(true)
            .set_limit(page_items)
            .set_exclusive_start_key(start);
        if let Some((expression, values)) = filter {
            scan = scan.filter_expression(expression);
            for (name, value) in values {
                scan = scan.expression_attribute_values(*name, AttributeValue::S(value.clone()));
            }
        }
        let page = scan.send().await.map_err(scan_failed)?;
        for item in page.items.unwrap_or_default() {
            each(&item);
        }
        start = page.last_evaluated_key;
        if start.is_none() {
            return Ok(());
        }
    }
}

/// Every item of `sku` (its `META`, shards, buyers' counters) and every order naming it, from
/// one consistent Scan filtered on the product (`page_items` items read a page, if given).
async fn read_product(
    store: &DynamoStore,
    sku: &Sku,
    page_items: Option<i32>,
) -> PortResult<ProductRead> {
    let mut read = ProductRead::default();
    let meta_pk = product_pk(sku);
    let values = [
        (":meta", meta_pk.clone()),
        (":items", format!("{meta_pk}#")),
        (":o", ORDER_PREFIX.to_owned()),
        (":sku", sku.to_string()),
    ];
    let filter = "pk = :meta OR begins_with(pk, :items) OR (begins_with(pk, :o) AND sku = :sku)";
    scan_each(store, Some((filter, &values)), page_items, |item| {
        read.add(item)
    })
    .await?;
    Ok(read)
}

/// Reads everything the table holds about `sku` and checks it (no deadlines: a scenario's
/// orders are young). Not a snapshot: call it once the sale has settled.
pub async fn audit(store: &DynamoStore, sku: &Sku) -> PortResult<Audit> {
    Ok(read_product(store, sku, None).await?.judge(sku, None))
}

/// Reads everything the table holds about each of `skus` in one consistent Scan and checks
/// each (no deadlines), their orders held: for the bench's catalog, which a Scan per product
/// would read once per SKU. A SKU the table holds nothing of is left out. Not a snapshot:
/// call it once the sale has settled.
pub async fn audit_many(store: &DynamoStore, skus: &[Sku]) -> PortResult<Vec<Audit>> {
    let wanted: BTreeSet<&str> = skus.iter().map(Sku::as_str).collect();
    let mut reads: BTreeMap<String, ProductRead> = BTreeMap::new();
    scan_each(store, None, None, |item| {
        if let Some(sku) = sku_of(item).filter(|s| wanted.contains(s)) {
            reads.entry(sku.to_owned()).or_default().add(item);
        }
    })
    .await?;
    Ok(skus
        .iter()
        .filter_map(|s| reads.remove(s.as_str()).map(|r| r.judge(s, None)))
        .collect())
}

/// Every product, and every SKU an order names, judged from one streaming pass over the
/// table.
pub async fn tally_all(store: &DynamoStore, deadlines: &Deadlines) -> PortResult<Vec<Audit>> {
    tally_all_in_pages(store, deadlines, PAGE_ITEMS).await
}

/// [`tally_all`], `page_items` items a page.
async fn tally_all_in_pages(
    store: &DynamoStore,
    deadlines: &Deadlines,
    page_items: i32,
) -> PortResult<Vec<Audit>> {
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    scan_each(store, None, Some(page_items), |item| {
        tally_item(&mut tallies, item, deadlines)
    })
    .await?;
    Ok(tallies.into_values().map(Tally::finish).collect())
}

fn tally<'a>(
    tallies: &'a mut BTreeMap<String, Tally>,
    sku: &str,
    deadlines: &Deadlines,
) -> &'a mut Tally {
    tallies
        .entry(sku.to_owned())
        .or_insert_with(|| Tally::new(sku, *deadlines))
}

/// The product an item belongs to: an order's `sku` (empty when it names none, itself a
/// violation to report), the SKU in a product item's key; `None` for items that hold no stock
/// (rate buckets, idempotency records, ...).
fn sku_of(item: &Item) -> Option<&str> {
    let pk = get_s(item, "pk")?;
    if is_order(pk) {
        Some(get_s(item, "sku").unwrap_or_default())
    } else {
        product_of(pk)
    }
}

fn tally_item(tallies: &mut BTreeMap<String, Tally>, item: &Item, deadlines: &Deadlines) {
    let Some(sku) = sku_of(item) else { return };
    let t = tally(tallies, sku, deadlines);
    let pk = get_s(item, "pk").unwrap_or_default();
    if is_order(pk) {
        match decode_order(item) {
            Ok(o) => t.order(&o, is_admitted(item)),
            Err(e) => t.unreadable(format!("order item {pk} unreadable: {e}")),
        }
        return;
    }
    let sk = get_s(item, "sk").unwrap_or_default();
    if sk == META {
        match decode_product(item) {
            Ok(p) => t.product(p.stock_added, p.per_user_limit),
            Err(e) => t.unreadable(format!("product item unreadable: {e}")),
        }
    } else if is_shard(sk) {
        t.shard(units(item, "available"));
    } else if let Some(user) = buyer_of(sk) {
        t.counter(user, units(item, "units"));
    } else if let Some(user) = admitted_of(sk) {
        t.admission(user, units(item, "admitted"));
    }
}

/// `sku` re-read whole and judged, or `None` when stock moved while it was read (its shards
/// differ before and after) or a buyer in doubt is still ordering (their counts changed
/// between the re-read and their snapshot). Every change that moves units between the
/// shards and the orders writes a shard in the same transaction; changes that move no units
/// (an admission, a rejection) are settled buyer by buyer, by a snapshot of the buyer's
/// counters and orders.
pub async fn audit_settled(
    store: &DynamoStore,
    sku: &Sku,
    deadlines: &Deadlines,
) -> PortResult<Option<Audit>> {
    audit_settled_in_pages(store, sku, deadlines, None).await
}

async fn audit_settled_in_pages(
    store: &DynamoStore,
    sku: &Sku,
    deadlines: &Deadlines,
    page_items: Option<i32>,
) -> PortResult<Option<Audit>> {
    let Some(product) = store.get_product(sku).await? else {
        // No product item: the audit says what is wrong, and nothing moves stock.
        return Ok(Some(
            read_product(store, sku, page_items)
                .await?
                .judge(sku, Some(deadlines)),
        ));
    };
    let before = store.read_shards(&product).await?;
    let mut read = read_product(store, sku, page_items).await?;
    let after = store.read_shards(&product).await?;
    if before != after {
        return Ok(None);
    }
    let doubts = settle_buyers(store, sku, &mut read).await?;
    if doubts.as_ref().is_none_or(|d| !d.is_empty()) {
        // A buyer disagrees even in a snapshot of their known orders. An order placed after
        // the Scan passed its page raises the count before the order can be read, so only
        // the same disagreement, read again from the table, is one.
        let mut again = read_product(store, sku, page_items).await?;
        let still = settle_buyers(store, sku, &mut again).await?;
        if doubts.is_none() || still != doubts || store.read_shards(&product).await? != before {
            return Ok(None);
        }
        read = again;
    }
    Ok(Some(read.judge(sku, Some(deadlines))))
}

/// Each buyer in doubt in `read`, replaced by a snapshot of their counters and known orders
/// ([`confirm_buyer`]); those still in doubt after, or `None` when a buyer's counts moved.
async fn settle_buyers(
    store: &DynamoStore,
    sku: &Sku,
    read: &mut ProductRead,
) -> PortResult<Option<BTreeMap<String, Doubt>>> {
    for user in read.buyers_in_doubt().into_keys() {
        if !confirm_buyer(store, sku, &user, read).await? {
            return Ok(None);
        }
    }
    Ok(Some(read.buyers_in_doubt()))
}

/// Replaces what `read` holds about `user` with one snapshot of their counters and known
/// orders; `false` when their counters moved since `read` (an order placed or decided
/// meanwhile), so the reading cannot be trusted.
async fn confirm_buyer(
    store: &DynamoStore,
    sku: &Sku,
    user: &str,
    read: &mut ProductRead,
) -> PortResult<bool> {
    let Ok(id) = UserId::parse(user) else {
        return Ok(true);
    };
    if user.len() < 1000 {
        return Ok(true);
    }
    let orders: Vec<OrderId> = read
        .holdings
        .orders
        .iter()
        .filter(|o| o.owner.as_str() == user)
        .map(|o| o.id.clone())
        .collect();
    if orders.len() > CONFIRM_ORDERS {
        return Ok(true);
    }
    let keys = [buyer_key(sku, &id), admit_key(sku, &id)]
        .into_iter()
        .chain(orders.iter().map(order_key));
    let gets = keys
        .map(|key| {
            Get::builder()
                .table_name(store.table())
                .set_key(Some(key))
                .build()
                .map(|get| TransactGetItem::builder().get(get).build())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PortError::unavailable("building TransactGetItems", e))?;
    let snapshot = store
        .client()
        .transact_get_items()
        .set_transact_items(Some(gets))
        .send()
        .await
        .map_err(|e| PortError::unavailable("dynamodb TransactGetItems", e))?;
    let items: Vec<Option<Item>> = snapshot
        .responses
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.item)
        .collect();
    let counter = items.first().cloned().flatten().map(|i| units(&i, "units"));
    let count = items
        .get(1)
        .cloned()
        .flatten()
        .map(|i| units(&i, "admitted"));
    if counter != read.holdings.counters.get(user).copied()
        || count != read.admissions.counts.get(user).copied()
    {
        return Ok(false);
    }
    read.holdings.orders.retain(|o| o.owner.as_str() != user);
    for item in items.iter().skip(2).flatten() {
        let Some(id) = get_s(item, "pk").and_then(order_of) else {
            continue;
        };
        if let Ok(id) = OrderId::parse(id) {
            read.admissions.orders.remove(&id);
        }
        read.add(item);
    }
    Ok(true)
}

impl Ledger for DynamoStore {
    async fn tally_all(&self, deadlines: &Deadlines) -> PortResult<Vec<Audit>> {
        tally_all(self, deadlines).await
    }

    async fn audit_settled(&self, sku: &Sku, deadlines: &Deadlines) -> PortResult<Option<Audit>> {
        audit_settled(self, sku, deadlines).await
    }
}

/// The same reads in pages of `page_items` items. On DynamoDB Local a page is read at one
/// instant, so a small table read in one page never shows a transaction half done; the tests
/// read in small pages, as a large table is read on DynamoDB.
#[derive(Clone)]
pub struct PagedLedger {
    pub store: DynamoStore,
    pub page_items: i32,
}

impl Ledger for PagedLedger {
    async fn tally_all(&self, deadlines: &Deadlines) -> PortResult<Vec<Audit>> {
        tally_all_in_pages(&self.store, deadlines, self.page_items).await
    }

    async fn audit_settled(&self, sku: &Sku, deadlines: &Deadlines) -> PortResult<Option<Audit>> {
        audit_settled_in_pages(&self.store, sku, deadlines, Some(self.page_items)).await
    }
}
