use aws_lambda_events::event::sqs::SqsEvent;
use expire_orders::ExpireOrders;
use flash_aws::config::payment_timeouts_queue_url;
use flash_aws::{Config, DynamoStore, SqsTimeouts};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let config = Config::from_env(false)?;
    let sdk = flash_aws::config::sdk_config().await;
    let handler = &ExpireOrders {
        store: DynamoStore::from_config(&sdk, &config.table_name),
        timeouts: SqsTimeouts::from_config(&sdk, payment_timeouts_queue_url()?),
    };
    run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(handler.handle(event.payload).await)
    }))
    .await
}
