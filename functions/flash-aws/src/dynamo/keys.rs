//! The single-table layout: every key the store writes is built here, and every key it reads
//! back is parsed here. Item layout (`pk`, `sk`):
//!
//! | item            | pk                              | sk             | attributes |
//! |-----------------|---------------------------------|----------------|------------|
//! | product         | `PRODUCT#{sku}`                 | `META`         | name, stock_added, per_user_limit, sale window, payment window, shards, sold_out, low_stock, restocks, created_at |
//! | stock shard     | `PRODUCT#{sku}#SHARD#{nnn}`     | `SHARD#{nnn}`  | available |
//! | buyer counter   | `PRODUCT#{sku}#USER#{user}`     | `BUYER#{user}` | units |
//! | admission count | `PRODUCT#{sku}#USER#{user}`     | `ADMIT#{user}` | admitted |
//! | order           | `ORDER#{id}`                    | `ORDER`        | owner, sku, quantity, status, reason, times, fingerprint, takes, counted, admitted, ttl (rejected only) |
//! | rate bucket     | `RATE#{user}`                   | `RATE`         | tat, ttl |
//! | admin bucket    | `RATE#{user}`                   | `ADMIN`        | tat, ttl |
//! | restock key     | `RESTOCK#{digest}`              | `RESTOCK`      | fingerprint, created, at |
//! | imported row    | `IMPORT#import-{digest}`        | `IMPORT`       | sku, caller (`flashctl product import`) |
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
//!
//! A restock key records an admin's `Idempotency-Key` of `PUT /products/{sku}` (the digest of
//! caller and key, [`flash_domain::ids::key_digest`]), written in the transaction that adds
//! the stock, so a retry adds nothing. It is kept with the table, like the product.

use aws_sdk_dynamodb::types::AttributeValue;
use flash_domain::{OrderId, Sku, UserId};
use std::collections::HashMap;

pub type Item = HashMap<String, AttributeValue>;

/// The start of every product item's `pk`: a scan for products filters on it.
pub const PRODUCT_PREFIX: &str = "PRODUCT#";
const SHARD: &str = "SHARD#";
const USER: &str = "USER#";
const BUYER: &str = "BUYER#";
const ADMIT: &str = "ADMIT#";
const RATE: &str = "RATE#";
/// The start of every order's `pk`: a scan for orders filters on it.
pub const ORDER_PREFIX: &str = "ORDER#";

pub fn product_pk(sku: &Sku) -> String {
    format!("{PRODUCT_PREFIX}{sku}")
}
pub const META: &str = "META";
pub fn shard_pk(sku: &Sku, shard: u32) -> String {
    format!("{PRODUCT_PREFIX}{sku}#{SHARD}{shard:03}")
}
pub fn shard_sk(shard: u32) -> String {
    format!("{SHARD}{shard:03}")
}
/// The partition of one buyer's counters of one product.
pub fn user_pk(sku: &Sku, user: &UserId) -> String {
    format!("{PRODUCT_PREFIX}{sku}#{USER}{user}")
}
pub fn buyer_sk(user: &UserId) -> String {
    format!("{BUYER}{user}")
}
pub fn admit_sk(user: &UserId) -> String {
    format!("{ADMIT}{user}")
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
    let rest = pk.strip_prefix(PRODUCT_PREFIX)?;
    Some(rest.split_once('#').map_or(rest, |(sku, _)| sku))
}
/// What follows `PRODUCT#` in a `pk`: the SKU when the item is a product's `META`.
pub fn meta_sku(pk: &str) -> Option<&str> {
    pk.strip_prefix(PRODUCT_PREFIX)
}
/// Whether an `sk` is a stock shard's.
pub fn is_shard(sk: &str) -> bool {
    sk.starts_with(SHARD)
}
/// The shard number of a shard item's `sk`.
pub fn shard_of(sk: &str) -> Option<u32> {
    sk.strip_prefix(SHARD)?.parse().ok()
}
/// The user of a buyer counter's `sk`.
pub fn buyer_of(sk: &str) -> Option<&str> {
    sk.strip_prefix(BUYER)
}
/// The user of an admission count's `sk`.
pub fn admitted_of(sk: &str) -> Option<&str> {
    sk.strip_prefix(ADMIT)
}
pub fn rate_pk(user: &UserId) -> String {
    format!("{RATE}{user}")
}
pub const RATE_SK: &str = "RATE";
/// The sort key of a caller's admin bucket: an item of its own, beside the buyer bucket, so
/// the two rates never share one `tat`.
pub const ADMIN_RATE_SK: &str = "ADMIN";
/// The key of a caller's rate bucket.
pub fn rate_key(user: &UserId) -> Item {
    rate_key_in(user, RATE_SK)
}
/// The key of a caller's bucket `sk` ([`RATE_SK`] or [`ADMIN_RATE_SK`]).
pub fn rate_key_in(user: &UserId, sk: &str) -> Item {
    key(rate_pk(user), sk)
}
const RESTOCK: &str = "RESTOCK#";
pub const RESTOCK_SK: &str = "RESTOCK";
/// The key of a restock key's record.
pub fn restock_key(digest: &str) -> Item {
    key(format!("{RESTOCK}{digest}"), RESTOCK_SK)
}
/// The key of `flashctl product import`'s record of one imported row (`row_key`: the row's
/// `Idempotency-Key`, a digest of the file and the row's place).
pub fn import_key(row_key: &str) -> Item {
    key(format!("IMPORT#{row_key}"), "IMPORT")
}
pub fn order_pk(id: &OrderId) -> String {
    format!("{ORDER_PREFIX}{id}")
}
pub const ORDER_SK: &str = "ORDER";
pub fn order_key(id: &OrderId) -> Item {
    key(order_pk(id), ORDER_SK)
}
/// Whether a `pk` is an order's.
pub fn is_order(pk: &str) -> bool {
    pk.starts_with(ORDER_PREFIX)
}
/// The order id (as stored, not yet parsed) of an order's `pk`.
pub fn order_of(pk: &str) -> Option<&str> {
    pk.strip_prefix(ORDER_PREFIX)
}

/// An item key.
pub fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk)),
        ("sk".to_owned(), AttributeValue::S(sk.into())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynamo::codec::get_s;

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
}
