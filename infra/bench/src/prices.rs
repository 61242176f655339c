//! AWS list prices the bench's cost per order uses: us-east-1, on-demand, arm64, the first
//! pricing tier of each (a flash sale's marginal cost: free tiers left out). They live in
//! `infra/bench/prices.json`, each with the day it was read and where: change them there only.

use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub usd: f64,
    /// What `usd` buys.
    pub per: String,
    /// The day this price was read (YYYY-MM-DD).
    pub read: String,
    pub source: String,
}

/// Every price the bench uses; `bench.json`'s `cost.prices` as it is.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub api_gateway_http_requests: Price,
    pub lambda_requests: Price,
    /// Billed per millisecond, rounded up.
    pub lambda_arm64_gb_second: Price,
    /// Every 64 KB chunk of a payload is one request, and so is every empty receive.
    pub sqs_standard_requests: Price,
    pub dynamodb_write_request_units: Price,
    pub dynamodb_read_request_units: Price,
}

pub static PRICES: LazyLock<Prices> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../prices.json")).expect("prices.json holds every price")
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_price_is_positive_and_dated() {
        let all = serde_json::to_value(&*PRICES).expect("serializes");
        for (name, p) in all.as_object().expect("an object") {
            assert!(p["usd"].as_f64().expect("usd") > 0.0, "{name}");
            let read = p["read"].as_str().expect("read");
            assert!(
                read.len() == 10 && read.as_bytes()[4] == b'-',
                "{name} read {read}"
            );
        }
    }
}
