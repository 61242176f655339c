//! Orders: create one (with its admission count when the product limits buyers), read,
//! reject and advance one. The admission count is described in [`super::keys`].

use super::cancel::{canceled_error, is_ccf};
use super::codec::{decode_order, encode_order, get_n, get_s, is_admitted, malformed, n, s};
use super::keys::{admit_key, order_key};
use super::returns::{RETURN_BACKOFF, RETURN_BACKOFF_CAP, RETURN_PATIENCE};
use super::writes::{sdk, TxFailure};
use super::DynamoStore;
use crate::errors::port_error;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use flash_domain::backoff::jittered;
use flash_domain::clock::Millis;
use flash_domain::expiry::Window;
use flash_domain::order::Transition;
use flash_domain::ports::{Advance, CreateOrder, PortError, PortResult};
use flash_domain::{Order, OrderId, OrderStatus, Reason, UserId};
use std::time::Duration;

/// `queued → rejected`, and the order's expiry: a rejected order holds nothing, and after
/// [`REJECTED_KEPT_S`] it need not answer replays of its key any more.
const REJECT: &str = "SET #status = :rejected, reason = :reason, updated_at = :now, #ttl = :ttl";
/// How long a rejected order stays (DynamoDB's TTL removes it after): a week, well past the
/// 24 hours an Idempotency-Key must be honoured. Orders that hold or held stock stay.
pub const REJECTED_KEPT_S: i64 = 7 * 24 * 3600;

fn rejected_ttl(now: Millis) -> i64 {
    now / 1000 + REJECTED_KEPT_S
}

/// Transactions that reject an order counted at admission, before giving up on conflicts.
const REJECT_ATTEMPTS: usize = 3;

impl DynamoStore {
    /// [`REJECT`] of the order `id`, with every name and value it needs (and `:queued` for
    /// the condition), for the single write and for the transaction alike.
    fn reject_update(&self, id: &OrderId, reason: Reason, now: Millis) -> UpdateBuilder {
        self.update(order_key(id))
            .update_expression(REJECT)
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":rejected", s("rejected"))
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":reason", s(reason.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":ttl", n(rejected_ttl(now)))
    }

    /// `queued` → `rejected` for an order counted at admission, giving its units back to the
    /// buyer's admission count in the same transaction.
    pub(super) async fn reject_admitted(
        &self,
        order: &Order,
        reason: Reason,
        now: Millis,
    ) -> PortResult<bool> {
        let items = vec![
            Self::tx_update(
                self.reject_update(&order.id, reason, now)
                    .condition_expression("#status = :queued"),
            )?,
            Self::tx_update(self.give_back_admission(order))?,
        ];
        // One buyer's orders are rejected concurrently, and each of these transactions writes
        // the buyer's one count item: on DynamoDB they can cancel each other
        // (`TransactionConflict`). Conditional on `queued`, so trying again is safe.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.transact(items.clone(), 0).await {
                Ok(()) => return Ok(true),
                Err(TxFailure::Canceled(r)) if r.first().is_some_and(|(c, _)| is_ccf(c)) => {
                    return Ok(false)
                }
                Err(TxFailure::Canceled(r)) => {
                    let error = canceled_error(&r);
                    if attempt >= REJECT_ATTEMPTS || error.is_degraded() {
                        return Err(error);
                    }
                    let jitter = rand::random_range(5..=20 * attempt as u64);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(TxFailure::Other(e)) => return Err(e),
            }
        }
    }

    /// Lowers the buyer's admission count by the order's units.
    pub(super) fn give_back_admission(&self, order: &Order) -> UpdateBuilder {
        self.update(admit_key(&order.sku, &order.owner))
            .update_expression("ADD admitted :minus")
            .expression_attribute_values(":minus", n(-i64::from(order.quantity.get())))
    }

    /// One conditional put of a new order; `Ok(None)` when it met another writer's
    /// transaction on the order item.
    pub(super) async fn put_order(&self, order: &Order) -> PortResult<Option<CreateOrder>> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(encode_order(order)))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .set_return_consumed_capacity(self.consumed_capacity())
            .send()
            .await;
        self.record(&result, 0);
        match result {
            Ok(_) => Ok(Some(CreateOrder::Created)),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(c)) => {
                    let item = c
                        .item
                        .as_ref()
                        .ok_or_else(|| malformed("missing old order"))?;
                    Ok(Some(CreateOrder::Exists(decode_order(item)?)))
                }
                Some(PutItemError::TransactionConflictException(_)) => Ok(None),
                _ => Err(port_error("dynamodb PutItem", e)),
            },
        }
    }

    /// One transaction writing a new order and raising the buyer's admission count; `Ok(None)`
    /// when it met another writer's transaction on one of the two items.
    pub(super) async fn put_limited_order(
        &self,
        order: &Order,
        limit: u32,
    ) -> PortResult<Option<CreateOrder>> {
        let q = order.quantity.get();
        let Some(max) = limit.checked_sub(q) else {
            // More than the limit in one order: never admitted, nothing written.
            return Ok(Some(CreateOrder::LimitReached { admitted: 0 }));
        };
        let mut item = encode_order(order);
        item.insert("admitted".into(), AttributeValue::Bool(true));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| PortError::unavailable("building Put", e))?;
        // Condition expressions cannot add, so `admitted + q <= limit` is written as
        // `admitted <= limit - q`.
        let admit = self
            .update(admit_key(&order.sku, &order.owner))
            .update_expression("ADD admitted :q")
            .condition_expression("attribute_not_exists(admitted) OR admitted <= :max")
            .expression_attribute_values(":q", n(q))
            .expression_attribute_values(":max", n(max))
            .build()
            .map_err(|e| PortError::unavailable("building Update", e))?;
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(admit).build(),
        ];
        let reasons = match self.transact(items, 0).await {
            Ok(()) => return Ok(Some(CreateOrder::Created)),
            Err(TxFailure::Other(e)) => return Err(e),
            Err(TxFailure::Canceled(r)) => r,
        };
        // A replay first, whatever the counter says: the original order is the answer.
        if let Some((code, old)) = reasons.first() {
            if is_ccf(code) {
                let item = old.as_ref().ok_or_else(|| malformed("missing old order"))?;
                return Ok(Some(CreateOrder::Exists(decode_order(item)?)));
            }
        }
        match reasons.get(1) {
            Some((code, old)) if is_ccf(code) => Ok(Some(CreateOrder::LimitReached {
                admitted: old.as_ref().and_then(|i| get_n(i, "admitted")).unwrap_or(0),
            })),
            _ => match canceled_error(&reasons) {
                PortError::Contention => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Writes a new order with `attempt`, through conflicts with other writers' transactions.
    /// A replay's put meets the processor's transaction on the order it names (deciding it);
    /// a limited order's also meets the buyer's other orders on their admission count. Neither
    /// is a reason for a `503`: the stored order, once there, is the answer the put would have
    /// given, and with none stored the write is tried again after a jittered wait, for as long
    /// as a stock return would try ([`RETURN_PATIENCE`]).
    pub(super) async fn create_despite_conflicts<F>(
        &self,
        order: &Order,
        attempt: impl Fn() -> F,
    ) -> PortResult<CreateOrder>
    where
        F: std::future::Future<Output = PortResult<Option<CreateOrder>>>,
    {
        let started = tokio::time::Instant::now();
        let mut conflicts = 0;
        loop {
            // Boxed: the two writes are large futures, and callers nest this one deep.
            if let Some(created) = Box::pin(attempt()).await? {
                return Ok(created);
            }
            if let Some(stored) = self.get_order(&order.id).await? {
                return Ok(CreateOrder::Exists(stored));
            }
            conflicts += 1;
            let wait = jittered(RETURN_BACKOFF, RETURN_BACKOFF_CAP, conflicts);
            if started.elapsed() + wait > RETURN_PATIENCE {
                return Err(PortError::Contention);
            }
            tokio::time::sleep(wait).await;
        }
    }

    pub(super) async fn create_order(&self, order: &Order) -> PortResult<CreateOrder> {
        self.create_despite_conflicts(order, || self.put_order(order))
            .await
    }

    pub(super) async fn create_limited_order(
        &self,
        order: &Order,
        limit: u32,
    ) -> PortResult<CreateOrder> {
        self.create_despite_conflicts(order, || self.put_limited_order(order, limit))
            .await
    }

    pub(super) async fn get_order(&self, id: &OrderId) -> PortResult<Option<Order>> {
        let resp = self
            .get(order_key(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("dynamodb GetItem"))?;
        resp.item.as_ref().map(decode_order).transpose()
    }

    pub(super) async fn get_orders(&self, ids: &[OrderId]) -> PortResult<Vec<Order>> {
        self.batch_get(ids.iter().map(order_key).collect())
            .await?
            .iter()
            .map(decode_order)
            .collect()
    }

    pub(super) async fn reject(
        &self,
        id: &OrderId,
        reason: Reason,
        now: Millis,
    ) -> PortResult<bool> {
        // The usual order holds no admission count: one plain conditional update. One that
        // does fails the extra condition, and the item returned with the failure says what to
        // give back, in a transaction with the status change.
        let result = self
            .update_item(
                self.reject_update(id, reason, now)
                    .condition_expression("#status = :queued AND attribute_not_exists(admitted)"),
            )?
            .send()
            .await;
        self.record(&result, 0);
        let old = match result {
            Ok(_) => return Ok(true),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => c.item.clone(),
                _ => return Err(port_error("dynamodb UpdateItem", e)),
            },
        };
        match old {
            Some(item) if get_s(&item, "status") == Some("queued") && is_admitted(&item) => {
                self.reject_admitted(&decode_order(&item)?, reason, now)
                    .await
            }
            _ => Ok(false),
        }
    }

    pub(super) async fn advance(
        &self,
        order: &Order,
        t: &Transition,
        owner: Option<&UserId>,
        now: Millis,
    ) -> PortResult<Advance> {
        let mut expr = "SET #status = :to, updated_at = :now".to_owned();
        let mut cond = "#status = :from".to_owned();
        let mut u = self
            .update(order_key(&order.id))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":to", s(t.to.as_str()))
            .expression_attribute_values(":from", s(t.from.as_str()))
            .expression_attribute_values(":now", n(now));
        if let Some(r) = t.reason {
            expr.push_str(", reason = :reason");
            u = u.expression_attribute_values(":reason", s(r.as_str()));
        }
        if t.to != OrderStatus::Pending {
            expr.push_str(" REMOVE expires_at");
        }
        if let Some(owner) = owner {
            // Ownership is part of the write's condition, not a check before it.
            cond.push_str(" AND #owner = :owner");
            u = u
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":owner", s(owner.as_str()));
        }
        // Pay only before the payment deadline, the timeout only from it on: of the two racing
        // at the deadline exactly one can win.
        match t.window() {
            Some(Window::Open) => cond.push_str(" AND expires_at > :now"),
            Some(Window::Closed) => cond.push_str(" AND expires_at <= :now"),
            None => {}
        }
        let u = u.update_expression(expr);
        let mut updated = order.clone();
        updated.apply(t, now);

        if !t.restores_stock {
            let result = self
                .update_item(u.condition_expression(cond))?
                .return_values(ReturnValue::AllNew)
                .send()
                .await;
            self.record(&result, 0);
            return match result {
                Ok(out) => Ok(Advance::Done(match out.attributes {
                    Some(item) => decode_order(&item)?,
                    None => updated,
                })),
                Err(e) => match e.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(_)) => Ok(Advance::Stale),
                    _ => Err(port_error("dynamodb UpdateItem", e)),
                },
            };
        }

        // Whether the order holds an admission count to give back is on the item, not on the
        // order as read: guess from `counted` (both follow the product's limit), put the guess
        // in the condition, and if the item says otherwise write again with the other guess.
        let mut admitted = order.counted;
        let mut guesses = 0;
        let mut conflicts = 0;
        let started = tokio::time::Instant::now();
        loop {
            let flag = if admitted {
                "attribute_exists(admitted)"
            } else {
                "attribute_not_exists(admitted)"
            };
            let status = u.clone().condition_expression(format!("{cond} AND {flag}"));
            let reasons = match self.restore(order, status, admitted).await? {
                None => {
                    self.clear_sold_out(&order.sku).await?;
                    return Ok(Advance::Done(updated));
                }
                Some(r) => r,
            };
            match reasons.first() {
                Some((code, Some(item))) if is_ccf(code) => {
                    let stale = get_s(item, "status") != Some(t.from.as_str())
                        || owner.is_some_and(|o| get_s(item, "owner") != Some(o.as_str()))
                        || is_admitted(item) == admitted;
                    guesses += 1;
                    if stale || guesses == 2 {
                        if get_s(item, "status") == Some(OrderStatus::Canceled.as_str()) {
                            // Canceled by someone else, who may have died between the return
                            // and the flag: make the second write again (see `restore`).
                            self.clear_sold_out(&order.sku).await?;
                        }
                        return Ok(Advance::Stale);
                    }
                    admitted = !admitted;
                }
                Some((code, None)) if is_ccf(code) => return Ok(Advance::Stale),
                _ => {
                    // A conflict with another transaction on one of the items (the shard, the
                    // buyer's counters): conditional on the status read, so safe to try again,
                    // after a jittered wait so the colliding writers spread out.
                    let error = canceled_error(&reasons);
                    conflicts += 1;
                    let wait = jittered(RETURN_BACKOFF, RETURN_BACKOFF_CAP, conflicts);
                    if !matches!(error, PortError::Contention)
                        || started.elapsed() + wait > RETURN_PATIENCE
                    {
                        return Err(error);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
