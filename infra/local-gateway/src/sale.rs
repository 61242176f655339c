//! The live sale page (local only, not an API route): `GET /_local/sale` is a static page
//! (`sale.html`, no build step, nothing fetched from elsewhere) whose script reads
//! `GET /_local/sale.json?sku=SKU` every second. That snapshot comes from the stack's own
//! stores: the product and its shards as `GET /products/{sku}` reads them, the product's
//! orders (one filtered Scan of the table: a local table is small), and the orders queue and
//! its DLQ (`GetQueueAttributes`). Without `sku` it is the product created last.

use aws_sdk_dynamodb::types::AttributeValue;
use flash_aws::dynamo::{META, ORDER_PREFIX};
use flash_aws::DynamoStore;
use flash_domain::ports::Store;
use flash_domain::Sku;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub const PAGE_PATH: &str = "/_local/sale";
pub const SNAPSHOT_PATH: &str = "/_local/sale.json";
pub const PAGE: &str = include_str!("sale.html");

/// Upper bounds (ms) of the time-to-decision histogram's bars; the last bar is everything
/// above the last bound.
const BOUNDS_MS: [i64; 8] = [50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000];

/// What the page shows at one instant.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    pub sku: String,
    pub name: String,
    /// Epoch ms when the snapshot was read.
    pub at: i64,
    pub stock_added: u64,
    pub available: u64,
    pub shards: Vec<u64>,
    /// Orders of the product by status.
    pub orders: BTreeMap<String, u64>,
    /// Orders decided: accepted (every status but `queued` and `rejected`) plus refused.
    pub decided: u64,
    pub accepted: u64,
    pub refused: u64,
    /// Rejections by reason.
    pub reasons: BTreeMap<String, u64>,
    pub queue: Depth,
    pub dlq: Depth,
    /// Time from acceptance to decision of the orders still in the state their decision left
    /// them in (`pending`, `rejected`): `(upper bound ms or null, count)`.
    pub decision_ms: Vec<(Option<i64>, u64)>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Depth {
    pub visible: u64,
    pub in_flight: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    #[error("no product {0}")]
    NoProduct(String),
    #[error("no product has been created yet")]
    NoProducts,
    #[error("{0}")]
    Read(String),
}

fn read<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> SaleError + '_ {
    move |e| SaleError::Read(format!("{what}: {e}"))
}

pub struct SalePage {
    store: DynamoStore,
    sqs: aws_sdk_sqs::Client,
    queue_url: Option<String>,
    dlq_url: Option<String>,
    /// The SKU of the product this gateway created last.
    latest: Mutex<Option<String>>,
}

impl SalePage {
    pub fn new(
        store: DynamoStore,
        sqs: aws_sdk_sqs::Client,
        queue_url: Option<String>,
        dlq_url: Option<String>,
    ) -> Self {
        Self {
            store,
            sqs,
            queue_url,
            dlq_url,
            latest: Mutex::new(None),
        }
    }

    /// Remembers a product created through this gateway (`PUT /products/{sku}` → `201`).
    pub fn created(&self, sku: &str) {
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(sku.to_owned());
        }
    }

    /// The product created last: through this gateway, or else the newest `created_at` in
    /// the table.
    async fn latest(&self) -> Result<String, SaleError> {
        if let Some(sku) = self.latest.lock().ok().and_then(|l| l.clone()) {
            return Ok(sku);
        }
        let mut newest: Option<(i64, String)> = None;
        for item in self.scan("sk = :meta", &[(":meta", META)]).await? {
            let sku = s(&item, "pk").and_then(flash_aws::dynamo::meta_sku);
            let at = n(&item, "created_at").unwrap_or(0);
            if let Some(sku) = sku {
                if newest.as_ref().is_none_or(|(t, _)| at >= *t) {
                    newest = Some((at, sku.to_owned()));
                }
            }
        }
        newest.map(|(_, sku)| sku).ok_or(SaleError::NoProducts)
    }

    async fn scan(
        &self,
        filter: &str,
        values: &[(&str, &str)],
    ) -> Result<Vec<HashMap<String, AttributeValue>>, SaleError> {
        let mut request = self
            .store
            .client()
            .scan()
            .table_name(self.store.table())
            .filter_expression(filter);
        for (k, v) in values {
            request = request.expression_attribute_values(*k, AttributeValue::S((*v).to_owned()));
        }
        let mut items = Vec::new();
        let mut pages = request.into_paginator().send();
        while let Some(page) = pages.next().await {
            items.extend(
                page.map_err(read("dynamodb Scan"))?
                    .items
                    .unwrap_or_default(),
            );
        }
        Ok(items)
    }

    async fn depth(&self, url: Option<&str>) -> Result<Depth, SaleError> {
        let Some(url) = url else {
            return Ok(Depth::default());
        };
        let (visible, in_flight) = flash_aws::sqs::queue_depth(&self.sqs, url)
            .await
            .map_err(read("queue depth"))?;
        Ok(Depth { visible, in_flight })
    }

    /// The sale of `sku` (or of the product created last) now.
    pub async fn snapshot(&self, sku: Option<&str>) -> Result<Snapshot, SaleError> {
        let sku = match sku.filter(|s| !s.is_empty()) {
            Some(sku) => sku.to_owned(),
            None => self.latest().await?,
        };
        let parsed = Sku::parse(&sku).map_err(|_| SaleError::NoProduct(sku.clone()))?;
        let at = flash_domain::clock::now_ms();
        // Orders first, stock after: a unit taken between the two reads shows as sold with
        // its order not yet decided, never as decided and still in stock.
        let orders = self
            .scan(
                "begins_with(pk, :o) AND sku = :sku",
                &[(":o", ORDER_PREFIX), (":sku", &sku)],
            )
            .await?;
        let product = self
            .store
            .get_product(&parsed)
            .await
            .map_err(read("dynamodb GetItem"))?
            .ok_or_else(|| SaleError::NoProduct(sku.clone()))?;
        let shards: Vec<u64> = self
            .store
            .read_shards(&product)
            .await
            .map_err(read("dynamodb BatchGetItem"))?
            .iter()
            .map(|s| s.available)
            .collect();
        let mut snapshot = Snapshot {
            sku,
            name: product.name.clone(),
            at,
            stock_added: product.stock_added,
            available: shards.iter().sum(),
            shards,
            orders: BTreeMap::new(),
            decided: 0,
            accepted: 0,
            refused: 0,
            reasons: BTreeMap::new(),
            queue: self.depth(self.queue_url.as_deref()).await?,
            dlq: self.depth(self.dlq_url.as_deref()).await?,
            decision_ms: Vec::new(),
        };
        let mut histogram = vec![0u64; BOUNDS_MS.len() + 1];
        for item in &orders {
            let status = s(item, "status").unwrap_or("unknown").to_owned();
            match status.as_str() {
                "queued" => {}
                "rejected" => snapshot.refused += 1,
                _ => snapshot.accepted += 1,
            }
            if status == "rejected" {
                let reason = s(item, "reason").unwrap_or("unknown").to_owned();
                *snapshot.reasons.entry(reason).or_default() += 1;
            }
            if status == "pending" || status == "rejected" {
                if let (Some(created), Some(updated)) =
                    (n(item, "created_at"), n(item, "updated_at"))
                {
                    let ms = (updated - created).max(0);
                    let bar = BOUNDS_MS.iter().position(|&b| ms <= b);
                    histogram[bar.unwrap_or(BOUNDS_MS.len())] += 1;
                }
            }
            *snapshot.orders.entry(status).or_default() += 1;
        }
        snapshot.decided = snapshot.accepted + snapshot.refused;
        snapshot.decision_ms = BOUNDS_MS
            .iter()
            .map(|&b| Some(b))
            .chain([None])
            .zip(histogram)
            .collect();
        Ok(snapshot)
    }
}

fn s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn n(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}
