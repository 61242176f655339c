//! SDK faults for the emulator scenarios: a judge for `aws_sim`'s wrapping HTTP client (the
//! one the capacity model uses, whose synthetic DynamoDB answers it shares) that answers chosen
//! requests to DynamoDB Local and fauxqs with what the real services send when they shed load
//! or fail, so the SDK parses, classifies and retries them as it would on AWS:
//!
//! - **throttling**: `ThrottlingException` (400); inside `TransactWriteItems`, a
//!   `TransactionCanceledException` with `ThrottlingError` reasons;
//! - **transaction conflict**: `TransactionCanceledException` with `TransactionConflict`
//!   reasons, or `TransactionConflictException` for a single-item write;
//! - **HTTP 500**: `InternalServerError` (DynamoDB) / `InternalFailure` (SQS);
//! - **timeout after commit**: the request is forwarded and the server applies it, then the
//!   response is dropped and the SDK sees a timeout, so it sends the same request again.
//!
//! Which requests are hit is a list of [`Rule`]s decided by the scenario's seed.

use aws_sim::answers::{
    canceled_body, dynamodb_operation, error_body, json_error_response, CONFLICT_MESSAGE,
    TARGET_HEADER, THROTTLE_MESSAGE,
};
use aws_sim::{judged_client, Judge, Verdict};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SdkFault {
    Throttle,
    Conflict,
    Http500,
    TimeoutAfterCommit,
}

impl SdkFault {
    pub const ALL: [SdkFault; 4] = [
        Self::Throttle,
        Self::Conflict,
        Self::Http500,
        Self::TimeoutAfterCommit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Throttle => "throttling",
            Self::Conflict => "TransactionConflict",
            Self::Http500 => "HTTP 500",
            Self::TimeoutAfterCommit => "timeout after the server committed",
        }
    }

    /// Whether the fault can happen to `op` (`DynamoDB` or `SQS` operation name).
    pub fn applies_to(self, op: &str) -> bool {
        let write = matches!(
            op,
            "PutItem" | "UpdateItem" | "DeleteItem" | "TransactWriteItems"
        );
        match self {
            Self::Conflict => write,
            Self::Throttle => op != "SendMessage",
            Self::Http500 => true,
            Self::TimeoutAfterCommit => write || op == "SendMessage",
        }
    }
}

/// Hits `times` consecutive requests of `op`, starting after the first `skip` of them. Three or
/// more consecutive hits outlast the SDK's retries (3 attempts), so the error reaches the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub op: &'static str,
    pub skip: usize,
    pub times: usize,
    pub fault: SdkFault,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<(Rule, usize)>,
    seen: BTreeMap<String, usize>,
    fired: BTreeMap<(String, SdkFault), usize>,
}

/// The fault injector. Clones share one state.
#[derive(Debug, Clone, Default)]
pub struct SdkFaults {
    state: Arc<Mutex<State>>,
    ids: Arc<AtomicU64>,
}

impl SdkFaults {
    pub fn new(rules: Vec<Rule>) -> Self {
        let s = Self::default();
        s.lock().rules = rules.into_iter().map(|r| (r, 0)).collect();
        s
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Faults injected so far, by (operation, fault).
    pub fn fired(&self) -> BTreeMap<(String, SdkFault), usize> {
        self.lock().fired.clone()
    }

    /// `inner` with the injector in front of it, for the SDK's `http_client` setter.
    pub fn http_client(&self, inner: SharedHttpClient) -> SharedHttpClient {
        judged_client(self.clone(), inner)
    }

    /// The fault for the next request of `op`, if a rule hits it.
    fn choose(&self, op: &str) -> Option<SdkFault> {
        let mut st = self.lock();
        let n = {
            let seen = st.seen.entry(op.to_owned()).or_default();
            *seen += 1;
            *seen - 1
        };
        let fault = st.rules.iter_mut().find_map(|(rule, hits)| {
            let hit = rule.op == op && n >= rule.skip && *hits < rule.times;
            hit.then(|| {
                *hits += 1;
                rule.fault
            })
        })?;
        *st.fired.entry((op.to_owned(), fault)).or_default() += 1;
        Some(fault)
    }

    fn answer(&self, status: u16, body: &Value) -> Verdict {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        Verdict::Answer(Box::new(json_error_response(
            status,
            body,
            &format!("FAULTINJECTOR{id:020}"),
        )))
    }
}

/// The operation a request calls, for DynamoDB (`DynamoDB_20120810.X`) and SQS
/// (`AmazonSQS.X`).
fn operation(request: &HttpRequest) -> Option<&str> {
    dynamodb_operation(request).or_else(|| {
        request
            .headers()
            .get(TARGET_HEADER)
            .and_then(|t| t.strip_prefix("AmazonSQS."))
    })
}

/// Items in a `TransactWriteItems` request (its cancellation reasons need one each).
fn transaction_items(request: &HttpRequest) -> usize {
    request
        .body()
        .bytes()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|v| {
            v.get("TransactItems")
                .and_then(Value::as_array)
                .map(Vec::len)
        })
        .unwrap_or(1)
}

impl Judge for SdkFaults {
    fn judge(&self, request: &HttpRequest) -> Verdict {
        let Some(op) = operation(request).map(str::to_owned) else {
            return Verdict::Forward;
        };
        let Some(fault) = self.choose(&op) else {
            return Verdict::Forward;
        };
        let sqs = dynamodb_operation(request).is_none();
        let transaction = op == "TransactWriteItems";
        match fault {
            SdkFault::Throttle if transaction => {
                let flagged = vec![true; transaction_items(request)];
                self.answer(400, &canceled_body(&flagged, "ThrottlingError"))
            }
            SdkFault::Throttle => {
                self.answer(400, &error_body("ThrottlingException", THROTTLE_MESSAGE))
            }
            SdkFault::Conflict if transaction => {
                // DynamoDB names the items another transaction holds; one is enough.
                let mut flagged = vec![false; transaction_items(request)];
                flagged[0] = true;
                self.answer(400, &canceled_body(&flagged, "TransactionConflict"))
            }
            SdkFault::Conflict => self.answer(
                400,
                &error_body("TransactionConflictException", CONFLICT_MESSAGE),
            ),
            SdkFault::Http500 if sqs => self.answer(
                500,
                &json!({ "__type": "com.amazonaws.sqs#InternalFailure",
                         "message": "We encountered an internal error. Please try again." }),
            ),
            SdkFault::Http500 => self.answer(
                500,
                &error_body("InternalServerError", "Internal server error"),
            ),
            // The server applies the request and answers; the answer is lost.
            SdkFault::TimeoutAfterCommit => Verdict::ForwardThenFail(ConnectorError::timeout(
                "injected: the response was dropped after the server committed".into(),
            )),
        }
    }
}
