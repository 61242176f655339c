use expire_orders::{retry_deadline, ExpireOrders};
use flash_aws::config;
use flash_aws::sqs::serve;
use lambda_runtime::Error;
use std::time::{Duration, UNIX_EPOCH};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (aws, env) = flash_aws::start().await;
    let handler = &ExpireOrders::from_env(&aws, &env)?;
    // The queue this function consumes: failed records are handed back to it.
    let queue = &aws.queue(config::payment_timeouts_queue_url(&env)?);
    serve(|batch, deadline| {
        let deadline = retry_deadline(UNIX_EPOCH + Duration::from_millis(deadline as u64));
        handler.handle(queue, batch, deadline)
    })
    .await
}
