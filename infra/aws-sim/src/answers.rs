//! The synthetic answers: DynamoDB's operation header and the JSON error bodies DynamoDB sends
//! when it throttles or cancels a request, shared by the capacity model and the tests' fault
//! injector, so the SDK parses, classifies and retries them exactly like real ones.

use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use serde_json::{json, Value};

/// The JSON protocols' operation header: `DynamoDB_20120810.<Operation>`,
/// `AmazonSQS.<Operation>`.
pub const TARGET_HEADER: &str = "x-amz-target";
pub const TARGET_PREFIX: &str = "DynamoDB_20120810.";
pub const ERROR_PREFIX: &str = "com.amazonaws.dynamodb.v20120810#";

/// What DynamoDB says when an on-demand table's item (partition) runs out of write capacity.
pub const THROTTLE_MESSAGE: &str =
    "Throughput exceeds the current capacity of your table or index. \
DynamoDB is automatically scaling your table or index so please try again shortly. If exceptions \
persist, check if you have a hot key: \
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html";
pub const CONFLICT_MESSAGE: &str = "Transaction is ongoing for the item";

/// The DynamoDB operation a request calls (`PutItem`, `TransactWriteItems`, ...), from its
/// target header; `None` for any other service.
pub fn dynamodb_operation(request: &HttpRequest) -> Option<&str> {
    request
        .headers()
        .get(TARGET_HEADER)
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
}

/// An error answer of an AWS JSON protocol, as the service sends it, so the SDK parses,
/// classifies and retries it like a real one. Also used by the tests' fault injector.
///
/// # Panics
/// When `status` is not a valid HTTP status code.
pub fn json_error_response(status: u16, body: &Value, request_id: &str) -> HttpResponse {
    let body = body.to_string();
    let mut response = HttpResponse::new(
        StatusCode::try_from(status).expect("a valid HTTP status"),
        SdkBody::from(body.clone()),
    );
    let headers = response.headers_mut();
    headers.insert("content-type", "application/x-amz-json-1.0");
    headers.insert("content-length", body.len().to_string());
    headers.insert("x-amzn-requestid", request_id.to_owned());
    response
}

/// A DynamoDB error body: `error` is the exception's short name (`ThrottlingException`).
pub fn error_body(error: &str, message: &str) -> Value {
    json!({ "__type": format!("{ERROR_PREFIX}{error}"), "message": message })
}

/// `TransactionCanceledException` with `code` on the flagged items and `None` on the rest.
pub fn canceled_body(flagged: &[bool], code: &str) -> Value {
    let message = match code {
        "TransactionConflict" => CONFLICT_MESSAGE,
        _ => THROTTLE_MESSAGE,
    };
    let reasons: Vec<Value> = flagged
        .iter()
        .map(|&f| {
            if f {
                json!({ "Code": code, "Message": message })
            } else {
                json!({ "Code": "None" })
            }
        })
        .collect();
    let codes: Vec<&str> = flagged
        .iter()
        .map(|&f| if f { code } else { "None" })
        .collect();
    json!({
        "__type": format!("{ERROR_PREFIX}TransactionCanceledException"),
        "Message": format!(
            "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
            codes.join(", ")
        ),
        "CancellationReasons": reasons,
    })
}
