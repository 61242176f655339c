//! Products: what an admin's `PUT /products/{sku}` may say, and the sale window.

use crate::clock::{parse_rfc3339, Millis};
use crate::ids::{Sku, ValidationError};
use serde::Deserialize;

/// Stock split across more shard items than this buys nothing: a batch of 50 orders (the
/// template's batch size) touches a handful of shards at most.
pub const MAX_SHARDS: u32 = 64;
/// Units per shard when the admin does not choose: about two full batches a shard, so a hot
/// product has more shards than there are processors (4 by default) and concurrent batches
/// rarely start on the same item.
pub const UNITS_PER_SHARD: u64 = 100;
pub const DEFAULT_PAYMENT_WINDOW_SECONDS: u32 = 900;
pub const MAX_STOCK: u64 = 1_000_000_000;
/// A product is low on stock once at most 1/`LOW_STOCK_DIVISOR` of every unit it was given
/// is left: the stretch just before a sell-out, when `place-order` re-reads it more often.
pub const LOW_STOCK_DIVISOR: u64 = 4;
/// Only a product given at least this many units is ever low on stock: the hint costs one
/// write, at most a hundredth of a write unit per unit here, and a product of a few units
/// sells out within a commit or two, before a hint could change anything.
pub const LOW_STOCK_MIN_UNITS: u64 = 100;

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
    /// A hint, set by the processor once a commit leaves the product low on stock
    /// ([`Product::is_low`]) and cleared by a restock: `place-order` re-reads a product so
    /// flagged more often, so the sold-out flag that soon follows reaches buyers sooner.
    /// Nothing is refused on it.
    pub low_stock: bool,
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

    /// Whether `left` units are low on stock for this product: at most a quarter of every unit
    /// it was given ([`LOW_STOCK_DIVISOR`]), of at least [`LOW_STOCK_MIN_UNITS`].
    pub fn is_low(&self, left: u64) -> bool {
        self.stock_added >= LOW_STOCK_MIN_UNITS
            && left.saturating_mul(LOW_STOCK_DIVISOR) <= self.stock_added
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

/// One optional setting of a `PUT /products/{sku}`: left out, `null`, or a value. On an
/// existing product a setting left out keeps its value and `null` clears it, so a restock that
/// names only its stock cannot erase a running sale's limit or window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Change<T> {
    #[default]
    Keep,
    Clear,
    Set(T),
}

impl<T: Copy> Change<T> {
    /// The value after the change, from the value before it.
    pub fn apply(self, current: Option<T>) -> Option<T> {
        match self {
            Change::Keep => current,
            Change::Clear => None,
            Change::Set(v) => Some(v),
        }
    }
}

/// The settings a `PUT /products/{sku}` changes. Clearing `payment_window_seconds` puts back
/// the default window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settings {
    pub per_user_limit: Change<u32>,
    pub sale_starts_at: Change<Millis>,
    pub sale_ends_at: Change<Millis>,
    pub payment_window_seconds: Change<u32>,
}

/// A checked `PUT /products/{sku}`: a new product, or stock added to an existing one with the
/// settings it names changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductPut {
    pub sku: Sku,
    pub name: String,
    /// The units this request adds (the first delivery of a new product).
    pub stock: u64,
    /// Chosen by the admin; only a new product uses it, the shard count never changes.
    pub shards: Option<u32>,
    pub settings: Settings,
}

impl ProductPut {
    /// The product this request creates: settings left out or `null` take their defaults.
    pub fn new_product(&self) -> Product {
        let shards = self.shards.unwrap_or_else(|| {
            self.stock
                .div_ceil(UNITS_PER_SHARD)
                .clamp(1, u64::from(MAX_SHARDS)) as u32
        });
        let s = self.settings;
        Product {
            sku: self.sku.clone(),
            name: self.name.clone(),
            stock_added: self.stock,
            per_user_limit: s.per_user_limit.apply(None),
            sale_starts_at: s.sale_starts_at.apply(None),
            sale_ends_at: s.sale_ends_at.apply(None),
            payment_window_seconds: s
                .payment_window_seconds
                .apply(None)
                .unwrap_or(DEFAULT_PAYMENT_WINDOW_SECONDS),
            shards,
            sold_out: false,
            low_stock: false,
            restocks: 0,
        }
    }

    /// `existing` after this request: its stock added, the settings named changed, the others
    /// kept; refused when the sale window it leaves ends before it starts.
    pub fn restocked(&self, existing: &Product) -> Result<Product, ValidationError> {
        let s = self.settings;
        let product = Product {
            name: self.name.clone(),
            stock_added: existing.stock_added + self.stock,
            per_user_limit: s.per_user_limit.apply(existing.per_user_limit),
            sale_starts_at: s.sale_starts_at.apply(existing.sale_starts_at),
            sale_ends_at: s.sale_ends_at.apply(existing.sale_ends_at),
            payment_window_seconds: s
                .payment_window_seconds
                .apply(Some(existing.payment_window_seconds))
                .unwrap_or(DEFAULT_PAYMENT_WINDOW_SECONDS),
            ..existing.clone()
        };
        check_window(product.sale_starts_at, product.sale_ends_at)?;
        Ok(product)
    }

    /// A digest of the request's meaning (not its bytes), so a retry with the same
    /// `Idempotency-Key` is recognised however it was serialised, and another request under
    /// that key is not.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        fn change<T: std::fmt::Display>(c: Change<T>) -> String {
            match c {
                Change::Keep => "keep".into(),
                Change::Clear => "clear".into(),
                Change::Set(v) => format!("set {v}"),
            }
        }
        let s = self.settings;
        let canonical = format!(
            "sku={}\nname={}\nstock={}\nshards={:?}\nper_user_limit={}\nsale_starts_at={}\nsale_ends_at={}\npayment_window_seconds={}",
            self.sku,
            self.name,
            self.stock,
            self.shards,
            change(s.per_user_limit),
            change(s.sale_starts_at),
            change(s.sale_ends_at),
            change(s.payment_window_seconds),
        );
        hex::encode(&Sha256::digest(canonical.as_bytes())[..16])
    }
}

fn check_window(starts: Option<Millis>, ends: Option<Millis>) -> Result<(), ValidationError> {
    match (starts, ends) {
        (Some(s), Some(e)) if e <= s => Err(bad("sale_ends_at must be after sale_starts_at")),
        _ => Ok(()),
    }
}

/// A field that may be left out (`None`), sent as `null` (`Some(None)`) or given a value.
fn explicit<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The body of `PUT /products/{sku}` as it arrives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSpec {
    pub name: String,
    pub stock: i64,
    #[serde(default, deserialize_with = "explicit")]
    pub per_user_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "explicit")]
    pub sale_starts_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "explicit")]
    pub sale_ends_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "explicit")]
    pub payment_window_seconds: Option<Option<i64>>,
    /// How many shard items hold the stock; chosen from the stock size when absent.
    #[serde(default)]
    pub shards: Option<i64>,
}

fn bad(msg: &str) -> ValidationError {
    ValidationError(msg.to_owned())
}

/// A field left out, `null`, or checked by `parse`.
fn change<T, U>(
    field: Option<Option<T>>,
    parse: impl FnOnce(T) -> Result<U, ValidationError>,
) -> Result<Change<U>, ValidationError> {
    Ok(match field {
        None => Change::Keep,
        Some(None) => Change::Clear,
        Some(Some(v)) => Change::Set(parse(v)?),
    })
}

impl ProductSpec {
    /// Checks every field.
    pub fn parse(self, sku: Sku) -> Result<ProductPut, ValidationError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(bad("name must be 1 to 200 characters"));
        }
        let stock = u64::try_from(self.stock)
            .ok()
            .filter(|s| (1..=MAX_STOCK).contains(s))
            .ok_or_else(|| bad("stock must be an integer from 1 to 1000000000"))?;
        let per_user_limit = change(self.per_user_limit, |n| {
            u32::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad("per_user_limit must be a positive integer"))
        })?;
        let time = |field: &str| {
            let field = field.to_owned();
            move |s: String| {
                parse_rfc3339(&s)
                    .ok_or_else(|| bad(&format!("{field} must be an RFC 3339 timestamp")))
            }
        };
        let sale_starts_at = change(self.sale_starts_at, time("sale_starts_at"))?;
        let sale_ends_at = change(self.sale_ends_at, time("sale_ends_at"))?;
        if let (Change::Set(s), Change::Set(e)) = (sale_starts_at, sale_ends_at) {
            check_window(Some(s), Some(e))?;
        }
        let payment_window_seconds = change(self.payment_window_seconds, |n| {
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=86_400).contains(n))
                .ok_or_else(|| bad("payment_window_seconds must be an integer from 1 to 86400"))
        })?;
        let shards = self
            .shards
            .map(|n| {
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=MAX_SHARDS).contains(n))
                    .ok_or_else(|| bad("shards must be an integer from 1 to 64"))
            })
            .transpose()?;
        Ok(ProductPut {
            sku,
            name: name.to_owned(),
            stock,
            shards,
            settings: Settings {
                per_user_limit,
                sale_starts_at,
                sale_ends_at,
                payment_window_seconds,
            },
        })
    }

    /// Checks every field and returns the new product it describes, with `stock` units as its
    /// first delivery.
    pub fn into_product(self, sku: Sku) -> Result<(Product, u64), ValidationError> {
        let put = self.parse(sku)?;
        Ok((put.new_product(), put.stock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_product_of_100_units_or_more_is_low_at_a_quarter_of_them_and_a_smaller_one_never() {
        let mut p = ProductPut {
            sku: Sku::parse("SKU-1").expect("valid sku"),
            name: "Phone".into(),
            stock: 100,
            shards: None,
            settings: Settings::default(),
        }
        .new_product();
        assert!(!p.is_low(26));
        assert!(p.is_low(25));
        assert!(p.is_low(0));
        p.stock_added = 99;
        assert!(!p.is_low(1));
    }

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
