use aws_lambda_events::event::sqs::SqsEvent;
use expire_orders::{retry_deadline, ExpireOrders};
use flash_aws::{config, Aws, Env};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    flash_aws::telemetry::init();
    let aws = Aws::new(config::sdk_config().await);
    let env = Env::process();
    let handler = &ExpireOrders::from_env(&aws, &env)?;
    // The queue this function consumes: failed records are handed back to it.
    let queue = &aws.queue(config::payment_timeouts_queue_url(&env)?);
    run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        let deadline = retry_deadline(event.context.deadline());
        Ok::<_, Error>(handler.handle(queue, event.payload, deadline).await)
    }))
    .await
}
