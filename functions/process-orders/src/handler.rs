//! The SQS consumer: decides a batch of queued orders. Orders are read back from the table
//! (the message only names them), grouped by product, and each group is committed with one
//! transaction per stock write (see `flash_domain::commit`). Only a record that is not an order
//! message at all is reported failed, alone, so SQS retries it and finally moves it to the DLQ;
//! the rest of the batch still succeeds. A message that names no stored order, or disagrees with
//! the order it names, is acknowledged and counted (a warning and the `IgnoredMessages` metric),
//! never failed: `place-order` sends its re-drive copy before its write, so a buyer who reuses an
//! Idempotency-Key with another body, or is refused by the purchase limit, leaves such a copy
//! behind. Retrying it could never change the stored order, and failing it would let any buyer
//! fill the DLQ, whose alarm rolls deployments back.
//!
//! Every order the batch leaves `pending` gets its payment timeout scheduled, including orders
//! an earlier delivery accepted:
//! a processor that died between its commit and the scheduling is made whole by the
//! redelivery, and a second timeout message is harmless because the timeout is conditional.
//!
//! The records the batch still reports failed are handed back to come again within seconds
//! (see [`flash_aws::sqs::hand_back`]), not after the queue's 180 s visibility timeout.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use flash_aws::config::{Aws, ConfigError, Env};
use flash_aws::sqs::{hand_back, parse_records, Receipts};
use flash_aws::telemetry::{self, Unit};
use flash_aws::{DynamoStore, SqsTimeouts};
use flash_domain::clock::{now_ms, Millis};
use flash_domain::commit::{by_product, decide_group, Deadline, GroupReport};
use flash_domain::expiry::PaymentDue;
use flash_domain::ports::{PaymentTimeouts, PortError, PortResult, Redelivery, ShardStock, Store};
use flash_domain::{Order, OrderId, OrderMessage, Product, Reason, Sku};
use futures::stream::{self, StreamExt};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// Kept back from the invocation's deadline: a group stops retrying this long before Lambda
/// would end the invocation, so the attempt in flight can finish (a throttled DynamoDB call
/// answers within a second or so; the SDK caps any call at its 6 s operation timeout), the
/// payment timeouts can be scheduled and the batch response can name the records still
/// failed. A function killed at its timeout fails its whole batch, and every record of it then
/// waits out the queue's visibility timeout.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Product groups of one batch decided at once. Each holds a transaction in flight at a time,
/// so this bounds the invocation's concurrent DynamoDB requests (and the SDK connections they
/// need) while a batch of 50 orders over 40 products takes three rounds instead of 40.
pub const GROUP_CONCURRENCY: usize = 16;

/// What one batch did, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub accepted: usize,
    pub rejected: usize,
    pub already_decided: usize,
    pub transactions: usize,
    pub failed: usize,
    /// Order messages acknowledged without effect: they name no stored order, or disagree with
    /// the one they name.
    pub ignored: usize,
    /// The orders this batch left `pending`, newly accepted or found so: each needs its
    /// payment timeout scheduled.
    pub due: Vec<PaymentDue>,
}

/// The records a batch reports failed, and for each order the records that carry it.
type Decided = (Vec<String>, BatchReport, HashMap<OrderId, Vec<String>>);

/// The SQS consumer of the orders queue, with the payment-timeouts queue it schedules on.
pub struct ProcessOrders<S, T> {
    pub store: S,
    pub timeouts: T,
}

impl ProcessOrders<DynamoStore, SqsTimeouts> {
    /// The deployed function from its environment ([`Aws::store_and_timeouts`]).
    pub fn from_env(aws: &Aws, env: &Env) -> Result<Self, ConfigError> {
        let (store, timeouts) = aws.store_and_timeouts(env)?;
        Ok(Self { store, timeouts })
    }
}

impl<S: Store, T: PaymentTimeouts> ProcessOrders<S, T> {
    /// The deployed function. Decides the batch, then schedules the payment timeout of every
    /// order it left pending: a record whose order's timeout could not be scheduled is reported
    /// failed, so SQS delivers it again and the redelivery schedules it. Each record reported
    /// failed is handed back through `redelivery`, to come again after a backoff from its
    /// receive count (see [`flash_aws::sqs::hand_back`]).
    ///
    /// `deadline` is when the invocation ends (epoch ms, as Lambda's context gives it): a
    /// group that meets throttling or conflicts is retried until [`DEADLINE_MARGIN`] before it.
    pub async fn handle<R: Redelivery>(
        &self,
        redelivery: &R,
        event: SqsEvent,
        deadline: Millis,
    ) -> (SqsBatchResponse, BatchReport) {
        let receipts = Receipts::of(&event);
        let (mut failed, mut report, carriers) = self.decide(event, deadline).await;
        if !report.due.is_empty() {
            if let Err(e) = self.timeouts.schedule_timeouts(&report.due, now_ms()).await {
                tracing::error!(
                    error = %e.cause,
                    orders = e.orders.len(),
                    "payment timeouts not scheduled; their messages will be retried"
                );
                failed.extend(
                    e.orders
                        .iter()
                        .filter_map(|id| carriers.get(id))
                        .flatten()
                        .cloned(),
                );
            }
        }
        let response = flash_aws::sqs::batch_response(failed);
        report.failed = response.batch_item_failures.len();
        hand_back(redelivery, &receipts, &response).await;
        (response, report)
    }

    /// Decides the batch's orders, without scheduling their payment timeouts.
    async fn decide(&self, event: SqsEvent, deadline: Millis) -> Decided {
        let mut report = BatchReport::default();
        let (messages, mut failed) = parse_records::<OrderMessage>(event, "an order");
        // order id → the records that named it, each with its own message (a batch may hold
        // duplicates, and a forged message may reuse a real order's id).
        let mut carriers: HashMap<OrderId, Vec<(String, OrderMessage)>> = HashMap::new();
        for (message_id, msg) in messages {
            carriers
                .entry(msg.order_id.clone())
                .or_default()
                .push((message_id, msg));
        }
        let ids: Vec<OrderId> = carriers.keys().cloned().collect();
        let orders = match self.store.get_orders(&ids).await {
            Ok(orders) => orders,
            Err(e) => {
                tracing::error!(error = %e, "reading orders failed");
                failed.extend(carriers.into_values().flatten().map(|(id, _)| id));
                return (failed, report, HashMap::new());
            }
        };
        // Trust the stored order, and only the records that agree with it: the others are
        // acknowledged, since no retry can make them agree.
        let stored: HashMap<OrderId, Order> =
            orders.into_iter().map(|o| (o.id.clone(), o)).collect();
        let mut agreeing: HashMap<OrderId, Vec<String>> = HashMap::new();
        let (mut no_order, mut disagrees) = (0, 0);
        for (id, records) in carriers {
            for (message_id, m) in records {
                match stored.get(&id) {
                    None => {
                        tracing::warn!(order_id = %id, message_id, "message names no stored order; ignored");
                        no_order += 1;
                    }
                    Some(o)
                        if m.sku == o.sku && m.quantity == o.quantity && m.user_id == o.owner =>
                    {
                        agreeing.entry(id.clone()).or_default().push(message_id);
                    }
                    Some(_) => {
                        tracing::warn!(order_id = %id, message_id, "message disagrees with its order; ignored");
                        disagrees += 1;
                    }
                }
            }
        }
        report.ignored = no_order + disagrees;
        for (reason, n) in [("no_order", no_order), ("disagrees", disagrees)] {
            if n > 0 {
                telemetry::metric(
                    "IgnoredMessages",
                    n as f64,
                    Unit::Count,
                    &[("Function", "process-orders"), ("Reason", reason)],
                );
            }
        }
        let carriers = agreeing;
        let orders: Vec<Order> = stored
            .into_values()
            .filter(|o| carriers.contains_key(&o.id))
            .collect();
        // Accepted by an earlier delivery, which may have died before scheduling the timeout.
        report.due.extend(orders.iter().filter_map(PaymentDue::of));
        // Concurrent batches start at different shards so they rarely write the same item.
        let mut h = DefaultHasher::new();
        ids.first().hash(&mut h);
        let start = h.finish() as usize;
        let now = now_ms();
        let until = Deadline {
            at: deadline.saturating_sub(DEADLINE_MARGIN.as_millis() as Millis),
            now: now_ms,
            pause: tokio::time::sleep,
        };
        let groups = by_product(orders);
        let (products, shards) = match self.read_catalog(&groups).await {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(error = %e, "reading the batch's products failed");
                failed.extend(
                    groups
                        .iter()
                        .flat_map(|(_, g)| g)
                        .flat_map(|o| carriers[&o.id].iter().cloned()),
                );
                return (failed, report, carriers);
            }
        };
        // Each product's group is decided on its own stock, so the groups go concurrently: a
        // batch spanning 40 products waits for a few rounds of transactions, not 40 of them.
        let until = &until;
        let decided: Vec<_> = stream::iter(groups.into_iter().map(|(sku, group)| {
            let product = products.get(&sku).cloned();
            let known = shards.get(&sku).cloned();
            async move {
                let result = match &product {
                    Some(p) => {
                        Some(decide_group(&self.store, p, &group, now, start, until, known).await)
                    }
                    None => None,
                };
                (sku, group, product, result)
            }
        }))
        .buffer_unordered(GROUP_CONCURRENCY)
        .collect()
        .await;
        for (sku, group, product, result) in decided {
            let (Some(product), Some(result)) = (product, result) else {
                tracing::warn!(sku = %sku, "orders for an unknown product");
                failed.extend(group.iter().flat_map(|o| carriers[&o.id].iter().cloned()));
                continue;
            };
            match result {
                Ok(r) => {
                    report.due.extend(
                        r.accepted
                            .iter()
                            .map(|id| PaymentDue::accepted(id.clone(), &product, now)),
                    );
                    report
                        .due
                        .extend(r.found_pending.iter().filter_map(PaymentDue::of));
                    emit_metrics(&group, &r, now);
                    report.accepted += r.accepted.len();
                    report.rejected += r.rejected.len();
                    report.already_decided += r.already_decided.len();
                    report.transactions += r.transactions;
                    tracing::info!(
                        sku = %sku,
                        accepted = r.accepted.len(),
                        rejected = r.rejected.len(),
                        already_decided = r.already_decided.len(),
                        transactions = r.transactions,
                        refused = r.refused,
                        throttled = r.throttled,
                        "group decided"
                    );
                }
                Err(e) => {
                    if matches!(e, PortError::Degraded { .. }) {
                        telemetry::metric("Throttles", 1.0, Unit::Count, DIMENSIONS);
                    }
                    tracing::error!(sku = %sku, error = %e, "group not decided; will be retried");
                    failed.extend(group.iter().flat_map(|o| carriers[&o.id].iter().cloned()));
                }
            }
        }
        (failed, report, carriers)
    }

    /// The batch's products, then their shards: one read each, however many products the
    /// batch names. The shards are read after the products, as the sold-out flag requires.
    async fn read_catalog(&self, groups: &[(Sku, Vec<Order>)]) -> PortResult<Catalog> {
        let skus: Vec<Sku> = groups.iter().map(|(sku, _)| sku.clone()).collect();
        let products = self.store.get_products(&skus).await?;
        let known: Vec<&Product> = products.values().collect();
        let shards = self.store.read_shards_of(&known).await?;
        Ok((products, shards))
    }
}

/// A batch's products and what their shards held, by SKU.
type Catalog = (HashMap<Sku, Product>, HashMap<Sku, Vec<ShardStock>>);

const DIMENSIONS: &[(&str, &str)] = &[("Function", "process-orders")];

/// The group's outcome as CloudWatch metrics (EMF lines): orders accepted and units sold,
/// rejections by reason, orders per stock transaction, conflicts, and each decided order's time
/// from admission to decision.
fn emit_metrics(group: &[Order], r: &GroupReport, now: Millis) {
    let by_id: HashMap<&OrderId, &Order> = group.iter().map(|o| (&o.id, o)).collect();
    let units: u32 = r
        .accepted
        .iter()
        .filter_map(|id| by_id.get(id))
        .map(|o| o.quantity.get())
        .sum();
    let mut metrics = vec![
        ("OrdersAccepted", r.accepted.len() as f64, Unit::Count),
        ("UnitsSold", f64::from(units), Unit::Count),
        ("Conflicts", r.conflicts as f64, Unit::Count),
        ("Throttles", r.throttled as f64, Unit::Count),
    ];
    if r.transactions > 0 {
        let size = r.accepted.len() as f64 / r.transactions as f64;
        metrics.push(("GroupSize", size, Unit::Count));
    }
    telemetry::metrics(&metrics, DIMENSIONS);
    let mut reasons: Vec<Reason> = r.rejected.iter().map(|(_, reason)| *reason).collect();
    reasons.sort_by_key(|reason| reason.as_str());
    reasons.dedup();
    for reason in reasons {
        let n = r.rejected.iter().filter(|(_, x)| *x == reason).count();
        telemetry::metrics(
            &[("OrdersRejected", n as f64, Unit::Count)],
            &[("Function", "process-orders"), ("Reason", reason.as_str())],
        );
    }
    let waits: Vec<f64> = r
        .accepted
        .iter()
        .chain(r.rejected.iter().map(|(id, _)| id))
        .filter_map(|id| by_id.get(id))
        .map(|o| (now - o.created_at).max(0) as f64)
        .collect();
    telemetry::distribution("TimeToDecisionMs", &waits, Unit::Milliseconds, DIMENSIONS);
}
