//! AWS as it behaves under load and failure, for local runs and tests only: nothing here ships
//! in a Lambda. One wrapping SDK HTTP client ([`judge`]) lets a judge forward, answer or lose
//! each request; the DynamoDB capacity model ([`capacity`]) and the tests' fault injector are
//! judges, and both answer with DynamoDB's own error bodies ([`answers`]); the request
//! counter ([`counter`]) counts what a client would be billed for before another judge rules.

pub mod answers;
pub mod capacity;
pub mod counter;
pub mod judge;

pub use capacity::{CapacityModel, CapacityStats};
pub use counter::RequestCounter;
pub use judge::{judged_client, judged_sdk_config, Judge, Verdict};

/// `sdk` with its HTTP client wrapped in `model`, so local runs throttle and conflict like
/// DynamoDB under load. For benchmarks and the local stack only; same timeouts and endpoints.
pub fn sdk_config_with_capacity(
    sdk: aws_config::SdkConfig,
    model: &CapacityModel,
) -> aws_config::SdkConfig {
    judged_sdk_config(sdk, model.clone())
}
