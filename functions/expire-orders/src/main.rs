use aws_lambda_events::event::sqs::SqsEvent;
use expire_orders::{retry_deadline, ExpireOrders};
use flash_aws::config::payment_timeouts_queue_url;
use flash_aws::{Config, DynamoStore, SqsQueue, SqsTimeouts};
use flash_domain::clock::now_ms;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use std::time::{Duration, UNIX_EPOCH};

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let config = Config::from_env(false)?;
    let sdk = flash_aws::config::sdk_config().await;
    let timeouts_url = payment_timeouts_queue_url()?;
    let handler = &ExpireOrders {
        store: DynamoStore::from_config(&sdk, &config.table_name),
        timeouts: SqsTimeouts::from_config(&sdk, &timeouts_url),
    };
    // The queue this function consumes: failed records are handed back to it.
    let queue = &SqsQueue::from_config(&sdk, timeouts_url);
    run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        let deadline = flash_aws::sqs::invocation_deadline(event.context.deadline, now_ms());
        let deadline = retry_deadline(UNIX_EPOCH + Duration::from_millis(deadline as u64));
        Ok::<_, Error>(handler.handle(queue, event.payload, deadline).await)
    }))
    .await
}
