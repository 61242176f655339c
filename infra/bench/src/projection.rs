//! An AWS projection, on paper: from what the runs measured (writes per sold unit, stock-item
//! writes per sold unit, requests per buyer, invocation times) and AWS's published limits,
//! how fast one product and a whole catalog could sell on AWS, and which limit binds first.
//! Nothing here is measured on AWS; every input is named in the output.

use crate::report::Results;
use crate::sale::round3;
use serde_json::{json, Value};

/// One partition (so one stock shard, or per_order's one stock item) takes 1,000 WU/s.
const PARTITION_WU_PER_S: f64 = 1000.0;
/// A write inside a transaction costs 2 write units an item; a plain write 1.
const TRANSACTION_WU_PER_ITEM: f64 = 2.0;
/// API Gateway's default per-account, per-region steady rate.
const API_GATEWAY_RPS: f64 = 10_000.0;
/// Lambda's default concurrency per account and region.
const LAMBDA_CONCURRENCY: f64 = 1_000.0;

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Mean billed seconds per invocation of `function` in a run's usage, if it was invoked.
fn mean_invocation_s(usage: &Value, function: &str) -> Option<f64> {
    let l = &usage["lambda"][function];
    let n = f(&l["invocations"])?;
    (n > 0.0).then(|| f(&l["billed_ms"]).unwrap_or(0.0) / n / 1000.0)
}

pub fn project(r: &Results) -> Value {
    let usage = |runs: &crate::report::RunsRef, d: &str| {
        runs.get(d)
            .map(|(_, det)| serde_json::to_value(&det.usage).unwrap_or(Value::Null))
            .unwrap_or(Value::Null)
    };
    let single = &r.designs;
    let Some((p, pd)) = single.get("pipeline") else {
        return json!({"note": "needs the pipeline's single-product run"});
    };
    let p_usage = usage(single, "pipeline");
    let shards = pd
        .notes
        .get("shards")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    let event_source = pd.notes.get("event_source").cloned().unwrap_or(Value::Null);
    let pollers = f(&event_source["max_concurrency"]).unwrap_or(1.0);
    let batch = f(&event_source["batch_size"]).unwrap_or(1.0);
    // Per product: each shard is a partition; a group commit writes it once (2 WU, inside a
    // transaction) for `units_per_stock_write` units.
    let units_per_stock_write = p
        .stock_item_writes_per_sold_unit
        .filter(|w| *w > 0.0)
        .map(|w| 1.0 / w);
    let shard_bound =
        units_per_stock_write.map(|u| shards * PARTITION_WU_PER_S / TRANSACTION_WU_PER_ITEM * u);
    // The processor: each poller runs one batch at a time.
    let process_s = mean_invocation_s(&p_usage, "process-orders");
    let processor_orders_per_s = process_s.map(|s| pollers * batch / s.max(1e-3));
    let place_s = mean_invocation_s(&p_usage, "place-order");
    let requests_per_buyer = f(&p_usage["api_requests"]).map(|n| n / r.sale.buyers.max(1) as f64);
    let api_buyers_per_s = requests_per_buyer.map(|q| API_GATEWAY_RPS / q.max(1.0));
    let lambda_buyers_per_s = place_s.map(|s| LAMBDA_CONCURRENCY / s.max(1e-4));
    // per_order: one plain write of the one stock item per sold unit (and per refusal that
    // raced the sell-out): the item's partition is the ceiling.
    let per_order_units_per_s = single
        .get("per_order")
        .and_then(|(r, _)| r.stock_item_writes_per_sold_unit)
        .filter(|w| *w > 0.0)
        .map(|w| PARTITION_WU_PER_S / w);
    let pipeline_product = [
        ("stock_shards", shard_bound),
        ("processor_pollers", processor_orders_per_s),
    ];
    let catalog = [
        ("api_gateway_10000_rps", api_buyers_per_s),
        ("lambda_concurrency_1000", lambda_buyers_per_s),
        ("processor_pollers", processor_orders_per_s),
    ];
    let binding = |bounds: &[(&str, Option<f64>)]| {
        bounds
            .iter()
            .filter_map(|(n, v)| v.map(|v| (*n, v)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(n, v)| json!({"binds_first": n, "per_s": round3(v)}))
    };
    let obj = |bounds: &[(&str, Option<f64>)]| {
        bounds
            .iter()
            .map(|(n, v)| ((*n).to_owned(), json!(v.map(round3))))
            .collect::<serde_json::Map<_, _>>()
    };
    json!({
        "limits": {
            "partition_write_units_per_s": PARTITION_WU_PER_S,
            "transaction_write_units_per_item": TRANSACTION_WU_PER_ITEM,
            "api_gateway_requests_per_s": API_GATEWAY_RPS,
            "lambda_concurrency": LAMBDA_CONCURRENCY,
            "processor_pollers": pollers,
            "batch_size": batch,
        },
        "measured": {
            "pipeline_shards": shards,
            "pipeline_units_per_stock_write": units_per_stock_write.map(round3),
            "pipeline_write_units_per_sold_unit": p.write_units_per_sold_unit,
            "api_requests_per_buyer": requests_per_buyer.map(round3),
            "place_order_mean_invocation_ms": place_s.map(|s| round3(s * 1000.0)),
            "process_orders_mean_invocation_ms": process_s.map(|s| round3(s * 1000.0)),
        },
        "per_product_units_per_s": {
            "per_order": per_order_units_per_s.map(round3),
            "pipeline": obj(&pipeline_product),
            "pipeline_ceiling": binding(&pipeline_product),
        },
        "whole_catalog_buyers_or_orders_per_s": obj(&catalog),
        "whole_catalog_ceiling": binding(&catalog),
        "note": "on paper: measured local invocation times stand in for AWS's; the processor \
                 bound counts full batches (a backlog), each poller one batch at a time",
    })
}
