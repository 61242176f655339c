//! The AWS service limits the design is shaped by, each named once: the planner, the
//! adapters, the local gateway and the fakes all read them from here.

/// DynamoDB: items in one `TransactWriteItems`; the table refuses a larger transaction.
pub const TRANSACT_WRITE_MAX_ITEMS: usize = 100;

/// DynamoDB: keys in one `BatchGetItem`.
pub const BATCH_GET_MAX_KEYS: usize = 100;

/// DynamoDB: write units a second that one partition serves, and so at most one item (an item
/// never spans partitions). The capacity model of the local stack and the bench scales it.
pub const PARTITION_WRITE_UNITS_PER_S: f64 = 1_000.0;

/// SQS: the longest `DelaySeconds` (15 minutes); a message cannot be held back longer.
pub const SQS_MAX_DELAY_SECONDS: u32 = 900;

/// SQS: entries in one `SendMessageBatch` or `ChangeMessageVisibilityBatch`, and messages one
/// `ReceiveMessage` returns.
pub const SQS_MAX_BATCH_ENTRIES: usize = 10;

/// Lambda: the largest payload of a synchronous invocation (6 MB), request or response.
pub const LAMBDA_MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// CloudWatch embedded metric format: values in one metric's array.
pub const EMF_MAX_VALUES: usize = 100;
