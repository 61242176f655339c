//! Stock returns: the one transaction that gives an order's stock back to its shards, with
//! the order's status change and its buyer's counters, and why the sold-out flag never hides
//! units that came back.

use super::cancel::Reasons;
use super::codec::n;
use super::keys::{buyer_key, shard_key};
use super::writes::TxFailure;
use super::DynamoStore;
use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use flash_domain::ports::PortResult;
use flash_domain::{Order, Sku};
use std::time::Duration;

/// How long a stock return keeps trying against conflicts with other transactions on its
/// items (returns to the same shard, the processor's commits there) before giving up: each
/// lost try means another writer got through, so the queue on the shard moves, but a storm
/// of returns (unpaid orders expiring together) can queue dozens on one shard. Well inside the
/// functions' 10 s timeout, and better than a `503` for the buyer.
pub(super) const RETURN_PATIENCE: Duration = Duration::from_secs(4);
/// The first wait after a lost try, doubling after each ("full jitter" below it), and its cap.
pub(super) const RETURN_BACKOFF: Duration = Duration::from_millis(10);
pub(super) const RETURN_BACKOFF_CAP: Duration = Duration::from_millis(400);

impl DynamoStore {
    /// Units put back on a shard: a return, or new stock ([`Self::add_stock`]).
    pub(super) fn add_to_shard(&self, sku: &Sku, shard: u32, units: u64) -> UpdateBuilder {
        self.update(shard_key(sku, shard))
            .update_expression("ADD available :u")
            .expression_attribute_values(":u", n(units))
    }

    /// One transaction: the order's status change `status`, its stock back to the shards it
    /// came from, and the buyer's purchase counter and (when `admitted`) admission count
    /// lowered. `Some(reasons)` when it was canceled.
    ///
    /// The product's `META` item is not in it: if it were, every return of a product would
    /// write that one item, and concurrent returns would cancel each other
    /// (`TransactionConflict`) even when they return stock to different shards. Instead the
    /// caller raises `restocks` and clears `sold_out` with a single `UpdateItem`
    /// ([`Store::clear_sold_out`]) once this has committed. Single-item writes to one item do
    /// not conflict with each other, so returns only meet on a shard or a buyer's counters.
    ///
    /// Why the sold-out flag still never hides units that came back. `mark_sold_out` reads
    /// the product (`restocks = r`), then reads every shard consistently and sees them empty,
    /// then sets the flag on condition `restocks = r`. Take a return: its transaction T, then
    /// its flag write U (`restocks + 1`, flag removed).
    /// - The flag is set after U: the condition held, and `restocks` only grows, so the
    ///   product read already included U, hence came after T committed; the shard read came
    ///   after that and saw T's units (or orders that took them since). Not hidden.
    /// - The flag is set before U: U removes it afterwards.
    /// - The process dies between T and U (or U fails): the flag may stay set over units that
    ///   are back. Whoever finds the order canceled makes U again: the buyer's repeated
    ///   cancel or refund, the payment timeout's redelivery or its own message arriving for
    ///   an order the buyer canceled, a lost race in `advance`. Until one of them (or the next
    ///   return or new stock of the product) comes, `place-order` refuses it as sold out: a
    ///   missed sale, never an oversell.
    pub(super) async fn restore(
        &self,
        order: &Order,
        status: UpdateBuilder,
        admitted: bool,
    ) -> PortResult<Option<Reasons>> {
        // Stock comes back in the same transaction as the status change, so exactly once.
        let mut items = vec![Self::tx_update(status)?];
        for take in &order.takes {
            items.push(Self::tx_update(self.add_to_shard(
                &order.sku,
                take.shard,
                u64::from(take.units),
            ))?);
        }
        if order.counted {
            items.push(Self::tx_update(
                self.update(buyer_key(&order.sku, &order.owner))
                    .update_expression("ADD units :minus")
                    .expression_attribute_values(":minus", n(-i64::from(order.quantity.get()))),
            )?);
        }
        if admitted {
            items.push(Self::tx_update(self.give_back_admission(order))?);
        }
        match self.transact(items, order.takes.len()).await {
            Ok(()) => Ok(None),
            Err(TxFailure::Canceled(r)) => Ok(Some(r)),
            Err(TxFailure::Other(e)) => Err(e),
        }
    }
}
