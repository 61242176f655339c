//! `PUT /products/{sku}` (admin: create, or add stock and change the settings it names;
//! with an `Idempotency-Key`, a retry adds nothing; rate-limited per caller at the admin
//! rate) and `GET /products/{sku}` (anyone signed in: what is left).

use flash_aws::config::{self, Aws, Callers, ConfigError, Env};
use flash_aws::dynamo::DynamoRateLimit;
use flash_aws::http::{
    caller, json, json_body, optional_header, path_param, respond, ApiError, Caller, ProductView,
};
use flash_aws::DynamoStore;
use flash_domain::clock::now_ms;
use flash_domain::ports::{RateLimit, Store, Unlimited};
use flash_domain::put_product::{put_product, PutError, PutOutcome};
use flash_domain::token_bucket::retry_after_secs;
use flash_domain::{IdempotencyKey, ProductSpec, Sku};
use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};

/// `R` is the per-caller rate limit: none unless [`Products::with_rate_limit`] sets one.
pub struct Products<S, R = Unlimited> {
    pub store: S,
    pub rate_limit: R,
}

/// The deployed function: the admins' rate limit in the table (its only write route is an
/// admin's), unless its settings turn it off.
pub type Deployed = Products<DynamoStore, Option<DynamoRateLimit>>;

impl Deployed {
    /// The deployed function from its environment: `TABLE_NAME` and the admins' rate limit.
    pub fn from_env(aws: &Aws, env: &Env) -> Result<Self, ConfigError> {
        let table = config::table_name(env)?;
        Ok(Products::new(aws.store(table)).with_rate_limit(aws.rate_limit(env, Callers::Admins)?))
    }
}

impl<S: Store> Products<S> {
    /// With no rate limit.
    pub fn new(store: S) -> Self {
        Self {
            store,
            rate_limit: Unlimited,
        }
    }
}

impl<S: Store, R: RateLimit> Products<S, R> {
    /// Takes a token from `rate_limit` before each `PUT`.
    pub fn with_rate_limit<L: RateLimit>(self, rate_limit: L) -> Products<S, L> {
        Products {
            store: self.store,
            rate_limit,
        }
    }

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
        Ok(json(status, &ProductView::of(&product, available)))
    }

    async fn put(
        &self,
        caller: &Caller,
        sku: Sku,
        req: &Request,
    ) -> Result<Response<Body>, ApiError> {
        let spec: ProductSpec =
            json_body(req)?.ok_or_else(|| ApiError::invalid("a JSON body is required"))?;
        let put = spec.parse(sku)?;
        let key = optional_header(req, "idempotency-key")?
            .map(IdempotencyKey::parse)
            .transpose()?;
        if let Err(wait) = self.rate_limit.take_token(&caller.user, now_ms()).await? {
            return Err(ApiError::RateLimited {
                retry_after_s: retry_after_secs(wait),
            });
        }
        let outcome = put_product(&self.store, &put, key.as_ref().map(|k| (&caller.user, k)))
            .await
            .map_err(|e| match e {
                PutError::Invalid(e) => e.into(),
                PutError::KeyReused => ApiError::IdempotencyKeyReused,
                PutError::Port(e) => e.into(),
            })?;
        let (sku, stock) = (&put.sku, put.stock);
        match outcome {
            PutOutcome::Created => {
                tracing::info!(sku = %sku, stock, "product created");
                self.get(sku, 201).await
            }
            PutOutcome::Restocked => {
                tracing::info!(sku = %sku, stock, "stock added");
                self.get(sku, 200).await
            }
            PutOutcome::Replayed { created } => {
                tracing::info!(sku = %sku, "a retried request under the same Idempotency-Key: nothing added");
                self.get(sku, if created { 201 } else { 200 }).await
            }
        }
    }
}
