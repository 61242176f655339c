//! The orders queue.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::Client;
use flash_domain::ports::{PortError, PortResult, Queue};
use flash_domain::OrderMessage;
use std::time::Duration;

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
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

/// SQS's longest `DelaySeconds`.
const MAX_DELAY_S: u64 = 900;

impl SqsQueue {
    async fn send_delayed(&self, msg: &OrderMessage, delay_s: u64) -> PortResult<()> {
        let body = serde_json::to_string(msg).map_err(|e| PortError::unavailable("encoding", e))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay_s.min(MAX_DELAY_S) as i32)
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
