use aws_lambda_events::event::sqs::SqsEvent;
use flash_aws::config::payment_timeouts_queue_url;
use flash_aws::{Config, DynamoStore, SqsQueue, SqsTimeouts};
use flash_domain::clock::now_ms;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use process_orders::ProcessOrders;

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let config = Config::from_env(true)?;
    let sdk = flash_aws::config::sdk_config().await;
    let handler = &ProcessOrders {
        store: DynamoStore::from_config(&sdk, &config.table_name),
    };
    let timeouts = &SqsTimeouts::from_config(&sdk, payment_timeouts_queue_url()?);
    // The queue this function consumes: failed records are handed back to it.
    let orders = &SqsQueue::from_config(&sdk, config.queue_url()?);
    run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        // Lambda's deadline for this invocation, in epoch ms.
        let deadline = flash_aws::sqs::invocation_deadline(event.context.deadline, now_ms());
        let (response, _) = handler
            .process_and_hand_back(timeouts, orders, event.payload, deadline)
            .await;
        Ok::<_, Error>(response)
    }))
    .await
}
