//! `POST /orders`: admit an order. Validates, refuses fast when the sale is not open or the
//! product is sold out (from a product read cached in the warm function), writes the order
//! `queued` with a conditional put (its id is derived from caller and Idempotency-Key, so the
//! put is the idempotency check) and enqueues it. Never touches stock.

use flash_aws::http::{caller, header, json, json_body, respond, ApiError};
use flash_domain::clock::now_ms;
use flash_domain::ports::{CreateOrder, Queue, Store};
use flash_domain::{
    IdempotencyKey, Order, OrderId, OrderMessage, OrderRequest, OrderStatus, Product, Sku,
};
use lambda_http::{Body, Request, Response};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How stale the cached product may be. A sold-out flag cleared by a cancel reaches buyers
/// within this long, and a hot product costs one read per warm function per period instead of
/// one per order.
pub const PRODUCT_TTL: Duration = Duration::from_secs(1);

pub struct PlaceOrder<S, Q> {
    pub store: S,
    pub queue: Q,
    products: Mutex<HashMap<Sku, (Instant, Product)>>,
}

impl<S: Store, Q: Queue> PlaceOrder<S, Q> {
    pub fn new(store: S, queue: Q) -> Self {
        Self {
            store,
            queue,
            products: Mutex::default(),
        }
    }

    async fn product(&self, sku: &Sku) -> Result<Option<Product>, ApiError> {
        let cached = self.products.lock().ok().and_then(|m| {
            m.get(sku)
                .filter(|(at, _)| at.elapsed() < PRODUCT_TTL)
                .map(|(_, p)| p.clone())
        });
        if cached.is_some() {
            return Ok(cached);
        }
        let product = self.store.get_product(sku).await?;
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
        let product = self
            .product(&body.sku)
            .await?
            .ok_or(ApiError::NotFound("product"))?;
        let refusal = if !product.sale_open(now) {
            Some(ApiError::SaleNotOpen)
        } else if product.sold_out {
            Some(ApiError::SoldOut)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            // Refused without a write; but a replay of an order admitted earlier still gets
            // its answer.
            return match self.store.get_order(&id).await? {
                Some(existing) if existing.fingerprint == body.fingerprint() => {
                    self.answer(existing).await
                }
                Some(_) => Err(ApiError::IdempotencyKeyReused),
                None => Err(refusal),
            };
        }
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
        let current = match self.store.create_order(&order).await? {
            CreateOrder::Created => {
                tracing::info!(order_id = %order.id, sku = %order.sku, "order accepted");
                order
            }
            CreateOrder::Exists(existing) => {
                if existing.fingerprint != order.fingerprint || existing.owner != order.owner {
                    return Err(ApiError::IdempotencyKeyReused);
                }
                existing
            }
        };
        self.answer(current).await
    }

    /// The 202 for `current`, new or replayed.
    async fn answer(&self, current: Order) -> Result<Response<Body>, ApiError> {
        // A replay of a still-queued order enqueues it again: if the first send failed after
        // the write, this is what gets it decided. A duplicate message is a no-op downstream.
        if current.status == OrderStatus::Queued {
            self.queue
                .send(&OrderMessage {
                    order_id: current.id.clone(),
                    sku: current.sku.clone(),
                    quantity: current.quantity,
                    user_id: current.owner.clone(),
                })
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
