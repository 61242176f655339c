//! The stack's functions, in process: each built by the constructor its Lambda's `main.rs`
//! calls, from the environment template.yaml declares for it, with clients built once and
//! shared. A route or event source names its function by binary (crate) name, as
//! template.yaml's `BuildProperties.Binary` does.

use advance_order::AdvanceOrder;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use expire_orders::ExpireOrders;
use flash_aws::{Aws, ConfigError, DynamoStore, Env, SqsQueue, SqsTimeouts};
use flash_domain::clock::Millis;
use get_order::GetOrder;
use lambda_http::{Body, Request, Response};
use place_order::PlaceOrder;
use process_orders::{BatchReport, ProcessOrders};
use products::Products;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A function behind an HTTP API route.
pub enum HttpFunction {
    PlaceOrder(Box<place_order::Deployed>),
    GetOrder(GetOrder<DynamoStore>),
    AdvanceOrder(advance_order::Deployed),
    Products(products::Deployed),
}

impl HttpFunction {
    /// The function for a binary name, if it is an HTTP one, built by the constructor its
    /// `main.rs` calls from `env`, the environment template.yaml gives it.
    pub fn build(binary: &str, aws: &Aws, env: &Env) -> Result<Option<Self>, ConfigError> {
        Ok(Some(match binary {
            "place-order" => Self::PlaceOrder(Box::new(PlaceOrder::from_env(aws, env)?)),
            "get-order" => Self::GetOrder(GetOrder::from_env(aws, env)?),
            "advance-order" => Self::AdvanceOrder(AdvanceOrder::from_env(aws, env)?),
            "products" => Self::Products(Products::from_env(aws, env)?),
            _ => return Ok(None),
        }))
    }

    pub async fn invoke(&self, req: Request) -> Response<Body> {
        match self {
            Self::PlaceOrder(f) => f.handle(req).await,
            Self::GetOrder(f) => f.handle(req).await,
            Self::AdvanceOrder(f) => f.handle(req).await,
            Self::Products(f) => f.handle(req).await,
        }
    }
}

/// A function behind an SQS event source mapping, with the queue it consumes (where it hands
/// failed records back).
pub enum SqsFunction {
    ProcessOrders(ProcessOrders<DynamoStore, SqsTimeouts>, SqsQueue),
    ExpireOrders(ExpireOrders<DynamoStore, SqsTimeouts>, SqsQueue),
}

impl SqsFunction {
    /// The function for a binary name, if it is an SQS one, built by the constructor its
    /// `main.rs` calls from `env`, the environment template.yaml gives it.
    pub fn build(
        binary: &str,
        aws: &Aws,
        env: &Env,
        source: SqsQueue,
    ) -> Result<Option<Self>, ConfigError> {
        Ok(Some(match binary {
            "process-orders" => Self::ProcessOrders(ProcessOrders::from_env(aws, env)?, source),
            "expire-orders" => Self::ExpireOrders(ExpireOrders::from_env(aws, env)?, source),
            _ => return Ok(None),
        }))
    }

    /// The function's answer, and what the batch did for the log. `deadline` (epoch ms) is
    /// when the invocation times out, as Lambda's context gives it to the deployed function.
    pub async fn invoke(
        &self,
        event: SqsEvent,
        deadline: Millis,
    ) -> (SqsBatchResponse, Option<BatchReport>) {
        match self {
            Self::ProcessOrders(f, source) => {
                let (response, report) = f.handle(source, event, deadline).await;
                (response, Some(report))
            }
            // It logs what it did itself; the batch line counts messages and failures.
            Self::ExpireOrders(f, source) => (
                f.handle(
                    source,
                    event,
                    expire_orders::retry_deadline(epoch(deadline)),
                )
                .await,
                None,
            ),
        }
    }
}

/// `ms` since the epoch as a `SystemTime` (Lambda's context gives the deadline in epoch ms).
fn epoch(ms: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
