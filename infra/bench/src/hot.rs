//! The hot product of the three simple designs: one stock item (`PRODUCT#{sku}` / `STOCK`),
//! the order records they write for every unit sold (the same `ORDER#{id}` items, with the same
//! attributes, that the pipeline writes, so the work per order is comparable), and the check
//! that ends each of their runs.

use crate::sale::{
    per_unit, round3, run_buyers, Decision, Design, DesignReport, Details, Outcomes, Run, Sale,
};
use aws_sdk_dynamodb::config::retry::RetryPartition;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, Select};
use aws_sdk_dynamodb::Client;
use aws_sim::CapacityModel;
use flash_domain::clock::now_ms;
use flash_domain::{IdempotencyKey, OrderId, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub type Item = HashMap<String, AttributeValue>;

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// How a single-item write ended.
pub enum Call<T> {
    Done(T),
    /// Its condition failed (it still spent the item's write unit).
    Condition,
    /// Anything else: throttled past the SDK's retries, a conflict, a timeout. The API call
    /// would answer 503.
    Unavailable(String),
}

pub fn classify<T, E: ProvideErrorMetadata, R>(r: Result<T, SdkError<E, R>>) -> Call<T> {
    match r {
        Ok(v) => Call::Done(v),
        Err(e) => match e.code() {
            Some("ConditionalCheckFailedException") => Call::Condition,
            Some(code) => Call::Unavailable(code.to_owned()),
            None => Call::Unavailable(
                match e {
                    SdkError::TimeoutError(_) => "timeout",
                    SdkError::DispatchFailure(_) => "dispatch_failure",
                    _ => "sdk_error",
                }
                .to_owned(),
            ),
        },
    }
}

/// Set by `--no-model`: the designs' DynamoDB calls bypass the capacity model, to show what the
/// emulators do on their own.
static MODEL_OFF: AtomicBool = AtomicBool::new(false);

pub fn disable_model() {
    MODEL_OFF.store(true, Relaxed);
}

pub fn model_on() -> bool {
    !MODEL_OFF.load(Relaxed)
}

/// The SDK configuration the designs' DynamoDB clients use: through `model` (unless
/// `--no-model`).
pub async fn dynamo_sdk(model: &CapacityModel) -> aws_config::SdkConfig {
    if model_on() {
        aws_sim::sdk_config_with_capacity(flash_aws::config::sdk_config().await, model)
    } else {
        flash_aws::config::sdk_config().await
    }
}

/// A DynamoDB client whose writes go through `model`. Its retry quota (a process-wide token
/// bucket per partition in the SDK) is its own, so one design's throttling storm cannot use up
/// the next design's retries.
pub async fn client(model: &CapacityModel, design: &str) -> Client {
    let sdk = dynamo_sdk(model).await;
    Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .retry_partition(RetryPartition::new(format!("bench-{design}")))
            .build(),
    )
}

pub struct Hot {
    pub client: Client,
    pub table: String,
    pub sku: String,
    /// Write requests that reached the stock item (succeeded or failed their condition).
    pub stock_writes: AtomicU64,
}

impl Hot {
    pub fn new(client: Client, table: &str, sku: String) -> Self {
        Self {
            client,
            table: table.to_owned(),
            sku,
            stock_writes: AtomicU64::new(0),
        }
    }

    pub fn pk(&self) -> AttributeValue {
        s(format!("PRODUCT#{}", self.sku))
    }

    pub fn key(&self, sk: &str) -> Item {
        HashMap::from([("pk".to_owned(), self.pk()), ("sk".to_owned(), s(sk))])
    }

    /// Puts the stock item with `stock` units at version 0.
    pub async fn seed(&self, stock: u64) -> anyhow::Result<()> {
        let mut item = self.key("STOCK");
        item.insert("available".into(), n(stock));
        item.insert("version".into(), n(0));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await?;
        Ok(())
    }

    /// (available, version), read consistently.
    pub async fn read_stock(&self) -> Result<(i64, i64), String> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key("STOCK")))
            .consistent_read(true)
            .send()
            .await;
        match classify(out) {
            Call::Done(out) => {
                let item = out.item.unwrap_or_default();
                Ok((number(&item, "available"), number(&item, "version")))
            }
            Call::Condition => Err("ConditionalCheckFailedException".into()),
            Call::Unavailable(code) => Err(code),
        }
    }

    pub fn stock_write(&self) {
        self.stock_writes.fetch_add(1, Relaxed);
    }

    /// The order record of `buyer`'s unit: one PutItem, retried until it lands (the unit is
    /// taken already, so the buyer is sold either way; a record that never lands shows up in
    /// the check as a sold unit without a record).
    pub async fn record_order(&self, buyer: usize) {
        let item = order_record(&self.sku, buyer, now_ms());
        for attempt in 0..10 {
            let out = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            match classify(out) {
                // An earlier attempt that timed out had written it.
                Call::Done(_) | Call::Condition => return,
                Call::Unavailable(_) => {}
            }
            tokio::time::sleep(crate::sale::backoff(
                Duration::from_millis(20),
                attempt,
                500,
            ))
            .await;
        }
    }

    /// Order records of this SKU in the table (a scan; only after the sale).
    pub async fn count_records(&self) -> anyhow::Result<u64> {
        let mut count = 0u64;
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :o) AND sku = :sku")
                .expression_attribute_values(":o", s("ORDER#"))
                .expression_attribute_values(":sku", s(&self.sku))
                .select(Select::Count)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            count += page.count.max(0) as u64;
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(count);
            }
        }
    }
}

pub fn number(item: &Item, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn buyer_user(buyer: usize) -> String {
    format!("buyer-{buyer}")
}

pub fn buyer_key(sku: &str, buyer: usize) -> String {
    format!("{sku}-{buyer}")
}

/// The item the pipeline's `create_order` writes, as it stands once the order is `pending`.
pub fn order_record(sku: &str, buyer: usize, now: i64) -> Item {
    let user = buyer_user(buyer);
    let id = match (
        UserId::parse(&user),
        IdempotencyKey::parse(&buyer_key(sku, buyer)),
    ) {
        (Ok(u), Ok(k)) => OrderId::derive(&u, &k).to_string(),
        _ => format!("{buyer:032x}"),
    };
    HashMap::from([
        ("pk".to_owned(), s(format!("ORDER#{id}"))),
        ("sk".to_owned(), s("ORDER")),
        ("owner".to_owned(), s(user)),
        ("sku".to_owned(), s(sku)),
        ("quantity".to_owned(), n(1)),
        ("status".to_owned(), s("pending")),
        ("created_at".to_owned(), n(now)),
        ("updated_at".to_owned(), n(now)),
        ("expires_at".to_owned(), n(now + 900_000)),
        ("fingerprint".to_owned(), s(format!("{sku}:1"))),
        ("takes".to_owned(), s("0:1")),
        ("counted".to_owned(), AttributeValue::Bool(false)),
    ])
}

/// The check after a simple design's run: what buyers were told, what the records say and
/// what the stock item holds must agree, and nothing may be oversold. Stock left while a buyer
/// was refused is stranded.
/// A design that sells from the one stock item inside the API call.
pub trait HotDesign: Design {
    fn hot(&self) -> &Hot;
}

/// Seeds the stock item, runs every buyer through `design` and checks the outcome.
pub async fn run_design<D: HotDesign>(
    design: Arc<D>,
    sale: &Sale,
    model: &CapacityModel,
) -> anyhow::Result<(DesignReport, Details)> {
    design.hot().seed(sale.stock).await?;
    let before = model.stats();
    let run = Run::start();
    let outcomes = run_buyers(design.clone(), sale, &run).await;
    report(design.hot(), sale, &run, &outcomes, model, before).await
}

async fn report(
    hot: &Hot,
    sale: &Sale,
    run: &Run,
    outcomes: &Outcomes,
    model: &CapacityModel,
    before: aws_sim::CapacityStats,
) -> anyhow::Result<(DesignReport, Details)> {
    let after = model.stats();
    let (left, _) = hot
        .read_stock()
        .await
        .map_err(|code| anyhow::anyhow!("reading the stock item: {code}"))?;
    let records = hot.count_records().await?;
    let sold = outcomes.sold();
    let mut violations = Vec::new();
    if records != sold {
        violations.push(format!(
            "{sold} buyers were told they bought, {records} order records exist"
        ));
    }
    if i128::from(sale.stock) != i128::from(left) + i128::from(sold) {
        violations.push(format!(
            "conservation: stock {} != left {left} + sold {sold}",
            sale.stock
        ));
    }
    if left < 0 {
        violations.push(format!("the stock item holds {left}"));
    }
    let oversold = sold.saturating_sub(sale.stock).max((-left).max(0) as u64);
    let refused = outcomes.count(|d| !matches!(d, Decision::Sold));
    let stranded = if left > 0 && refused > 0 {
        left as u64
    } else {
        0
    };
    let undecided = outcomes.undecided as u64;
    let all_decided = (undecided == 0).then_some(outcomes.last_answer);
    let write_units = after.write_units_admitted - before.write_units_admitted;
    let stock_item_writes = hot.stock_writes.load(Relaxed);
    let report = DesignReport {
        sellout_s: run.sellout().map(|d| round3(d.as_secs_f64())),
        all_decided_s: all_decided.map(|d| round3(d.as_secs_f64())),
        orders_per_s: all_decided.map(|d| round3(sale.buyers as f64 / d.as_secs_f64())),
        oversold,
        stranded,
        write_units_per_sold_unit: per_unit(write_units, sold).filter(|_| model_on()),
        stock_item_writes_per_sold_unit: per_unit(stock_item_writes as f64, sold),
        throttles: after.throttles - before.throttles,
        conflicts: after.conflicts - before.conflicts,
    };
    let details = Details {
        sku: hot.sku.clone(),
        sold,
        stock_left: left,
        refused: outcomes.refusals(),
        undecided,
        unavailable_answers: outcomes.unavailable.clone(),
        write_units,
        stock_item_writes,
        violations,
        ..Details::default()
    };
    Ok((report, details))
}
