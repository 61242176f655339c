//! Test support shared by the integration tests: the `events/` fixtures turned into requests,
//! the local stack's clients, a queue drainer that plays the SQS event source mapping, the
//! in-memory fakes, and the invariant checker every scenario ends with; for the fault suite,
//! failpoints around the ports, an in-memory SQS with its DLQ, an SDK fault injector and the
//! ledger checks.

pub mod audit;
pub mod drain;
pub mod failpoint;
pub mod fake;
pub mod fake_expiry;
pub mod fixtures;
pub mod invariants;
pub mod sdk_faults;
pub mod sqs_sim;
pub mod stack;
