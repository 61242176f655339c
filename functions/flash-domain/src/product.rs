//! Products: what an admin's `PUT /products/{sku}` may say, and the sale window.

use crate::clock::{parse_rfc3339, to_rfc3339, Millis};
use crate::ids::{Sku, ValidationError};
use serde::{Deserialize, Serialize};

/// Stock split across more shard items than this buys nothing: a batch of 50 orders (the
/// template's batch size) touches a handful of shards at most.
pub const MAX_SHARDS: u32 = 64;
/// Units per shard when the admin does not choose: about two full batches a shard, so a hot
/// product has more shards than there are processors (4 by default) and concurrent batches
/// rarely start on the same item.
pub const UNITS_PER_SHARD: u64 = 100;
pub const DEFAULT_PAYMENT_WINDOW_SECONDS: u32 = 900;
pub const MAX_STOCK: u64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub sku: Sku,
    pub name: String,
    /// Every unit ever added; the reconciler's left-hand side.
    pub stock_added: u64,
    pub per_user_limit: Option<u32>,
    pub sale_starts_at: Option<Millis>,
    pub sale_ends_at: Option<Millis>,
    pub payment_window_seconds: u32,
    pub shards: u32,
    /// Every shard was seen empty (cleared by any write that returns stock), so `place-order`
    /// can refuse without writing.
    pub sold_out: bool,
    /// How many writes have returned or added stock; each raises it, so a sold-out flag set on
    /// condition that it has not moved cannot hide units that came back.
    pub restocks: u64,
}

impl Product {
    /// When an order accepted at `accepted_at` must be paid by.
    pub fn payment_due_at(&self, accepted_at: Millis) -> Millis {
        accepted_at + i64::from(self.payment_window_seconds) * 1000
    }

    pub fn sale_open(&self, at: Millis) -> bool {
        self.sale_starts_at.is_none_or(|s| at >= s) && self.sale_ends_at.is_none_or(|e| at < e)
    }

    pub fn view(&self, available: u64) -> ProductView {
        ProductView {
            sku: self.sku.clone(),
            name: self.name.clone(),
            available,
            sold_out: available == 0,
            sale_starts_at: self.sale_starts_at.map(to_rfc3339),
            sale_ends_at: self.sale_ends_at.map(to_rfc3339),
            per_user_limit: self.per_user_limit,
        }
    }

    /// How `units` new units spread over the shards: evenly, the remainder on the first ones.
    pub fn split(&self, units: u64) -> Vec<(u32, u64)> {
        let n = u64::from(self.shards);
        (0..self.shards)
            .map(|i| (i, units / n + u64::from(u64::from(i) < units % n)))
            .filter(|&(_, u)| u > 0)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductView {
    pub sku: Sku,
    pub name: String,
    pub available: u64,
    pub sold_out: bool,
    pub sale_starts_at: Option<String>,
    pub sale_ends_at: Option<String>,
    pub per_user_limit: Option<u32>,
}

/// The body of `PUT /products/{sku}` as it arrives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSpec {
    pub name: String,
    pub stock: i64,
    #[serde(default)]
    pub per_user_limit: Option<i64>,
    #[serde(default)]
    pub sale_starts_at: Option<String>,
    #[serde(default)]
    pub sale_ends_at: Option<String>,
    #[serde(default)]
    pub payment_window_seconds: Option<i64>,
    /// How many shard items hold the stock; chosen from the stock size when absent.
    #[serde(default)]
    pub shards: Option<i64>,
}

fn bad(msg: &str) -> ValidationError {
    ValidationError(msg.to_owned())
}

impl ProductSpec {
    /// Checks every field and returns the product it describes, with `stock` units as its
    /// first delivery.
    pub fn into_product(self, sku: Sku) -> Result<(Product, u64), ValidationError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(bad("name must be 1 to 200 characters"));
        }
        let stock = u64::try_from(self.stock)
            .ok()
            .filter(|s| (1..=MAX_STOCK).contains(s))
            .ok_or_else(|| bad("stock must be an integer from 1 to 1000000000"))?;
        let per_user_limit = match self.per_user_limit {
            None => None,
            Some(n) => Some(
                u32::try_from(n)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("per_user_limit must be a positive integer"))?,
            ),
        };
        let time = |s: Option<String>, field: &str| match s {
            None => Ok(None),
            Some(s) => parse_rfc3339(&s)
                .map(Some)
                .ok_or_else(|| bad(&format!("{field} must be an RFC 3339 timestamp"))),
        };
        let sale_starts_at = time(self.sale_starts_at, "sale_starts_at")?;
        let sale_ends_at = time(self.sale_ends_at, "sale_ends_at")?;
        if let (Some(s), Some(e)) = (sale_starts_at, sale_ends_at) {
            if e <= s {
                return Err(bad("sale_ends_at must be after sale_starts_at"));
            }
        }
        let payment_window_seconds = match self.payment_window_seconds {
            None => DEFAULT_PAYMENT_WINDOW_SECONDS,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=86_400).contains(n))
                .ok_or_else(|| bad("payment_window_seconds must be an integer from 1 to 86400"))?,
        };
        let shards = match self.shards {
            None => stock
                .div_ceil(UNITS_PER_SHARD)
                .clamp(1, u64::from(MAX_SHARDS)) as u32,
            Some(n) => u32::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_SHARDS).contains(n))
                .ok_or_else(|| bad("shards must be an integer from 1 to 64"))?,
        };
        let product = Product {
            sku,
            name: name.to_owned(),
            stock_added: stock,
            per_user_limit,
            sale_starts_at,
            sale_ends_at,
            payment_window_seconds,
            shards,
            sold_out: false,
            restocks: 0,
        };
        Ok((product, stock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<(Product, u64), ValidationError> {
        let spec: ProductSpec = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
        spec.into_product(Sku::parse("P-1").unwrap())
    }

    #[test]
    fn defaults_choose_shards_from_stock_and_a_15_minute_window() {
        let (p, stock) = spec(r#"{"name":"Phone","stock":250}"#).unwrap();
        assert_eq!((stock, p.shards, p.payment_window_seconds), (250, 3, 900));
        assert_eq!(p.split(250), vec![(0, 84), (1, 83), (2, 83)]);
        assert_eq!(p.split(4), vec![(0, 2), (1, 1), (2, 1)]);
        assert_eq!(p.split(1), vec![(0, 1)]);
        let shards = |stock: u32| {
            spec(&format!(r#"{{"name":"x","stock":{stock}}}"#))
                .unwrap()
                .0
        };
        assert_eq!(shards(1).shards, 1);
        assert_eq!(shards(2_000).shards, 20);
        assert_eq!(shards(1_000_000).shards, MAX_SHARDS);
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            r#"{"name":"","stock":1}"#,
            r#"{"name":"x","stock":0}"#,
            r#"{"name":"x","stock":-5}"#,
            r#"{"name":"x","stock":1,"per_user_limit":0}"#,
            r#"{"name":"x","stock":1,"shards":65}"#,
            r#"{"name":"x","stock":1,"sale_starts_at":"soon"}"#,
            r#"{"name":"x","stock":1,"sale_starts_at":"2026-01-02T00:00:00Z","sale_ends_at":"2026-01-01T00:00:00Z"}"#,
            r#"{"name":"x","stock":1,"price":3}"#,
            r#"{"name":"x","stock":1.5}"#,
        ] {
            assert!(spec(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn sale_window_is_half_open() {
        let (mut p, _) = spec(r#"{"name":"x","stock":1}"#).unwrap();
        assert!(p.sale_open(0));
        p.sale_starts_at = Some(100);
        p.sale_ends_at = Some(200);
        assert!(!p.sale_open(99) && p.sale_open(100) && p.sale_open(199) && !p.sale_open(200));
    }
}
