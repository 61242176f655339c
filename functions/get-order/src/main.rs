use flash_aws::http::serve;
use get_order::GetOrder;
use lambda_http::Error;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (aws, env) = flash_aws::start().await;
    let handler = &GetOrder::from_env(&aws, &env)?;
    serve(|req| handler.handle(req)).await
}
