//! The AWS side of the functions: configuration read once at start-up, the DynamoDB and SQS
//! adapters behind the domain's ports, the HTTP edge (claims, JSON bodies, errors), logging and
//! metrics.

pub mod audit;
pub mod breaker;
pub mod config;
pub mod dynamo;
pub mod errors;
pub mod http;
pub mod sqs;
pub mod telemetry;
pub mod timeouts;

pub use config::{Aws, ConfigError, Env};
pub use dynamo::DynamoStore;
pub use sqs::SqsQueue;
pub use timeouts::SqsTimeouts;
