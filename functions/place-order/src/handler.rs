//! `POST /orders`: admit an order. Validates, refuses fast when the sale is not open, writes
//! the order `queued` with a conditional put (its id is derived from caller and
//! Idempotency-Key, so the put is the idempotency check) and enqueues it. Never touches stock.

use flash_aws::http::{caller, header, json, json_body, respond, ApiError};
use flash_domain::clock::now_ms;
use flash_domain::ports::{CreateOrder, Queue, Store};
use flash_domain::{IdempotencyKey, Order, OrderId, OrderMessage, OrderRequest, OrderStatus};
use lambda_http::{Body, Request, Response};
use serde_json::json;

pub struct PlaceOrder<S, Q> {
    pub store: S,
    pub queue: Q,
}

impl<S: Store, Q: Queue> PlaceOrder<S, Q> {
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
            .store
            .get_product(&body.sku)
            .await?
            .ok_or(ApiError::NotFound("product"))?;
        if !product.sale_open(now) {
            // A replay of an order admitted while the sale was open still gets its answer.
            return match self.store.get_order(&id).await? {
                Some(existing) if existing.fingerprint == body.fingerprint() => {
                    self.answer(existing).await
                }
                Some(_) => Err(ApiError::IdempotencyKeyReused),
                None => Err(ApiError::SaleNotOpen),
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
