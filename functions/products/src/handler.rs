//! `PUT /products/{sku}` (admin: create, or add stock and update settings; rate-limited per
//! caller like every write route) and `GET /products/{sku}` (anyone signed in: what is left).

use flash_aws::config::{self, Aws, ConfigError, Env};
use flash_aws::http::{caller, json, json_body, path_param, respond, ApiError, Caller};
use flash_aws::DynamoStore;
use flash_domain::clock::now_ms;
use flash_domain::ports::{PortError, Store};
use flash_domain::token_bucket::retry_after_secs;
use flash_domain::{ProductSpec, Sku};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};

pub struct Products<S> {
    pub store: S,
}

impl Products<DynamoStore> {
    /// The deployed function from its environment: `TABLE_NAME` and the rate limit.
    pub fn from_env(aws: &Aws, env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            store: aws
                .store(config::table_name(env)?)
                .with_rate_limit(config::rate_limit(env)?),
        })
    }
}

impl<S: Store> Products<S> {
    pub async fn handle(&self, req: Request) -> Response<Body> {
        respond(self.route(&req).await)
    }

    async fn route(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = caller(req)?;
        let sku = path_param(req, "sku").ok_or(ApiError::NotFound("product"))?;
        match *req.method() {
            Method::GET => {
                let sku = Sku::parse(sku).map_err(|_| ApiError::NotFound("product"))?;
                self.get(&sku, 200).await
            }
            Method::PUT if !caller.admin => Err(ApiError::Forbidden),
            Method::PUT => self.put(&caller, Sku::parse(sku)?, req).await,
            _ => Err(ApiError::NotFound("route")),
        }
    }

    async fn get(&self, sku: &Sku, status: u16) -> Result<Response<Body>, ApiError> {
        let product = self
            .store
            .get_product(sku)
            .await?
            .ok_or(ApiError::NotFound("product"))?;
        let available = self
            .store
            .read_shards(&product)
            .await?
            .iter()
            .map(|s| s.available)
            .sum();
        Ok(json(status, &product.view(available)))
    }

    async fn put(
        &self,
        caller: &Caller,
        sku: Sku,
        req: &Request,
    ) -> Result<Response<Body>, ApiError> {
        let spec: ProductSpec =
            json_body(req)?.ok_or_else(|| ApiError::invalid("a JSON body is required"))?;
        let (mut product, stock) = spec.into_product(sku.clone())?;
        if let Err(wait) = self.store.take_token(&caller.user, now_ms()).await? {
            return Err(ApiError::RateLimited {
                retry_after_s: retry_after_secs(wait),
            });
        }
        // Two attempts cover a concurrent create of the same SKU: the loser adds its stock.
        for _ in 0..2 {
            match self.store.get_product(&sku).await? {
                None => {
                    if self
                        .store
                        .create_product(&product, &product.split(stock))
                        .await?
                    {
                        tracing::info!(sku = %sku, stock, shards = product.shards, "product created");
                        return self.get(&sku, 201).await;
                    }
                }
                Some(existing) => {
                    // The shard count is fixed at creation; new stock spreads over it.
                    product.shards = existing.shards;
                    if self
                        .store
                        .add_stock(&product, stock, &product.split(stock))
                        .await?
                    {
                        tracing::info!(sku = %sku, stock, "stock added");
                        return self.get(&sku, 200).await;
                    }
                }
            }
        }
        Err(PortError::Contention.into())
    }
}
