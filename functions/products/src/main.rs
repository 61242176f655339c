use flash_aws::{Config, DynamoStore};
use lambda_http::{run, service_fn, Error};
use products::Products;

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let config = Config::from_env(false)?;
    let rate_limit = flash_aws::config::rate_limit_from_env()?;
    let sdk = flash_aws::config::sdk_config().await;
    let handler = &Products {
        store: DynamoStore::from_config(&sdk, &config.table_name).with_rate_limit(rate_limit),
    };
    run(service_fn(|req| async move {
        Ok::<_, Error>(handler.handle(req).await)
    }))
    .await
}
