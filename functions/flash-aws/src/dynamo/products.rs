//! Products: create one with its stock shards, add stock (with an admin's idempotency key's
//! record in the same transaction), set and clear the sold-out flag, read the shards.

use super::cancel::{canceled_error, is_ccf, Reasons};
use super::codec::{decode_product, decoded, encode_product, get_n, get_s, malformed, n, s};
use super::keys::{product_key, product_of, restock_key, shard_key, shard_of, Item};
use super::returns::{RETURN_BACKOFF, RETURN_BACKOFF_CAP};
use super::writes::{sdk, TxFailure};
use super::DynamoStore;
use crate::errors::port_error;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use flash_domain::backoff::jittered;
use flash_domain::clock::now_ms;
use flash_domain::ports::{KeyRecord, PortError, PortResult, ProductWrite, ShardStock};
use flash_domain::product::{Change, DEFAULT_PAYMENT_WINDOW_SECONDS};
use flash_domain::{Product, ProductPut, Sku};
use std::collections::HashMap;

/// Single-item writes to the product item before giving up on conflicts with a transaction
/// on it (new stock, rare).
const RESTOCK_ATTEMPTS: u32 = 5;

fn map<T, U>(c: Change<T>, f: impl FnOnce(T) -> U) -> Change<U> {
    match c {
        Change::Keep => Change::Keep,
        Change::Clear => Change::Clear,
        Change::Set(v) => Change::Set(f(v)),
    }
}

/// What a canceled product write means: the key's record (the first item, when there is a
/// key) already there is `KeyUsed`, with the record DynamoDB returned; a failed condition
/// `raced` recognises is `Raced`; anything else an error.
fn product_write_refused(
    key: Option<&KeyRecord>,
    reasons: &Reasons,
    raced: impl FnOnce(&Reasons) -> bool,
) -> PortResult<ProductWrite> {
    if let Some(key) = key {
        if let Some((code, item)) = reasons.first().filter(|(c, _)| is_ccf(c)) {
            let earlier = item.as_ref().and_then(|i| {
                Some(KeyRecord {
                    id: key.id.clone(),
                    fingerprint: get_s(i, "fingerprint")?.to_owned(),
                    created: *i.get("created")?.as_bool().ok()?,
                })
            });
            return earlier
                .map(ProductWrite::KeyUsed)
                .ok_or_else(|| canceled_error(&[(code.clone(), None)]));
        }
    }
    if raced(reasons) {
        return Ok(ProductWrite::Raced);
    }
    Err(canceled_error(reasons))
}

impl DynamoStore {
    pub(super) async fn get_product(&self, sku: &Sku) -> PortResult<Option<Product>> {
        let resp = self
            .get(product_key(sku))
            .send()
            .await
            .map_err(sdk("dynamodb GetItem"))?;
        resp.item.as_ref().map(decode_product).transpose()
    }

    /// One consistent `BatchGetItem` per 100 products (a batch of 50 orders names at most 50).
    pub(super) async fn get_products(&self, skus: &[Sku]) -> PortResult<HashMap<Sku, Product>> {
        self.batch_get(skus.iter().map(product_key).collect())
            .await?
            .iter()
            .map(|item| decode_product(item).map(|p| (p.sku.clone(), p)))
            .collect()
    }

    pub(super) async fn create_product(
        &self,
        product: &Product,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> PortResult<ProductWrite> {
        let mut items = Vec::new();
        if let Some(key) = key {
            items.push(Self::key_put(&self.table, key)?);
        }
        let mut meta = encode_product(product);
        // Not part of the product: the local sale page finds the newest product by it.
        meta.insert("created_at".into(), n(now_ms()));
        items.push(Self::tx_put(&self.table, meta, "attribute_not_exists(pk)")?);
        for shard in 0..product.shards {
            let units = stock
                .iter()
                .find(|(s, _)| *s == shard)
                .map_or(0, |(_, u)| *u);
            let mut item = shard_key(&product.sku, shard);
            item.insert("available".into(), n(units));
            items.push(Self::tx_put(&self.table, item, "attribute_not_exists(pk)")?);
        }
        match self.transact(items, product.shards as usize).await {
            Ok(()) => Ok(ProductWrite::Written),
            Err(TxFailure::Canceled(reasons)) => product_write_refused(key, &reasons, |r| {
                // The product item or one of its shards exists already.
                r.iter().any(|(c, _)| is_ccf(c))
            }),
            Err(TxFailure::Other(e)) => Err(e),
        }
    }

    pub(super) async fn add_stock(
        &self,
        put: &ProductPut,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> PortResult<ProductWrite> {
        let change = put.settings;
        let mut set = vec!["#name = :name".to_owned()];
        // New stock means the product is no longer sold out, nor low on stock.
        let mut remove = vec!["sold_out", "low_stock"];
        let mut condition = vec!["attribute_exists(pk)"];
        let mut meta = self
            .update(product_key(&put.sku))
            .expression_attribute_names("#name", "name")
            .expression_attribute_values(":name", s(&put.name))
            .expression_attribute_values(":added", n(put.stock))
            .expression_attribute_values(":one", n(1));
        let pw = match change.payment_window_seconds {
            Change::Keep => Change::Keep,
            Change::Clear => Change::Set(DEFAULT_PAYMENT_WINDOW_SECONDS),
            set => set,
        };
        // A setting left out is not written at all, so a restock never erases what it
        // does not name; `null` removes it.
        for (attr, value) in [
            ("per_user_limit", map(change.per_user_limit, i64::from)),
            ("sale_starts_at", change.sale_starts_at),
            ("sale_ends_at", change.sale_ends_at),
            ("payment_window_seconds", map(pw, i64::from)),
        ] {
            match value {
                Change::Keep => {}
                Change::Clear => remove.push(attr),
                Change::Set(v) => {
                    set.push(format!("{attr} = :{attr}"));
                    meta = meta.expression_attribute_values(format!(":{attr}"), n(v));
                }
            }
        }
        // The caller checked the window against the bounds it keeps; they must not have
        // moved since.
        match (change.sale_starts_at, change.sale_ends_at) {
            (Change::Set(_), Change::Keep) => condition
                .push("(attribute_not_exists(sale_ends_at) OR sale_ends_at > :sale_starts_at)"),
            (Change::Keep, Change::Set(_)) => condition
                .push("(attribute_not_exists(sale_starts_at) OR sale_starts_at < :sale_ends_at)"),
            _ => {}
        }
        let expr = format!(
            "SET {} ADD stock_added :added, restocks :one REMOVE {}",
            set.join(", "),
            remove.join(", ")
        );
        let meta = meta
            .update_expression(expr)
            .condition_expression(condition.join(" AND "))
            .build()
            .map_err(|e| PortError::unavailable("building Update", e))?;
        let mut items = Vec::new();
        if let Some(key) = key {
            items.push(Self::key_put(&self.table, key)?);
        }
        let meta_index = items.len();
        items.push(TransactWriteItem::builder().update(meta).build());
        for &(shard, units) in stock {
            items.push(Self::tx_update(self.add_to_shard(&put.sku, shard, units))?);
        }
        match self.transact(items, stock.len()).await {
            Ok(()) => Ok(ProductWrite::Written),
            // The list is never indexed: nothing but DynamoDB's habit says it has an entry
            // per item.
            Err(TxFailure::Canceled(reasons)) => product_write_refused(key, &reasons, |r| {
                r.get(meta_index).is_some_and(|(c, _)| is_ccf(c))
            }),
            Err(TxFailure::Other(e)) => Err(e),
        }
    }

    fn tx_put(table: &str, item: Item, condition: &str) -> PortResult<TransactWriteItem> {
        Put::builder()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression(condition)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map(|p| TransactWriteItem::builder().put(p).build())
            .map_err(|e| PortError::unavailable("building Put", e))
    }

    /// The key's record, put only if the key was never used: the first item of the write.
    fn key_put(table: &str, key: &KeyRecord) -> PortResult<TransactWriteItem> {
        let mut item = restock_key(&key.id);
        item.insert("fingerprint".into(), s(&key.fingerprint));
        item.insert("created".into(), AttributeValue::Bool(key.created));
        item.insert("at".into(), n(now_ms()));
        Self::tx_put(table, item, "attribute_not_exists(pk)")
    }

    pub(super) async fn mark_sold_out(&self, product: &Product) -> PortResult<bool> {
        // One write to the product item, not a check of every shard: any write that brings
        // stock back raises `restocks`, in its transaction (new stock) or right after it (a
        // return; see `restore` for why that is enough).
        let update = self
            .update(product_key(&product.sku))
            .update_expression("SET sold_out = :t")
            .condition_expression(
                "attribute_exists(pk) AND (restocks = :seen OR (attribute_not_exists(restocks) AND :seen = :zero))",
            )
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":seen", n(product.restocks))
            .expression_attribute_values(":zero", n(0));
        self.update_if(update).await
    }

    pub(super) async fn clear_sold_out(&self, sku: &Sku) -> PortResult<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let update = self
                .update(product_key(sku))
                .update_expression("REMOVE sold_out ADD restocks :one")
                // Never create a product item out of an order whose product is gone.
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":one", n(1));
            let result = self.update_item(update)?.send().await;
            self.record(&result, 0);
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

    pub(super) async fn mark_low_stock(&self, sku: &Sku) -> PortResult<()> {
        let update = self
            .update(product_key(sku))
            .update_expression("SET low_stock = :t")
            // Never create a product item out of a hint.
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":t", AttributeValue::Bool(true));
        self.update_if(update).await.map(|_| ())
    }

    /// The shards of several products in one consistent `BatchGetItem` per 100 shards.
    pub(super) async fn read_shards_of(
        &self,
        products: &[&Product],
    ) -> PortResult<HashMap<Sku, Vec<ShardStock>>> {
        let keys = products
            .iter()
            .flat_map(|p| (0..p.shards).map(|shard| shard_key(&p.sku, shard)))
            .collect();
        let mut out: HashMap<Sku, Vec<ShardStock>> = HashMap::new();
        for item in self.batch_get(keys).await? {
            let (sku, stock) = decode_shard(&item)?;
            out.entry(sku).or_default().push(stock);
        }
        for shards in out.values_mut() {
            shards.sort_by_key(|s| s.shard);
        }
        Ok(out)
    }

    pub(super) async fn read_shards(&self, product: &Product) -> PortResult<Vec<ShardStock>> {
        // The shards are separate partitions, so no Query finds them all: the product knows
        // how many it has, and one BatchGetItem (at most 64 keys, well under its 100) reads
        // them consistently.
        let mut of = self.read_shards_of(&[product]).await?;
        Ok(of.remove(&product.sku).unwrap_or_default())
    }
}

/// A shard item: its product's SKU and what it holds.
fn decode_shard(item: &Item) -> PortResult<(Sku, ShardStock)> {
    let sku = decoded(item, "pk", "shard pk", |pk| {
        Sku::parse(product_of(pk)?).ok()
    })?;
    let shard = decoded(item, "sk", "shard key", shard_of)?;
    let available = get_n(item, "available").ok_or_else(|| malformed("available"))?;
    Ok((sku, ShardStock { shard, available }))
}
