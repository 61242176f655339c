//! Lambda's SQS event source mapping, run locally: pollers long-poll the queue, gather a batch
//! (up to `batch_size` messages or `batching_window_s`, whichever comes first), invoke the
//! function with an `SqsEvent`, and delete the messages it did not report as failed. Failed
//! messages are left alone, as on AWS: they reappear after the queue's visibility timeout, or
//! sooner when the function shortened it with the record's receipt handle
//! (`ChangeMessageVisibility`), and the queue's redrive policy moves them to the DLQ after
//! `maxReceiveCount` receives.

use crate::config::SqsMapping;
use crate::functions::SqsFunction;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use base64::Engine as _;
use flash_domain::clock::{now_ms, Millis};
use flash_domain::limits::{LAMBDA_MAX_PAYLOAD_BYTES, SQS_MAX_BATCH_ENTRIES};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lambda's pollers wait 20 s; shorter here so a stopping gateway is never holding a receive
/// whose messages would then stay invisible for the whole visibility timeout.
pub const LONG_POLL_S: i32 = 2;

/// The SQS client the pollers receive with: their long polls outlast the functions' 2 s
/// attempt timeout (`flash_aws::config::sdk_config`), so they get timeouts of their own.
pub fn poller_client(sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    let long_poll = Duration::from_secs(LONG_POLL_S as u64);
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(sdk)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_attempt_timeout(long_poll + Duration::from_secs(5))
                    .operation_timeout(long_poll + Duration::from_secs(10))
                    .build(),
            )
            .build(),
    )
}
/// A batch stops growing before Lambda's limit on an invocation payload, with room for the
/// event's envelope.
const MAX_BATCH_BYTES: usize = LAMBDA_MAX_PAYLOAD_BYTES - 64 * 1024;
/// While a batching window is open and the queue is empty, how often to look again.
const WINDOW_POLL: Duration = Duration::from_millis(50);

pub struct EventSource {
    mapping: SqsMapping,
    client: aws_sdk_sqs::Client,
    function: Arc<SqsFunction>,
    region: String,
    /// Invocations so far and their durations summed, each rounded up to the millisecond as
    /// Lambda bills it (the bench prices them).
    invocations: AtomicU64,
    billed_ms: AtomicU64,
}

/// What became of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// These message ids failed; the others succeeded.
    Partial(HashSet<String>),
    /// The whole batch failed (an error, a timeout, or an answer naming unknown messages).
    Failed(&'static str),
}

impl EventSource {
    /// `client` must allow a receive to take longer than [`LONG_POLL_S`].
    pub fn new(
        mapping: SqsMapping,
        client: aws_sdk_sqs::Client,
        function: Arc<SqsFunction>,
        default_region: &str,
    ) -> Self {
        let region = mapping
            .queue_arn
            .split(':')
            .nth(3)
            .filter(|r| !r.is_empty())
            .unwrap_or(default_region)
            .to_owned();
        Self {
            mapping,
            client,
            function,
            region,
            invocations: AtomicU64::new(0),
            billed_ms: AtomicU64::new(0),
        }
    }

    /// (invocations, billed milliseconds) so far.
    pub fn invocations(&self) -> (u64, u64) {
        (self.invocations.load(Relaxed), self.billed_ms.load(Relaxed))
    }

    /// Starts `max_concurrency` pollers, so at most that many batches run at once. They stop
    /// once `shutdown` turns true, after finishing the batch in hand.
    pub fn spawn(self: Arc<Self>, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        if !self.mapping.enabled {
            return Vec::new();
        }
        (0..self.mapping.max_concurrency)
            .map(|_| tokio::spawn(self.clone().poll(shutdown.clone())))
            .collect()
    }

    async fn poll(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            match self.gather(&shutdown).await {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => self.deliver(batch).await,
                Err(e) => {
                    tracing::warn!(function = self.mapping.function, error = %e, "receiving from the queue failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    async fn receive(&self, max: usize, wait_s: i32) -> Result<Vec<Message>, String> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.mapping.queue_url)
            .max_number_of_messages(max.clamp(1, SQS_MAX_BATCH_ENTRIES) as i32)
            .wait_time_seconds(wait_s)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?;
        Ok(output.messages().to_vec())
    }

    /// One batch: a long poll for the first messages, then more until the batch is full, the
    /// window closes or the gateway stops. An error after the first messages ends the batch
    /// early rather than dropping what it holds.
    async fn gather(&self, shutdown: &watch::Receiver<bool>) -> Result<Vec<Message>, String> {
        let mut batch = self.receive(self.mapping.batch_size, LONG_POLL_S).await?;
        if batch.is_empty() {
            return Ok(batch);
        }
        let window = Duration::from_secs(self.mapping.batching_window_s);
        let deadline = Instant::now() + window;
        let mut bytes: usize = batch.iter().map(size).sum();
        while batch.len() < self.mapping.batch_size
            && bytes < MAX_BATCH_BYTES
            && Instant::now() < deadline
            && !*shutdown.borrow()
        {
            match self.receive(self.mapping.batch_size - batch.len(), 0).await {
                Ok(more) if more.is_empty() => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(left.min(WINDOW_POLL)).await;
                }
                Ok(more) => {
                    bytes += more.iter().map(size).sum::<usize>();
                    batch.extend(more);
                }
                Err(e) => {
                    tracing::warn!(function = self.mapping.function, error = %e, "receiving more of a batch failed");
                    break;
                }
            }
        }
        Ok(batch)
    }

    async fn deliver(&self, batch: Vec<Message>) {
        let started = Instant::now();
        let ids: HashSet<String> = batch
            .iter()
            .filter_map(|m| m.message_id().map(str::to_owned))
            .collect();
        let event = match self.event(&batch) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(function = self.mapping.function, error = %e, "cannot build the SQS event");
                return;
            }
        };
        let function = self.function.clone();
        let timeout = Duration::from_secs(self.mapping.timeout_s);
        // What Lambda's context would say: the invocation ends at its start plus the
        // function's `Timeout` from template.yaml, when the gateway gives up on it below.
        let deadline = now_ms().saturating_add(timeout.as_millis() as Millis);
        let invoked = Instant::now();
        let mut task = tokio::spawn(async move { function.invoke(event, deadline).await });
        let result = tokio::time::timeout(timeout, &mut task).await;
        self.invocations.fetch_add(1, Relaxed);
        self.billed_ms
            .fetch_add(invoked.elapsed().as_micros().div_ceil(1000) as u64, Relaxed);
        let (outcome, report) = match result {
            Ok(Ok((response, report))) => (
                judge(&response, &ids, self.mapping.report_batch_item_failures),
                report,
            ),
            Ok(Err(e)) => {
                tracing::error!(function = self.mapping.function, error = %e, "function failed");
                (Outcome::Failed("function error"), None)
            }
            Err(_) => {
                task.abort();
                (Outcome::Failed("function timed out"), None)
            }
        };
        let done: Vec<&Message> = batch
            .iter()
            .filter(|m| match (&outcome, m.message_id()) {
                (Outcome::Partial(failed), Some(id)) => !failed.contains(id),
                _ => false,
            })
            .collect();
        let deleted = self.delete(&done).await;
        let failed = batch.len() - done.len();
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let report = report.unwrap_or_default();
        match &outcome {
            Outcome::Failed(why) => tracing::error!(
                function = self.mapping.function,
                messages = batch.len(),
                why,
                duration_ms,
                "batch failed; its messages return after the visibility timeout"
            ),
            Outcome::Partial(_) => tracing::info!(
                function = self.mapping.function,
                messages = batch.len(),
                failed,
                deleted,
                accepted = report.accepted,
                rejected = report.rejected,
                already_decided = report.already_decided,
                transactions = report.transactions,
                duration_ms,
                "batch processed"
            ),
        }
    }

    /// The event as Lambda sends it (see events/process-orders.json), deserialised the way the
    /// Lambda runtime does.
    fn event(&self, batch: &[Message]) -> Result<SqsEvent, serde_json::Error> {
        let records: Vec<Value> = batch.iter().map(|m| self.record(m)).collect();
        serde_json::from_value(json!({ "Records": records }))
    }

    fn record(&self, m: &Message) -> Value {
        let attributes: Map<String, Value> = m
            .attributes()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str().to_owned(), v.clone().into()))
            .collect();
        let message_attributes: Map<String, Value> = m
            .message_attributes()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), message_attribute(v)))
            .collect();
        let mut record = json!({
            "messageId": m.message_id(),
            "receiptHandle": m.receipt_handle(),
            "body": m.body(),
            "attributes": attributes,
            "messageAttributes": message_attributes,
            "md5OfBody": m.md5_of_body(),
            "eventSource": "aws:sqs",
            "eventSourceARN": self.mapping.queue_arn,
            "awsRegion": self.region,
        });
        if let Some(md5) = m.md5_of_message_attributes() {
            record["md5OfMessageAttributes"] = md5.into();
        }
        record
    }

    /// Deletes in batches of ten, all at once; returns how many were deleted.
    async fn delete(&self, messages: &[&Message]) -> usize {
        let handles: Vec<&str> = messages.iter().filter_map(|m| m.receipt_handle()).collect();
        let done =
            flash_aws::sqs::delete_messages(&self.client, &self.mapping.queue_url, &handles).await;
        for why in &done.not_deleted {
            tracing::warn!(
                function = self.mapping.function,
                why,
                "not deleted; the message will be delivered again"
            );
        }
        done.deleted
    }
}

/// How Lambda reads the function's answer. Without `ReportBatchItemFailures` any answer means
/// success. With it, the listed messages failed; an empty or unknown identifier fails the
/// whole batch.
pub fn judge(
    response: &SqsBatchResponse,
    batch: &HashSet<String>,
    report_failures: bool,
) -> Outcome {
    if !report_failures {
        return Outcome::Partial(HashSet::new());
    }
    let failed: HashSet<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    if failed.iter().any(|id| !batch.contains(id)) {
        return Outcome::Failed("batchItemFailures named a message not in the batch");
    }
    Outcome::Partial(failed)
}

fn size(m: &Message) -> usize {
    m.body().map_or(0, str::len) + 1024
}

fn message_attribute(v: &MessageAttributeValue) -> Value {
    let b64 = |b: &aws_sdk_sqs::primitives::Blob| {
        Value::from(base64::engine::general_purpose::STANDARD.encode(b.as_ref()))
    };
    let mut value = json!({
        "stringListValues": v.string_list_values(),
        "binaryListValues": v.binary_list_values().iter().map(b64).collect::<Vec<_>>(),
        "dataType": v.data_type(),
    });
    if let Some(s) = v.string_value() {
        value["stringValue"] = s.into();
    }
    if let Some(b) = v.binary_value() {
        value["binaryValue"] = b64(b);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use process_orders::ProcessOrders;

    fn mapping() -> SqsMapping {
        SqsMapping {
            function: "ProcessOrdersFunction".into(),
            binary: "process-orders".into(),
            timeout_s: 30,
            queue_url: "http://127.0.0.1:1/000000000000/OrdersQueue".into(),
            queue_arn: "arn:aws:sqs:us-east-1:000000000000:OrdersQueue".into(),
            batch_size: 100,
            batching_window_s: 1,
            max_concurrency: 10,
            report_batch_item_failures: true,
            enabled: true,
        }
    }

    fn source() -> EventSource {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let client = aws_sdk_sqs::Client::new(&sdk);
        let store = flash_aws::DynamoStore::from_config(&sdk, "OrdersTable");
        let timeouts = flash_aws::SqsTimeouts::from_config(&sdk, "http://127.0.0.1:1/q");
        let queue = flash_aws::SqsQueue::from_config(&sdk, "http://127.0.0.1:1/q");
        let function = SqsFunction::ProcessOrders(ProcessOrders { store, timeouts }, queue);
        EventSource::new(mapping(), client, Arc::new(function), "eu-west-1")
    }

    fn message(id: &str) -> Message {
        Message::builder()
            .message_id(id)
            .receipt_handle(format!("rh-{id}"))
            .body(r#"{"order_id":"o","sku":"SKU-1","quantity":1,"user_id":"alice"}"#)
            .md5_of_body("md5")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "2")
            .attributes(MessageSystemAttributeName::SentTimestamp, "1767268800100")
            .message_attributes(
                "trace",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("t-1")
                    .build()
                    .unwrap(),
            )
            .build()
    }

    fn batch(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn response(failed: &[&str]) -> SqsBatchResponse {
        serde_json::from_value(json!({
            "batchItemFailures": failed.iter().map(|id| json!({"itemIdentifier": id})).collect::<Vec<_>>()
        }))
        .unwrap()
    }

    #[test]
    fn the_event_has_the_shape_lambda_sends() {
        let source = source();
        let event = source.event(&[message("m-1"), message("m-2")]).unwrap();
        assert_eq!(event.records.len(), 2);
        let record = &event.records[0];
        assert_eq!(record.message_id.as_deref(), Some("m-1"));
        assert_eq!(record.receipt_handle.as_deref(), Some("rh-m-1"));
        assert_eq!(record.attributes["ApproximateReceiveCount"], "2");
        assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
        assert_eq!(
            record.event_source_arn.as_deref(),
            Some("arn:aws:sqs:us-east-1:000000000000:OrdersQueue")
        );
        assert_eq!(
            record.aws_region.as_deref(),
            Some("us-east-1"),
            "the queue's region"
        );
        assert_eq!(
            record.message_attributes["trace"].string_value.as_deref(),
            Some("t-1")
        );
        // Same keys as the fixture Lambda events are checked against.
        let sample: Value =
            serde_json::from_str(include_str!("../../../events/process-orders.json")).unwrap();
        let ours = source.record(&message("m-1"));
        for key in sample["Records"][0].as_object().unwrap().keys() {
            assert!(ours.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn only_the_reported_failures_are_kept() {
        let outcome = judge(&response(&["b"]), &batch(&["a", "b", "c"]), true);
        assert_eq!(outcome, Outcome::Partial(batch(&["b"])));
        assert_eq!(
            judge(&response(&[]), &batch(&["a"]), true),
            Outcome::Partial(HashSet::new())
        );
    }

    #[test]
    fn an_unknown_or_empty_identifier_fails_the_whole_batch() {
        assert!(matches!(
            judge(&response(&["zz"]), &batch(&["a"]), true),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            judge(&response(&[""]), &batch(&["a"]), true),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn without_report_batch_item_failures_any_answer_is_success() {
        assert_eq!(
            judge(&response(&["a"]), &batch(&["a"]), false),
            Outcome::Partial(HashSet::new())
        );
    }
}
