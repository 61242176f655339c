//! Write traffic as the store sent it, for the local stack and the bench: how many write
//! requests, how many write units DynamoDB says they consumed, how many touched stock shards.
//! Off in deployed functions, which then ask DynamoDB for no consumed capacity
//! ([`super::DynamoStore::with_write_stats`]).

use aws_sdk_dynamodb::operation::put_item::PutItemOutput;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemOutput;
use aws_sdk_dynamodb::types::ConsumedCapacity;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Write traffic as this process sent it: what a hot product costs, counted where it happens.
#[derive(Debug, Default)]
pub struct WriteStats {
    requests: AtomicU64,
    /// Write capacity units DynamoDB reported consuming, in thousandths.
    milli_units: AtomicU64,
    /// Write attempts on stock shard items, the hot ones; failed attempts count too, since on
    /// DynamoDB a failed conditional write still spends the item's write budget.
    stock_item_writes: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WriteCounts {
    pub write_requests: u64,
    pub write_units: f64,
    pub stock_item_writes: u64,
}

impl WriteStats {
    pub fn snapshot(&self) -> WriteCounts {
        WriteCounts {
            write_requests: self.requests.load(Relaxed),
            write_units: self.milli_units.load(Relaxed) as f64 / 1000.0,
            stock_item_writes: self.stock_item_writes.load(Relaxed),
        }
    }

    /// Counts one write request and the capacity DynamoDB says it consumed (none is known when
    /// it failed); `stock_items` of its items are stock shards.
    pub(super) fn record<T: Consumed, E>(&self, result: &Result<T, E>, stock_items: usize) {
        self.requests.fetch_add(1, Relaxed);
        self.stock_item_writes
            .fetch_add(stock_items as u64, Relaxed);
        let consumed = result.as_ref().map(Consumed::consumed).unwrap_or_default();
        let units: f64 = consumed.iter().filter_map(|c| c.capacity_units).sum();
        self.milli_units
            .fetch_add((units * 1000.0).round() as u64, Relaxed);
    }
}

/// The capacity a write's output reports, asked for with `ReturnConsumedCapacity::Total`.
pub(super) trait Consumed {
    fn consumed(&self) -> &[ConsumedCapacity];
}

impl Consumed for PutItemOutput {
    fn consumed(&self) -> &[ConsumedCapacity] {
        self.consumed_capacity.as_slice()
    }
}

impl Consumed for UpdateItemOutput {
    fn consumed(&self) -> &[ConsumedCapacity] {
        self.consumed_capacity.as_slice()
    }
}

impl Consumed for TransactWriteItemsOutput {
    fn consumed(&self) -> &[ConsumedCapacity] {
        self.consumed_capacity.as_deref().unwrap_or_default()
    }
}
