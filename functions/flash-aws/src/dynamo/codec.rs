//! Item codecs: orders and products to and from DynamoDB items, the `takes` list, and the
//! attribute helpers every request builder uses.

use super::keys::{meta_sku, order_key, order_of, product_key, Item};
use aws_sdk_dynamodb::types::AttributeValue;
use flash_domain::order::ShardTake;
use flash_domain::ports::{PortError, PortResult};
use flash_domain::product::DEFAULT_PAYMENT_WINDOW_SECONDS;
use flash_domain::{Order, OrderId, OrderStatus, Product, Quantity, Reason, Sku, UserId};

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}
pub(super) fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

#[derive(Debug, thiserror::Error)]
#[error("stored item is malformed: {0}")]
struct Malformed(&'static str);

pub(super) fn malformed(what: &'static str) -> PortError {
    PortError::unavailable("decoding item", Malformed(what))
}

/// The string attribute `name` as `parse` reads it; `what` names it when it is missing or
/// does not parse.
pub(super) fn decoded<'a, T>(
    item: &'a Item,
    name: &str,
    what: &'static str,
    parse: impl FnOnce(&'a str) -> Option<T>,
) -> PortResult<T> {
    get_s(item, name)
        .and_then(parse)
        .ok_or_else(|| malformed(what))
}

pub(super) fn encode_takes(takes: &[ShardTake]) -> String {
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
    Ok(Order {
        id: decoded(item, "pk", "order id", |pk| {
            OrderId::parse(order_of(pk)?).ok()
        })?,
        owner: decoded(item, "owner", "owner", |u| UserId::parse(u).ok())?,
        sku: decoded(item, "sku", "sku", |v| Sku::parse(v).ok())?,
        quantity: get_n::<u32>(item, "quantity")
            .and_then(|q| Quantity::new(q).ok())
            .ok_or_else(|| malformed("quantity"))?,
        status: decoded(item, "status", "status", OrderStatus::parse)?,
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

pub fn encode_order(o: &Order) -> Item {
    let mut item = order_key(&o.id);
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
    Ok(Product {
        sku: decoded(item, "pk", "product sku", |pk| {
            Sku::parse(meta_sku(pk)?).ok()
        })?,
        name: get_s(item, "name").unwrap_or_default().to_owned(),
        stock_added: get_n(item, "stock_added").ok_or_else(|| malformed("stock_added"))?,
        per_user_limit: get_n(item, "per_user_limit"),
        sale_starts_at: get_n(item, "sale_starts_at"),
        sale_ends_at: get_n(item, "sale_ends_at"),
        payment_window_seconds: get_n(item, "payment_window_seconds")
            .unwrap_or(DEFAULT_PAYMENT_WINDOW_SECONDS),
        shards: get_n(item, "shards").filter(|&n: &u32| n > 0).unwrap_or(1),
        sold_out: get_bool(item, "sold_out"),
        low_stock: get_bool(item, "low_stock"),
        restocks: get_n(item, "restocks").unwrap_or(0),
    })
}

pub(super) fn encode_product(p: &Product) -> Item {
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

/// A boolean attribute, `false` when missing.
fn get_bool(item: &Item, name: &str) -> bool {
    item.get(name)
        .and_then(|v| v.as_bool().ok())
        .copied()
        .unwrap_or(false)
}

/// Whether the order item carries the `admitted` flag (see [`super::keys`]).
pub(super) fn is_admitted(item: &Item) -> bool {
    get_bool(item, "admitted")
}

#[cfg(test)]
mod tests {
    use super::*;

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
