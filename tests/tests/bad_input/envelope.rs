//! The event envelope: a v1 event or a v2 event without its request context never acts as a caller.

use super::*;

// --- The event envelope --------------------------------------------------------------------

/// `sam local generate-event apigateway aws-proxy --body '{"sku":"SKU-1","quantity":1}' --path
/// orders --resource /orders`: an API Gateway REST API (payload format 1.0) event, with the
/// headers a JSON client would add and the claims a REST API's authorizer puts in its context.
/// `multiValueHeaders` is trimmed to what matters.
const APIGW_V1_EVENT: &str = r#"{
  "body": "eyJza3UiOiJTS1UtMSIsInF1YW50aXR5IjoxfQ==",
  "resource": "/orders",
  "path": "/orders",
  "httpMethod": "POST",
  "isBase64Encoded": true,
  "queryStringParameters": {"foo": "bar"},
  "multiValueQueryStringParameters": {"foo": ["bar"]},
  "pathParameters": {"proxy": "/orders", "order_id": "0123456789abcdef0123456789abcdef", "action": "pay", "sku": "SKU-1"},
  "stageVariables": {"baz": "qux"},
  "headers": {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "Host": "1234567890.execute-api.us-east-1.amazonaws.com",
    "Idempotency-Key": "v1-key",
    "User-Agent": "Custom User Agent String",
    "X-Forwarded-For": "127.0.0.1, 127.0.0.2",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Proto": "https"
  },
  "multiValueHeaders": {
    "Content-Type": ["application/json"],
    "Idempotency-Key": ["v1-key"]
  },
  "requestContext": {
    "accountId": "123456789012",
    "resourceId": "123456",
    "stage": "prod",
    "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
    "requestTime": "09/Apr/2015:12:34:56 +0000",
    "requestTimeEpoch": 1428582896000,
    "authorizer": {"claims": {"sub": "alice", "scope": "flash-sale/admin"}},
    "identity": {
      "cognitoIdentityPoolId": null,
      "accountId": null,
      "cognitoIdentityId": null,
      "caller": null,
      "accessKey": null,
      "sourceIp": "127.0.0.1",
      "cognitoAuthenticationType": null,
      "cognitoAuthenticationProvider": null,
      "userArn": null,
      "userAgent": "Custom User Agent String",
      "user": null
    },
    "path": "/prod/orders",
    "resourcePath": "/orders",
    "httpMethod": "POST",
    "apiId": "1234567890",
    "protocol": "HTTP/1.1"
  }
}"#;

#[tokio::test]
async fn an_api_gateway_v1_event_never_acts_as_a_caller_on_a_v2_handler() {
    // GIVEN SKU-1 on sale, alice's pending order, and a REST API (payload 1.0) event whose
    // authorizer context claims alice as an admin
    let world = World::new().await;
    let before = world.written();
    // WHEN the runtime's parser reads it as what the functions take: lambda_http built with
    // only `apigw_http` knows the 2.0 payload alone
    let parsed = std::panic::catch_unwind(|| lambda_http::request::from_str(APIGW_V1_EVENT));
    // THEN it does not panic
    let parsed = parsed.expect("lambda_http panicked on a v1 event");
    match parsed {
        // AND it is refused before any handler runs: on Lambda the runtime reports an invocation
        // error (API Gateway answers 502), so no handler, store or queue is reached
        Err(e) => assert!(e.is_data(), "{e}"),
        // OR, if lambda_http was built to read 1.0 payloads too, every handler sees a request
        // without the 2.0 JWT claims: 401, whatever the 1.0 context claims
        Ok(_) => {
            for route in [Route::PlaceOrder, Route::Products, Route::AdvanceOrder] {
                let req = lambda_http::request::from_str(APIGW_V1_EVENT).expect("parsed above");
                let r = world.send_request(route, req).await;
                assert_eq!(r.error_mismatch(401, "unauthorized"), None, "{route:?}");
            }
            let req = lambda_http::request::from_str(APIGW_V1_EVENT).expect("parsed above");
            let r = GetOrder {
                store: world.store.clone(),
            }
            .handle(req)
            .await;
            assert_eq!(Resp::lenient(r).error_mismatch(401, "unauthorized"), None);
        }
    }
    // AND nothing is written or sent
    assert_eq!(world.written(), before);
}

#[tokio::test]
async fn a_v2_event_without_its_request_context_is_refused_by_the_parser() {
    // GIVEN the place-order fixture with the part only API Gateway writes removed or mangled
    let mut no_http = Req::place_order("alice", "k", ORDER).0;
    no_http["requestContext"]
        .as_object_mut()
        .expect("a context")
        .remove("http");
    let mut no_context = Req::place_order("alice", "k", ORDER).0;
    no_context
        .as_object_mut()
        .expect("an event")
        .remove("requestContext");
    let mut bad_method = Req::place_order("alice", "k", ORDER).0;
    bad_method["requestContext"]["http"]["method"] = json!("P O S T");
    // A control character is not allowed in a header value (RFC 9110); HTTP itself refuses it,
    // so an Idempotency-Key with DEL never reaches place-order.
    let del_in_header = Req::place_order("alice", "k\u{7f}", ORDER).0;
    for (what, e) in [
        ("no http", no_http),
        ("no context", no_context),
        ("bad method", bad_method),
        ("DEL in a header", del_in_header),
    ] {
        // WHEN lambda_http parses it
        let parsed = std::panic::catch_unwind(|| lambda_http::request::from_str(&e.to_string()));
        // THEN it is an error, not a panic and not a request with made-up parts
        let parsed = parsed.unwrap_or_else(|_| panic!("{what}: lambda_http panicked"));
        assert!(parsed.is_err(), "{what}: parsed");
    }
}
