use aws_lambda_events::event::sqs::SqsEvent;
use flash_aws::config;
use flash_domain::clock::now_ms;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use process_orders::ProcessOrders;

// Not `flash_aws::sqs::serve`: one more future around the handler's passes the compiler's
// query depth limit when laying it out.
#[tokio::main]
async fn main() -> Result<(), Error> {
    let (aws, env) = flash_aws::start().await;
    let handler = &ProcessOrders::from_env(&aws, &env)?;
    // The queue this function consumes: failed records are handed back to it.
    let orders = &aws.queue(config::orders_queue_url(&env)?);
    run(service_fn(|event: LambdaEvent<SqsEvent>| async move {
        // Lambda's deadline for this invocation, in epoch ms.
        let deadline = flash_aws::sqs::invocation_deadline(event.context.deadline, now_ms());
        let (response, _) = handler.handle(orders, event.payload, deadline).await;
        Ok::<_, Error>(response)
    }))
    .await
}
