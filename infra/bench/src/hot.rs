//! The hot product of the three simple designs: one stock item (`PRODUCT#{sku}` / `STOCK`),
//! the order records they write for every unit sold (the same `ORDER#{id}` items, with the same
//! attributes, that the pipeline writes, so the work per order is comparable), and the check
//! that ends each of their runs.

use crate::cost::{Invocations, Usage};
use crate::sale::{
    per_unit, round3, run_buyers, Answer, Decision, Design, DesignReport, Details, Outcomes,
    Percentiles, Run, Sale,
};
use aws_sdk_dynamodb::config::retry::RetryPartition;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use aws_sim::{CapacityModel, RequestCounter};
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

/// What a design's clients send is counted, then judged by `model` (unless `--no-model`).
pub fn counter(model: &CapacityModel) -> RequestCounter {
    if model_on() {
        RequestCounter::wrapping(model.clone())
    } else {
        RequestCounter::new()
    }
}

/// The SDK configuration the designs' clients use: every request counted by `counter`, and
/// DynamoDB's judged by the capacity model it wraps.
pub async fn dynamo_sdk(counter: &RequestCounter) -> aws_config::SdkConfig {
    aws_sim::judged_sdk_config(flash_aws::config::sdk_config().await, counter.clone())
}

/// A DynamoDB client whose requests `counter` counts and whose writes go through its model.
/// Its retry quota (a process-wide token bucket per partition in the SDK) is its own, so one
/// design's throttling storm cannot use up the next design's retries.
pub async fn client(counter: &RequestCounter, design: &str) -> Client {
    let sdk = dynamo_sdk(counter).await;
    Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .retry_partition(RetryPartition::new(format!("bench-{design}")))
            .build(),
    )
}

/// What a design over stock items of its own runs with: the sale, the capacity model it runs
/// under, and the table and SKU of its items.
pub struct Setup<'a> {
    pub sale: &'a Sale,
    pub model: &'a CapacityModel,
    pub table: &'a str,
    pub sku: String,
}

impl Setup<'_> {
    /// The run's request counter, and a client of `design`'s own whose requests it counts.
    pub async fn counted_client(&self, design: &str) -> (RequestCounter, Client) {
        let counter = counter(self.model);
        let client = client(&counter, design).await;
        (counter, client)
    }
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

    /// An update of the stock item, to be given its expressions.
    pub fn update_stock(&self) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key("STOCK")))
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

    /// (available, version) when there is a unit to sell; otherwise the buyer's answer:
    /// unavailable when the read failed, sold out when nothing is left.
    pub async fn stock_to_sell(&self) -> Result<(i64, i64), Answer> {
        match self.read_stock().await {
            Ok((available, _)) if available < 1 => Err(Answer::Decided(Decision::SoldOut)),
            Ok(stock) => Ok(stock),
            Err(code) => Err(Answer::Unavailable(code)),
        }
    }

    /// `buyer` got a unit by a stock write that left `available - 1`: counts the write, marks
    /// the sell-out when it took the last one, and records the order.
    pub async fn sold(&self, buyer: usize, available: i64, run: &Run) -> Answer {
        self.stock_write();
        if available == 1 {
            run.mark_sellout();
        }
        self.record_order(buyer).await;
        Answer::Decided(Decision::Sold)
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

    /// Order records in the table by SKU, for every SKU whose name starts with this one's (a
    /// catalog's SKUs share their first one's base name): one scan, only after the sale.
    pub async fn count_records_by_sku(&self) -> anyhow::Result<HashMap<String, u64>> {
        let base = self
            .sku
            .rsplit_once('-')
            .map_or(self.sku.as_str(), |(b, _)| b);
        let mut counts = HashMap::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :o) AND begins_with(sku, :base)")
                .expression_attribute_values(":o", s("ORDER#"))
                .expression_attribute_values(":base", s(base))
                .projection_expression("sku")
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await?;
            for item in page.items.unwrap_or_default() {
                if let Some(sku) = item.get("sku").and_then(|v| v.as_s().ok()) {
                    *counts.entry(sku.clone()).or_default() += 1;
                }
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(counts);
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

/// A design that sells from stock items inside the API call: one per SKU, in the catalog's
/// order.
pub trait HotDesign: Design {
    fn hots(&self) -> &[Hot];
}

/// Seeds each SKU's stock item, runs every buyer through `design` and checks the outcome.
pub async fn run_design<D: HotDesign>(
    design: Arc<D>,
    sale: &Sale,
    model: &CapacityModel,
    counter: &RequestCounter,
) -> anyhow::Result<(DesignReport, Details)> {
    for (hot, stock) in design.hots().iter().zip(&sale.catalog.stocks) {
        hot.seed(*stock).await?;
    }
    let before = model.stats();
    let counted_before = counter.counts();
    let run = Run::start_catalog(sale.catalog.skus());
    let outcomes = run_buyers(design.clone(), sale, &run).await;
    let mut usage = Usage {
        api_requests: outcomes.call_ms.len() as u64,
        requests: crate::cost::since(&counter.counts(), &counted_before),
        ..Usage::default()
    };
    // Each call is one invocation of the design's API function, sized as place-order is.
    usage.lambda.insert(
        "api_function".into(),
        Invocations::of(
            "place-order",
            outcomes.call_ms.len() as u64,
            outcomes.call_ms.iter().sum(),
        ),
    );
    report(design.hots(), sale, &run, &outcomes, model, before, usage).await
}

/// The check after a simple design's run, SKU by SKU: what buyers were told, what the records
/// say and what the stock item holds must agree, and nothing may be oversold. Stock left while
/// a buyer of that SKU was refused is stranded.
async fn report(
    hots: &[Hot],
    sale: &Sale,
    run: &Run,
    outcomes: &Outcomes,
    model: &CapacityModel,
    before: aws_sim::CapacityStats,
    mut usage: Usage,
) -> anyhow::Result<(DesignReport, Details)> {
    let after = model.stats();
    let base = hots.first().map(|h| h.sku.clone()).unwrap_or_default();
    let records = match hots.first() {
        Some(h) => h.count_records_by_sku().await?,
        None => HashMap::new(),
    };
    let per_sku = outcomes.per_sku(sale);
    let mut violations = Vec::new();
    let (mut left_total, mut oversold, mut stranded) = (0i64, 0u64, 0u64);
    for ((hot, stock), (sold, refused)) in hots.iter().zip(&sale.catalog.stocks).zip(&per_sku) {
        let (left, _) = hot
            .read_stock()
            .await
            .map_err(|code| anyhow::anyhow!("reading the stock item: {code}"))?;
        let sku = &hot.sku;
        let recorded = records.get(sku).copied().unwrap_or(0);
        if recorded != *sold {
            violations.push(format!(
                "{sku}: {sold} buyers were told they bought, {recorded} order records exist"
            ));
        }
        if i128::from(*stock) != i128::from(left) + i128::from(*sold) {
            violations.push(format!(
                "{sku}: conservation: stock {stock} != left {left} + sold {sold}"
            ));
        }
        if left < 0 {
            violations.push(format!("{sku}: the stock item holds {left}"));
        }
        oversold += sold.saturating_sub(*stock).max((-left).max(0) as u64);
        if left > 0 && *refused > 0 {
            stranded += left as u64;
        }
        left_total += left;
    }
    let sold = outcomes.sold();
    let undecided = outcomes.undecided as u64;
    let all_decided = (undecided == 0).then_some(outcomes.last_answer);
    let write_units = after.write_units_admitted - before.write_units_admitted;
    usage.write_units = write_units;
    let stock_item_writes: u64 = hots.iter().map(|h| h.stock_writes.load(Relaxed)).sum();
    let (demand_met_s, sellout_lag_s) = outcomes.sellout_lag(sale, run);
    let report = DesignReport {
        sellout_s: run.sellout().map(|d| round3(d.as_secs_f64())),
        demand_met_s,
        sellout_lag_s,
        all_decided_s: all_decided.map(|d| round3(d.as_secs_f64())),
        decided_s: all_decided.map(|d| round3(d.as_secs_f64())),
        accepted_orders_per_s: all_decided.map(|d| round3(sold as f64 / d.as_secs_f64())),
        decision_ms: Percentiles::of(outcomes.answer_ms.iter().copied()),
        orders_per_s: all_decided.map(|d| round3(sale.buyers as f64 / d.as_secs_f64())),
        oversold,
        stranded,
        undecided,
        write_units_per_sold_unit: per_unit(write_units, sold).filter(|_| model_on()),
        stock_item_writes_per_sold_unit: per_unit(stock_item_writes as f64, sold),
        throttles: after.throttles - before.throttles,
        conflicts: after.conflicts - before.conflicts,
    };
    let details = Details {
        sku: base,
        skus: hots.len(),
        sold,
        stock_left: left_total,
        refused: outcomes.refusals(),
        undecided,
        unavailable_answers: outcomes.unavailable.clone(),
        write_units,
        stock_item_writes,
        violations,
        usage,
        ..Details::default()
    };
    Ok((report, details))
}
