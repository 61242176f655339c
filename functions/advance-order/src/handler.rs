//! `POST /orders/{order_id}/{action}`: pay, cancel, refund, ship, confirm. The state machine
//! decides; the store writes it as one conditional update on the status read (and, for a
//! buyer, on the owner), returning stock in the same transaction for cancel and refund. A
//! request that is going to write first takes a token from the caller's rate-limit bucket.

use flash_aws::config::{self, Aws, Callers, ConfigError, Env};
use flash_aws::dynamo::DynamoRateLimit;
use flash_aws::http::{caller, json, json_body, path_param, respond, ApiError, OrderView};
use flash_aws::DynamoStore;
use flash_domain::clock::now_ms;
use flash_domain::expiry::{due, Due, Window};
use flash_domain::order::transition;
use flash_domain::ports::{Advance, PortError, RateLimit, Store, Unlimited};
use flash_domain::token_bucket::retry_after_secs;
use flash_domain::{Action, OrderStatus, TransitionError};
use lambda_http::{Body, Request, Response};
use serde::Deserialize;

/// Re-reads after a lost race before giving up with 503. Each lost race means the order moved,
/// so a handful is plenty.
const MAX_ATTEMPTS: usize = 5;

/// Actions take no parameters; the body may be absent or `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// `R` is the per-caller rate limit: none unless [`AdvanceOrder::with_rate_limit`] sets one.
pub struct AdvanceOrder<S, R = Unlimited> {
    pub store: S,
    pub rate_limit: R,
}

/// The deployed function: its rate limit in the table, unless its settings turn it off.
pub type Deployed = AdvanceOrder<DynamoStore, Option<DynamoRateLimit>>;

impl Deployed {
    /// The deployed function from its environment: `TABLE_NAME` and the rate limit.
    pub fn from_env(aws: &Aws, env: &Env) -> Result<Self, ConfigError> {
        let table = config::table_name(env)?;
        Ok(AdvanceOrder::new(aws.store(table))
            .with_rate_limit(aws.rate_limit(env, Callers::Buyers)?))
    }
}

impl<S: Store> AdvanceOrder<S> {
    /// With no rate limit.
    pub fn new(store: S) -> Self {
        Self {
            store,
            rate_limit: Unlimited,
        }
    }
}

impl<S: Store, R: RateLimit> AdvanceOrder<S, R> {
    /// Takes a token from `rate_limit` before each write a caller asks for.
    pub fn with_rate_limit<L: RateLimit>(self, rate_limit: L) -> AdvanceOrder<S, L> {
        AdvanceOrder {
            store: self.store,
            rate_limit,
        }
    }

    pub async fn handle(&self, req: Request) -> Response<Body> {
        respond(self.advance(&req).await)
    }

    async fn advance(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = caller(req)?;
        let action = path_param(req, "action")
            .and_then(Action::parse)
            .ok_or(ApiError::NotFound("action"))?;
        json_body::<NoFields>(req)?;
        let mut token = false;
        for _ in 0..MAX_ATTEMPTS {
            let order = caller.order(&self.store, req).await?;
            if !action.allowed(order.owner == caller.user, caller.admin) {
                return Err(ApiError::Forbidden);
            }
            let t = match transition(order.status, order.reason, action.event()) {
                Ok(t) => t,
                Err(TransitionError::AlreadyApplied) => {
                    // A repeated cancel or refund: the request that canceled the order may
                    // have stopped between returning its stock and clearing the sold-out
                    // flag (see `Store::clear_sold_out`), so clear it again. That is a write,
                    // so it takes a token, and repeats cannot flood the product's item; the
                    // answer stands without it (the order's own timeout message clears the
                    // flag again too).
                    if order.status == OrderStatus::Canceled
                        && matches!(
                            self.rate_limit.take_token(&caller.user, now_ms()).await,
                            Ok(Ok(()))
                        )
                    {
                        self.store.clear_sold_out(&order.sku).await?;
                    }
                    return Ok(json(200, &OrderView::of(&order)));
                }
                Err(TransitionError::NotAllowed(status)) => {
                    return Err(ApiError::InvalidTransition(status))
                }
            };
            // Too late to pay: the payment window closed, so the timeout wins whether or not
            // its message has arrived (the payment's write would fail its deadline condition).
            let now = now_ms();
            if let (Some(Window::Open), Due::Expire(timeout)) = (t.window(), due(&order, now)) {
                match self.store.advance(&order, &timeout, None, now).await? {
                    Advance::Done(expired) => {
                        tracing::info!(order_id = %order.id, "payment after the deadline: order timed out");
                        return Err(ApiError::InvalidTransition(expired.status));
                    }
                    Advance::Stale => continue,
                }
            }
            // Only a request about to write pays a token: one refused above, or answered
            // from the order as it is, costs no write.
            if !token {
                if let Err(wait) = self.rate_limit.take_token(&caller.user, now_ms()).await? {
                    return Err(ApiError::RateLimited {
                        retry_after_s: retry_after_secs(wait),
                    });
                }
                token = true;
            }
            let owner = (!caller.admin).then_some(&caller.user);
            match self.store.advance(&order, &t, owner, now_ms()).await? {
                Advance::Done(updated) => {
                    tracing::info!(order_id = %order.id, from = t.from.as_str(), to = t.to.as_str(), "order advanced");
                    return Ok(json(200, &OrderView::of(&updated)));
                }
                Advance::Stale => continue,
            }
        }
        Err(PortError::Contention.into())
    }
}
