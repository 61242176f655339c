//! The single-table DynamoDB store. Item layout (`pk`, `sk`):
//!
//! | item            | pk                              | sk             | attributes |
//! |-----------------|---------------------------------|----------------|------------|
//! | product         | `PRODUCT#{sku}`                 | `META`         | name, stock_added, per_user_limit, sale window, payment window, shards, sold_out, restocks |
//! | stock shard     | `PRODUCT#{sku}#SHARD#{nnn}`     | `SHARD#{nnn}`  | available |
//! | buyer counter   | `PRODUCT#{sku}#USER#{user}`     | `BUYER#{user}` | units |
//! | admission count | `PRODUCT#{sku}#USER#{user}`     | `ADMIT#{user}` | admitted |
//! | order           | `ORDER#{id}`                    | `ORDER`        | owner, sku, quantity, status, reason, times, fingerprint, takes, counted, admitted, ttl (rejected only) |
//! | rate bucket     | `RATE#{user}`                   | `RATE`         | tat, ttl |
//!
//! Every change is a conditional write: the condition is the optimistic lock, and a failed
//! condition is a business answer, decoded from the values DynamoDB returns with it.
//!
//! Each stock shard has a partition key of its own (write sharding): DynamoDB caps one
//! partition at 1,000 write units/s and splits a hot one only after throttling it for a while,
//! so shards that shared `PRODUCT#{sku}` would share one budget just when the sale opens.
//! The per-buyer counters leave the product's partition for the same reason: with a per-user
//! limit every admission writes one and every group commit one per buyer, which on one
//! partition would cap a limited product near 500 admissions/s. Both counters of one buyer
//! share a partition, which only that buyer's (rate-limited) requests write. The product's
//! `META` item keeps `PRODUCT#{sku}`. A SKU holds no `#` ([`Sku::parse`]), so a key names its
//! product unambiguously ([`product_of`]).
//!
//! The buyer counter holds the units of a buyer's accepted orders (raised by the group commit);
//! the admission count holds the units of their queued and accepted orders (raised when
//! `place-order` admits an order of a product with a per-user limit), so a buyer cannot queue
//! more than the limit. An order counted there carries `admitted`, and every write that takes
//! it out of those states (reject, cancel, refund, payment timeout) lowers the count in the
//! same transaction.

use crate::errors::{port_error, DEGRADED_TRANSACTION_REASONS};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::{PutItemError, PutItemOutput};
use aws_sdk_dynamodb::operation::transact_write_items::{
    TransactWriteItemsError, TransactWriteItemsOutput,
};
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, KeysAndAttributes, Put, ReturnConsumedCapacity, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use flash_domain::backoff::jittered;
use flash_domain::clock::Millis;
use flash_domain::expiry::Window;
use flash_domain::order::ShardTake;
use flash_domain::ports::{
    Advance, Commit, CommitRefused, CreateOrder, PortError, PortResult, ShardStock, Store,
};
use flash_domain::token_bucket::{micros, Micros, Take, TokenBucket};
use flash_domain::{Order, OrderId, OrderStatus, Product, Quantity, Reason, Sku, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Item = HashMap<String, AttributeValue>;

pub fn product_pk(sku: &Sku) -> String {
    format!("PRODUCT#{sku}")
}
pub const META: &str = "META";
pub fn shard_pk(sku: &Sku, shard: u32) -> String {
    format!("PRODUCT#{sku}#SHARD#{shard:03}")
}
pub fn shard_sk(shard: u32) -> String {
    format!("SHARD#{shard:03}")
}
/// The partition of one buyer's counters of one product.
pub fn user_pk(sku: &Sku, user: &UserId) -> String {
    format!("PRODUCT#{sku}#USER#{user}")
}
pub fn buyer_sk(user: &UserId) -> String {
    format!("BUYER#{user}")
}
pub fn admit_sk(user: &UserId) -> String {
    format!("ADMIT#{user}")
}
/// The key of a product's `META` item.
pub fn product_key(sku: &Sku) -> Item {
    key(product_pk(sku), META)
}
pub fn shard_key(sku: &Sku, shard: u32) -> Item {
    key(shard_pk(sku, shard), shard_sk(shard))
}
pub fn buyer_key(sku: &Sku, user: &UserId) -> Item {
    key(user_pk(sku, user), buyer_sk(user))
}
pub fn admit_key(sku: &Sku, user: &UserId) -> Item {
    key(user_pk(sku, user), admit_sk(user))
}
/// The SKU of any item of a product (its `META`, a shard, a buyer's counters), from its `pk`.
pub fn product_of(pk: &str) -> Option<&str> {
    let rest = pk.strip_prefix("PRODUCT#")?;
    Some(rest.split_once('#').map_or(rest, |(sku, _)| sku))
}
/// The shard number of a shard item's `sk`.
pub fn shard_of(sk: &str) -> Option<u32> {
    sk.strip_prefix("SHARD#")?.parse().ok()
}
pub fn rate_pk(user: &UserId) -> String {
    format!("RATE#{user}")
}
pub const RATE_SK: &str = "RATE";
pub fn order_pk(id: &OrderId) -> String {
    format!("ORDER#{id}")
}
pub const ORDER_SK: &str = "ORDER";

/// `queued → rejected`, and the order's expiry: a rejected order holds nothing, and after
/// [`REJECTED_KEPT_S`] it need not answer replays of its key any more.
const REJECT: &str = "SET #status = :rejected, reason = :reason, updated_at = :now, #ttl = :ttl";
/// How long a rejected order stays (DynamoDB's TTL removes it after): a week, well past the
/// 24 hours an Idempotency-Key must be honoured. Orders that hold or held stock stay.
pub const REJECTED_KEPT_S: i64 = 7 * 24 * 3600;

fn rejected_ttl(now: Millis) -> i64 {
    now / 1000 + REJECTED_KEPT_S
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}
fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

#[derive(Debug, thiserror::Error)]
#[error("stored item is malformed: {0}")]
struct Malformed(&'static str);

fn malformed(what: &'static str) -> PortError {
    PortError::unavailable("decoding item", Malformed(what))
}

fn encode_takes(takes: &[ShardTake]) -> String {
    takes
        .iter()
        .map(|t| format!("{}:{}", t.shard, t.units))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_takes(s: &str) -> Option<Vec<ShardTake>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',')
        .map(|p| {
            let (a, b) = p.split_once(':')?;
            Some(ShardTake {
                shard: a.parse().ok()?,
                units: b.parse().ok()?,
            })
        })
        .collect()
}

pub fn decode_order(item: &Item) -> PortResult<Order> {
    let id = get_s(item, "pk")
        .and_then(|pk| pk.strip_prefix("ORDER#"))
        .and_then(|id| OrderId::parse(id).ok())
        .ok_or_else(|| malformed("order id"))?;
    Ok(Order {
        id,
        owner: get_s(item, "owner")
            .and_then(|u| UserId::parse(u).ok())
            .ok_or_else(|| malformed("owner"))?,
        sku: get_s(item, "sku")
            .and_then(|v| Sku::parse(v).ok())
            .ok_or_else(|| malformed("sku"))?,
        quantity: get_n::<u32>(item, "quantity")
            .and_then(|q| Quantity::new(q).ok())
            .ok_or_else(|| malformed("quantity"))?,
        status: get_s(item, "status")
            .and_then(OrderStatus::parse)
            .ok_or_else(|| malformed("status"))?,
        reason: get_s(item, "reason").and_then(Reason::parse),
        created_at: get_n(item, "created_at").ok_or_else(|| malformed("created_at"))?,
        updated_at: get_n(item, "updated_at").ok_or_else(|| malformed("updated_at"))?,
        expires_at: get_n(item, "expires_at"),
        fingerprint: get_s(item, "fingerprint").unwrap_or_default().to_owned(),
        takes: decode_takes(get_s(item, "takes").unwrap_or_default())
            .ok_or_else(|| malformed("takes"))?,
        counted: item
            .get("counted")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
    })
}

fn encode_order(o: &Order) -> Item {
    let mut item = key(order_pk(&o.id), ORDER_SK);
    item.insert("owner".into(), s(o.owner.as_str()));
    item.insert("sku".into(), s(o.sku.as_str()));
    item.insert("quantity".into(), n(o.quantity.get()));
    item.insert("status".into(), s(o.status.as_str()));
    if let Some(r) = o.reason {
        item.insert("reason".into(), s(r.as_str()));
    }
    item.insert("created_at".into(), n(o.created_at));
    item.insert("updated_at".into(), n(o.updated_at));
    if let Some(e) = o.expires_at {
        item.insert("expires_at".into(), n(e));
    }
    item.insert("fingerprint".into(), s(&o.fingerprint));
    item.insert("takes".into(), s(encode_takes(&o.takes)));
    item.insert("counted".into(), AttributeValue::Bool(o.counted));
    item
}

pub fn decode_product(item: &Item) -> PortResult<Product> {
    let sku = get_s(item, "pk")
        .and_then(|pk| pk.strip_prefix("PRODUCT#"))
        .and_then(|v| Sku::parse(v).ok())
        .ok_or_else(|| malformed("product sku"))?;
    Ok(Product {
        sku,
        name: get_s(item, "name").unwrap_or_default().to_owned(),
        stock_added: get_n(item, "stock_added").ok_or_else(|| malformed("stock_added"))?,
        per_user_limit: get_n(item, "per_user_limit"),
        sale_starts_at: get_n(item, "sale_starts_at"),
        sale_ends_at: get_n(item, "sale_ends_at"),
        payment_window_seconds: get_n(item, "payment_window_seconds").unwrap_or(900),
        shards: get_n(item, "shards").filter(|&n: &u32| n > 0).unwrap_or(1),
        sold_out: item
            .get("sold_out")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        restocks: get_n(item, "restocks").unwrap_or(0),
    })
}

fn encode_product(p: &Product) -> Item {
    let mut item = product_key(&p.sku);
    item.insert("name".into(), s(&p.name));
    item.insert("stock_added".into(), n(p.stock_added));
    item.insert("payment_window_seconds".into(), n(p.payment_window_seconds));
    item.insert("shards".into(), n(p.shards));
    for (name, v) in [
        ("per_user_limit", p.per_user_limit.map(i64::from)),
        ("sale_starts_at", p.sale_starts_at),
        ("sale_ends_at", p.sale_ends_at),
    ] {
        if let Some(v) = v {
            item.insert(name.into(), n(v));
        }
    }
    item
}

fn sdk<E>(
    what: &'static str,
) -> impl FnOnce(SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>) -> PortError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
{
    move |e| port_error(what, e)
}

/// Whether the order item carries the `admitted` flag (see the module header).
fn is_admitted(item: &Item) -> bool {
    item.get("admitted")
        .and_then(|v| v.as_bool().ok())
        .copied()
        .unwrap_or(false)
}

/// A transaction canceled for reasons other than a failed condition: throttled items mean
/// the table is shedding load; anything else (a conflict with another transaction) is
/// contention, safe to retry.
fn canceled_error(reasons: &[(Option<String>, Option<Item>)]) -> PortError {
    let codes: Vec<&str> = reasons.iter().filter_map(|(c, _)| c.as_deref()).collect();
    if codes
        .iter()
        .any(|c| DEGRADED_TRANSACTION_REASONS.contains(c))
    {
        PortError::degraded(
            "dynamodb TransactWriteItems",
            format!("transaction canceled: {}", codes.join(", ")),
        )
    } else {
        PortError::Contention
    }
}

/// Transactions that reject an order counted at admission, before giving up on conflicts.
const REJECT_ATTEMPTS: usize = 3;

/// How long a stock return keeps trying against conflicts with other transactions on its
/// items (returns to the same shard, the processor's commits there) before giving up: each
/// lost try means another writer got through, so the queue on the shard moves, but a storm
/// of returns (unpaid orders expiring together) can queue dozens on one shard. Well inside the
/// functions' 10 s timeout, and better than a `503` for the buyer.
const RETURN_PATIENCE: Duration = Duration::from_secs(4);
/// The first wait after a lost try, doubling after each ("full jitter" below it), and its cap.
const RETURN_BACKOFF: Duration = Duration::from_millis(10);
const RETURN_BACKOFF_CAP: Duration = Duration::from_millis(400);
/// Single-item writes to the product item before giving up on conflicts with a transaction
/// on it (new stock, rare).
const RESTOCK_ATTEMPTS: u32 = 5;

/// Rate buckets remembered per caller, at most this many: each is only a hint.
const RATE_HINTS: usize = 10_000;
/// Conditional writes to take a token before giving up on a bucket other instances keep
/// changing under us.
const RATE_ATTEMPTS: usize = 4;

/// A failed transaction: either some conditions failed (with the items as they are now) or it
/// was something else.
enum TxFailure {
    Canceled(Vec<(Option<String>, Option<Item>)>),
    Other(PortError),
}

/// Write traffic as this process sent it: what a hot product costs, counted where it happens.
#[derive(Debug, Default)]
pub struct WriteStats {
    requests: AtomicU64,
    /// Write capacity units DynamoDB reported consuming, in thousandths.
    milli_units: AtomicU64,
    /// Write attempts on stock shard items, the hot ones; failed attempts count too, since on
    /// DynamoDB a failed conditional write still spends the item's write budget.
    stock_item_writes: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WriteCounts {
    pub write_requests: u64,
    pub write_units: f64,
    pub stock_item_writes: u64,
}

impl WriteStats {
    pub fn snapshot(&self) -> WriteCounts {
        WriteCounts {
            write_requests: self.requests.load(Relaxed),
            write_units: self.milli_units.load(Relaxed) as f64 / 1000.0,
            stock_item_writes: self.stock_item_writes.load(Relaxed),
        }
    }

    /// Counts one write request and the capacity DynamoDB says it consumed (none is known when
    /// it failed); `stock_items` of its items are stock shards.
    fn record<T: Consumed, E>(&self, result: &Result<T, E>, stock_items: usize) {
        self.requests.fetch_add(1, Relaxed);
        self.stock_item_writes
            .fetch_add(stock_items as u64, Relaxed);
        let consumed = result.as_ref().map(Consumed::consumed).unwrap_or_default();
        let units: f64 = consumed.iter().filter_map(|c| c.capacity_units).sum();
        self.milli_units
            .fetch_add((units * 1000.0).round() as u64, Relaxed);
    }
}

/// The capacity a write's output reports, asked for with `ReturnConsumedCapacity::Total`.
trait Consumed {
    fn consumed(&self) -> &[ConsumedCapacity];
}

impl Consumed for PutItemOutput {
    fn consumed(&self) -> &[ConsumedCapacity] {
        self.consumed_capacity.as_slice()
    }
}

impl Consumed for UpdateItemOutput {
    fn consumed(&self) -> &[ConsumedCapacity] {
        self.consumed_capacity.as_slice()
    }
}

impl Consumed for TransactWriteItemsOutput {
    fn consumed(&self) -> &[ConsumedCapacity] {
        self.consumed_capacity.as_deref().unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    stats: Arc<WriteStats>,
    rate_limit: Option<TokenBucket>,
    /// The last `tat` this process saw for each caller's bucket. `tat` only grows, so a
    /// remembered value is a lower bound: it picks the right write first, and when it already
    /// says the bucket is empty the request is refused after a read, without a write.
    rate_hints: Arc<Mutex<HashMap<UserId, Micros>>>,
}

impl DynamoStore {
    /// A store with the default rate limit on write routes
    /// ([`crate::config::default_rate_limit`]).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            stats: Arc::default(),
            rate_limit: crate::config::default_rate_limit(),
            rate_hints: Arc::default(),
        }
    }

    /// Sets the per-caller token bucket [`Store::take_token`] takes from; `None` admits
    /// everything.
    pub fn with_rate_limit(mut self, bucket: Option<TokenBucket>) -> Self {
        self.rate_limit = bucket;
        self
    }

    pub fn rate_limit(&self) -> Option<TokenBucket> {
        self.rate_limit
    }

    fn rate_hint(&self, user: &UserId) -> Option<Micros> {
        self.rate_hints
            .lock()
            .ok()
            .and_then(|h| h.get(user).copied())
    }

    /// The stored `tat` of `user`'s bucket, read consistently.
    async fn read_rate(&self, user: &UserId) -> PortResult<Option<Micros>> {
        let resp = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(rate_pk(user), RATE_SK)))
            .projection_expression("tat")
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("dynamodb GetItem"))?;
        Ok(resp.item.as_ref().and_then(|i| get_n(i, "tat")))
    }

    fn remember_rate(&self, user: &UserId, tat: Option<Micros>) {
        let (Some(tat), Ok(mut hints)) = (tat, self.rate_hints.lock()) else {
            return;
        };
        if hints.len() >= RATE_HINTS && !hints.contains_key(user) {
            hints.clear();
        }
        let known = hints.entry(user.clone()).or_insert(tat);
        *known = (*known).max(tat);
    }

    pub fn from_config(sdk: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), table)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn stats(&self) -> &Arc<WriteStats> {
        &self.stats
    }

    fn update(&self, key: Item) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    /// One transaction; `stock_items` of its items are stock shards.
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        stock_items: usize,
    ) -> Result<(), TxFailure> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.stats.record(&result, stock_items);
        match result {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    Err(TxFailure::Canceled(
                        c.cancellation_reasons()
                            .iter()
                            .map(|r| (r.code().map(str::to_owned), r.item().cloned()))
                            .collect(),
                    ))
                }
                _ => Err(TxFailure::Other(port_error(
                    "dynamodb TransactWriteItems",
                    e,
                ))),
            },
        }
    }

    async fn batch_get(&self, keys: Vec<Item>) -> PortResult<Vec<Item>> {
        let mut out = Vec::new();
        // BatchGetItem takes at most 100 keys and may hand some back unprocessed.
        for chunk in keys.chunks(100) {
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| PortError::unavailable("building BatchGetItem", e))?,
            );
            let mut rounds = 0;
            while let Some(req) = request.take() {
                rounds += 1;
                if rounds > 10 {
                    return Err(PortError::Contention);
                }
                let resp = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, req)
                    .send()
                    .await
                    .map_err(sdk("dynamodb BatchGetItem"))?;
                if let Some(mut r) = resp.responses {
                    out.extend(r.remove(&self.table).unwrap_or_default());
                }
                request = resp
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
                if request.is_some() {
                    tokio::time::sleep(std::time::Duration::from_millis(20 * rounds)).await;
                }
            }
        }
        Ok(out)
    }
}

impl DynamoStore {
    /// `queued` → `rejected` for an order counted at admission, giving its units back to the
    /// buyer's admission count in the same transaction.
    async fn reject_admitted(
        &self,
        order: &Order,
        reason: Reason,
        now: Millis,
    ) -> PortResult<bool> {
        let build = |u: aws_sdk_dynamodb::types::builders::UpdateBuilder| {
            u.build()
                .map(|u| TransactWriteItem::builder().update(u).build())
                .map_err(|e| PortError::unavailable("building Update", e))
        };
        let items = vec![
            build(
                self.update(key(order_pk(&order.id), ORDER_SK))
                    .update_expression(REJECT)
                    .condition_expression("#status = :queued")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_names("#ttl", "ttl")
                    .expression_attribute_values(":rejected", s("rejected"))
                    .expression_attribute_values(":queued", s("queued"))
                    .expression_attribute_values(":reason", s(reason.as_str()))
                    .expression_attribute_values(":now", n(now))
                    .expression_attribute_values(":ttl", n(rejected_ttl(now))),
            )?,
            build(self.give_back_admission(order))?,
        ];
        // One buyer's orders are rejected concurrently, and each of these transactions writes
        // the buyer's one count item: on DynamoDB they can cancel each other
        // (`TransactionConflict`). Conditional on `queued`, so trying again is safe.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.transact(items.clone(), 0).await {
                Ok(()) => return Ok(true),
                Err(TxFailure::Canceled(r)) if r.first().is_some_and(|(c, _)| is_ccf(c)) => {
                    return Ok(false)
                }
                Err(TxFailure::Canceled(r)) => {
                    let error = canceled_error(&r);
                    if attempt >= REJECT_ATTEMPTS || error.is_degraded() {
                        return Err(error);
                    }
                    let jitter = rand::random_range(5..=20 * attempt as u64);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(TxFailure::Other(e)) => return Err(e),
            }
        }
    }

    /// Lowers the buyer's admission count by the order's units.
    fn give_back_admission(
        &self,
        order: &Order,
    ) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        self.update(admit_key(&order.sku, &order.owner))
            .update_expression("ADD admitted :minus")
            .expression_attribute_values(":minus", n(-i64::from(order.quantity.get())))
    }
}

fn is_ccf(code: &Option<String>) -> bool {
    code.as_deref() == Some("ConditionalCheckFailed")
}

impl DynamoStore {
    /// One conditional put of a new order; `Ok(None)` when it met another writer's
    /// transaction on the order item.
    async fn put_order(&self, order: &Order) -> PortResult<Option<CreateOrder>> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(encode_order(order)))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.stats.record(&result, 0);
        match result {
            Ok(_) => Ok(Some(CreateOrder::Created)),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(c)) => {
                    let item = c
                        .item
                        .as_ref()
                        .ok_or_else(|| malformed("missing old order"))?;
                    Ok(Some(CreateOrder::Exists(decode_order(item)?)))
                }
                Some(PutItemError::TransactionConflictException(_)) => Ok(None),
                _ => Err(port_error("dynamodb PutItem", e)),
            },
        }
    }

    /// One transaction writing a new order and raising the buyer's admission count; `Ok(None)`
    /// when it met another writer's transaction on one of the two items.
    async fn put_limited_order(
        &self,
        order: &Order,
        limit: u32,
    ) -> PortResult<Option<CreateOrder>> {
        let q = order.quantity.get();
        let Some(max) = limit.checked_sub(q) else {
            // More than the limit in one order: never admitted, nothing written.
            return Ok(Some(CreateOrder::LimitReached { admitted: 0 }));
        };
        let mut item = encode_order(order);
        item.insert("admitted".into(), AttributeValue::Bool(true));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| PortError::unavailable("building Put", e))?;
        // Condition expressions cannot add, so `admitted + q <= limit` is written as
        // `admitted <= limit - q`.
        let admit = self
            .update(admit_key(&order.sku, &order.owner))
            .update_expression("ADD admitted :q")
            .condition_expression("attribute_not_exists(admitted) OR admitted <= :max")
            .expression_attribute_values(":q", n(q))
            .expression_attribute_values(":max", n(max))
            .build()
            .map_err(|e| PortError::unavailable("building Update", e))?;
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(admit).build(),
        ];
        let reasons = match self.transact(items, 0).await {
            Ok(()) => return Ok(Some(CreateOrder::Created)),
            Err(TxFailure::Other(e)) => return Err(e),
            Err(TxFailure::Canceled(r)) => r,
        };
        // A replay first, whatever the counter says: the original order is the answer.
        if let Some((code, old)) = reasons.first() {
            if is_ccf(code) {
                let item = old.as_ref().ok_or_else(|| malformed("missing old order"))?;
                return Ok(Some(CreateOrder::Exists(decode_order(item)?)));
            }
        }
        match reasons.get(1) {
            Some((code, old)) if is_ccf(code) => Ok(Some(CreateOrder::LimitReached {
                admitted: old.as_ref().and_then(|i| get_n(i, "admitted")).unwrap_or(0),
            })),
            _ => match canceled_error(&reasons) {
                PortError::Contention => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Writes a new order with `attempt`, through conflicts with other writers' transactions.
    /// A replay's put meets the processor's transaction on the order it names (deciding it);
    /// a limited order's also meets the buyer's other orders on their admission count. Neither
    /// is a reason for a `503`: the stored order, once there, is the answer the put would have
    /// given, and with none stored the write is tried again after a jittered wait, for as long
    /// as a stock return would try ([`RETURN_PATIENCE`]).
    async fn create_despite_conflicts<F>(
        &self,
        order: &Order,
        attempt: impl Fn() -> F,
    ) -> PortResult<CreateOrder>
    where
        F: std::future::Future<Output = PortResult<Option<CreateOrder>>>,
    {
        let started = tokio::time::Instant::now();
        let mut conflicts = 0;
        loop {
            // Boxed: the two writes are large futures, and callers nest this one deep.
            if let Some(created) = Box::pin(attempt()).await? {
                return Ok(created);
            }
            if let Some(stored) = self.get_order(&order.id).await? {
                return Ok(CreateOrder::Exists(stored));
            }
            conflicts += 1;
            let wait = jittered(RETURN_BACKOFF, RETURN_BACKOFF_CAP, conflicts);
            if started.elapsed() + wait > RETURN_PATIENCE {
                return Err(PortError::Contention);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl Store for DynamoStore {
    async fn get_product(&self, sku: &Sku) -> PortResult<Option<Product>> {
        let resp = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(product_key(sku)))
            .send()
            .await
            .map_err(sdk("dynamodb GetItem"))?;
        resp.item.as_ref().map(decode_product).transpose()
    }

    async fn create_product(&self, product: &Product, stock: &[(u32, u64)]) -> PortResult<bool> {
        let mut items = vec![TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(encode_product(product)))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(|e| PortError::unavailable("building Put", e))?,
            )
            .build()];
        for shard in 0..product.shards {
            let units = stock
                .iter()
                .find(|(s, _)| *s == shard)
                .map_or(0, |(_, u)| *u);
            let mut item = shard_key(&product.sku, shard);
            item.insert("available".into(), n(units));
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(item))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .map_err(|e| PortError::unavailable("building Put", e))?,
                    )
                    .build(),
            );
        }
        match self.transact(items, product.shards as usize).await {
            Ok(()) => Ok(true),
            Err(TxFailure::Canceled(reasons)) if reasons.iter().any(|(c, _)| is_ccf(c)) => {
                Ok(false)
            }
            Err(TxFailure::Canceled(r)) => Err(canceled_error(&r)),
            Err(TxFailure::Other(e)) => Err(e),
        }
    }

    async fn add_stock(
        &self,
        product: &Product,
        added: u64,
        stock: &[(u32, u64)],
    ) -> PortResult<bool> {
        let mut set = vec![
            "#name = :name".to_owned(),
            "payment_window_seconds = :pw".to_owned(),
        ];
        // New stock means the product is no longer sold out.
        let mut remove = vec!["sold_out"];
        let mut meta = self
            .update(product_key(&product.sku))
            .expression_attribute_names("#name", "name")
            .expression_attribute_values(":name", s(&product.name))
            .expression_attribute_values(":pw", n(product.payment_window_seconds))
            .expression_attribute_values(":added", n(added))
            .expression_attribute_values(":one", n(1));
        for (attr, v) in [
            ("per_user_limit", product.per_user_limit.map(i64::from)),
            ("sale_starts_at", product.sale_starts_at),
            ("sale_ends_at", product.sale_ends_at),
        ] {
            match v {
                Some(v) => {
                    set.push(format!("{attr} = :{attr}"));
                    meta = meta.expression_attribute_values(format!(":{attr}"), n(v));
                }
                None => remove.push(attr),
            }
        }
        let mut expr = format!(
            "SET {} ADD stock_added :added, restocks :one",
            set.join(", ")
        );
        if !remove.is_empty() {
            expr.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let meta = meta
            .update_expression(expr)
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(|e| PortError::unavailable("building Update", e))?;
        let mut items = vec![TransactWriteItem::builder().update(meta).build()];
        for &(shard, units) in stock {
            items.push(
                TransactWriteItem::builder()
                    .update(
                        self.update(shard_key(&product.sku, shard))
                            .update_expression("ADD available :u")
                            .expression_attribute_values(":u", n(units))
                            .build()
                            .map_err(|e| PortError::unavailable("building Update", e))?,
                    )
                    .build(),
            );
        }
        match self.transact(items, stock.len()).await {
            Ok(()) => Ok(true),
            // The META update's condition, the first item; the list is never indexed, since
            // nothing but DynamoDB's habit says it is never empty.
            Err(TxFailure::Canceled(reasons))
                if reasons.first().is_some_and(|(c, _)| is_ccf(c)) =>
            {
                Ok(false)
            }
            Err(TxFailure::Canceled(r)) => Err(canceled_error(&r)),
            Err(TxFailure::Other(e)) => Err(e),
        }
    }

    async fn mark_sold_out(&self, product: &Product) -> PortResult<bool> {
        // One write to the product item, not a check of every shard: any write that brings
        // stock back raises `restocks`, in its transaction (new stock) or right after it (a
        // return; see `restore` for why that is enough).
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(product_key(&product.sku)))
            .update_expression("SET sold_out = :t")
            .condition_expression(
                "attribute_exists(pk) AND (restocks = :seen OR (attribute_not_exists(restocks) AND :seen = :zero))",
            )
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":seen", n(product.restocks))
            .expression_attribute_values(":zero", n(0))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.stats.record(&result, 0);
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(port_error("dynamodb UpdateItem", e)),
        }
    }

    async fn clear_sold_out(&self, sku: &Sku) -> PortResult<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(product_key(sku)))
                .update_expression("REMOVE sold_out ADD restocks :one")
                // Never create a product item out of an order whose product is gone.
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":one", n(1))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            self.stats.record(&result, 0);
            let e = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(_)) => return Ok(()),
                // Only a transaction on the product item (new stock) conflicts with this.
                Some(UpdateItemError::TransactionConflictException(_))
                    if attempt < RESTOCK_ATTEMPTS =>
                {
                    tokio::time::sleep(jittered(RETURN_BACKOFF, RETURN_BACKOFF_CAP, attempt)).await
                }
                _ => return Err(port_error("dynamodb UpdateItem", e)),
            }
        }
    }

    async fn read_shards(&self, product: &Product) -> PortResult<Vec<ShardStock>> {
        // The shards are separate partitions, so no Query finds them all: the product knows
        // how many it has, and one BatchGetItem (at most 64 keys, well under its 100) reads
        // them consistently.
        let keys = (0..product.shards)
            .map(|shard| shard_key(&product.sku, shard))
            .collect();
        let mut shards = self
            .batch_get(keys)
            .await?
            .iter()
            .map(|item| {
                let shard = get_s(item, "sk")
                    .and_then(shard_of)
                    .ok_or_else(|| malformed("shard key"))?;
                let available = get_n(item, "available").ok_or_else(|| malformed("available"))?;
                Ok(ShardStock { shard, available })
            })
            .collect::<PortResult<Vec<_>>>()?;
        // BatchGetItem answers in no particular order.
        shards.sort_by_key(|s| s.shard);
        Ok(shards)
    }

    async fn read_bought(&self, sku: &Sku, users: &[UserId]) -> PortResult<HashMap<UserId, u32>> {
        let keys = users.iter().map(|u| buyer_key(sku, u)).collect();
        let mut out = HashMap::new();
        for item in self.batch_get(keys).await? {
            let user = get_s(&item, "sk")
                .and_then(|sk| sk.strip_prefix("BUYER#"))
                .and_then(|u| UserId::parse(u).ok())
                .ok_or_else(|| malformed("buyer key"))?;
            out.insert(user, get_n(&item, "units").unwrap_or(0));
        }
        Ok(out)
    }

    async fn create_order(&self, order: &Order) -> PortResult<CreateOrder> {
        self.create_despite_conflicts(order, || self.put_order(order))
            .await
    }

    async fn create_limited_order(&self, order: &Order, limit: u32) -> PortResult<CreateOrder> {
        self.create_despite_conflicts(order, || self.put_limited_order(order, limit))
            .await
    }

    async fn get_order(&self, id: &OrderId) -> PortResult<Option<Order>> {
        let resp = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(order_pk(id), ORDER_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("dynamodb GetItem"))?;
        resp.item.as_ref().map(decode_order).transpose()
    }

    async fn get_orders(&self, ids: &[OrderId]) -> PortResult<Vec<Order>> {
        let mut unique: Vec<&OrderId> = ids.iter().collect();
        unique.sort();
        unique.dedup();
        let keys = unique
            .into_iter()
            .map(|id| key(order_pk(id), ORDER_SK))
            .collect();
        self.batch_get(keys)
            .await?
            .iter()
            .map(decode_order)
            .collect()
    }

    async fn commit(&self, sku: &Sku, c: &Commit) -> PortResult<Result<(), CommitRefused>> {
        let build = |u: aws_sdk_dynamodb::types::builders::UpdateBuilder| {
            u.build()
                .map(|u| TransactWriteItem::builder().update(u).build())
                .map_err(|e| PortError::unavailable("building Update", e))
        };
        let mut items = Vec::new();
        for t in &c.takes {
            items.push(build(
                self.update(shard_key(sku, t.shard))
                    .update_expression("SET available = available - :u")
                    .condition_expression("available >= :u")
                    .expression_attribute_values(":u", n(t.units)),
            )?);
        }
        for a in &c.accepted {
            items.push(build(
                self.update(key(order_pk(&a.order_id), ORDER_SK))
                    .update_expression(
                        "SET #status = :pending, updated_at = :now, expires_at = :exp, takes = :takes, counted = :counted",
                    )
                    .condition_expression("#status = :queued")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":pending", s("pending"))
                    .expression_attribute_values(":queued", s("queued"))
                    .expression_attribute_values(":now", n(c.now))
                    .expression_attribute_values(":exp", n(a.expires_at))
                    .expression_attribute_values(":takes", s(encode_takes(&a.takes)))
                    .expression_attribute_values(":counted", AttributeValue::Bool(c.limit.is_some())),
            )?);
        }
        if let Some(limit) = c.limit {
            for (user, units) in &c.counters {
                items.push(build(
                    self.update(buyer_key(sku, user))
                        .update_expression("ADD units :u")
                        .condition_expression("attribute_not_exists(units) OR units <= :max")
                        .expression_attribute_values(":u", n(units))
                        .expression_attribute_values(":max", n(limit.saturating_sub(*units))),
                )?);
            }
        }
        let reasons = match self.transact(items, c.takes.len()).await {
            Ok(()) => return Ok(Ok(())),
            Err(TxFailure::Other(e)) => return Err(e),
            Err(TxFailure::Canceled(r)) => r,
        };
        let mut refused = CommitRefused::default();
        let (shards, rest) = reasons.split_at(c.takes.len().min(reasons.len()));
        let (orders, counters) = rest.split_at(c.accepted.len().min(rest.len()));
        for (code, _) in &reasons {
            if code.as_deref() == Some("TransactionConflict") {
                refused.conflict = true;
            }
        }
        for (t, (code, item)) in c.takes.iter().zip(shards) {
            if is_ccf(code) {
                let available = item
                    .as_ref()
                    .and_then(|i| get_n(i, "available"))
                    .unwrap_or(0);
                refused.shards.push(ShardStock {
                    shard: t.shard,
                    available,
                });
            }
        }
        for (a, (code, _)) in c.accepted.iter().zip(orders) {
            if is_ccf(code) {
                refused.decided.push(a.order_id.clone());
            }
        }
        for ((user, _), (code, item)) in c.counters.iter().zip(counters) {
            if is_ccf(code) {
                let units = item.as_ref().and_then(|i| get_n(i, "units")).unwrap_or(0);
                refused.counters.push((user.clone(), units));
            }
        }
        let explained = refused.conflict
            || !refused.shards.is_empty()
            || !refused.decided.is_empty()
            || !refused.counters.is_empty();
        if !explained {
            // Throttling or an internal error inside the transaction: not a business answer.
            let codes: Vec<_> = reasons.iter().filter_map(|(c, _)| c.clone()).collect();
            let message = format!("transaction canceled: {}", codes.join(", "));
            let throttled = codes
                .iter()
                .any(|c| DEGRADED_TRANSACTION_REASONS.contains(&c.as_str()));
            return Err(if throttled {
                PortError::degraded("dynamodb TransactWriteItems", message)
            } else {
                PortError::unavailable("dynamodb TransactWriteItems", message)
            });
        }
        Ok(Err(refused))
    }

    async fn reject(&self, id: &OrderId, reason: Reason, now: Millis) -> PortResult<bool> {
        // The usual order holds no admission count: one plain conditional update. One that
        // does fails the extra condition, and the item returned with the failure says what to
        // give back, in a transaction with the status change.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(order_pk(id), ORDER_SK)))
            .update_expression(REJECT)
            .condition_expression("#status = :queued AND attribute_not_exists(admitted)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":rejected", s("rejected"))
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":reason", s(reason.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ttl", n(rejected_ttl(now)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        self.stats.record(&result, 0);
        let old = match result {
            Ok(_) => return Ok(true),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item.clone(),
                _ => return Err(port_error("dynamodb UpdateItem", e)),
            },
        };
        match old {
            Some(item) if get_s(&item, "status") == Some("queued") && is_admitted(&item) => {
                self.reject_admitted(&decode_order(&item)?, reason, now)
                    .await
            }
            _ => Ok(false),
        }
    }

    async fn advance(
        &self,
        order: &Order,
        t: &flash_domain::order::Transition,
        owner: Option<&UserId>,
        now: Millis,
    ) -> PortResult<Advance> {
        let mut expr = "SET #status = :to, updated_at = :now".to_owned();
        let mut cond = "#status = :from".to_owned();
        let mut u = self
            .update(key(order_pk(&order.id), ORDER_SK))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":to", s(t.to.as_str()))
            .expression_attribute_values(":from", s(t.from.as_str()))
            .expression_attribute_values(":now", n(now));
        if let Some(r) = t.reason {
            expr.push_str(", reason = :reason");
            u = u.expression_attribute_values(":reason", s(r.as_str()));
        }
        if t.to != OrderStatus::Pending {
            expr.push_str(" REMOVE expires_at");
        }
        if let Some(owner) = owner {
            // Ownership is part of the write's condition, not a check before it.
            cond.push_str(" AND #owner = :owner");
            u = u
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":owner", s(owner.as_str()));
        }
        // Pay only before the payment deadline, the timeout only from it on: of the two racing
        // at the deadline exactly one can win.
        match t.window() {
            Some(Window::Open) => cond.push_str(" AND expires_at > :now"),
            Some(Window::Closed) => cond.push_str(" AND expires_at <= :now"),
            None => {}
        }
        let u = u.update_expression(expr);
        let mut updated = order.clone();
        updated.apply(t, now);

        if !t.restores_stock {
            let req = u
                .condition_expression(cond)
                .build()
                .map_err(|e| PortError::unavailable("building Update", e))?;
            let result = self
                .client
                .update_item()
                .table_name(req.table_name)
                .set_key(Some(req.key))
                .update_expression(req.update_expression)
                .set_condition_expression(req.condition_expression)
                .set_expression_attribute_names(req.expression_attribute_names)
                .set_expression_attribute_values(req.expression_attribute_values)
                .return_values(ReturnValue::AllNew)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            self.stats.record(&result, 0);
            return match result {
                Ok(out) => Ok(Advance::Done(match out.attributes {
                    Some(item) => decode_order(&item)?,
                    None => updated,
                })),
                Err(e) => match e.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(_)) => Ok(Advance::Stale),
                    _ => Err(port_error("dynamodb UpdateItem", e)),
                },
            };
        }

        // Whether the order holds an admission count to give back is on the item, not on the
        // order as read: guess from `counted` (both follow the product's limit), put the guess
        // in the condition, and if the item says otherwise write again with the other guess.
        let mut admitted = order.counted;
        let mut guesses = 0;
        let mut conflicts = 0;
        let started = tokio::time::Instant::now();
        loop {
            let flag = if admitted {
                "attribute_exists(admitted)"
            } else {
                "attribute_not_exists(admitted)"
            };
            let status = u.clone().condition_expression(format!("{cond} AND {flag}"));
            let reasons = match self.restore(order, status, admitted).await? {
                None => {
                    self.clear_sold_out(&order.sku).await?;
                    return Ok(Advance::Done(updated));
                }
                Some(r) => r,
            };
            match reasons.first() {
                Some((code, Some(item))) if is_ccf(code) => {
                    let stale = get_s(item, "status") != Some(t.from.as_str())
                        || owner.is_some_and(|o| get_s(item, "owner") != Some(o.as_str()))
                        || is_admitted(item) == admitted;
                    guesses += 1;
                    if stale || guesses == 2 {
                        if get_s(item, "status") == Some(OrderStatus::Canceled.as_str()) {
                            // Canceled by someone else, who may have died between the return
                            // and the flag: make the second write again (see `restore`).
                            self.clear_sold_out(&order.sku).await?;
                        }
                        return Ok(Advance::Stale);
                    }
                    admitted = !admitted;
                }
                Some((code, None)) if is_ccf(code) => return Ok(Advance::Stale),
                _ => {
                    // A conflict with another transaction on one of the items (the shard, the
                    // buyer's counters): conditional on the status read, so safe to try again,
                    // after a jittered wait so the colliding writers spread out.
                    let error = canceled_error(&reasons);
                    conflicts += 1;
                    let wait = jittered(RETURN_BACKOFF, RETURN_BACKOFF_CAP, conflicts);
                    if !matches!(error, PortError::Contention)
                        || started.elapsed() + wait > RETURN_PATIENCE
                    {
                        return Err(error);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn take_token(&self, caller: &UserId, now: Millis) -> PortResult<Result<(), Duration>> {
        let Some(bucket) = self.rate_limit else {
            return Ok(Ok(()));
        };
        let now = micros(now);
        let mut known = self.rate_hint(caller);
        // `known` came from the table in this call (not from memory).
        let mut confirmed = false;
        for _ in 0..RATE_ATTEMPTS {
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key(rate_pk(caller), RATE_SK)))
                .expression_attribute_names("#ttl", "ttl");
            // Both writes are guarded so that however many instances take tokens at once,
            // each token is taken once: the condition is checked against the stored `tat`.
            let update = match bucket.next(known, now) {
                // A remembered value is only a lower bound of the stored one: it proves the
                // bucket empty, but the wait it gives may be short. Read the bucket (a read,
                // not a write) for the true wait.
                Take::Wait(_) if !confirmed => {
                    known = self.read_rate(caller).await?;
                    self.remember_rate(caller, known);
                    confirmed = true;
                    continue;
                }
                Take::Wait(wait) => return Ok(Err(wait)),
                Take::Refill { now, set_to } => update
                    .update_expression("SET tat = :tat, #ttl = :ttl")
                    .condition_expression("attribute_not_exists(tat) OR tat <= :now")
                    .expression_attribute_values(":tat", n(set_to))
                    .expression_attribute_values(":now", n(now))
                    .expression_attribute_values(":ttl", n(expiry(set_to))),
                Take::Take {
                    now,
                    limit,
                    interval,
                } => update
                    .update_expression("SET tat = tat + :i, #ttl = :ttl")
                    .condition_expression("tat > :now AND tat <= :limit")
                    .expression_attribute_values(":i", n(interval))
                    .expression_attribute_values(":now", n(now))
                    .expression_attribute_values(":limit", n(limit))
                    .expression_attribute_values(":ttl", n(expiry(limit + interval))),
            };
            let result = update
                .return_values(ReturnValue::UpdatedNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            self.stats.record(&result, 0);
            match result {
                Ok(out) => {
                    let tat = out.attributes.as_ref().and_then(|a| get_n(a, "tat"));
                    self.remember_rate(caller, tat);
                    return Ok(Ok(()));
                }
                Err(e) => match e.as_service_error() {
                    // The bucket is not as we thought: learn it from the item returned.
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                        known = c.item.as_ref().and_then(|i| get_n(i, "tat"));
                        self.remember_rate(caller, known);
                        confirmed = true;
                    }
                    _ => return Err(port_error("dynamodb UpdateItem", e)),
                },
            }
        }
        Err(PortError::Contention)
    }
}

/// The bucket item's TTL (epoch seconds): once `tat` has passed the bucket is full, which is
/// what no item means too, so DynamoDB may delete it from then on.
fn expiry(tat: Micros) -> i64 {
    tat.div_euclid(1_000_000) + 1
}

impl DynamoStore {
    /// One transaction: the order's status change `status`, its stock back to the shards it
    /// came from, and the buyer's purchase counter and (when `admitted`) admission count
    /// lowered. `Some(reasons)` when it was canceled.
    ///
    /// The product's `META` item is not in it: if it were, every return of a product would
    /// write that one item, and concurrent returns would cancel each other
    /// (`TransactionConflict`) even when they return stock to different shards. Instead the
    /// caller raises `restocks` and clears `sold_out` with a single `UpdateItem`
    /// ([`Store::clear_sold_out`]) once this has committed. Single-item writes to one item do
    /// not conflict with each other, so returns only meet on a shard or a buyer's counters.
    ///
    /// Why the sold-out flag still never hides units that came back. `mark_sold_out` reads
    /// the product (`restocks = r`), then reads every shard consistently and sees them empty,
    /// then sets the flag on condition `restocks = r`. Take a return: its transaction T, then
    /// its flag write U (`restocks + 1`, flag removed).
    /// - The flag is set after U: the condition held, and `restocks` only grows, so the
    ///   product read already included U, hence came after T committed; the shard read came
    ///   after that and saw T's units (or orders that took them since). Not hidden.
    /// - The flag is set before U: U removes it afterwards.
    /// - The process dies between T and U (or U fails): the flag may stay set over units that
    ///   are back. Whoever finds the order canceled makes U again: the buyer's repeated
    ///   cancel or refund, the payment timeout's redelivery or its own message arriving for
    ///   an order the buyer canceled, a lost race in `advance`. Until one of them (or the next
    ///   return or new stock of the product) comes, `place-order` refuses it as sold out: a
    ///   missed sale, never an oversell.
    async fn restore(
        &self,
        order: &Order,
        status: aws_sdk_dynamodb::types::builders::UpdateBuilder,
        admitted: bool,
    ) -> PortResult<Option<Vec<(Option<String>, Option<Item>)>>> {
        // Stock comes back in the same transaction as the status change, so exactly once.
        let mut items = vec![TransactWriteItem::builder()
            .update(
                status
                    .build()
                    .map_err(|e| PortError::unavailable("building Update", e))?,
            )
            .build()];
        for take in &order.takes {
            items.push(
                TransactWriteItem::builder()
                    .update(
                        self.update(shard_key(&order.sku, take.shard))
                            .update_expression("ADD available :u")
                            .expression_attribute_values(":u", n(take.units))
                            .build()
                            .map_err(|e| PortError::unavailable("building Update", e))?,
                    )
                    .build(),
            );
        }
        if order.counted {
            items.push(
                TransactWriteItem::builder()
                    .update(
                        self.update(buyer_key(&order.sku, &order.owner))
                            .update_expression("ADD units :minus")
                            .expression_attribute_values(
                                ":minus",
                                n(-i64::from(order.quantity.get())),
                            )
                            .build()
                            .map_err(|e| PortError::unavailable("building Update", e))?,
                    )
                    .build(),
            );
        }
        if admitted {
            items.push(
                TransactWriteItem::builder()
                    .update(
                        self.give_back_admission(order)
                            .build()
                            .map_err(|e| PortError::unavailable("building Update", e))?,
                    )
                    .build(),
            );
        }
        match self.transact(items, order.takes.len()).await {
            Ok(()) => Ok(None),
            Err(TxFailure::Canceled(r)) => Ok(Some(r)),
            Err(TxFailure::Other(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::{canceled_body, json_error_response};
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_runtime_api::client::http::{
        http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::orchestrator::HttpRequest;

    /// Answers every request with a `TransactionCanceledException` that lists no reasons.
    #[derive(Debug)]
    struct CanceledWithoutReasons;

    impl HttpConnector for CanceledWithoutReasons {
        fn call(&self, _: HttpRequest) -> HttpConnectorFuture {
            let body = canceled_body(&[], "TransactionConflict");
            HttpConnectorFuture::ready(Ok(json_error_response(400, &body, "no-reasons")))
        }
    }

    fn store_canceled_without_reasons() -> DynamoStore {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
            .endpoint_url("http://127.0.0.1:1")
            .http_client(http_client_fn(|_, _| {
                SharedHttpConnector::new(CanceledWithoutReasons)
            }))
            .build();
        DynamoStore::new(Client::from_conf(config), "flash").with_rate_limit(None)
    }

    #[tokio::test]
    async fn a_canceled_transaction_with_no_reasons_is_an_error_not_a_panic() {
        let store = store_canceled_without_reasons();
        let sku = Sku::parse("SKU-1").expect("valid sku");
        let product = Product {
            sku: sku.clone(),
            name: "Phone".into(),
            stock_added: 10,
            per_user_limit: Some(2),
            sale_starts_at: None,
            sale_ends_at: None,
            payment_window_seconds: 900,
            shards: 1,
            sold_out: false,
            restocks: 0,
        };
        assert!(store.add_stock(&product, 5, &[(0, 5)]).await.is_err());
        let order = Order {
            id: OrderId::parse("0123456789abcdef0123456789abcdef").expect("valid id"),
            owner: UserId::parse("alice").expect("valid user"),
            sku,
            quantity: Quantity::new(1).expect("valid quantity"),
            status: OrderStatus::Queued,
            reason: None,
            created_at: 0,
            updated_at: 0,
            expires_at: None,
            fingerprint: String::new(),
            takes: Vec::new(),
            counted: false,
        };
        assert!(store.create_limited_order(&order, 2).await.is_err());
        assert!(store.reject(&order.id, Reason::SoldOut, 0).await.is_err());
    }

    #[test]
    fn every_shard_and_every_buyer_has_a_partition_of_its_own_that_names_its_product() {
        let sku = Sku::parse("P-1").unwrap();
        let (alice, bob) = (
            UserId::parse("alice#1").unwrap(),
            UserId::parse("bob").unwrap(),
        );
        let pk = |k: &Item| get_s(k, "pk").unwrap().to_owned();
        let keys = [
            product_key(&sku),
            shard_key(&sku, 0),
            shard_key(&sku, 1),
            buyer_key(&sku, &alice),
            buyer_key(&sku, &bob),
        ];
        let partitions: std::collections::HashSet<String> = keys.iter().map(pk).collect();
        assert_eq!(partitions.len(), keys.len());
        // A buyer's two counters share one partition, which only that buyer writes.
        assert_eq!(pk(&admit_key(&sku, &alice)), pk(&buyer_key(&sku, &alice)));
        for k in keys.iter().chain([&admit_key(&sku, &alice)]) {
            assert_eq!(product_of(&pk(k)), Some("P-1"));
        }
        // A SKU that extends another one is another product.
        let longer = Sku::parse("P-1-2").unwrap();
        assert_eq!(product_of(&pk(&shard_key(&longer, 0))), Some("P-1-2"));
        assert_eq!(product_of("ORDER#abc"), None);
        assert_eq!(get_s(&shard_key(&sku, 7), "sk").and_then(shard_of), Some(7));
    }

    #[test]
    fn takes_round_trip() {
        let t = vec![
            ShardTake { shard: 3, units: 2 },
            ShardTake { shard: 0, units: 1 },
        ];
        assert_eq!(decode_takes(&encode_takes(&t)), Some(t));
        assert_eq!(decode_takes(""), Some(vec![]));
        assert_eq!(decode_takes("x"), None);
    }
}
