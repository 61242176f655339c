use aws_lambda_events::event::sqs::SqsEvent;
use expire_orders::{retry_deadline, ExpireOrders};
use flash_aws::{config, Aws, Env};
use flash_domain::clock::now_ms;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use std::time::{Duration, UNIX_EPOCH};

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let aws = Aws::new(config::sdk_config().await);
    let env = Env::process();
    let handler = &ExpireOrders::from_env(&aws, &env)?;
    // The queue this function consumes: failed records are handed back to it.
    let queue = &aws.queue(config::payment_timeouts_queue_url(&env)?);
    run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        let deadline = flash_aws::sqs::invocation_deadline(event.context.deadline, now_ms());
        let deadline = retry_deadline(UNIX_EPOCH + Duration::from_millis(deadline as u64));
        Ok::<_, Error>(handler.handle(queue, event.payload, deadline).await)
    }))
    .await
}
