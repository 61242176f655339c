//! The group commit: one transaction that takes a group's stock from its shards, moves its
//! accepted orders to `pending` and raises their buyers' counters, and the decoding of its
//! refusal into what the planner needs to try again.

use super::cancel::{canceled_error, is_ccf, is_conflict};
use super::codec::{decoded, encode_takes, get_n, n, s};
use super::keys::{buyer_key, buyer_of, order_key, shard_key};
use super::writes::TxFailure;
use super::DynamoStore;
use aws_sdk_dynamodb::types::AttributeValue;
use flash_domain::ports::{Commit, CommitRefused, PortResult, ShardStock};
use flash_domain::{Sku, UserId};
use std::collections::HashMap;

impl DynamoStore {
    pub(super) async fn read_bought(
        &self,
        sku: &Sku,
        users: &[UserId],
    ) -> PortResult<HashMap<UserId, u32>> {
        let keys = users.iter().map(|u| buyer_key(sku, u)).collect();
        let mut out = HashMap::new();
        for item in self.batch_get(keys).await? {
            let user = decoded(&item, "sk", "buyer key", |sk| {
                UserId::parse(buyer_of(sk)?).ok()
            })?;
            out.insert(user, get_n(&item, "units").unwrap_or(0));
        }
        Ok(out)
    }

    pub(super) async fn commit(
        &self,
        sku: &Sku,
        c: &Commit,
    ) -> PortResult<Result<(), CommitRefused>> {
        let mut items = Vec::new();
        for t in &c.takes {
            items.push(Self::tx_update(
                self.update(shard_key(sku, t.shard))
                    .update_expression("SET available = available - :u")
                    .condition_expression("available >= :u")
                    .expression_attribute_values(":u", n(t.units)),
            )?);
        }
        for a in &c.accepted {
            items.push(Self::tx_update(
                self.update(order_key(&a.order_id))
                    .update_expression(
                        "SET #status = :pending, updated_at = :now, expires_at = :exp, takes = :takes, counted = :counted",
                    )
                    .condition_expression("#status = :queued")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":pending", s("pending"))
                    .expression_attribute_values(":queued", s("queued"))
                    .expression_attribute_values(":now", n(c.now))
                    .expression_attribute_values(":exp", n(a.expires_at))
                    .expression_attribute_values(":takes", s(encode_takes(&a.takes)))
                    .expression_attribute_values(":counted", AttributeValue::Bool(c.limit.is_some())),
            )?);
        }
        if let Some(limit) = c.limit {
            for (user, units) in &c.counters {
                items.push(Self::tx_update(
                    self.update(buyer_key(sku, user))
                        .update_expression("ADD units :u")
                        .condition_expression("attribute_not_exists(units) OR units <= :max")
                        .expression_attribute_values(":u", n(units))
                        .expression_attribute_values(":max", n(limit.saturating_sub(*units))),
                )?);
            }
        }
        let reasons = match self.transact(items, c.takes.len()).await {
            Ok(()) => return Ok(Ok(())),
            Err(TxFailure::Other(e)) => return Err(e),
            Err(TxFailure::Canceled(r)) => r,
        };
        let mut refused = CommitRefused::default();
        let (shards, rest) = reasons.split_at(c.takes.len().min(reasons.len()));
        let (orders, counters) = rest.split_at(c.accepted.len().min(rest.len()));
        for (code, _) in &reasons {
            if is_conflict(code) {
                refused.conflict = true;
            }
        }
        for (t, (code, item)) in c.takes.iter().zip(shards) {
            if is_ccf(code) {
                let available = item
                    .as_ref()
                    .and_then(|i| get_n(i, "available"))
                    .unwrap_or(0);
                refused.shards.push(ShardStock {
                    shard: t.shard,
                    available,
                });
            }
        }
        for (a, (code, _)) in c.accepted.iter().zip(orders) {
            if is_ccf(code) {
                refused.decided.push(a.order_id.clone());
            }
        }
        for ((user, _), (code, item)) in c.counters.iter().zip(counters) {
            if is_ccf(code) {
                let units = item.as_ref().and_then(|i| get_n(i, "units")).unwrap_or(0);
                refused.counters.push((user.clone(), units));
            }
        }
        let explained = refused.conflict
            || !refused.shards.is_empty()
            || !refused.decided.is_empty()
            || !refused.counters.is_empty();
        if !explained {
            // Throttling or an error inside the transaction: not a business answer.
            return Err(canceled_error(&reasons));
        }
        Ok(Err(refused))
    }
}
