//! `GET /orders/{order_id}`: the order as it is now, to its owner or an admin. Anyone else is
//! told it does not exist, so order ids cannot be probed.

use flash_aws::http::{caller, json, path_param, respond, ApiError};
use flash_domain::ports::Store;
use flash_domain::OrderId;
use lambda_http::{Body, Request, Response};

pub struct GetOrder<S> {
    pub store: S,
}

impl<S: Store> GetOrder<S> {
    pub async fn handle(&self, req: Request) -> Response<Body> {
        respond(self.get(&req).await)
    }

    async fn get(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = caller(req)?;
        let id = path_param(req, "order_id")
            .and_then(|id| OrderId::parse(id).ok())
            .ok_or(ApiError::NotFound("order"))?;
        let order = self
            .store
            .get_order(&id)
            .await?
            .filter(|o| caller.admin || o.owner == caller.user)
            .ok_or(ApiError::NotFound("order"))?;
        Ok(json(200, &order.view()))
    }
}
