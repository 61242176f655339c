//! `POST /orders`: admit an order. Validates, refuses fast when the product is unknown, the
//! sale is not open, the product is sold out (from a product read cached in the warm function)
//! or the order alone passes the per-user limit, takes a token from the caller's rate-limit
//! bucket, writes the order `queued` with a conditional put (its id is derived from caller and
//! Idempotency-Key, so the put is the idempotency check; for a product with a per-user limit
//! the same write raises the buyer's admission count, so one buyer cannot queue past the limit)
//! and enqueues it. Before the write it sends a copy of the message delayed by the re-drive
//! delay ([`REDRIVE_AFTER`] unless configured), the re-drive of an order whose send is lost.
//! Never touches stock.
//!
//! The stored order decides the answer before any refusal: a request refused before the write
//! reads the order its key names, and a replay of an admitted order gets its `202`, a key
//! reused with another body its `422`. Only a request that names no stored order gets the
//! refusal. The read happens on the refusal path alone, so an admitted order costs what it did.
//!
//! Circuit breakers stand in front of DynamoDB and SQS: while one is open the answer is `503`
//! with `Retry-After` at once, before anything is called (save the order read, while only the
//! SQS breaker is open).

use flash_aws::config::{self, Aws, Callers, ConfigError, Env};
use flash_aws::dependency_breaker::CircuitBreaker;
use flash_aws::dynamo::DynamoRateLimit;
use flash_aws::http::{caller, header, json, json_body, respond, ApiError, OrderRequest};
use flash_aws::{DynamoStore, SqsQueue};
use flash_domain::breaker_state::BreakerConfig;
use flash_domain::clock::{now_ms, Millis};
use flash_domain::ports::{CreateOrder, Queue, RateLimit, Store, Unlimited};
use flash_domain::token_bucket::retry_after_secs;
use flash_domain::{
    IdempotencyKey, Order, OrderId, OrderMessage, OrderStatus, Product, Sku, UserId,
};
use lambda_http::{Body, Request, Response};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How stale the cached product may be. The sold-out flag reaches buyers within this long (each
/// order let in after it costs a write, a message and a rejection), as does a flag cleared by a
/// cancel; a hot product costs four reads a second per warm function instead of one per order.
pub const PRODUCT_TTL: Duration = Duration::from_millis(250);

/// How stale a product low on stock ([`Product::low_stock`]) may be: for the last stretch of
/// a sale each warm function reads it up to 20 times a second instead of 4, so the sold-out
/// flag that soon follows lets in fewer orders that can only be rejected.
pub const LOW_STOCK_TTL: Duration = Duration::from_millis(50);

/// How long `product` may be served from the cache.
pub fn product_ttl(product: &Product) -> Duration {
    if product.low_stock && !product.sold_out {
        LOW_STOCK_TTL
    } else {
        PRODUCT_TTL
    }
}

/// A copy of each order's message is sent before the order is written, to arrive this long
/// after (SQS's longest delay, the default of `REDRIVE_DELAY_SECONDS`): if the send after the
/// write fails, or the function dies between the two, and the buyer never retries, the copy
/// still gets the order decided. A copy of an order decided by then, never written, or written
/// with another body changes nothing (`process-orders` acknowledges it).
pub const REDRIVE_AFTER: Duration = Duration::from_secs(config::REDRIVE_DELAY_SECONDS);

/// The name the breakers log and meter under.
const FUNCTION: &str = "place-order";

/// `R` is the per-caller rate limit: none unless [`PlaceOrder::with_rate_limit`] sets one.
pub struct PlaceOrder<S, Q, R = Unlimited> {
    pub store: S,
    pub queue: Q,
    pub rate_limit: R,
    products: Mutex<HashMap<Sku, (Instant, Product)>>,
    redrive_after: Duration,
    dynamodb: CircuitBreaker,
    sqs: CircuitBreaker,
}

/// The deployed function: its rate limit in the table, unless its settings turn it off.
pub type Deployed = PlaceOrder<DynamoStore, SqsQueue, Option<DynamoRateLimit>>;

impl Deployed {
    /// The deployed function from its environment: `TABLE_NAME`, `ORDERS_QUEUE_URL`, the
    /// rate limit, the breakers and `REDRIVE_DELAY_SECONDS`. A bad setting fails start-up.
    pub fn from_env(aws: &Aws, env: &Env) -> Result<Self, ConfigError> {
        let table = config::table_name(env)?;
        Ok(
            PlaceOrder::new(aws.store(table), aws.queue(config::orders_queue_url(env)?))
                .with_rate_limit(aws.rate_limit(env, Callers::Buyers)?)
                .with_breakers(config::breakers(env)?)
                .with_redrive_delay(config::redrive_delay(env)?),
        )
    }
}

impl<S: Store, Q: Queue> PlaceOrder<S, Q> {
    /// With no rate limit and the default breakers ([`BreakerConfig::default`]).
    pub fn new(store: S, queue: Q) -> Self {
        Self {
            store,
            queue,
            rate_limit: Unlimited,
            products: Mutex::default(),
            redrive_after: REDRIVE_AFTER,
            dynamodb: CircuitBreaker::new(FUNCTION, "dynamodb", BreakerConfig::default()),
            sqs: CircuitBreaker::new(FUNCTION, "sqs", BreakerConfig::default()),
        }
    }
}

impl<S: Store, Q: Queue, R: RateLimit> PlaceOrder<S, Q, R> {
    /// Takes a token from `rate_limit` before each order it writes.
    pub fn with_rate_limit<L: RateLimit>(self, rate_limit: L) -> PlaceOrder<S, Q, L> {
        PlaceOrder {
            store: self.store,
            queue: self.queue,
            rate_limit,
            products: self.products,
            redrive_after: self.redrive_after,
            dynamodb: self.dynamodb,
            sqs: self.sqs,
        }
    }

    /// Replaces both breakers with fresh (closed) ones of `config`.
    pub fn with_breakers(mut self, config: BreakerConfig) -> Self {
        self.dynamodb = CircuitBreaker::new(FUNCTION, "dynamodb", config);
        self.sqs = CircuitBreaker::new(FUNCTION, "sqs", config);
        self
    }

    /// Sends the re-drive copy `delay` after the order instead of [`REDRIVE_AFTER`] (tests and
    /// the local stack watch the copies arrive).
    pub fn with_redrive_delay(mut self, delay: Duration) -> Self {
        self.redrive_after = delay;
        self
    }

    /// The breaker in front of DynamoDB and the one in front of SQS.
    pub fn breakers(&self) -> (&CircuitBreaker, &CircuitBreaker) {
        (&self.dynamodb, &self.sqs)
    }

    async fn product(&self, sku: &Sku) -> Result<Option<Product>, ApiError> {
        let cached = self.products.lock().ok().and_then(|m| {
            m.get(sku)
                .filter(|(at, p)| at.elapsed() < product_ttl(p))
                .map(|(_, p)| p.clone())
        });
        if cached.is_some() {
            return Ok(cached);
        }
        let product = self.dynamodb.call(self.store.get_product(sku)).await?;
        if let (Some(p), Ok(mut m)) = (&product, self.products.lock()) {
            m.insert(sku.clone(), (Instant::now(), p.clone()));
        }
        Ok(product)
    }

    pub async fn handle(&self, req: Request) -> Response<Body> {
        respond(self.place(&req).await)
    }

    async fn place(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = caller(req)?;
        let key = header(req, "idempotency-key")
            .ok_or_else(|| ApiError::invalid("the Idempotency-Key header is required"))?;
        let key = IdempotencyKey::parse(key)?;
        let body: OrderRequest =
            json_body(req)?.ok_or_else(|| ApiError::invalid("a JSON body is required"))?;
        let now = now_ms();
        let id = OrderId::derive(&caller.user, &key);
        let product = match self.gate(&caller.user, &body, now).await? {
            Gate::Open(product) => product,
            Gate::Refused(refusal) => {
                // Refused without a write; but the stored order, if any, decides the answer.
                return match self.dynamodb.call(self.store.get_order(&id)).await? {
                    Some(existing) if same_request(&existing, &caller.user, &body) => {
                        self.answer(existing).await
                    }
                    Some(_) => Err(ApiError::IdempotencyKeyReused),
                    None => Err(refusal),
                };
            }
        };
        let order = Order {
            id,
            owner: caller.user,
            sku: body.sku.clone(),
            quantity: body.quantity,
            status: OrderStatus::Queued,
            reason: None,
            created_at: now,
            updated_at: now,
            expires_at: None,
            fingerprint: body.fingerprint(),
            takes: Vec::new(),
            counted: false,
        };
        self.sqs
            .call(
                self.queue
                    .send_later(&OrderMessage::of(&order), self.redrive_after),
            )
            .await?;
        let created = match product.per_user_limit {
            Some(limit) => {
                self.dynamodb
                    .call(self.store.create_limited_order(&order, limit))
                    .await?
            }
            None => self.dynamodb.call(self.store.create_order(&order)).await?,
        };
        let current = match created {
            CreateOrder::Created => {
                tracing::info!(order_id = %order.id, sku = %order.sku, "order accepted");
                order
            }
            CreateOrder::Exists(existing) => {
                if !same_request(&existing, &order.owner, &body) {
                    return Err(ApiError::IdempotencyKeyReused);
                }
                existing
            }
            CreateOrder::LimitReached { admitted } => {
                tracing::info!(
                    order_id = %order.id,
                    sku = %order.sku,
                    admitted,
                    quantity = order.quantity.get(),
                    "order refused: per-user limit"
                );
                return Err(ApiError::PurchaseLimit);
            }
        };
        self.answer(current).await
    }

    /// Every refusal that comes before the write, in order: a breaker open, an unknown product,
    /// a sale not open, a product sold out, an order past the per-user limit, an empty bucket.
    /// None of them writes, so a sold-out storm costs no write. `Err` is a failure to find out
    /// (a product read that failed), not a refusal.
    async fn gate(
        &self,
        user: &UserId,
        body: &OrderRequest,
        now: Millis,
    ) -> Result<Gate, ApiError> {
        // Shed load before touching anything while a dependency is known to be struggling:
        // an order written but not enqueued would only wait for the re-drive.
        let open = [self.dynamodb.refusal(), self.sqs.refusal()];
        if let Some(wait) = open.into_iter().flatten().max() {
            return Ok(Gate::Refused(ApiError::Shedding {
                retry_after_s: retry_after_secs(wait),
            }));
        }
        let Some(product) = self.product(&body.sku).await? else {
            return Ok(Gate::Refused(ApiError::NotFound("product")));
        };
        let refusal = if !product.sale_open(now) {
            Some(ApiError::SaleNotOpen)
        } else if product.sold_out {
            Some(ApiError::SoldOut)
        } else if product
            .per_user_limit
            .is_some_and(|limit| body.quantity.get() > limit)
        {
            Some(ApiError::PurchaseLimit)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return Ok(Gate::Refused(refusal));
        }
        // A fresh clock: the bucket compares it with other instances' writes. Watched, not
        // called: with no limit set it reaches nothing, so its success proves nothing.
        if let Err(wait) = self
            .dynamodb
            .watch(self.rate_limit.take_token(user, now_ms()))
            .await?
        {
            return Ok(Gate::Refused(ApiError::RateLimited {
                retry_after_s: retry_after_secs(wait),
            }));
        }
        Ok(Gate::Open(product))
    }

    /// The 202 for `current`, new or replayed.
    async fn answer(&self, current: Order) -> Result<Response<Body>, ApiError> {
        // A replay of a still-queued order enqueues it again: if the first send failed after
        // the write, this is what gets it decided. A duplicate message is a no-op downstream.
        if current.status == OrderStatus::Queued {
            self.sqs
                .call(self.queue.send(&OrderMessage::of(&current)))
                .await?;
        }
        Ok(json(
            202,
            &json!({
                "order_id": current.id,
                "status": current.status,
                "location": format!("/orders/{}", current.id),
            }),
        ))
    }
}

/// What [`PlaceOrder::gate`] decided before the write.
enum Gate {
    /// Go on and write the order, of this product.
    Open(Product),
    /// Answer this, unless the key names a stored order.
    Refused(ApiError),
}

/// Whether `existing` is the order this request would have written: a replay.
fn same_request(existing: &Order, owner: &UserId, body: &OrderRequest) -> bool {
    existing.fingerprint == body.fingerprint() && existing.owner == *owner
}
