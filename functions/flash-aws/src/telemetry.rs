//! Structured JSON logs (filtered by `RUST_LOG`, default `info`) and CloudWatch metrics in the
//! Embedded Metric Format: one JSON line on stdout per record, which CloudWatch Logs turns
//! into metrics with no API call and no agent.

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `try_init` so a test harness that already installed a subscriber is left alone.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .without_time()
        .try_init();
}

/// Every metric of the stack lives in this CloudWatch namespace.
pub const NAMESPACE: &str = "FlashSale";

/// CloudWatch metric units used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    None,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
            Self::None => "None",
        }
    }
}

/// One EMF record: `metrics` (name, value, unit) under one set of `dimensions` (name,
/// value), stamped `timestamp_ms`.
pub fn emf(
    metrics: &[(&str, f64, Unit)],
    dimensions: &[(&str, &str)],
    timestamp_ms: i64,
) -> serde_json::Value {
    let mut record = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": metrics
                    .iter()
                    .map(|(name, _, unit)| serde_json::json!({"Name": name, "Unit": unit.as_str()}))
                    .collect::<Vec<_>>(),
            }],
        },
    });
    for (name, value) in dimensions {
        record[*name] = serde_json::Value::from(*value);
    }
    for (name, value, _) in metrics {
        record[*name] = serde_json::Value::from(*value);
    }
    record
}

/// Whether EMF lines are printed: inside Lambda (or an emulation of it, which sets
/// `AWS_LAMBDA_FUNCTION_NAME`), where CloudWatch Logs reads them. The handlers also run
/// in-process in tests, the local gateway and the benchmark, where they would only be noise.
fn in_lambda() -> bool {
    static IN_LAMBDA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IN_LAMBDA.get_or_init(|| std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some())
}

/// Prints one EMF record (see [`emf`]) as a line of its own on stdout.
pub fn metrics(metrics: &[(&str, f64, Unit)], dimensions: &[(&str, &str)]) {
    if in_lambda() {
        println!(
            "{}",
            emf(metrics, dimensions, flash_domain::clock::now_ms())
        );
    }
}

/// Prints one EMF record of `name` holding every value of `values` (CloudWatch takes up to
/// 100 values a record, and computes percentiles over them).
pub fn distribution(name: &str, values: &[f64], unit: Unit, dimensions: &[(&str, &str)]) {
    if !in_lambda() {
        return;
    }
    for chunk in values.chunks(100) {
        let mut record = emf(
            &[(name, 0.0, unit)],
            dimensions,
            flash_domain::clock::now_ms(),
        );
        record[name] = serde_json::Value::from(chunk.to_vec());
        println!("{record}");
    }
}

/// Prints one metric as an EMF record.
pub fn metric(name: &str, value: f64, unit: Unit, dimensions: &[(&str, &str)]) {
    metrics(&[(name, value, unit)], dimensions);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_record_declares_its_metrics_and_carries_their_values() {
        let r = emf(
            &[("BreakerOpen", 1.0, Unit::None)],
            &[("Function", "place-order"), ("Dependency", "dynamodb")],
            1_800_000_000_000,
        );
        assert_eq!(
            r,
            serde_json::json!({
                "_aws": {
                    "Timestamp": 1_800_000_000_000_i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "FlashSale",
                        "Dimensions": [["Function", "Dependency"]],
                        "Metrics": [{"Name": "BreakerOpen", "Unit": "None"}],
                    }],
                },
                "Function": "place-order",
                "Dependency": "dynamodb",
                "BreakerOpen": 1.0,
            })
        );
        // One line, as CloudWatch Logs needs it.
        assert!(!r.to_string().contains('\n'));
    }
}
