//! Products: create one with its stock shards, add stock, set and clear the sold-out flag,
//! read the shards.

use super::cancel::{canceled_error, is_ccf};
use super::codec::{decode_product, encode_product, get_n, get_s, malformed, n, s};
use super::keys::{product_key, shard_key, shard_of};
use super::returns::{RETURN_BACKOFF, RETURN_BACKOFF_CAP};
use super::writes::{sdk, TxFailure};
use super::DynamoStore;
use crate::errors::port_error;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use flash_domain::backoff::jittered;
use flash_domain::ports::{PortError, PortResult, ShardStock};
use flash_domain::{Product, Sku};

/// Single-item writes to the product item before giving up on conflicts with a transaction
/// on it (new stock, rare).
const RESTOCK_ATTEMPTS: u32 = 5;

impl DynamoStore {
    pub(super) async fn get_product(&self, sku: &Sku) -> PortResult<Option<Product>> {
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

    pub(super) async fn create_product(
        &self,
        product: &Product,
        stock: &[(u32, u64)],
    ) -> PortResult<bool> {
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

    pub(super) async fn add_stock(
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
            items.push(Self::tx_update(self.add_to_shard(
                &product.sku,
                shard,
                units,
            ))?);
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

    pub(super) async fn mark_sold_out(&self, product: &Product) -> PortResult<bool> {
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
            .set_return_consumed_capacity(self.consumed_capacity())
            .send()
            .await;
        self.record(&result, 0);
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

    pub(super) async fn clear_sold_out(&self, sku: &Sku) -> PortResult<()> {
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
                .set_return_consumed_capacity(self.consumed_capacity())
                .send()
                .await;
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

    pub(super) async fn read_shards(&self, product: &Product) -> PortResult<Vec<ShardStock>> {
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
}
