//! The plumbing every file of the store shares: one read of an item, one builder of an update
//! for both the transactional and the single-item path, the transaction itself, and the write
//! accounting.

use super::cancel::Reasons;
use super::keys::Item;
use super::write_stats::Consumed;
use super::DynamoStore;
use crate::errors::port_error;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::get_item::builders::GetItemFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use aws_sdk_dynamodb::types::{
    ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use flash_domain::ports::{PortError, PortResult};

pub(super) fn sdk<E>(
    what: &'static str,
) -> impl FnOnce(SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>) -> PortError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
{
    move |e| port_error(what, e)
}

/// A failed transaction: either some conditions failed (with the items as they are now) or it
/// was something else.
pub(super) enum TxFailure {
    Canceled(Reasons),
    Other(PortError),
}

impl DynamoStore {
    /// An update of the item at `key`, for either path: inside a transaction
    /// ([`Self::tx_update`]) or on its own ([`Self::update_item`]). A failed condition returns
    /// the item as it is now.
    pub(super) fn update(&self, key: Item) -> UpdateBuilder {
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(key))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    /// A read of the item at `key` (eventually consistent unless the caller asks otherwise).
    pub fn get(&self, key: Item) -> GetItemFluentBuilder {
        self.client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
    }

    /// One transaction; `stock_items` of its items are stock shards.
    pub(super) async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        stock_items: usize,
    ) -> Result<(), TxFailure> {
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .set_return_consumed_capacity(self.consumed_capacity())
            .send()
            .await;
        self.record(&result, stock_items);
        match result {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    Err(TxFailure::Canceled(
                        c.cancellation_reasons()
                            .iter()
                            .map(|r| (r.code().map(str::to_owned), r.item().cloned()))
                            .collect(),
                    ))
                }
                _ => Err(TxFailure::Other(port_error(
                    "dynamodb TransactWriteItems",
                    e,
                ))),
            },
        }
    }

    /// An update built with [`Self::update`], as one item of a transaction.
    pub(super) fn tx_update(u: UpdateBuilder) -> PortResult<TransactWriteItem> {
        u.build()
            .map(|u| TransactWriteItem::builder().update(u).build())
            .map_err(|e| PortError::unavailable("building Update", e))
    }

    /// An update built with [`Self::update`], as a request of its own: `UpdateItem` with the
    /// same key, expressions and values, counted in the write stats when they are on.
    pub(super) fn update_item(&self, u: UpdateBuilder) -> PortResult<UpdateItemFluentBuilder> {
        let req = u
            .build()
            .map_err(|e| PortError::unavailable("building Update", e))?;
        Ok(self
            .client
            .update_item()
            .table_name(req.table_name)
            .set_key(Some(req.key))
            .update_expression(req.update_expression)
            .set_condition_expression(req.condition_expression)
            .set_expression_attribute_names(req.expression_attribute_names)
            .set_expression_attribute_values(req.expression_attribute_values)
            .set_return_values_on_condition_check_failure(
                req.return_values_on_condition_check_failure,
            )
            .set_return_consumed_capacity(self.consumed_capacity()))
    }

    /// Sends an update built with [`Self::update`] as an `UpdateItem` and counts it: `true`
    /// when it was written, `false` when its condition refused it.
    pub(super) async fn update_if(&self, u: UpdateBuilder) -> PortResult<bool> {
        let result = self.update_item(u)?.send().await;
        self.record(&result, 0);
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(port_error("dynamodb UpdateItem", e)),
        }
    }

    /// What to ask DynamoDB about consumed capacity: the total when something reads it (the
    /// write stats are on), nothing otherwise, so a deployed function's requests carry no
    /// `ReturnConsumedCapacity`.
    pub(super) fn consumed_capacity(&self) -> Option<ReturnConsumedCapacity> {
        self.stats.as_ref().map(|_| ReturnConsumedCapacity::Total)
    }

    /// Counts one write request when the write stats are on; `stock_items` of its items are
    /// stock shards.
    pub(super) fn record<T: Consumed, E>(&self, result: &Result<T, E>, stock_items: usize) {
        if let Some(stats) = &self.stats {
            stats.record(result, stock_items);
        }
    }
}
