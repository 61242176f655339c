//! `GET /orders/{order_id}`: the order as it is now, to its owner or an admin. Anyone else is
//! told it does not exist, so order ids cannot be probed.

use flash_aws::config::{self, Aws, ConfigError, Env};
use flash_aws::http::{caller, json, respond, ApiError, OrderView};
use flash_aws::DynamoStore;
use flash_domain::ports::Store;
use lambda_http::{Body, Request, Response};

pub struct GetOrder<S> {
    pub store: S,
}

impl GetOrder<DynamoStore> {
    /// The deployed function from its environment: `TABLE_NAME`.
    pub fn from_env(aws: &Aws, env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            store: aws.store(config::table_name(env)?),
        })
    }
}

impl<S: Store> GetOrder<S> {
    pub async fn handle(&self, req: Request) -> Response<Body> {
        respond(self.get(&req).await)
    }

    async fn get(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let order = caller(req)?.order(&self.store, req).await?;
        Ok(json(200, &OrderView::of(&order)))
    }
}
