use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use reconcile::Reconcile;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (aws, env) = flash_aws::start().await;
    let handler = &Reconcile::from_env(&aws, &env)?;
    // The EventBridge schedule's event carries nothing the reconciler needs.
    // Boxed: the audit's streaming future is too deep for the compiler to lay out inline.
    run(service_fn(|_: LambdaEvent<serde_json::Value>| async move {
        Box::pin(handler.handle()).await.map_err(Error::from)
    }))
    .await
}
