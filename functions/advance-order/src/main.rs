use advance_order::AdvanceOrder;
use flash_aws::{Aws, Env};
use lambda_http::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let aws = Aws::new(flash_aws::config::sdk_config().await);
    let handler = &AdvanceOrder::from_env(&aws, &Env::process())?;
    run(service_fn(|req| async move {
        Ok::<_, Error>(handler.handle(req).await)
    }))
    .await
}
