//! `sale watch SKU`: a live view of one product's sale, redrawn every second: stock left per
//! shard and in total, orders accepted and refused per second, the orders queue's depth
//! (visible and in flight) and its DLQ's, decisions by reason, and time-to-decision
//! percentiles (an HdrHistogram of `updated_at − created_at` over the orders whose decision
//! is their last change: pending and rejected). Each reading is the product's shards and one
//! Scan filtered on the product (`flash_aws::dynamo::ledger::audit`), which reads the whole
//! table: on AWS, mind its cost on a large table.

use crate::output::Out;
use crate::target::Target;
use anyhow::{anyhow, bail, Context, Result};
use flash_aws::dynamo::ledger;
use flash_domain::ports::Store;
use flash_domain::{OrderStatus, Sku};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
struct Frame {
    sku: String,
    stock_added: u64,
    shards: Vec<u64>,
    available: u64,
    accepted: u64,
    refused: u64,
    accepted_per_s: f64,
    refused_per_s: f64,
    queued: u64,
    queue: Depth,
    dlq: Depth,
    /// Orders by status, and rejections by reason.
    by_status: BTreeMap<String, usize>,
    rejected_by: BTreeMap<String, usize>,
    decision_ms: Percentiles,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Depth {
    visible: u64,
    in_flight: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Percentiles {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

pub async fn run(target: &Target, sku: &str, once: bool, interval: f64, out: Out) -> Result<()> {
    let sku = Sku::parse(sku).map_err(|e| anyhow!("sku {sku:?}: {e}"))?;
    if !(0.1..=3600.0).contains(&interval) {
        bail!("--interval must be between 0.1 and 3600 seconds");
    }
    let interval = Duration::from_secs_f64(interval);
    let mut last = read(target, &sku).await?;
    let mut at = Instant::now();
    loop {
        tokio::time::sleep(interval.saturating_sub(at.elapsed())).await;
        let mut frame = read(target, &sku).await?;
        let secs = at.elapsed().as_secs_f64().max(0.001);
        at = Instant::now();
        frame.accepted_per_s = frame.accepted.saturating_sub(last.accepted) as f64 / secs;
        frame.refused_per_s = frame.refused.saturating_sub(last.refused) as f64 / secs;
        if out.json {
            out.print_json(&frame);
        } else {
            if !once {
                // Clear the terminal and go home: one frame on screen at a time.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&frame));
        }
        if once {
            return Ok(());
        }
        last = frame;
    }
}

async fn read(target: &Target, sku: &Sku) -> Result<Frame> {
    let store = target.store();
    let product = store
        .get_product(sku)
        .await?
        .ok_or_else(|| anyhow!("no product {sku}"))?;
    let shards: Vec<u64> = store
        .read_shards(&product)
        .await?
        .iter()
        .map(|s| s.available)
        .collect();
    let audit = ledger::audit(&store, sku).await?;
    let mut hist = Histogram::<u64>::new(3).context("histogram")?;
    for o in &audit.orders {
        if matches!(o.status, OrderStatus::Pending | OrderStatus::Rejected) {
            hist.saturating_record(u64::try_from(o.updated_at - o.created_at).unwrap_or(0));
        }
    }
    let refused = audit.count(OrderStatus::Rejected) as u64;
    let queued = audit.count(OrderStatus::Queued) as u64;
    let accepted = audit.orders.len() as u64 - refused - queued;
    Ok(Frame {
        sku: sku.to_string(),
        stock_added: product.stock_added,
        available: shards.iter().sum(),
        shards,
        accepted,
        refused,
        accepted_per_s: 0.0,
        refused_per_s: 0.0,
        queued,
        queue: depth(target, target.orders_queue.as_deref()).await?,
        dlq: depth(target, target.orders_dlq.as_deref()).await?,
        by_status: audit
            .by_status
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        rejected_by: audit
            .rejected_by
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        decision_ms: Percentiles {
            count: hist.len(),
            p50: hist.value_at_quantile(0.5),
            p90: hist.value_at_quantile(0.9),
            p99: hist.value_at_quantile(0.99),
            max: hist.max(),
        },
    })
}

/// A queue's approximate depth; zero when the target names no such queue.
async fn depth(target: &Target, url: Option<&str>) -> Result<Depth> {
    let Some(url) = url else {
        return Ok(Depth::default());
    };
    let (visible, in_flight) = flash_aws::sqs::queue_depth(&target.sqs(), url).await?;
    Ok(Depth { visible, in_flight })
}

fn render(f: &Frame) -> String {
    let shards: Vec<String> = f.shards.iter().map(u64::to_string).collect();
    let statuses: Vec<String> = f
        .by_status
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let reasons: Vec<String> = f
        .rejected_by
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let d = &f.decision_ms;
    format!(
        "sale {sku}\n\
         stock      {available} of {added} left   shards [{shards}]\n\
         orders/s   accepted {aps:.1}   refused {rps:.1}   (total accepted {acc}, refused {rej}, queued {q})\n\
         queue      visible {qv}   in flight {qf}   DLQ {dv}\n\
         decisions  {statuses}\n\
         refused by {reasons}\n\
         decided in p50 {p50} ms   p90 {p90} ms   p99 {p99} ms   max {max} ms   ({n} orders)\n",
        sku = f.sku,
        available = f.available,
        added = f.stock_added,
        shards = shards.join(" "),
        aps = f.accepted_per_s,
        rps = f.refused_per_s,
        acc = f.accepted,
        rej = f.refused,
        q = f.queued,
        qv = f.queue.visible,
        qf = f.queue.in_flight,
        dv = f.dlq.visible + f.dlq.in_flight,
        statuses = if statuses.is_empty() { "-".into() } else { statuses.join(", ") },
        reasons = if reasons.is_empty() { "-".into() } else { reasons.join(", ") },
        p50 = d.p50,
        p90 = d.p90,
        p99 = d.p99,
        max = d.max,
        n = d.count,
    )
}
