//! The HTTP API on 127.0.0.1: for each request, what API Gateway does before and after the
//! Lambda integration — match a route (404), throttle (429), run the JWT authorizer (401/403),
//! build the payload 2.0 event, invoke the function with its timeout, and return its response
//! — with API Gateway's own error bodies (`{"message": "..."}`).

use crate::config::{GatewayConfig, Route, Throttle};
use crate::event::{api_gateway_event, lambda_request, Authorized, IncomingRequest};
use crate::functions::HttpFunction;
use crate::jwt::{AuthError, Claims, Verifier};
use crate::routes::{RouteError, RouteTable};
use crate::sale::{self, SaleError, SalePage};
use base64::Engine as _;
use bytes::Bytes;
use flash_aws::dynamo::WriteStats;
use flash_domain::limits::LAMBDA_MAX_PAYLOAD_BYTES;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long open connections may finish their requests once shutdown begins.
const DRAIN: Duration = Duration::from_secs(3);
/// Not an API route: the process's DynamoDB write counters, for load reports.
pub const STATS_PATH: &str = "/_local/stats";

pub type HttpResponse = Response<Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("route {route}: no local handler for function {function} (binary {binary})")]
    NoHandler {
        route: String,
        function: String,
        binary: String,
    },
    #[error("route {route}: no verifier for authorizer {authorizer}")]
    NoVerifier { route: String, authorizer: String },
}

pub struct Gateway {
    routes: RouteTable,
    functions: HashMap<String, Arc<HttpFunction>>,
    verifiers: HashMap<String, Verifier>,
    throttle: Option<TokenBucket>,
    stats: Option<Arc<WriteStats>>,
    sale: Option<SalePage>,
}

impl Gateway {
    /// `functions` by binary name and `verifiers` by authorizer name; every route must find
    /// both, so a gap fails at start-up rather than on the first request.
    pub fn new(
        config: &GatewayConfig,
        functions: HashMap<String, Arc<HttpFunction>>,
        verifiers: HashMap<String, Verifier>,
        stats: Option<Arc<WriteStats>>,
    ) -> Result<Self, GatewayError> {
        for route in &config.routes {
            let key = format!("{} {}", route.method, route.path);
            if !functions.contains_key(&route.binary) {
                return Err(GatewayError::NoHandler {
                    route: key,
                    function: route.function.clone(),
                    binary: route.binary.clone(),
                });
            }
            if let Some(name) = &route.authorizer {
                if !verifiers.contains_key(name) {
                    return Err(GatewayError::NoVerifier {
                        route: key,
                        authorizer: name.clone(),
                    });
                }
            }
        }
        Ok(Self {
            routes: RouteTable::new(&config.routes)?,
            functions,
            verifiers,
            throttle: config.throttle.map(TokenBucket::new),
            stats,
            sale: None,
        })
    }

    /// Serves the live sale page (`/_local/sale`) from `sale`.
    pub fn with_sale_page(mut self, sale: SalePage) -> Self {
        self.sale = Some(sale);
        self
    }

    /// The local-only pages and endpoints, outside the API's routes.
    async fn local(&self, parts: &hyper::http::request::Parts) -> Option<HttpResponse> {
        if parts.method != hyper::Method::GET {
            return None;
        }
        match parts.uri.path() {
            STATS_PATH => self
                .stats
                .as_ref()
                .map(|stats| json_response(StatusCode::OK, &stats.snapshot())),
            sale::PAGE_PATH if self.sale.is_some() => {
                let mut response =
                    Response::new(Full::new(Bytes::from_static(sale::PAGE.as_bytes())));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                Some(response)
            }
            sale::SNAPSHOT_PATH => {
                let page = self.sale.as_ref()?;
                let sku = query_param(parts.uri.query().unwrap_or_default(), "sku");
                Some(match page.snapshot(sku.as_deref()).await {
                    Ok(snapshot) => json_response(StatusCode::OK, &snapshot),
                    Err(e @ (SaleError::NoProduct(_) | SaleError::NoProducts)) => {
                        message(StatusCode::NOT_FOUND, &e.to_string())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the sale snapshot failed");
                        message(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
                    }
                })
            }
            _ => None,
        }
    }

    pub async fn handle(
        &self,
        req: Request<Incoming>,
        source_ip: IpAddr,
        port: u16,
    ) -> HttpResponse {
        let started = Instant::now();
        let request_id = request_id();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let mut response = self.respond(req, source_ip, port, &request_id).await;
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("apigw-requestid", id);
        }
        let status = response.status().as_u16();
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(request_id, %method, path, status, latency_ms, "request failed");
        } else {
            tracing::debug!(request_id, %method, path, status, latency_ms, "request");
        }
        response
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        source_ip: IpAddr,
        port: u16,
        request_id: &str,
    ) -> HttpResponse {
        let (parts, body) = req.into_parts();
        if let Some(response) = self.local(&parts).await {
            return response;
        }
        let Some(matched) = self.routes.find(&parts.method, parts.uri.path()) else {
            return message(StatusCode::NOT_FOUND, "Not Found");
        };
        let route = matched.route;
        if self.throttle.as_ref().is_some_and(|t| !t.try_take()) {
            return message(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        }
        let verifier = route
            .authorizer
            .as_ref()
            .and_then(|a| self.verifiers.get(a));
        let authorized = match authorize(verifier, route, &parts.headers) {
            Ok(authorized) => authorized,
            Err(rejection) => {
                tracing::info!(request_id, route = matched.route_key, reason = %rejection.reason, "authorizer refused the request");
                return rejection.into_response();
            }
        };
        let body = match Limited::new(body, LAMBDA_MAX_PAYLOAD_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
            }
            Err(e) => {
                tracing::debug!(request_id, error = %e, "reading the request body failed");
                return message(StatusCode::BAD_REQUEST, "Bad Request");
            }
        };
        let incoming = IncomingRequest {
            method: &parts.method,
            raw_path: parts.uri.path(),
            raw_query: parts.uri.query().unwrap_or_default(),
            headers: &parts.headers,
            body: &body,
            source_ip,
            port,
        };
        let authorized = authorized.as_ref().map(|a| Authorized {
            claims: &a.claims,
            scopes: a.scopes.as_deref(),
        });
        let event = api_gateway_event(
            &incoming,
            &matched,
            authorized,
            request_id,
            OffsetDateTime::now_utc(),
        );
        let lambda_req = match lambda_request(&event) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(request_id, error = %e, "the event does not deserialise");
                return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
            }
        };
        let response = self.invoke(route, lambda_req, request_id).await;
        if let Some(sale) = &self.sale {
            let created = parts.method == hyper::Method::PUT
                && route.path == "/products/{sku}"
                && response.status() == StatusCode::CREATED;
            if let Some((_, sku)) = matched
                .path_parameters
                .iter()
                .find(|(name, _)| created && name == "sku")
            {
                sale.created(sku);
            }
        }
        response
    }

    /// Runs the function as Lambda would: its own task (a panic is a function error, as the
    /// runtime reports it), cut off at the function's timeout. API Gateway answers a function
    /// error with 500.
    async fn invoke(
        &self,
        route: &Route,
        req: lambda_http::Request,
        request_id: &str,
    ) -> HttpResponse {
        let Some(function) = self.functions.get(&route.binary).cloned() else {
            return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        };
        let mut task = tokio::spawn(async move { function.invoke(req).await });
        match tokio::time::timeout(Duration::from_secs(route.timeout_s), &mut task).await {
            Ok(Ok(response)) => {
                let (parts, body) = response.into_parts();
                let bytes = match body {
                    lambda_http::Body::Text(text) => Bytes::from(text),
                    lambda_http::Body::Binary(bytes) => Bytes::from(bytes),
                    _ => Bytes::new(),
                };
                Response::from_parts(parts, Full::new(bytes))
            }
            Ok(Err(e)) => {
                tracing::error!(request_id, function = route.function, error = %e, "function failed");
                message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }
            Err(_) => {
                task.abort();
                tracing::error!(
                    request_id,
                    function = route.function,
                    timeout_s = route.timeout_s,
                    "function timed out"
                );
                message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }
        }
    }
}

/// What the JWT authorizer refused, and how API Gateway says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: String,
    www_authenticate: Option<String>,
}

impl Rejection {
    pub fn into_response(self) -> HttpResponse {
        let text = if self.status == StatusCode::FORBIDDEN {
            "Forbidden"
        } else {
            "Unauthorized"
        };
        let mut response = message(self.status, text);
        if let Some(value) = self
            .www_authenticate
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// What the authorizer passes on to the function.
#[derive(Debug, Clone, PartialEq)]
pub struct Authorization {
    pub claims: Claims,
    /// The token's scopes, listed only on routes that require scopes (as API Gateway does).
    pub scopes: Option<Vec<String>>,
}

/// The route's authorizer, if it has one: `Ok(None)` for an open route.
pub fn authorize(
    verifier: Option<&Verifier>,
    route: &Route,
    headers: &hyper::HeaderMap,
) -> Result<Option<Authorization>, Rejection> {
    let Some(verifier) = verifier else {
        return Ok(None);
    };
    let claims = verifier.verify(headers).map_err(|e| Rejection {
        status: StatusCode::UNAUTHORIZED,
        www_authenticate: match &e {
            AuthError::Missing => None,
            AuthError::Invalid(why) => Some(format!(
                "Bearer scope=\"\" error=\"invalid_token\" error_description=\"{why}\""
            )),
        },
        reason: e.to_string(),
    })?;
    if route.authorization_scopes.is_empty() {
        return Ok(Some(Authorization {
            claims,
            scopes: None,
        }));
    }
    let scopes = claims.scopes();
    if !scopes
        .iter()
        .any(|s| route.authorization_scopes.contains(s))
    {
        let required = route.authorization_scopes.join(" ");
        return Err(Rejection {
            status: StatusCode::FORBIDDEN,
            reason: format!("the token has none of the scopes {required}"),
            www_authenticate: Some(format!(
                "Bearer scope=\"{required}\" error=\"insufficient_scope\" error_description=\"expected scopes: [{required}]\""
            )),
        });
    }
    Ok(Some(Authorization {
        claims,
        scopes: Some(scopes),
    }))
}

/// API Gateway's own answers: `{"message": "Not Found"}` and the like.
pub fn message(status: StatusCode, text: &str) -> HttpResponse {
    json_response(status, &serde_json::json!({ "message": text }))
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> HttpResponse {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The first value of `name` in a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Looks like API Gateway's request ids (`Q1a2b3cDEFgHIJ0=`).
fn request_id() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 11]>())
}

/// The API's default route throttle: `rate_per_s` tokens a second, at most `burst` saved.
struct TokenBucket {
    rate_per_s: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(throttle: Throttle) -> Self {
        let burst = f64::from(throttle.burst);
        Self {
            rate_per_s: throttle.rate_per_s,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    fn try_take(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.rate_per_s).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` turns true, then lets open requests finish
/// for a moment.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(req, remote.ip(), port).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open at shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::testing::{authorizer, keys};
    use crate::jwt::Minter;

    fn route(scopes: &[&str]) -> Route {
        Route {
            method: "PUT".into(),
            path: "/products/{sku}".into(),
            function: "ProductsFunction".into(),
            binary: "products".into(),
            timeout_s: 10,
            authorizer: Some("JwtAuthorizer".into()),
            authorization_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn headers(token: Option<&str>) -> hyper::HeaderMap {
        let mut headers = hyper::HeaderMap::new();
        if let Some(token) = token {
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        headers
    }

    fn token(admin: bool) -> String {
        Minter::new(keys().0.as_bytes(), &authorizer())
            .unwrap()
            .mint("alice", admin, Duration::from_secs(60))
            .unwrap()
    }

    async fn body_of(response: HttpResponse) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_request_without_a_token_gets_api_gateways_401() {
        let verifier = Verifier::new(keys().1.as_bytes(), &authorizer()).unwrap();
        let rejection = authorize(Some(&verifier), &route(&[]), &headers(None)).unwrap_err();
        let response = rejection.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
        assert_eq!(
            body_of(response).await,
            serde_json::json!({"message": "Unauthorized"})
        );
    }

    #[tokio::test]
    async fn an_invalid_token_gets_401_with_the_reason_in_www_authenticate() {
        let verifier = Verifier::new(keys().1.as_bytes(), &authorizer()).unwrap();
        let rejection =
            authorize(Some(&verifier), &route(&[]), &headers(Some("a.b.c"))).unwrap_err();
        let response = rejection.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert_eq!(
            body_of(response).await,
            serde_json::json!({"message": "Unauthorized"})
        );
    }

    #[test]
    fn a_valid_token_passes_with_its_claims() {
        let verifier = Verifier::new(keys().1.as_bytes(), &authorizer()).unwrap();
        let passed = authorize(Some(&verifier), &route(&[]), &headers(Some(&token(false))))
            .unwrap()
            .unwrap();
        assert_eq!(passed.claims.as_strings()["sub"], "alice");
        assert_eq!(
            passed.scopes, None,
            "scopes are only listed on routes that require them"
        );
    }

    #[test]
    fn a_route_that_requires_scopes_refuses_a_token_without_them_with_403() {
        let verifier = Verifier::new(keys().1.as_bytes(), &authorizer()).unwrap();
        let admin_only = route(&["flash-sale/admin"]);
        let rejection =
            authorize(Some(&verifier), &admin_only, &headers(Some(&token(false)))).unwrap_err();
        assert_eq!(rejection.status, StatusCode::FORBIDDEN);
        let passed = authorize(Some(&verifier), &admin_only, &headers(Some(&token(true))))
            .unwrap()
            .unwrap();
        assert_eq!(passed.scopes, Some(vec!["flash-sale/admin".to_owned()]));
    }

    #[test]
    fn an_open_route_needs_no_token() {
        assert_eq!(authorize(None, &route(&[]), &headers(None)), Ok(None));
    }

    #[test]
    fn the_throttle_allows_a_burst_then_refuses() {
        let bucket = TokenBucket::new(Throttle {
            rate_per_s: 0.001,
            burst: 3,
        });
        assert!((0..3).all(|_| bucket.try_take()));
        assert!(!bucket.try_take());
    }

    #[test]
    fn request_ids_look_like_api_gateways() {
        let id = request_id();
        assert_eq!(id.len(), 16);
        assert!(id.ends_with('='));
    }
}
