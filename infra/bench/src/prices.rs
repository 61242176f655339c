//! AWS list prices the bench's cost per order uses: us-east-1, on-demand, arm64, the first
//! pricing tier of each (a flash sale's marginal cost: free tiers left out). Each with the day
//! it was read and where. Change them here only.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Price {
    pub usd: f64,
    /// What `usd` buys.
    pub per: &'static str,
    /// The day this price was read (YYYY-MM-DD).
    pub read: &'static str,
    pub source: &'static str,
}

/// API Gateway HTTP API: $1.00 per million requests (first 300 million a month), each request
/// metered in 512 KB increments (ours are far smaller).
pub const API_GATEWAY_HTTP_REQUESTS: Price = Price {
    usd: 1.00,
    per: "1,000,000 HTTP API requests (first 300 million a month; 512 KB each)",
    read: "2026-12-02",
    source: "https://aws.amazon.com/api-gateway/pricing/ as quoted by apigatewaycost.com/aws and awsforengineers.com (2025-05)",
};

/// Lambda requests, either architecture.
pub const LAMBDA_REQUESTS: Price = Price {
    usd: 0.20,
    per: "1,000,000 Lambda invocations",
    read: "2026-12-02",
    source: "https://aws.amazon.com/lambda/pricing/ (archived 2026-06-18), us-east-1",
};

/// Lambda duration on arm64 (Graviton), first tier (7.5 billion GB-s a month), billed per
/// millisecond rounded up.
pub const LAMBDA_ARM64_GB_SECOND: Price = Price {
    usd: 0.000_013_333_4,
    per: "GB-second of arm64 duration (first 7.5 billion GB-s a month; 1 ms granularity)",
    read: "2026-12-02",
    source: "https://aws.amazon.com/lambda/pricing/ (archived 2026-06-18), us-east-1",
};

/// SQS standard queue requests; every 64 KB chunk of a payload is one request, and so is
/// every empty receive.
pub const SQS_STANDARD_REQUESTS: Price = Price {
    usd: 0.40,
    per: "1,000,000 SQS standard requests (64 KB chunks; first 100 billion a month)",
    read: "2026-12-02",
    source: "https://aws.amazon.com/sqs/pricing/ as quoted by cloudburn.io (2026-03) and factualminds.com (2026-06)",
};

/// DynamoDB on-demand writes (halved in November 2024).
pub const DYNAMODB_WRITE_REQUEST_UNITS: Price = Price {
    usd: 0.625,
    per: "1,000,000 DynamoDB on-demand write request units",
    read: "2026-12-02",
    source: "https://aws.amazon.com/dynamodb/pricing/on-demand/ (DESIGN.md, read 2026-12)",
};

/// DynamoDB on-demand reads: a consistent read of up to 4 KB is one unit, an eventual one half.
pub const DYNAMODB_READ_REQUEST_UNITS: Price = Price {
    usd: 0.125,
    per: "1,000,000 DynamoDB on-demand read request units",
    read: "2026-12-02",
    source: "https://aws.amazon.com/dynamodb/pricing/on-demand/ (DESIGN.md, read 2026-12)",
};

/// Every price, by name, for `bench.json`'s `cost.prices`.
pub fn all() -> Vec<(&'static str, Price)> {
    vec![
        ("api_gateway_http_requests", API_GATEWAY_HTTP_REQUESTS),
        ("lambda_requests", LAMBDA_REQUESTS),
        ("lambda_arm64_gb_second", LAMBDA_ARM64_GB_SECOND),
        ("sqs_standard_requests", SQS_STANDARD_REQUESTS),
        ("dynamodb_write_request_units", DYNAMODB_WRITE_REQUEST_UNITS),
        ("dynamodb_read_request_units", DYNAMODB_READ_REQUEST_UNITS),
    ]
}
