//! The AWS side of the functions: configuration read once at start-up, the DynamoDB and SQS
//! adapters behind the domain's ports, the HTTP edge (claims, JSON bodies, errors), logging and
//! metrics.

pub mod config;
pub mod dependency_breaker;
pub mod dynamo;
pub mod errors;
pub mod http;
pub mod payment_timeouts_queue;
pub mod sqs;
pub mod telemetry;

pub use config::{start, Aws, ConfigError, Env};
pub use dynamo::DynamoStore;
pub use payment_timeouts_queue::SqsTimeouts;
pub use sqs::SqsQueue;
