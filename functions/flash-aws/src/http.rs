//! The HTTP edge shared by the API functions: who is calling (from the JWT authorizer's
//! claims), JSON bodies parsed strictly, the API's order and product shapes, and the one error
//! type that maps to the status codes and error codes of the API contract.

use flash_domain::clock::to_rfc3339;
use flash_domain::order::request_fingerprint;
use flash_domain::ports::Store;
use flash_domain::{
    Order, OrderId, OrderStatus, Product, Quantity, Reason, Sku, UserId, ValidationError,
};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest body the API accepts.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// The OAuth scope that marks an administrator.
pub const ADMIN_SCOPE: &str = "flash-sale/admin";

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub admin: bool,
}

/// Reads the caller from the claims API Gateway's JWT authorizer put in the request context.
/// The token itself was verified by the gateway; here only its claims count.
pub fn caller(req: &Request) -> Result<Caller, ApiError> {
    let jwt = match req.request_context_ref() {
        #[allow(unreachable_patterns)]
        Some(RequestContext::ApiGatewayV2(ctx)) => {
            ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref())
        }
        _ => None,
    }
    .ok_or(ApiError::Unauthorized)?;
    let sub = jwt.claims.get("sub").ok_or(ApiError::Unauthorized)?;
    let user = UserId::parse(sub).map_err(|_| ApiError::Unauthorized)?;
    // The scope claim is space separated; the authorizer also lists scopes it checked.
    let admin = jwt
        .claims
        .get("scope")
        .into_iter()
        .flat_map(|s| s.split_whitespace())
        .chain(jwt.scopes.iter().flatten().map(String::as_str))
        .any(|s| s == ADMIN_SCOPE);
    Ok(Caller { user, admin })
}

impl Caller {
    /// The order `{order_id}` names, if it exists and the caller may see it: its owner or an
    /// admin. Anyone else is told it does not exist, so order ids cannot be probed.
    pub async fn order<S: Store>(&self, store: &S, req: &Request) -> Result<Order, ApiError> {
        let id = path_param(req, "order_id")
            .and_then(|id| OrderId::parse(id).ok())
            .ok_or(ApiError::NotFound("order"))?;
        store
            .get_order(&id)
            .await?
            .filter(|o| self.admin || o.owner == self.user)
            .ok_or(ApiError::NotFound("order"))
    }
}

pub fn path_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.path_parameters_ref().and_then(|p| p.first(name))
}

pub fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// An optional header that must be visible ASCII when sent: one that is present but is not
/// (bytes `header` cannot read) is a bad request, never taken for an absent one.
pub fn optional_header<'a>(req: &'a Request, name: &str) -> Result<Option<&'a str>, ApiError> {
    req.headers()
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::invalid(format!("the {name} header must be printable ASCII"))
            })
        })
        .transpose()
}

fn body_bytes(req: &Request) -> &[u8] {
    match req.body() {
        Body::Empty => &[],
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => &[],
    }
}

/// Parses a JSON body strictly: JSON content type, at most 16 KiB, no unknown fields, no
/// duplicate fields. An empty body is `None` (for routes whose body is optional).
pub fn json_body<T: DeserializeOwned>(req: &Request) -> Result<Option<T>, ApiError> {
    let bytes = body_bytes(req);
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let json = header(req, "content-type")
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false);
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    // serde would also read a struct from a JSON array of its field values; only objects are
    // request bodies.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {}", strip_position(&e))))
}

/// serde's messages end in "at line 1 column 17"; keep the part a caller can act on.
fn strip_position(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    }
}

/// The body of `POST /orders`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub sku: Sku,
    pub quantity: Quantity,
}

impl OrderRequest {
    /// The request's meaning as the order stores it ([`request_fingerprint`]).
    pub fn fingerprint(&self) -> String {
        request_fingerprint(&self.sku, self.quantity)
    }
}

/// The order as `GET /orders/{id}` and the actions show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    pub order_id: OrderId,
    pub sku: Sku,
    pub quantity: Quantity,
    pub status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl OrderView {
    pub fn of(order: &Order) -> Self {
        Self {
            order_id: order.id.clone(),
            sku: order.sku.clone(),
            quantity: order.quantity,
            status: order.status,
            reason: order.reason,
            created_at: to_rfc3339(order.created_at),
            updated_at: to_rfc3339(order.updated_at),
            expires_at: order
                .expires_at
                .filter(|_| order.status == OrderStatus::Pending)
                .map(to_rfc3339),
        }
    }
}

/// The product as `GET /products/{sku}` and `PUT` show it, with the units left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductView {
    pub sku: Sku,
    pub name: String,
    pub available: u64,
    pub sold_out: bool,
    pub sale_starts_at: Option<String>,
    pub sale_ends_at: Option<String>,
    pub per_user_limit: Option<u32>,
}

impl ProductView {
    pub fn of(product: &Product, available: u64) -> Self {
        Self {
            sku: product.sku.clone(),
            name: product.name.clone(),
            available,
            sold_out: available == 0,
            sale_starts_at: product.sale_starts_at.map(to_rfc3339),
            sale_ends_at: product.sale_ends_at.map(to_rfc3339),
            per_user_limit: product.per_user_limit,
        }
    }
}

/// Every way an API call can fail, with the contract's status and code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("missing or invalid token")]
    Unauthorized,
    #[error("this operation needs the {ADMIN_SCOPE} scope")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("action not allowed while the order is {}", .0.as_str())]
    InvalidTransition(OrderStatus),
    #[error("the product is sold out")]
    SoldOut,
    #[error("the sale is not open")]
    SaleNotOpen,
    #[error("this order would take you past the product's per-user purchase limit")]
    PurchaseLimit,
    #[error("body larger than 16 KiB")]
    PayloadTooLarge,
    #[error("body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    #[error("too many requests")]
    RateLimited { retry_after_s: u32 },
    #[error("a dependency is unavailable, retry later")]
    Unavailable {
        retry_after_s: u32,
        #[source]
        source: flash_domain::PortError,
    },
    /// Refused without calling a dependency a circuit breaker holds open; the breaker logged
    /// why when it opened, so nothing is logged per request.
    #[error("a dependency is unavailable, retry later")]
    Shedding { retry_after_s: u32 },
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::InvalidRequest(e.0)
    }
}

impl From<flash_domain::PortError> for ApiError {
    fn from(source: flash_domain::PortError) -> Self {
        Self::Unavailable {
            retry_after_s: 1,
            source,
        }
    }
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidRequest(msg.into())
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidRequest(_) => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound(_) => 404,
            Self::InvalidTransition(_)
            | Self::SoldOut
            | Self::SaleNotOpen
            | Self::PurchaseLimit => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::IdempotencyKeyReused => 422,
            Self::RateLimited { .. } => 429,
            Self::Unavailable { .. } | Self::Shedding { .. } => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::InvalidTransition(_) => "invalid_transition",
            Self::SoldOut => "sold_out",
            Self::SaleNotOpen => "sale_not_open",
            Self::PurchaseLimit => "purchase_limit",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } | Self::Shedding { .. } => "unavailable",
        }
    }

    /// The response, logging the cause chain once (here, at the edge) for server-side errors.
    pub fn into_response(self) -> Response<Body> {
        if let Self::Unavailable { source, .. } = &self {
            let mut chain = vec![source.to_string()];
            let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(source);
            while let Some(e) = cur {
                chain.push(e.to_string());
                cur = e.source();
            }
            tracing::error!(error = %chain.join(": "), "dependency failed");
        }
        let mut body =
            serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}});
        if let Self::InvalidTransition(status) = &self {
            body["error"]["status"] = serde_json::Value::from(status.as_str());
        }
        let mut resp = json(self.status(), &body);
        if let Self::RateLimited { retry_after_s }
        | Self::Unavailable { retry_after_s, .. }
        | Self::Shedding { retry_after_s } = self
        {
            resp.headers_mut()
                .insert("retry-after", retry_after_s.into());
        }
        resp
    }
}

pub fn json<T: Serialize>(status: u16, body: &T) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    let mut resp = Response::new(Body::Text(text));
    *resp.status_mut() = lambda_http::http::StatusCode::from_u16(status)
        .unwrap_or(lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        lambda_http::http::header::CONTENT_TYPE,
        lambda_http::http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Answers API Gateway's requests with `handler` until the runtime stops: an HTTP function's
/// `main` after wiring.
pub async fn serve<F, A>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(Request) -> A,
    A: std::future::Future<Output = Response<Body>> + Send,
{
    lambda_http::run(lambda_http::service_fn(|req| {
        let answer = handler(req);
        async move { Ok::<_, lambda_http::Error>(answer.await) }
    }))
    .await
}

/// Turns a handler's result into the response API Gateway gets.
pub fn respond(result: Result<Response<Body>, ApiError>) -> Response<Body> {
    result.unwrap_or_else(ApiError::into_response)
}
