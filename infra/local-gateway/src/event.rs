//! The API Gateway HTTP API event (payload format 2.0) for a request, built as API Gateway
//! builds it, and turned into the `lambda_http::Request` the function's handler gets, through
//! the same deserialisation the Lambda runtime uses.

use crate::jwt::Claims;
use crate::routes::Matched;
use base64::Engine as _;
use lambda_http::http::{HeaderMap, Method};
use serde_json::{json, Map, Value};
use std::net::IpAddr;
use time::OffsetDateTime;

/// The account id the local stack reports everywhere (as stack.py does).
const ACCOUNT_ID: &str = "000000000000";
const API_ID: &str = "local";

/// What the gateway received.
#[derive(Debug, Clone, Copy)]
pub struct IncomingRequest<'a> {
    pub method: &'a Method,
    /// As received, percent-encoded.
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub source_ip: IpAddr,
    /// The gateway's own port (API Gateway's `x-forwarded-port`).
    pub port: u16,
}

/// What the JWT authorizer found: the token's claims and, on routes that require
/// authorization scopes, the token's scopes.
#[derive(Debug, Clone, Copy)]
pub struct Authorized<'a> {
    pub claims: &'a Claims,
    pub scopes: Option<&'a [String]>,
}

/// The event, as JSON.
pub fn api_gateway_event(
    req: &IncomingRequest<'_>,
    matched: &Matched<'_>,
    authorized: Option<Authorized<'_>>,
    request_id: &str,
    now: OffsetDateTime,
) -> Value {
    let mut headers: Map<String, Value> = Map::new();
    let mut cookies: Vec<String> = Vec::new();
    for name in req.headers.keys() {
        let values = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if name == "cookie" {
            // Payload 2.0 moves cookies out of the headers.
            cookies.extend(values.flat_map(|v| {
                v.split(';')
                    .map(|c| c.trim().to_owned())
                    .collect::<Vec<_>>()
            }));
            cookies.retain(|c| !c.is_empty());
        } else {
            // Header names are already lowercase; repeated headers are joined with commas.
            headers.insert(
                name.as_str().to_owned(),
                values.collect::<Vec<_>>().join(",").into(),
            );
        }
    }
    let source_ip = req.source_ip.to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(Value::as_str) {
        Some(earlier) => format!("{earlier}, {source_ip}"),
        None => source_ip.clone(),
    };
    headers.insert("x-forwarded-for".into(), forwarded_for.into());
    headers.insert("x-forwarded-port".into(), req.port.to_string().into());
    headers.insert("x-forwarded-proto".into(), "http".into());
    if !headers.contains_key("x-amzn-trace-id") {
        let trace = format!(
            "Root=1-{:08x}-{}",
            now.unix_timestamp(),
            trace_suffix(request_id)
        );
        headers.insert("x-amzn-trace-id".into(), trace.into());
    }

    let host = headers
        .get("host")
        .and_then(Value::as_str)
        .unwrap_or("127.0.0.1");
    let domain = host
        .rsplit_once(':')
        .map_or(host, |(name, _)| name)
        .to_owned();
    let domain_prefix = domain.split('.').next().unwrap_or_default().to_owned();
    let user_agent = headers
        .get("user-agent")
        .cloned()
        .unwrap_or_else(|| "".into());

    let mut context = json!({
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": domain,
        "domainPrefix": domain_prefix,
        "http": {
            "method": req.method.as_str(),
            "path": req.raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": user_agent,
        },
        "requestId": request_id,
        "routeKey": matched.route_key,
        "stage": "$default",
        "time": request_time(now),
        "timeEpoch": now.unix_timestamp_nanos() / 1_000_000,
    });
    if let Some(auth) = authorized {
        context["authorizer"] = json!({
            "jwt": {"claims": auth.claims.as_strings(), "scopes": auth.scopes}
        });
    }

    let mut event = json!({
        "version": "2.0",
        "routeKey": matched.route_key,
        "rawPath": req.raw_path,
        "rawQueryString": req.raw_query,
        "headers": headers,
        "requestContext": context,
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        event["cookies"] = cookies.into();
    }
    if !req.raw_query.is_empty() {
        event["queryStringParameters"] = query_parameters(req.raw_query).into();
    }
    if !matched.path_parameters.is_empty() {
        let params: Map<String, Value> = matched
            .path_parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        event["pathParameters"] = params.into();
    }
    if !req.body.is_empty() {
        let content_type = req
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        match std::str::from_utf8(req.body) {
            Ok(text) if is_text(content_type) => event["body"] = text.into(),
            _ => {
                event["body"] = base64::engine::general_purpose::STANDARD
                    .encode(req.body)
                    .into();
                event["isBase64Encoded"] = true.into();
            }
        }
    }
    event
}

/// The request the handler gets: the event deserialised exactly as `lambda_http::run` does.
pub fn lambda_request(event: &Value) -> Result<lambda_http::Request, serde_json::Error> {
    lambda_http::request::from_str(&event.to_string())
}

/// API Gateway passes text bodies as they are and base64-encodes the rest.
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime.starts_with("text/")
        || mime.ends_with("/json")
        || mime.ends_with("+json")
        || mime.ends_with("/xml")
        || mime.ends_with("+xml")
        || mime == "application/javascript"
        || mime == "application/x-www-form-urlencoded"
}

/// Repeated parameters are joined with commas, as payload 2.0 does. Values stay encoded.
fn query_parameters(raw: &str) -> Map<String, Value> {
    let mut params: Map<String, Value> = Map::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match params.get_mut(key) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(value);
            }
            _ => {
                params.insert(key.to_owned(), value.into());
            }
        }
    }
    params
}

/// `01/Jan/2026:12:00:00 +0000`.
fn request_time(now: OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    now.format(time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    ))
    .unwrap_or_default()
}

/// 24 hex digits for a trace id, derived from the request id so one request's ids agree.
fn trace_suffix(request_id: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(request_id)
        .unwrap_or_default();
    let mut hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(24);
    format!("{hex:0<24}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;
    use lambda_http::request::RequestContext;
    use lambda_http::{Body, RequestExt};

    fn route() -> Route {
        Route {
            method: "POST".into(),
            path: "/orders/{order_id}/{action}".into(),
            function: "AdvanceOrderFunction".into(),
            binary: "advance-order".into(),
            timeout_s: 10,
            authorizer: Some("JwtAuthorizer".into()),
            authorization_scopes: Vec::new(),
        }
    }

    fn claims() -> Claims {
        Claims(
            json!({"sub": "alice", "scope": "flash-sale/admin", "exp": 1767272400, "aud": "flash-sale-api"})
                .as_object()
                .unwrap()
                .clone(),
        )
    }

    fn headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:3000".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("Idempotency-Key", "k-1".parse().unwrap());
        headers.append("accept", "application/json".parse().unwrap());
        headers.append("accept", "text/plain".parse().unwrap());
        headers.insert("cookie", "a=1; b=2".parse().unwrap());
        headers
    }

    fn event(body: &[u8], content_type: Option<&str>) -> Value {
        let route = route();
        let matched = Matched {
            route: &route,
            route_key: "POST /orders/{order_id}/{action}".into(),
            path_parameters: vec![
                ("order_id".into(), "o-1".into()),
                ("action".into(), "pay".into()),
            ],
        };
        let mut headers = headers();
        match content_type {
            Some(ct) => headers.insert("content-type", ct.parse().unwrap()),
            None => headers.remove("content-type"),
        };
        let req = IncomingRequest {
            method: &Method::POST,
            raw_path: "/orders/o-1/pay",
            raw_query: "x=1&x=2&y=",
            headers: &headers,
            body,
            source_ip: "127.0.0.1".parse().unwrap(),
            port: 3000,
        };
        let claims = claims();
        let authorized = Authorized {
            claims: &claims,
            scopes: None,
        };
        let now = OffsetDateTime::from_unix_timestamp(1_767_268_800).unwrap();
        api_gateway_event(&req, &matched, Some(authorized), "Q1a2b3cDEFgHIJ0=", now)
    }

    #[test]
    fn the_event_has_the_payload_2_0_shape() {
        let event = event(b"{}", Some("application/json"));
        assert_eq!(event["version"], "2.0");
        assert_eq!(event["routeKey"], "POST /orders/{order_id}/{action}");
        assert_eq!(event["rawPath"], "/orders/o-1/pay");
        assert_eq!(event["rawQueryString"], "x=1&x=2&y=");
        assert_eq!(event["queryStringParameters"], json!({"x": "1,2", "y": ""}));
        assert_eq!(
            event["pathParameters"],
            json!({"order_id": "o-1", "action": "pay"})
        );
        assert_eq!(event["headers"]["idempotency-key"], "k-1");
        assert_eq!(event["headers"]["accept"], "application/json,text/plain");
        assert_eq!(event["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(event["headers"]["x-forwarded-proto"], "http");
        assert!(event["headers"].get("cookie").is_none());
        assert_eq!(event["cookies"], json!(["a=1", "b=2"]));
        let ctx = &event["requestContext"];
        assert_eq!(ctx["http"]["method"], "POST");
        assert_eq!(ctx["http"]["path"], "/orders/o-1/pay");
        assert_eq!(ctx["http"]["sourceIp"], "127.0.0.1");
        assert_eq!(ctx["requestId"], "Q1a2b3cDEFgHIJ0=");
        assert_eq!(ctx["stage"], "$default");
        assert_eq!(ctx["domainName"], "127.0.0.1");
        assert_eq!(ctx["time"], "01/Jan/2026:12:00:00 +0000");
        assert_eq!(ctx["timeEpoch"], 1_767_268_800_000_i64);
        assert_eq!(ctx["authorizer"]["jwt"]["claims"]["exp"], "1767272400");
        assert_eq!(ctx["authorizer"]["jwt"]["scopes"], Value::Null);
        assert_eq!(event["body"], "{}");
        assert_eq!(event["isBase64Encoded"], false);
    }

    #[test]
    fn the_event_deserialises_with_lambda_http_and_carries_the_claims() {
        let req = lambda_request(&event(br#"{"a":1}"#, Some("application/json"))).unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/orders/o-1/pay");
        assert_eq!(req.headers()["idempotency-key"], "k-1");
        assert_eq!(
            req.path_parameters_ref().and_then(|p| p.first("action")),
            Some("pay")
        );
        assert_eq!(req.body(), &Body::Text(r#"{"a":1}"#.into()));
        let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref() else {
            panic!("not an API Gateway v2 request");
        };
        let jwt = ctx
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .unwrap();
        assert_eq!(jwt.claims["sub"], "alice");
        assert_eq!(jwt.claims["scope"], "flash-sale/admin");
        // The functions' own view of the caller agrees.
        let caller = flash_aws::http::caller(&req).unwrap();
        assert_eq!(caller.user.as_str(), "alice");
        assert!(caller.admin);
    }

    #[test]
    fn a_binary_body_is_base64_encoded_and_decoded_back() {
        let body = [0u8, 159, 146, 150];
        let event = event(&body, Some("application/octet-stream"));
        assert_eq!(event["isBase64Encoded"], true);
        let req = lambda_request(&event).unwrap();
        assert_eq!(req.body(), &Body::Binary(body.to_vec()));
    }

    #[test]
    fn an_empty_body_is_left_out() {
        let event = event(b"", None);
        assert!(event.get("body").is_none());
        let req = lambda_request(&event).unwrap();
        assert_eq!(req.body(), &Body::Empty);
    }

    #[test]
    fn the_sample_event_in_events_is_what_the_gateway_produces_in_shape() {
        // Every top-level and requestContext key of the fixture is present in ours.
        let sample: Value =
            serde_json::from_str(include_str!("../../../events/advance-order.json")).unwrap();
        let ours = event(b"{}", Some("application/json"));
        for key in sample.as_object().unwrap().keys() {
            assert!(ours.get(key).is_some(), "missing {key}");
        }
        for key in sample["requestContext"].as_object().unwrap().keys() {
            assert!(
                ours["requestContext"].get(key).is_some(),
                "missing requestContext.{key}"
            );
        }
    }
}
