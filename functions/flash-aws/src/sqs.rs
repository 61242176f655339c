//! The SQS side of the functions: sending order messages, reading a batch's records, the
//! partial-batch answer, and handing the failed records back to come again within seconds; and
//! the batched delete the local event source and `flashctl` share.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use flash_domain::clock::Millis;
use flash_domain::limits::{SQS_MAX_BATCH_ENTRIES, SQS_MAX_DELAY_SECONDS};
use flash_domain::ports::{PortError, PortResult, Queue, Redelivery};
use flash_domain::OrderMessage;
use std::collections::HashMap;
use std::time::Duration;

/// One queue: the orders queue `place-order` sends to, or the queue a consumer hands its failed
/// records back to.
#[derive(Clone)]
pub struct SqsQueue {
    pub(crate) client: Client,
    pub(crate) url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub fn from_config(sdk: &aws_config::SdkConfig, url: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), url)
    }
}

/// The records of `event` whose body is a `T`, each with its message id, and the message ids of
/// the others, each logged as not `what` ("an order"): those fail alone. A record without a
/// message id could not be reported, and is skipped.
pub fn parse_records<T: serde::de::DeserializeOwned>(
    event: SqsEvent,
    what: &str,
) -> (Vec<(String, T)>, Vec<String>) {
    let mut parsed = Vec::new();
    let mut failed = Vec::new();
    for record in event.records {
        let Some(message_id) = record.message_id else {
            continue;
        };
        match record.body.as_deref().map(serde_json::from_str::<T>) {
            Some(Ok(m)) => parsed.push((message_id, m)),
            _ => {
                tracing::warn!(message_id, "message is not {what}");
                failed.push(message_id);
            }
        }
    }
    (parsed, failed)
}

/// Answers the event source's batches with `handler`, given each batch and the invocation's
/// deadline ([`invocation_deadline`], epoch ms), until the runtime stops: an SQS consumer's
/// `main` after wiring.
pub async fn serve<F, A>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(SqsEvent, Millis) -> A,
    A: std::future::Future<Output = SqsBatchResponse> + Send,
{
    use lambda_http::lambda_runtime::{run, service_fn, LambdaEvent};
    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let deadline = invocation_deadline(event.context.deadline, flash_domain::clock::now_ms());
        let answer = handler(event.payload, deadline);
        async move { Ok::<_, lambda_http::Error>(answer.await) }
    }))
    .await
}

/// The template's default function `Timeout` (Globals), standing in for a deadline the
/// context does not really give (see [`invocation_deadline`]).
const DEFAULT_TIMEOUT_MS: Millis = 10_000;

/// When the invocation must be over, in epoch ms, from Lambda's context (`Context::deadline`)
/// at `now`. A deadline already past as the invocation starts is not one Lambda gives:
/// `cargo lambda watch` sends a fixed 600,000 (ten minutes after the epoch). Then the
/// template's default timeout from now stands in for it, so the consumer still tries its
/// batch instead of handing every record back untried.
pub fn invocation_deadline(context_deadline_ms: u64, now: Millis) -> Millis {
    match Millis::try_from(context_deadline_ms) {
        Ok(deadline) if deadline > now => deadline,
        _ => now.saturating_add(DEFAULT_TIMEOUT_MS),
    }
}

/// The answer of an SQS-triggered function that reports partial batch failures: the records
/// named in `failed` (each once) come back, the others are deleted.
pub fn batch_response(mut failed: Vec<String>) -> SqsBatchResponse {
    failed.sort();
    failed.dedup();
    let mut resp = SqsBatchResponse::default();
    resp.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    resp
}

/// A failed record's first redelivery comes after 2 s (while its buyer still waits), each
/// later one after twice as long as the one before, so a table that is still throttling is
/// not hammered: 2, 4, 8, 16 s, about 30 s from the first receive to the fifth (the queues'
/// `maxReceiveCount`), where waiting out the 180 s visibility timeout took 12 minutes.
const REDELIVERY_BASE: Duration = Duration::from_secs(1);
/// Never longer than a minute, whatever the count: a queue with a higher `maxReceiveCount`
/// still retries every minute rather than every visibility timeout.
const REDELIVERY_CAP: Duration = Duration::from_secs(60);

/// How long a record that SQS has delivered `receive_count` times (its
/// `ApproximateReceiveCount`) stays away before it comes back: 2^count s, at most a minute.
pub fn redelivery_delay(receive_count: u32) -> Duration {
    REDELIVERY_BASE
        .saturating_mul(1 << receive_count.min(16))
        .min(REDELIVERY_CAP)
}

/// What it takes to hand each record of a batch back: its receipt handle and how often SQS has
/// delivered it, by message id. Taken from the event before the handler consumes it.
#[derive(Debug, Default, Clone)]
pub struct Receipts(HashMap<String, (String, u32)>);

impl Receipts {
    pub fn of(event: &SqsEvent) -> Self {
        let receipts = event
            .records
            .iter()
            .filter_map(|r| {
                let id = r.message_id.clone()?;
                let handle = r.receipt_handle.clone()?;
                // Lambda always sends the count; a record without one was delivered at least
                // once (this time).
                let count = r
                    .attributes
                    .get("ApproximateReceiveCount")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                Some((id, (handle, count)))
            })
            .collect();
        Self(receipts)
    }
}

/// Hands the records `response` reports failed back through `redelivery`, each to come again
/// after [`redelivery_delay`] of its receive count instead of the queue's visibility timeout.
/// This never fails the batch: a record it cannot hand back (no receipt handle, a refused
/// call) is logged and comes back after the visibility timeout, as it would have anyway.
pub async fn hand_back<R: Redelivery>(
    redelivery: &R,
    receipts: &Receipts,
    response: &SqsBatchResponse,
) {
    let mut messages = Vec::with_capacity(response.batch_item_failures.len());
    for f in &response.batch_item_failures {
        match receipts.0.get(&f.item_identifier) {
            Some((handle, count)) => messages.push((handle.clone(), redelivery_delay(*count))),
            None => tracing::warn!(
                message_id = f.item_identifier,
                "failed record has no receipt handle; it returns after the visibility timeout"
            ),
        }
    }
    if messages.is_empty() {
        return;
    }
    if let Err(e) = redelivery.redeliver_after(&messages).await {
        tracing::warn!(
            error = %e,
            records = messages.len(),
            "handing failed records back failed; they return after the visibility timeout"
        );
    }
}

impl SqsQueue {
    /// One `ChangeMessageVisibilityBatch` of at most [`SQS_MAX_BATCH_ENTRIES`].
    async fn change_visibility(&self, messages: &[(String, Duration)]) -> PortResult<()> {
        let mut entries = Vec::with_capacity(messages.len());
        for (i, (handle, delay)) in messages.iter().enumerate() {
            let entry = ChangeMessageVisibilityBatchRequestEntry::builder()
                // Entry ids only need to be unique within the call: the position.
                .id(i.to_string())
                .receipt_handle(handle)
                .visibility_timeout(delay.as_secs().min(i32::MAX as u64) as i32)
                .build()
                .map_err(|e| PortError::unavailable("building ChangeMessageVisibilityBatch", e))?;
            entries.push(entry);
        }
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| crate::errors::port_error("sqs ChangeMessageVisibilityBatch", e))?;
        // A batch call succeeds as a whole but may refuse single entries (a receipt handle
        // that expired because the function ran past the visibility timeout).
        match out.failed().first() {
            None => Ok(()),
            Some(f) => Err(PortError::unavailable(
                "sqs ChangeMessageVisibilityBatch",
                format!(
                    "{} of {} entries refused: {} {}",
                    out.failed().len(),
                    messages.len(),
                    f.code(),
                    f.message().unwrap_or("")
                ),
            )),
        }
    }
}

impl Redelivery for SqsQueue {
    async fn redeliver_after(&self, messages: &[(String, Duration)]) -> PortResult<()> {
        let results = futures::future::join_all(
            messages
                .chunks(SQS_MAX_BATCH_ENTRIES)
                .map(|chunk| self.change_visibility(chunk)),
        )
        .await;
        results.into_iter().collect()
    }
}

impl SqsQueue {
    async fn send_delayed(&self, msg: &OrderMessage, delay_s: u64) -> PortResult<()> {
        let body = serde_json::to_string(msg).map_err(|e| PortError::unavailable("encoding", e))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay_s.min(u64::from(SQS_MAX_DELAY_SECONDS)) as i32)
            .send()
            .await
            .map_err(|e| crate::errors::port_error("sqs SendMessage", e))?;
        Ok(())
    }
}

impl Queue for SqsQueue {
    async fn send(&self, msg: &OrderMessage) -> PortResult<()> {
        self.send_delayed(msg, 0).await
    }

    async fn send_later(&self, msg: &OrderMessage, delay: Duration) -> PortResult<()> {
        self.send_delayed(msg, delay.as_secs_f64().ceil() as u64)
            .await
    }
}

/// A queue's approximate depth: messages visible, and in flight (received, not yet deleted).
pub async fn queue_depth(client: &Client, url: &str) -> PortResult<(u64, u64)> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let attrs = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| PortError::unavailable("sqs GetQueueAttributes", aws_sdk_sqs::Error::from(e)))?
        .attributes
        .unwrap_or_default();
    let count = |k: A| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((
        count(A::ApproximateNumberOfMessages),
        count(A::ApproximateNumberOfMessagesNotVisible),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_already_past_stands_for_none_and_gets_the_default_timeout() {
        let now = 1_800_000_000_000;
        assert_eq!(
            invocation_deadline(1_800_000_030_000, now),
            1_800_000_030_000
        );
        // cargo lambda watch's fixed header, and a deadline that has just passed
        assert_eq!(invocation_deadline(600_000, now), now + 10_000);
        assert_eq!(invocation_deadline(1_799_999_999_000, now), now + 10_000);
        assert_eq!(invocation_deadline(u64::MAX, now), now + 10_000);
    }
    use serde_json::json;
    use std::sync::Mutex;

    /// Records what it was asked to hand back.
    #[derive(Default)]
    struct FakeRedelivery {
        calls: Mutex<Vec<Vec<(String, Duration)>>>,
    }

    impl Redelivery for FakeRedelivery {
        async fn redeliver_after(&self, messages: &[(String, Duration)]) -> PortResult<()> {
            self.calls.lock().unwrap().push(messages.to_vec());
            Ok(())
        }
    }

    /// A batch whose records are (message id, receive count); each receipt handle is
    /// `rh-<id>`.
    fn event(records: &[(&str, u32)]) -> SqsEvent {
        let records: Vec<_> = records
            .iter()
            .map(|(id, count)| {
                json!({
                    "messageId": id,
                    "receiptHandle": format!("rh-{id}"),
                    "body": "{}",
                    "attributes": {"ApproximateReceiveCount": count.to_string()},
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                })
            })
            .collect();
        serde_json::from_value(json!({ "Records": records })).unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_redelivery_delay_doubles_with_each_receive_up_to_a_minute() {
        let delays: Vec<u64> = (1..=8).map(|n| redelivery_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(redelivery_delay(u32::MAX), secs(60));
    }

    #[tokio::test]
    async fn only_failed_records_are_handed_back_each_after_its_own_backoff() {
        let batch = event(&[("a", 1), ("b", 3), ("c", 2), ("d", 40)]);
        let receipts = Receipts::of(&batch);
        let fake = FakeRedelivery::default();
        hand_back(
            &fake,
            &receipts,
            &batch_response(vec!["b".into(), "d".into()]),
        )
        .await;
        let calls = fake.calls.into_inner().unwrap();
        assert_eq!(
            calls,
            [vec![
                ("rh-b".to_owned(), secs(8)),
                ("rh-d".to_owned(), secs(60))
            ]]
        );
    }

    #[tokio::test]
    async fn a_batch_without_failures_hands_nothing_back() {
        let batch = event(&[("a", 1)]);
        let fake = FakeRedelivery::default();
        hand_back(&fake, &Receipts::of(&batch), &batch_response(vec![])).await;
        assert!(fake.calls.into_inner().unwrap().is_empty());
    }
}

/// What [`delete_messages`] did: how many messages SQS deleted, and why each of the others was
/// not (an entry refused, or a whole call that failed). Those come again after their
/// visibility timeout.
#[derive(Debug, Default)]
pub struct Deleted {
    pub deleted: usize,
    pub not_deleted: Vec<String>,
}

/// Deletes the messages whose receipt handles are `handles` from the queue at `url`:
/// `DeleteMessageBatch` calls of at most [`SQS_MAX_BATCH_ENTRIES`], sent together.
pub async fn delete_messages(client: &Client, url: &str, handles: &[&str]) -> Deleted {
    let calls = handles
        .chunks(SQS_MAX_BATCH_ENTRIES)
        .map(|chunk| async move {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*handle)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("building DeleteMessageBatch: {e}"))?;
            client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    let e = aws_sdk_sqs::error::DisplayErrorContext(e);
                    format!("DeleteMessageBatch of {} failed: {e}", chunk.len())
                })
        });
    let mut done = Deleted::default();
    for result in futures::future::join_all(calls).await {
        match result {
            Ok(out) => {
                done.deleted += out.successful().len();
                done.not_deleted.extend(
                    out.failed()
                        .iter()
                        .map(|f| format!("entry {} refused: {}", f.id(), f.code())),
                );
            }
            Err(e) => done.not_deleted.push(e),
        }
    }
    done
}
