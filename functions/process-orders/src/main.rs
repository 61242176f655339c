use aws_lambda_events::event::sqs::SqsEvent;
use flash_aws::{Config, DynamoStore};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use process_orders::ProcessOrders;

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let config = Config::from_env(false)?;
    let sdk = flash_aws::config::sdk_config().await;
    let handler = &ProcessOrders {
        store: DynamoStore::from_config(&sdk, &config.table_name),
    };
    run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(handler.handle(event.payload).await)
    }))
    .await
}
