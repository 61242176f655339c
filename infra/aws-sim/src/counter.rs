//! What a client's requests would be billed for: every request counted by service operation,
//! with SQS's 64 KB chunks and DynamoDB's read request units, before it is passed on to another
//! judge (the capacity model) or sent as it is. The bench prices these counts; the tests assert
//! how many requests of each kind a batch took.

use crate::answers::TARGET_HEADER;
use crate::judge::{Judge, Verdict};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// SQS bills each 64 KB chunk of a request's payload as one request.
pub const SQS_CHUNK_BYTES: usize = 64 * 1024;
/// DynamoDB reads an item of up to 4 KB for one read unit when consistent, half when not; our
/// items are all far smaller.
const CONSISTENT_READ_UNITS: f64 = 1.0;
const EVENTUAL_READ_UNITS: f64 = 0.5;

/// Requests of one operation (`dynamodb:GetItem`, `sqs:SendMessageBatch`, ...).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Counted {
    pub requests: u64,
    /// SQS: billed requests, one per started 64 KB of the payload.
    pub billed_requests: u64,
    /// DynamoDB: read request units the reads ask for (GetItem, BatchGetItem).
    pub read_units: f64,
    /// DynamoDB: keys asked for (GetItem 1, BatchGetItem each key).
    pub keys: u64,
}

/// The request counter; clones share the counts. `inner` decides what becomes of each
/// request once counted.
#[derive(Debug, Clone)]
pub struct RequestCounter {
    inner: Arc<dyn Judge>,
    counts: Arc<Mutex<BTreeMap<String, Counted>>>,
    /// Every DynamoDB request's body, when asked for ([`RequestCounter::journaled`]).
    journal: Option<Journal>,
}

/// (operation, JSON body) of each request, in order.
type Journal = Arc<Mutex<Vec<(String, Value)>>>;

/// Sends every request on untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThrough;

impl Judge for PassThrough {
    fn judge(&self, _: &HttpRequest) -> Verdict {
        Verdict::Forward
    }
}

impl Default for RequestCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestCounter {
    /// Counts, then sends each request on.
    pub fn new() -> Self {
        Self::wrapping(PassThrough)
    }

    /// Counts, then lets `inner` judge.
    pub fn wrapping(inner: impl Judge) -> Self {
        Self {
            inner: Arc::new(inner),
            counts: Arc::default(),
            journal: None,
        }
    }

    /// Also keeps each DynamoDB request's JSON body, for tests that look at what was asked.
    pub fn journaled(mut self) -> Self {
        self.journal = Some(Arc::default());
        self
    }

    /// Counts so far, by `service:Operation`.
    pub fn counts(&self) -> BTreeMap<String, Counted> {
        lock(&self.counts).clone()
    }

    /// Requests of one `service:Operation` so far.
    pub fn requests(&self, operation: &str) -> u64 {
        lock(&self.counts).get(operation).map_or(0, |c| c.requests)
    }

    /// The journal: (operation, body) of every DynamoDB request, in order.
    pub fn journal(&self) -> Vec<(String, Value)> {
        self.journal
            .as_ref()
            .map(|j| lock(j).clone())
            .unwrap_or_default()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `service:Operation` from the JSON protocols' target header (`DynamoDB_20120810.GetItem`,
/// `AmazonSQS.SendMessage`).
fn operation(request: &HttpRequest) -> Option<String> {
    let target = request.headers().get(TARGET_HEADER)?;
    let (service, op) = target.split_once('.')?;
    let service = match service {
        s if s.starts_with("DynamoDB") => "dynamodb",
        "AmazonSQS" => "sqs",
        other => other,
    };
    Some(format!("{service}:{op}"))
}

/// Keys a read asks for and the read units they cost.
fn reads(op: &str, body: &Value) -> (u64, f64) {
    let units = |consistent: &Value| {
        if consistent.as_bool() == Some(true) {
            CONSISTENT_READ_UNITS
        } else {
            EVENTUAL_READ_UNITS
        }
    };
    match op {
        "dynamodb:GetItem" => (1, units(&body["ConsistentRead"])),
        "dynamodb:BatchGetItem" => body["RequestItems"]
            .as_object()
            .map(|tables| {
                tables.values().fold((0, 0.0), |(k, u), t| {
                    let n = t["Keys"].as_array().map_or(0, Vec::len) as u64;
                    (k + n, u + n as f64 * units(&t["ConsistentRead"]))
                })
            })
            .unwrap_or_default(),
        _ => (0, 0.0),
    }
}

impl Judge for RequestCounter {
    fn judge(&self, request: &HttpRequest) -> Verdict {
        if let Some(op) = operation(request) {
            let bytes = request.body().bytes().unwrap_or_default();
            let body: Value = if op.starts_with("dynamodb:") {
                serde_json::from_slice(bytes).unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            let (keys, read_units) = reads(&op, &body);
            {
                let mut counts = lock(&self.counts);
                let c = counts.entry(op.clone()).or_default();
                c.requests += 1;
                c.billed_requests += bytes.len().div_ceil(SQS_CHUNK_BYTES).max(1) as u64;
                c.keys += keys;
                c.read_units += read_units;
            }
            if let (Some(journal), true) = (&self.journal, op.starts_with("dynamodb:")) {
                lock(journal).push((op, body));
            }
        }
        self.inner.judge(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::body::SdkBody;

    fn request(target: &str, body: &str) -> HttpRequest {
        let mut r = HttpRequest::new(SdkBody::from(body.to_owned()));
        r.headers_mut().insert(TARGET_HEADER, target.to_owned());
        r
    }

    #[test]
    fn reads_are_counted_by_key_and_consistency_and_sqs_by_64_kb_chunk() {
        let c = RequestCounter::new();
        let batch = r#"{"RequestItems":{"t":{"Keys":[{},{},{}],"ConsistentRead":true}}}"#;
        assert!(matches!(
            c.judge(&request("DynamoDB_20120810.BatchGetItem", batch)),
            Verdict::Forward
        ));
        c.judge(&request("DynamoDB_20120810.GetItem", r#"{"Key":{}}"#));
        c.judge(&request(
            "AmazonSQS.SendMessage",
            &"x".repeat(SQS_CHUNK_BYTES + 1),
        ));
        let counts = c.counts();
        assert_eq!(counts["dynamodb:BatchGetItem"].keys, 3);
        assert_eq!(counts["dynamodb:BatchGetItem"].read_units, 3.0);
        assert_eq!(counts["dynamodb:GetItem"].read_units, 0.5);
        assert_eq!(counts["sqs:SendMessage"].billed_requests, 2);
        assert_eq!(c.requests("sqs:SendMessage"), 1);
    }
}
