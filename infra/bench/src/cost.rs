//! What a sale would cost on AWS, from what each design's run sent, counted where it was sent
//! (`aws_sim::RequestCounter` under the SDK clients, the buyers' calls, the event source's
//! invocations) and priced with `prices.json`: API Gateway HTTP API requests, Lambda invocations
//! and GB-seconds (memory from template.yaml, each invocation's measured duration rounded up
//! to the millisecond as Lambda bills it), SQS requests (per 64 KB chunk, with the event
//! source's empty polls estimated), DynamoDB write and read request units.

use crate::prices::{Price, PRICES};
use aws_sim::counter::Counted;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const TEMPLATE: &str = include_str!("../../../template.yaml");
/// Lambda's memory when neither the function nor `Globals` sets one.
const LAMBDA_DEFAULT_MEMORY_MB: u32 = 128;
/// Lambda's SQS pollers long-poll for 20 s: an idle poller sends 3 empty receives a minute.
pub const LONG_POLL_S: f64 = 20.0;

/// One function's invocations in a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Invocations {
    pub invocations: u64,
    /// Sum of every invocation's duration, each rounded up to the millisecond.
    pub billed_ms: u64,
    pub memory_mb: u32,
}

impl Invocations {
    /// `billed_ms` as measured, with the memory template.yaml gives `binary`.
    pub fn of(binary: &str, invocations: u64, billed_ms: u64) -> Self {
        Self {
            invocations,
            billed_ms,
            memory_mb: memory_mb(binary),
        }
    }
}

/// Everything billable one design's run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Calls the buyers made; each is one API Gateway request.
    pub api_requests: u64,
    /// By function binary.
    pub lambda: BTreeMap<String, Invocations>,
    /// By `service:Operation`, as sent (SQS billed per 64 KB chunk).
    pub requests: BTreeMap<String, Counted>,
    /// DynamoDB write units the capacity model admitted (a throttled request costs nothing).
    pub write_units: f64,
    /// Empty receives the event source's pollers would send on AWS while the run lasted, on
    /// top of the receives counted here: every poller's 20 s long polls, as an upper bound.
    pub estimated_empty_receives: u64,
}

impl Usage {
    fn read_units(&self) -> f64 {
        self.requests.values().map(|c| c.read_units).sum()
    }

    fn sqs_requests(&self) -> u64 {
        self.requests
            .iter()
            .filter(|(op, _)| op.starts_with("sqs:"))
            .map(|(_, c)| c.billed_requests)
            .sum::<u64>()
            + self.estimated_empty_receives
    }

    /// Dollars by service for the whole run.
    pub fn dollars(&self) -> BTreeMap<&'static str, f64> {
        let per_million = |n: f64, p: &Price| n / 1e6 * p.usd;
        let lambda: f64 = self
            .lambda
            .values()
            .map(|f| {
                per_million(f.invocations as f64, &PRICES.lambda_requests)
                    + f.billed_ms as f64 / 1000.0 * f64::from(f.memory_mb) / 1024.0
                        * PRICES.lambda_arm64_gb_second.usd
            })
            .sum();
        BTreeMap::from([
            (
                "api_gateway",
                per_million(self.api_requests as f64, &PRICES.api_gateway_http_requests),
            ),
            ("lambda", lambda),
            (
                "sqs",
                per_million(self.sqs_requests() as f64, &PRICES.sqs_standard_requests),
            ),
            (
                "dynamodb",
                per_million(self.write_units, &PRICES.dynamodb_write_request_units)
                    + per_million(self.read_units(), &PRICES.dynamodb_read_request_units),
            ),
        ])
    }

    /// `cost.<scenario>.<design>` of bench.json: dollars per million buyers and per thousand
    /// units sold, in all and by service, and the largest line item.
    pub fn cost(&self, buyers: usize, sold: u64) -> Value {
        let dollars = self.dollars();
        let total: f64 = dollars.values().sum();
        let scale = |per: f64| {
            dollars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), json!(round6(v * per))))
                .collect::<serde_json::Map<_, _>>()
        };
        let per_buyer = 1e6 / buyers.max(1) as f64;
        let per_unit = (sold > 0).then(|| 1e3 / sold as f64);
        let largest = dollars
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, _)| *k);
        json!({
            "usd_per_million_buyers": round6(total * per_buyer),
            "usd_per_thousand_units_sold": per_unit.map(|p| round6(total * p)),
            "by_service": scale(per_buyer),
            "by_service_per_thousand_units_sold": per_unit.map(scale),
            "largest_line_item": largest,
            "usage": self,
        })
    }
}

/// Counts sent between two snapshots of a counter.
pub fn since(
    now: &BTreeMap<String, Counted>,
    before: &BTreeMap<String, Counted>,
) -> BTreeMap<String, Counted> {
    now.iter()
        .map(|(op, c)| {
            let b = before.get(op).cloned().unwrap_or_default();
            let d = Counted {
                requests: c.requests - b.requests,
                billed_requests: c.billed_requests - b.billed_requests,
                read_units: c.read_units - b.read_units,
                keys: c.keys - b.keys,
            };
            (op.clone(), d)
        })
        .filter(|(_, c)| c.requests > 0)
        .collect()
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// `cost.prices`: every price with the day it was read and its source.
pub fn prices_json() -> Value {
    json!(*PRICES)
}

/// The memory template.yaml gives the function whose `CodeUri` is `functions/{binary}`: its
/// own `MemorySize`, else `Globals.Function.MemorySize`, else Lambda's default.
pub fn memory_mb(binary: &str) -> u32 {
    let code_uri = format!("CodeUri: functions/{binary}");
    let (mut section, mut global, mut own, mut in_target) = ("", None, None, false);
    let mut resource_memory = None;
    for line in TEMPLATE.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 0 && text.ends_with(':') {
            section = text;
        }
        let memory = text
            .strip_prefix("MemorySize:")
            .and_then(|v| v.trim().parse::<u32>().ok());
        match (section, indent) {
            ("Globals:", _) if memory.is_some() => global = memory,
            ("Resources:", 2) => {
                if in_target {
                    own = own.or(resource_memory);
                }
                in_target = false;
                resource_memory = None;
            }
            ("Resources:", 6) if memory.is_some() => resource_memory = memory,
            ("Resources:", _) if text == code_uri => in_target = true,
            _ => {}
        }
    }
    if in_target {
        own = own.or(resource_memory);
    }
    own.or(global).unwrap_or(LAMBDA_DEFAULT_MEMORY_MB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_gets_the_memory_of_template_yaml() {
        // Globals.Function.MemorySize: 256, and no function sets its own.
        assert_eq!(memory_mb("place-order"), 256);
        assert_eq!(memory_mb("process-orders"), 256);
    }

    #[test]
    fn a_run_is_priced_by_service_per_million_buyers_and_per_thousand_units() {
        let mut u = Usage {
            api_requests: 1_000_000,
            write_units: 3_000_000.0,
            estimated_empty_receives: 500_000,
            ..Usage::default()
        };
        u.lambda.insert(
            "place-order".into(),
            Invocations {
                invocations: 1_000_000,
                billed_ms: 10_000_000,
                memory_mb: 1024,
            },
        );
        u.requests.insert(
            "sqs:SendMessage".into(),
            Counted {
                requests: 500_000,
                billed_requests: 500_000,
                ..Counted::default()
            },
        );
        u.requests.insert(
            "dynamodb:GetItem".into(),
            Counted {
                read_units: 1_000_000.0,
                ..Counted::default()
            },
        );
        let d = u.dollars();
        assert_eq!(d["api_gateway"], 1.0);
        // 1 M invocations at $0.20 + 10,000 s × 1 GB at $0.0000133334.
        assert!(
            (d["lambda"] - (0.2 + 0.133334)).abs() < 1e-9,
            "{}",
            d["lambda"]
        );
        assert!((d["sqs"] - 0.4).abs() < 1e-9);
        assert!((d["dynamodb"] - (3.0 * 0.625 + 0.125)).abs() < 1e-9);
        let c = u.cost(1_000_000, 2_000);
        assert_eq!(c["largest_line_item"], "dynamodb");
        let total: f64 = d.values().sum();
        assert!(
            (c["usd_per_thousand_units_sold"].as_f64().unwrap_or(0.0) - total / 2.0).abs() < 1e-5
        );
    }
}
