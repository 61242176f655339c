//! The payment-timeouts consumer. Each message names an order `process-orders` accepted; it
//! arrives when the order's payment window should have closed. The order is read back and,
//! if it is still `pending` past its deadline, canceled with reason `payment_timeout` and its
//! units returned, in one conditional write (see `flash_domain::expiry`). An order paid or
//! canceled meanwhile is left alone; one whose deadline is still ahead (a window longer than
//! SQS's 15-minute delay) gets its message sent again with what remains.
//!
//! Throttling and lost races with concurrent transactions are retried inside the invocation,
//! with jittered backoff, while it has time left (the Lambda context's deadline less
//! [`SAFETY_MARGIN`]). A message that is not a timeout, names no order, or whose order cannot
//! be expired by then is reported failed alone and handed back to come again within seconds
//! ([`ExpireOrders::handle`]); SQS finally moves it to the DLQ after `maxReceiveCount`
//! receives. The rest of the batch still succeeds.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use flash_aws::config::{Aws, ConfigError, Env};
use flash_aws::sqs::{hand_back, parse_records, Receipts};
use flash_aws::{DynamoStore, SqsTimeouts};
use flash_domain::backoff::jittered;
use flash_domain::clock::{now_ms, Millis};
use flash_domain::expiry::{expire, Expiry, PaymentDue, TimeoutMessage};
use flash_domain::ports::{PaymentTimeouts, PortError, PortResult, Redelivery, Store};
use flash_domain::{Order, OrderId, Sku};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The wait after the first throttled or lost try (concurrent transactions on the same stock
/// shard: other timeouts, cancels, the processor), doubling after each ("full jitter" below
/// it). Capped at a second: DynamoDB's write budgets refill every second.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);
const RETRY_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Time kept back from the invocation's deadline: a try started just before it can take the
/// SDK's whole operation timeout (6 s, `flash_aws::config::sdk_config`), and the failed records
/// must still be handed back and the answer sent before Lambda stops the invocation.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(7);

/// How long [`ExpireOrders::process`] retries when no Lambda context gives a deadline (tests,
/// tools).
const DEFAULT_BUDGET: Duration = Duration::from_secs(5);

/// The instant retries stop for an invocation that Lambda ends at `deadline`
/// (`Context::deadline`): [`SAFETY_MARGIN`] before it.
pub fn retry_deadline(deadline: SystemTime) -> Instant {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Instant::now() + left.saturating_sub(SAFETY_MARGIN)
}

/// What one batch did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExpiryReport {
    /// Orders this batch canceled, their stock returned.
    pub expired: usize,
    /// Orders already paid or canceled: nothing to do.
    pub settled: usize,
    /// Orders whose deadline is still ahead, scheduled again.
    pub rescheduled: usize,
    pub failed: usize,
}

pub struct ExpireOrders<S, T> {
    pub store: S,
    pub timeouts: T,
}

/// Where one order's timeout ended.
enum Outcome {
    Expired(Order),
    Settled,
    NotYet(PaymentDue),
    Failed(&'static str),
}

impl ExpireOrders<DynamoStore, SqsTimeouts> {
    /// The deployed function from its environment ([`Aws::store_and_timeouts`]).
    pub fn from_env(aws: &Aws, env: &Env) -> Result<Self, ConfigError> {
        let (store, timeouts) = aws.store_and_timeouts(env)?;
        Ok(Self { store, timeouts })
    }
}

impl<S: Store, T: PaymentTimeouts> ExpireOrders<S, T> {
    /// The deployed function: [`process_by`](Self::process_by) `deadline` (see
    /// [`retry_deadline`]), then each record it reports failed handed back through
    /// `redelivery`, to come again after a backoff from its receive count (see
    /// [`flash_aws::sqs::hand_back`]).
    pub async fn handle<R: Redelivery>(
        &self,
        redelivery: &R,
        event: SqsEvent,
        deadline: Instant,
    ) -> SqsBatchResponse {
        let receipts = Receipts::of(&event);
        let (response, _) = self.process_by(event, deadline).await;
        hand_back(redelivery, &receipts, &response).await;
        response
    }

    /// [`process_by`](Self::process_by) with a few seconds for retries.
    pub async fn process(&self, event: SqsEvent) -> (SqsBatchResponse, ExpiryReport) {
        self.process_by(event, Instant::now() + DEFAULT_BUDGET)
            .await
    }

    /// The batch, with throttled and conflicting writes retried until `deadline`.
    pub async fn process_by(
        &self,
        event: SqsEvent,
        deadline: Instant,
    ) -> (SqsBatchResponse, ExpiryReport) {
        let mut report = ExpiryReport::default();
        let (messages, mut failed) = parse_records::<TimeoutMessage>(event, "a payment timeout");
        // order id → the records that named it (duplicates are normal: at-least-once, and
        // `process-orders` schedules again on every redelivery).
        let mut carriers: HashMap<OrderId, Vec<String>> = HashMap::new();
        for (message_id, m) in messages {
            carriers.entry(m.order_id).or_default().push(message_id);
        }
        if carriers.is_empty() {
            return finish(failed, report);
        }
        let ids: Vec<OrderId> = carriers.keys().cloned().collect();
        let orders = match self.store.get_orders(&ids).await {
            Ok(orders) => orders,
            Err(e) => {
                tracing::error!(error = %e, "reading orders failed");
                failed.extend(carriers.into_values().flatten());
                return finish(failed, report);
            }
        };
        let found: HashSet<&OrderId> = orders.iter().map(|o| &o.id).collect();
        for id in &ids {
            if !found.contains(id) {
                tracing::warn!(order_id = %id, "timeout names no stored order");
                failed.extend(carriers.remove(id).unwrap_or_default());
            }
        }
        let mut by_product: BTreeMap<Sku, Vec<Order>> = BTreeMap::new();
        for o in orders {
            by_product.entry(o.sku.clone()).or_default().push(o);
        }

        let now = now_ms();
        // Products in parallel; one product's orders one after another, since each return
        // of stock writes one of its few shard items and concurrent transactions on one item
        // fail each other.
        let groups = by_product.into_values().map(|group| async move {
            let mut outcomes = Vec::with_capacity(group.len());
            for order in group {
                let id = order.id.clone();
                outcomes.push((id, self.expire_one(order, now, deadline).await));
            }
            outcomes
        });
        let outcomes = futures::future::join_all(groups).await;

        let mut again = Vec::new();
        for (id, outcome) in outcomes.into_iter().flatten() {
            match outcome {
                Outcome::Expired(o) => {
                    report.expired += 1;
                    tracing::info!(
                        order_id = %o.id,
                        sku = %o.sku,
                        units = o.quantity.get(),
                        "payment window closed: order canceled, stock returned"
                    );
                }
                Outcome::Settled => report.settled += 1,
                Outcome::NotYet(d) => again.push(d),
                Outcome::Failed(why) => {
                    tracing::warn!(order_id = %id, why, "timeout not applied; will be retried");
                    failed.extend(carriers.remove(&id).unwrap_or_default());
                }
            }
        }
        if !again.is_empty() {
            // Its message came early (the window is longer than SQS's longest delay): send it
            // again for what remains, and let this one go only once that is sent.
            match self.timeouts.schedule_timeouts(&again, now).await {
                Ok(()) => report.rescheduled += again.len(),
                Err(e) => {
                    tracing::error!(error = %e.cause, orders = e.orders.len(), "re-scheduling failed");
                    report.rescheduled += again.len().saturating_sub(e.orders.len());
                    for id in &e.orders {
                        failed.extend(carriers.remove(id).unwrap_or_default());
                    }
                }
            }
        }
        tracing::info!(
            expired = report.expired,
            settled = report.settled,
            rescheduled = report.rescheduled,
            failed = failed.len(),
            "payment timeouts processed"
        );
        finish(failed, report)
    }

    /// One timeout, tried again after throttling or a lost race as long as the wait ends
    /// before `deadline`.
    async fn expire_one(&self, order: Order, now: Millis, deadline: Instant) -> Outcome {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_expire(order.clone(), now).await {
                Err(e @ (PortError::Contention | PortError::Degraded { .. })) => {
                    let wait = jittered(RETRY_BACKOFF, RETRY_BACKOFF_CAP, attempt);
                    // Tokio's timer fires on whole milliseconds, so a sleep may end up to
                    // 1 ms after `wait`: keep that much clear of the deadline too.
                    if Instant::now() + wait + Duration::from_millis(1) >= deadline {
                        tracing::error!(order_id = %order.id, error = %e, attempt, "applying the timeout failed; no time left to retry");
                        return Outcome::Failed("store unavailable");
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::error!(order_id = %order.id, error = %e, "applying the timeout failed");
                    return Outcome::Failed("store unavailable");
                }
                Ok(outcome) => return outcome,
            }
        }
    }

    async fn try_expire(&self, order: Order, now: Millis) -> PortResult<Outcome> {
        Ok(match expire(&self.store, order, now).await? {
            Expiry::Expired(o) => Outcome::Expired(o),
            Expiry::Settled(_) => Outcome::Settled,
            Expiry::NotYet(d) => Outcome::NotYet(d),
            Expiry::Missing => Outcome::Failed("order vanished"),
            // A pending order without a deadline is damaged: keep its message (the DLQ) for
            // someone to look at rather than guess.
            Expiry::NoDeadline => Outcome::Failed("pending order has no expires_at"),
        })
    }
}

fn finish(failed: Vec<String>, mut report: ExpiryReport) -> (SqsBatchResponse, ExpiryReport) {
    let resp = flash_aws::sqs::batch_response(failed);
    report.failed = resp.batch_item_failures.len();
    (resp, report)
}
