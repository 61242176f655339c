//! The per-caller rate limit in the table ([`DynamoRateLimit`], the [`RateLimit`] port): a
//! token bucket ([`TokenBucket`]) kept in one item per caller, each token taken by one
//! conditional write however many instances take at once.

use super::codec::{get_n, n};
use super::keys::{rate_key_in, ADMIN_RATE_SK, RATE_SK};
use super::writes::sdk;
use super::DynamoStore;
use crate::errors::port_error;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use flash_domain::clock::Millis;
use flash_domain::ports::{PortError, PortResult, RateLimit};
use flash_domain::token_bucket::{micros, Micros, Take, TokenBucket};
use flash_domain::UserId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rate buckets remembered per caller, at most this many: each is only a hint.
const RATE_HINTS: usize = 10_000;
/// Conditional writes to take a token before giving up on a bucket other instances keep
/// changing under us.
const RATE_ATTEMPTS: usize = 4;

/// The last `tat` this process saw for each caller's bucket. `tat` only grows, so a
/// remembered value is a lower bound: it picks the right write first, and when it already
/// says the bucket is empty the request is refused after a read, without a write. Shared by
/// the limits of one table in a process (the buckets are the table's items), each bucket
/// remembered under its own sort key.
pub type RateHints = Arc<Mutex<HashMap<(&'static str, UserId), Micros>>>;

/// `bucket` per caller, kept in `store`'s table.
#[derive(Clone)]
pub struct DynamoRateLimit {
    store: DynamoStore,
    bucket: TokenBucket,
    hints: RateHints,
    /// The sort key of the bucket items: the buyers' ([`RATE_SK`]) or the admins'.
    sk: &'static str,
}

impl DynamoRateLimit {
    /// The buyers' limit: counts its writes with `store`'s write statistics, if it keeps them.
    pub fn new(store: DynamoStore, bucket: TokenBucket, hints: RateHints) -> Self {
        Self {
            store,
            bucket,
            hints,
            sk: RATE_SK,
        }
    }

    /// The admins' limit instead: each caller's admin bucket is an item of its own
    /// ([`ADMIN_RATE_SK`]), so an admin's buyer-route requests (a `ship`) never spend admin
    /// tokens, nor the reverse.
    pub fn for_admins(self) -> Self {
        Self {
            sk: ADMIN_RATE_SK,
            ..self
        }
    }

    fn rate_hint(&self, user: &UserId) -> Option<Micros> {
        self.hints
            .lock()
            .ok()
            .and_then(|h| h.get(&(self.sk, user.clone())).copied())
    }

    /// The stored `tat` of `user`'s bucket, read consistently.
    async fn read_rate(&self, user: &UserId) -> PortResult<Option<Micros>> {
        let resp = self
            .store
            .get(rate_key_in(user, self.sk))
            .projection_expression("tat")
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk("dynamodb GetItem"))?;
        Ok(resp.item.as_ref().and_then(|i| get_n(i, "tat")))
    }

    fn remember_rate(&self, user: &UserId, tat: Option<Micros>) {
        let (Some(tat), Ok(mut hints)) = (tat, self.hints.lock()) else {
            return;
        };
        let key = (self.sk, user.clone());
        if hints.len() >= RATE_HINTS && !hints.contains_key(&key) {
            hints.clear();
        }
        let known = hints.entry(key).or_insert(tat);
        *known = (*known).max(tat);
    }
}

impl RateLimit for DynamoRateLimit {
    async fn take_token(&self, caller: &UserId, now: Millis) -> PortResult<Result<(), Duration>> {
        let bucket = self.bucket;
        let now = micros(now);
        let mut known = self.rate_hint(caller);
        // `known` came from the table in this call (not from memory).
        let mut confirmed = false;
        for _ in 0..RATE_ATTEMPTS {
            let update = self
                .store
                .client
                .update_item()
                .table_name(&self.store.table)
                .set_key(Some(rate_key_in(caller, self.sk)))
                .expression_attribute_names("#ttl", "ttl");
            // Both writes are guarded so that however many instances take tokens at once,
            // each token is taken once: the condition is checked against the stored `tat`.
            let update = match bucket.next(known, now) {
                // A remembered value is only a lower bound of the stored one: it proves the
                // bucket empty, but the wait it gives may be short. Read the bucket (a read,
                // not a write) for the true wait.
                Take::Wait(_) if !confirmed => {
                    known = self.read_rate(caller).await?;
                    self.remember_rate(caller, known);
                    confirmed = true;
                    continue;
                }
                Take::Wait(wait) => return Ok(Err(wait)),
                Take::Refill { now, set_to } => update
                    .update_expression("SET tat = :tat, #ttl = :ttl")
                    .condition_expression("attribute_not_exists(tat) OR tat <= :now")
                    .expression_attribute_values(":tat", n(set_to))
                    .expression_attribute_values(":now", n(now))
                    .expression_attribute_values(":ttl", n(expiry(set_to))),
                Take::Take {
                    now,
                    limit,
                    interval,
                } => update
                    .update_expression("SET tat = tat + :i, #ttl = :ttl")
                    .condition_expression("tat > :now AND tat <= :limit")
                    .expression_attribute_values(":i", n(interval))
                    .expression_attribute_values(":now", n(now))
                    .expression_attribute_values(":limit", n(limit))
                    .expression_attribute_values(":ttl", n(expiry(limit + interval))),
            };
            let result = update
                .return_values(ReturnValue::UpdatedNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .set_return_consumed_capacity(self.store.consumed_capacity())
                .send()
                .await;
            self.store.record(&result, 0);
            match result {
                Ok(out) => {
                    let tat = out.attributes.as_ref().and_then(|a| get_n(a, "tat"));
                    self.remember_rate(caller, tat);
                    return Ok(Ok(()));
                }
                Err(e) => match e.as_service_error() {
                    // The bucket is not as we thought: learn it from the item returned.
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                        known = c.item.as_ref().and_then(|i| get_n(i, "tat"));
                        self.remember_rate(caller, known);
                        confirmed = true;
                    }
                    _ => return Err(port_error("dynamodb UpdateItem", e)),
                },
            }
        }
        Err(PortError::Contention)
    }
}

/// The bucket item's TTL (epoch seconds): once `tat` has passed the bucket is full, which is
/// what no item means too, so DynamoDB may delete it from then on.
fn expiry(tat: Micros) -> i64 {
    tat.div_euclid(1_000_000) + 1
}
