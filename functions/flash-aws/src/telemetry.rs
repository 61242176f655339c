//! Structured JSON logs (filtered by `RUST_LOG`, default `info`) and CloudWatch metrics in the
//! Embedded Metric Format: one JSON line on stdout per record, which CloudWatch Logs turns
//! into metrics with no API call and no agent.

use flash_domain::limits::EMF_MAX_VALUES;

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
/// [`EMF_MAX_VALUES`] values a record, and computes percentiles over them).
pub fn distribution(name: &str, values: &[f64], unit: Unit, dimensions: &[(&str, &str)]) {
    if !in_lambda() {
        return;
    }
    for record in distribution_records(
        name,
        values,
        unit,
        dimensions,
        flash_domain::clock::now_ms(),
    ) {
        println!("{record}");
    }
}

/// The EMF records of [`distribution`]: at most 100 values each, EMF's limit per metric.
pub fn distribution_records(
    name: &str,
    values: &[f64],
    unit: Unit,
    dimensions: &[(&str, &str)],
    timestamp_ms: i64,
) -> Vec<serde_json::Value> {
    values
        .chunks(EMF_MAX_VALUES)
        .map(|chunk| {
            let mut record = emf(&[(name, 0.0, unit)], dimensions, timestamp_ms);
            record[name] = serde_json::Value::from(chunk.to_vec());
            record
        })
        .collect()
}

/// Prints one metric as an EMF record.
pub fn metric(name: &str, value: f64, unit: Unit, dimensions: &[(&str, &str)]) {
    metrics(&[(name, value, unit)], dimensions);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The EMF specification's rules for one record (CloudWatch's "Embedded metric format
    /// specification"): the `_aws` metadata with an integer `Timestamp` (epoch ms) and a
    /// non-empty `CloudWatchMetrics` array; each directive with a `Namespace` string, a
    /// `Dimensions` array of dimension sets (arrays of at most 30 names), and a `Metrics` array
    /// of objects with a `Name` (and, if any, a `Unit` string); every dimension named present
    /// as a top-level string member, every metric named present as a top-level number or
    /// array of at most 100 numbers. Returns what breaks a rule.
    fn spec_violations(record: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let aws = &record["_aws"];
        if !aws.is_object() {
            return vec!["no _aws object".into()];
        }
        if !aws["Timestamp"].is_i64() && !aws["Timestamp"].is_u64() {
            out.push("_aws.Timestamp is not an integer".into());
        }
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if directives.is_empty() {
            out.push("_aws.CloudWatchMetrics is missing or empty".into());
        }
        for d in &directives {
            if d["Namespace"].as_str().is_none_or(|n| n.is_empty()) {
                out.push("a directive has no Namespace".into());
            }
            match d["Dimensions"].as_array() {
                None => out.push("a directive has no Dimensions array".into()),
                Some(sets) => {
                    for set in sets {
                        let names = set.as_array().cloned().unwrap_or_default();
                        if !set.is_array() || names.len() > 30 {
                            out.push(format!("dimension set {set} is not an array of up to 30"));
                        }
                        for name in names {
                            match name.as_str() {
                                Some(n) if record[n].is_string() => {}
                                _ => out.push(format!("dimension {name} has no string value")),
                            }
                        }
                    }
                }
            }
            let metrics = d["Metrics"].as_array().cloned().unwrap_or_default();
            if metrics.is_empty() {
                out.push("a directive has no Metrics".into());
            }
            for m in metrics {
                let Some(name) = m["Name"].as_str() else {
                    out.push(format!("metric {m} has no Name"));
                    continue;
                };
                if !m["Unit"].is_null() && !m["Unit"].is_string() {
                    out.push(format!("metric {name}'s Unit is not a string"));
                }
                let value = &record[name];
                let ok = value.is_number()
                    || value.as_array().is_some_and(|v| {
                        !v.is_empty() && v.len() <= 100 && v.iter().all(Value::is_number)
                    });
                if !ok {
                    out.push(format!(
                        "metric {name} has no number (or up to 100) at the top level"
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn every_record_meets_the_emf_specifications_required_fields() {
        let dims = [("Function", "process-orders")];
        let mut records = vec![
            emf(
                &[
                    ("Accepted", 3.0, Unit::Count),
                    ("Rejected", 1.0, Unit::Count),
                ],
                &dims,
                1,
            ),
            emf(
                &[("ReconcilerViolations", 0.0, Unit::Count)],
                &[],
                1_800_000_000_000,
            ),
        ];
        let values: Vec<f64> = (0..250).map(f64::from).collect();
        let chunks =
            distribution_records("TimeToDecisionMs", &values, Unit::Milliseconds, &dims, 5);
        assert_eq!(
            chunks.len(),
            3,
            "250 values make records of 100, 100 and 50"
        );
        records.extend(chunks);
        for r in &records {
            assert_eq!(spec_violations(r), Vec::<String>::new(), "{r}");
        }
        // The checker itself finds each broken rule.
        let mut broken = records[0].clone();
        broken.as_object_mut().unwrap().remove("Function");
        broken.as_object_mut().unwrap().remove("Accepted");
        broken["_aws"]["Timestamp"] = Value::from("now");
        assert_eq!(
            spec_violations(&broken).len(),
            3,
            "{:?}",
            spec_violations(&broken)
        );
    }

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
