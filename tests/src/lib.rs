//! Test support shared by the integration tests: the `events/` fixtures turned into requests,
//! the local stack's clients, a queue drainer that plays the SQS event source mapping, the
//! in-memory fakes, and the invariant checker every scenario ends with.

pub mod audit;
pub mod drain;
pub mod fake;
pub mod fixtures;
pub mod stack;
