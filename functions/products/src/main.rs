use flash_aws::http::serve;
use lambda_http::Error;
use products::Products;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (aws, env) = flash_aws::start().await;
    let handler = &Products::from_env(&aws, &env)?;
    serve(|req| handler.handle(req)).await
}
