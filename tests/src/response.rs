//! A handler's HTTP response taken apart, and the contract's promise for an error answer.

use flash_domain::OrderId;
use lambda_http::{Body, Response};
use serde_json::Value;
use std::collections::BTreeSet;

/// Words that would mean an error message leaks the implementation.
pub const INTERNAL_NAMES: &[&str] = &[
    "OrderRequest",
    "ProductSpec",
    "NoFields",
    "flash_",
    "struct ",
    "panicked",
    ".rs:",
    "serde",
];

/// A response taken apart.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
}

impl Resp {
    /// The response; a body that is not JSON fails the test.
    pub fn from(r: Response<Body>) -> Self {
        Self::parse(r, |bytes| {
            serde_json::from_slice(bytes).expect("the body is JSON")
        })
    }

    /// The response; a body that is not JSON is kept as a string, so the case that got it
    /// fails with it rather than with a panic.
    pub fn lenient(r: Response<Body>) -> Self {
        Self::parse(r, |bytes| {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
        })
    }

    fn parse(r: Response<Body>, json: impl Fn(&[u8]) -> Value) -> Self {
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (retry_after, content_type) = (header("retry-after"), header("content-type"));
        let body = match r.body() {
            Body::Text(t) => json(t.as_bytes()),
            Body::Binary(b) => json(b),
            _ => Value::Null,
        };
        Self {
            status: r.status().as_u16(),
            body,
            retry_after,
            content_type,
        }
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn order_id(&self) -> OrderId {
        OrderId::parse(self.body["order_id"].as_str().expect("an order_id")).expect("a valid id")
    }

    pub fn keys(&self) -> BTreeSet<String> {
        self.body
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Status and `error.code` as the contract's error table says, a message for humans, JSON, and
/// `Retry-After` on the statuses that promise it.
#[track_caller]
pub fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!((r.status, r.code()), (status, code), "body: {}", r.body);
    assert!(r.body["error"]["message"].is_string(), "body: {}", r.body);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    if matches!(status, 429 | 503) {
        let secs: u32 = r
            .retry_after
            .as_deref()
            .and_then(|s| s.parse().ok())
            .expect("Retry-After in seconds");
        assert!(secs > 0);
    }
}

/// A response's status and JSON body (`null` when it has none or it is not JSON).
pub fn parts(resp: Response<Body>) -> (u16, Value) {
    let r = Resp::parse(resp, |bytes| {
        serde_json::from_slice(bytes).unwrap_or(Value::Null)
    });
    (r.status, r.body)
}
