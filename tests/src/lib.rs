//! Test support shared by the integration tests: the `events/` fixtures turned into requests,
//! the local stack's clients, the built local gateway started for a test, a queue drainer that plays the SQS event source mapping, the
//! in-memory fakes, and the invariant checker every scenario ends with; for the fault suite,
//! failpoints around the ports, an in-memory SQS with its DLQ, an SDK fault injector and the
//! ledger checks.

pub mod drain;
pub mod failpoint;
pub mod fake;
pub mod fake_expiry;
pub mod fault_suite;
pub mod fault_world;
pub mod fixtures;
pub mod gateway;
pub mod given;
pub mod invariant_assertions;
pub mod invariants;
pub mod response;
pub mod sdk_faults;
pub mod sqs_sim;
pub mod stack;
pub mod store_contract;
pub mod watched;
