//! The payment-timeouts queue (SQS): one delayed message per pending order (see
//! `flash_domain::expiry`), sent with `SendMessageBatch`, ten to a call, every call at once.

use crate::SqsQueue;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use flash_domain::clock::Millis;
use flash_domain::expiry::{PaymentDue, TimeoutMessage};
use flash_domain::limits::SQS_MAX_BATCH_ENTRIES;
use flash_domain::ports::{PaymentTimeouts, PortError, Unscheduled};
use flash_domain::OrderId;

/// The payment-timeouts queue: the queue it sends to, and what it sends.
#[derive(Clone)]
pub struct SqsTimeouts(SqsQueue);

impl SqsTimeouts {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self(SqsQueue::new(client, url))
    }

    pub fn from_config(sdk: &aws_config::SdkConfig, url: impl Into<String>) -> Self {
        Self(SqsQueue::from_config(sdk, url))
    }

    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// One `SendMessageBatch`: the orders whose message was not accepted, and why.
    async fn send_batch(
        &self,
        due: &[PaymentDue],
        now: Millis,
    ) -> Result<(), (Vec<OrderId>, PortError)> {
        let all = || due.iter().map(|d| d.order_id.clone()).collect::<Vec<_>>();
        let mut entries = Vec::with_capacity(due.len());
        for (i, d) in due.iter().enumerate() {
            let body = TimeoutMessage {
                order_id: d.order_id.clone(),
            };
            let body = serde_json::to_string(&body)
                .map_err(|e| (all(), PortError::unavailable("encoding", e)))?;
            let entry = SendMessageBatchRequestEntry::builder()
                // Entry ids only need to be unique within the call: the position.
                .id(i.to_string())
                .message_body(body)
                .delay_seconds(d.delay_seconds(now) as i32)
                .build()
                .map_err(|e| {
                    (
                        all(),
                        PortError::unavailable("building SendMessageBatch", e),
                    )
                })?;
            entries.push(entry);
        }
        let out = self
            .0
            .client
            .send_message_batch()
            .queue_url(&self.0.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| (all(), crate::errors::port_error("sqs SendMessageBatch", e)))?;
        // A batch call succeeds as a whole but may refuse single entries.
        let failed: Vec<OrderId> = out
            .failed()
            .iter()
            .filter_map(|f| f.id().parse::<usize>().ok())
            .filter_map(|i| due.get(i).map(|d| d.order_id.clone()))
            .collect();
        match out.failed().first() {
            None => Ok(()),
            Some(f) => Err((
                failed,
                PortError::unavailable(
                    "sqs SendMessageBatch",
                    format!("entry refused: {} {}", f.code(), f.message().unwrap_or("")),
                ),
            )),
        }
    }
}

impl PaymentTimeouts for SqsTimeouts {
    async fn schedule_timeouts(&self, due: &[PaymentDue], now: Millis) -> Result<(), Unscheduled> {
        // One message per order is enough, however often the batch named it.
        let mut unique: Vec<PaymentDue> = due.to_vec();
        unique.sort_by(|a, b| a.order_id.cmp(&b.order_id));
        unique.dedup_by(|a, b| a.order_id == b.order_id);
        let results = futures::future::join_all(
            unique
                .chunks(SQS_MAX_BATCH_ENTRIES)
                .map(|chunk| self.send_batch(chunk, now)),
        )
        .await;
        let mut orders = Vec::new();
        let mut cause = None;
        for (failed, e) in results.into_iter().filter_map(Result::err) {
            orders.extend(failed);
            cause.get_or_insert(e);
        }
        match cause {
            None => Ok(()),
            Some(cause) => Err(Unscheduled { orders, cause }),
        }
    }
}
