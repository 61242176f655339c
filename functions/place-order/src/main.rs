use flash_aws::{Config, DynamoStore, SqsQueue};
use lambda_http::{run, service_fn, Error};
use place_order::PlaceOrder;

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let config = Config::from_env(true)?;
    let rate_limit = flash_aws::config::rate_limit_from_env()?;
    let breakers = flash_aws::config::breaker_from_env()?;
    let redrive_delay = flash_aws::config::redrive_delay_from_env()?;
    let sdk = flash_aws::config::sdk_config().await;
    let handler = &PlaceOrder::new(
        DynamoStore::from_config(&sdk, &config.table_name).with_rate_limit(rate_limit),
        SqsQueue::from_config(&sdk, config.queue_url()?),
    )
    .with_breakers(breakers)
    .with_redrive_delay(redrive_delay);
    run(service_fn(|req| async move {
        Ok::<_, Error>(handler.handle(req).await)
    }))
    .await
}
