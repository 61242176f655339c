//! Drains a queue through the `process-orders` handler the way the SQS event source mapping
//! does: batches gathered from several receives, only the messages the handler reports as
//! succeeded are deleted, and failed ones come back after their visibility timeout.

use crate::fixtures::sqs_event;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, QueueAttributeName};
use aws_sdk_sqs::Client;
use flash_domain::expiry::PaymentTimeouts;
use flash_domain::ports::Store;
use process_orders::ProcessOrders;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainStats {
    pub batches: usize,
    pub messages: usize,
    pub failures: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub transactions: usize,
}

/// Receives up to `batch_size` messages (several receives of at most 10).
/// Received messages as the SQS event Lambda would deliver them (message id and body).
pub fn received_event<'a>(msgs: impl IntoIterator<Item = &'a Message>) -> SqsEvent {
    let records: Vec<(String, String)> = msgs
        .into_iter()
        .map(|m| {
            (
                m.message_id().unwrap_or_default().to_owned(),
                m.body().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    sqs_event(&records)
}

pub async fn receive_batch(sqs: &Client, url: &str, batch_size: usize) -> Vec<Message> {
    let mut got = Vec::new();
    while got.len() < batch_size {
        let want = (batch_size - got.len()).min(10) as i32;
        let resp = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(want)
            .wait_time_seconds(0)
            .send()
            .await
            .expect("ReceiveMessage");
        let msgs = resp.messages.unwrap_or_default();
        if msgs.is_empty() {
            break;
        }
        got.extend(msgs);
    }
    got
}

pub async fn delete(sqs: &Client, url: &str, msgs: &[&Message]) {
    for chunk in msgs.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .expect("entry")
            })
            .collect::<Vec<_>>();
        sqs.delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("DeleteMessageBatch");
    }
}

/// Whether the queue holds no message, visible or in flight (a missing count is not zero).
pub async fn queue_empty(sqs: &Client, url: &str) -> bool {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default();
    let count = |k: QueueAttributeName| {
        attrs
            .get(&k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1)
    };
    count(QueueAttributeName::ApproximateNumberOfMessages) == 0
        && count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0
}

/// Runs `consumers` concurrent pollers until the queue is empty or `deadline` passes.
pub async fn drain<S: Store, T: PaymentTimeouts>(
    handler: &ProcessOrders<S, T>,
    sqs: &Client,
    url: &str,
    consumers: usize,
    batch_size: usize,
    deadline: Duration,
) -> DrainStats {
    let until = Instant::now() + deadline;
    let workers = (0..consumers).map(|_| async {
        let mut stats = DrainStats::default();
        while Instant::now() < until {
            let msgs = receive_batch(sqs, url, batch_size).await;
            if msgs.is_empty() {
                if queue_empty(sqs, url).await {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let event = received_event(&msgs);
            let (resp, report) = handler
                .handle(
                    &crate::fake::FakeRedelivery::default(),
                    event,
                    crate::fixtures::invocation_deadline(),
                )
                .await;
            let failed: HashSet<&str> = resp
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.as_str())
                .collect();
            let done: Vec<&Message> = msgs
                .iter()
                .filter(|m| !failed.contains(m.message_id().unwrap_or_default()))
                .collect();
            delete(sqs, url, &done).await;
            stats.batches += 1;
            stats.messages += msgs.len();
            stats.failures += failed.len();
            stats.accepted += report.accepted;
            stats.rejected += report.rejected;
            stats.transactions += report.transactions;
        }
        stats
    });
    let all = futures::future::join_all(workers).await;
    all.into_iter().fold(DrainStats::default(), |mut a, s| {
        a.batches += s.batches;
        a.messages += s.messages;
        a.failures += s.failures;
        a.accepted += s.accepted;
        a.rejected += s.rejected;
        a.transactions += s.transactions;
        a
    })
}
