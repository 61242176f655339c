use flash_aws::{Aws, Env};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use reconcile::Reconcile;

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let aws = Aws::new(flash_aws::config::sdk_config().await);
    let handler = &Reconcile::from_env(&aws, &Env::process())?;
    // The EventBridge schedule's event carries nothing the reconciler needs.
    run(service_fn(|_: LambdaEvent<serde_json::Value>| async move {
        handler.handle().await.map_err(Error::from)
    }))
    .await
}
