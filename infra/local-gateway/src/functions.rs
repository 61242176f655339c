//! The stack's functions, in process: the same handler structs each Lambda's `main.rs` builds,
//! with clients built once and shared. A route or event source names its function by binary
//! (crate) name, as template.yaml's `BuildProperties.Binary` does.

use advance_order::AdvanceOrder;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use expire_orders::ExpireOrders;
use flash_aws::{DynamoStore, SqsQueue, SqsTimeouts};
use flash_domain::clock::Millis;
use get_order::GetOrder;
use lambda_http::{Body, Request, Response};
use place_order::PlaceOrder;
use process_orders::{BatchReport, ProcessOrders};
use products::Products;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A function behind an HTTP API route.
pub enum HttpFunction {
    PlaceOrder(Box<PlaceOrder<DynamoStore, SqsQueue>>),
    GetOrder(GetOrder<DynamoStore>),
    AdvanceOrder(AdvanceOrder<DynamoStore>),
    Products(Products<DynamoStore>),
}

impl HttpFunction {
    /// The function for a binary name, if it is an HTTP one. `redrive_delay` is place-order's
    /// `REDRIVE_DELAY_SECONDS`, parsed once by the caller as its `main.rs` does.
    pub fn build(
        binary: &str,
        store: &DynamoStore,
        queue: &SqsQueue,
        redrive_delay: Duration,
    ) -> Option<Self> {
        let store = store.clone();
        Some(match binary {
            "place-order" => Self::PlaceOrder(Box::new(
                PlaceOrder::new(store, queue.clone()).with_redrive_delay(redrive_delay),
            )),
            "get-order" => Self::GetOrder(GetOrder { store }),
            "advance-order" => Self::AdvanceOrder(AdvanceOrder { store }),
            "products" => Self::Products(Products { store }),
            _ => return None,
        })
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
    /// With the payment-timeouts queue it schedules on, as its `main.rs` runs it.
    ProcessOrders(ProcessOrders<DynamoStore>, SqsTimeouts, SqsQueue),
    ExpireOrders(ExpireOrders<DynamoStore, SqsTimeouts>, SqsQueue),
}

impl SqsFunction {
    pub fn build(
        binary: &str,
        store: &DynamoStore,
        timeouts: &SqsTimeouts,
        source: SqsQueue,
    ) -> Option<Self> {
        match binary {
            "process-orders" => Some(Self::ProcessOrders(
                ProcessOrders {
                    store: store.clone(),
                },
                timeouts.clone(),
                source,
            )),
            "expire-orders" => Some(Self::ExpireOrders(
                ExpireOrders {
                    store: store.clone(),
                    timeouts: timeouts.clone(),
                },
                source,
            )),
            _ => None,
        }
    }

    /// The function's answer, and what the batch did for the log. `deadline` (epoch ms) is
    /// when the invocation times out, as Lambda's context gives it to the deployed function.
    pub async fn invoke(
        &self,
        event: SqsEvent,
        deadline: Millis,
    ) -> (SqsBatchResponse, Option<BatchReport>) {
        match self {
            Self::ProcessOrders(f, timeouts, source) => {
                let (response, report) = f
                    .process_and_hand_back(timeouts, source, event, deadline)
                    .await;
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
