//! Drains a queue through the `process-orders` (or `expire-orders`) handler the way the SQS
//! event source mapping does: batches gathered from several receives, only the messages the handler reports as
//! succeeded are deleted, and failed ones come back after their visibility timeout.

use crate::fixtures::sqs_event;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::{Message, QueueAttributeName};
use aws_sdk_sqs::Client;
use expire_orders::ExpireOrders;
use flash_domain::ports::{PaymentTimeouts, Store};
use process_orders::{BatchReport, ProcessOrders};
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

impl DrainStats {
    fn add(&mut self, o: &DrainStats) {
        self.batches += o.batches;
        self.messages += o.messages;
        self.failures += o.failures;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.transactions += o.transactions;
    }
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
    let handles: Vec<&str> = msgs.iter().filter_map(|m| m.receipt_handle()).collect();
    let done = flash_aws::sqs::delete_messages(sqs, url, &handles).await;
    assert!(done.not_deleted.is_empty(), "{:?}", done.not_deleted);
    assert_eq!(
        done.deleted,
        msgs.len(),
        "messages deleted of those received"
    );
}

/// The messages in the queue counted by `counts` (`ApproximateNumberOfMessages...`), summed; a
/// count the queue does not give is taken as one, not zero.
pub async fn queue_count(sqs: &Client, url: &str, counts: &[QueueAttributeName]) -> u64 {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .set_attribute_names(Some(counts.to_vec()))
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default();
    counts
        .iter()
        .map(|k| {
            attrs
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1)
        })
        .sum()
}

/// Whether the queue holds no message, visible or in flight (a missing count is not zero).
pub async fn queue_empty(sqs: &Client, url: &str) -> bool {
    let counts = [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ];
    queue_count(sqs, url, &counts).await == 0
}

/// A handler the event source can feed: one invocation on `event`, with what it decided.
#[allow(async_fn_in_trait)] // used by this crate's test binaries only
pub trait Consumer {
    async fn consume(&self, event: SqsEvent) -> (SqsBatchResponse, DrainStats);
}

/// `process-orders`: `accepted` and `rejected` count the orders it decided.
impl<S: Store, T: PaymentTimeouts> Consumer for ProcessOrders<S, T> {
    async fn consume(&self, event: SqsEvent) -> (SqsBatchResponse, DrainStats) {
        let (resp, report) = invoke(self, event).await;
        let stats = DrainStats {
            accepted: report.accepted,
            rejected: report.rejected,
            transactions: report.transactions,
            ..DrainStats::default()
        };
        (resp, stats)
    }
}

/// `expire-orders` on the payment-timeouts queue: `accepted` counts the orders it expired,
/// `rejected` the ones it found settled.
impl<S: Store, T: PaymentTimeouts> Consumer for ExpireOrders<S, T> {
    async fn consume(&self, event: SqsEvent) -> (SqsBatchResponse, DrainStats) {
        let (resp, report) = self.process(event).await;
        let stats = DrainStats {
            accepted: report.expired,
            rejected: report.settled,
            ..DrainStats::default()
        };
        (resp, stats)
    }
}

/// Runs `consumers` concurrent pollers until the queue is empty or `deadline` passes: the
/// event source's loop (receive a batch, hand it to `handler`, delete what it did not report
/// failed).
pub async fn drain<H: Consumer>(
    handler: &H,
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
            let (resp, counted) = handler.consume(received_event(&msgs)).await;
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
            stats.add(&DrainStats {
                batches: 1,
                messages: msgs.len(),
                failures: failed.len(),
                ..counted
            });
        }
        stats
    });
    let all = futures::future::join_all(workers).await;
    all.into_iter().fold(DrainStats::default(), |mut a, s| {
        a.add(&s);
        a
    })
}

/// One invocation of `handler` on `event`, as the event source makes it: starting now, with
/// its timeout ahead, and the records it hands back only recorded (the caller plays SQS).
pub async fn invoke<S: Store, T: PaymentTimeouts>(
    handler: &ProcessOrders<S, T>,
    event: SqsEvent,
) -> (SqsBatchResponse, BatchReport) {
    handler
        .handle(
            &crate::fake::FakeRedelivery::default(),
            event,
            crate::fixtures::invocation_deadline(),
        )
        .await
}
