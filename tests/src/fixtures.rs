//! Requests and SQS events built from the real sample payloads in `events/`, edited per test.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// A handler's response body as JSON; anything but a JSON text body fails the test.
pub fn json_body(resp: &Response<Body>) -> Value {
    match resp.body() {
        Body::Text(t) => serde_json::from_str(t).expect("JSON body"),
        other => panic!("unexpected body {other:?}"),
    }
}

pub fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events")
}

/// The fixture `events/{name}.json` as JSON. Each file is read once per test binary: the
/// fault suite builds requests by the hundred thousand.
pub fn event(name: &str) -> Value {
    static CACHE: OnceLock<Mutex<HashMap<String, Value>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
        return v.clone();
    }
    let path = events_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_owned(), v.clone());
    v
}

/// An API Gateway HTTP API (payload 2.0) request, starting from a fixture.
#[derive(Clone)]
pub struct Req(pub Value);

impl Req {
    pub fn fixture(name: &str) -> Self {
        Self(event(name))
    }

    /// `POST /orders` by `user` with `key` and `body`.
    pub fn place_order(user: &str, key: &str, body: &str) -> Self {
        Self::fixture("place-order")
            .caller(user, false)
            .header("idempotency-key", key)
            .body(body)
    }

    pub fn get_order(user: &str, order_id: &str) -> Self {
        Self::fixture("get-order")
            .caller(user, false)
            .path("order_id", order_id)
            .raw_path(&format!("/orders/{order_id}"))
    }

    pub fn advance(user: &str, admin: bool, order_id: &str, action: &str) -> Self {
        Self::fixture("advance-order")
            .caller(user, admin)
            .path("order_id", order_id)
            .path("action", action)
            .raw_path(&format!("/orders/{order_id}/{action}"))
    }

    pub fn put_product(sku: &str, body: &str) -> Self {
        Self::fixture("put-product")
            .caller("admin-1", true)
            .path("sku", sku)
            .raw_path(&format!("/products/{sku}"))
            .body(body)
    }

    pub fn get_product(user: &str, sku: &str) -> Self {
        Self::fixture("get-product")
            .caller(user, false)
            .path("sku", sku)
            .raw_path(&format!("/products/{sku}"))
    }

    /// Sets the authorizer's claims as API Gateway's JWT authorizer passes them.
    pub fn caller(mut self, sub: &str, admin: bool) -> Self {
        let jwt = &mut self.0["requestContext"]["authorizer"]["jwt"];
        jwt["claims"]["sub"] = json!(sub);
        jwt["claims"]["scope"] = json!(if admin { "flash-sale/admin" } else { "" });
        self
    }

    /// No authorizer context at all (what a handler sees if a route lost its authorizer).
    pub fn anonymous(mut self) -> Self {
        if let Some(ctx) = self.0["requestContext"].as_object_mut() {
            ctx.remove("authorizer");
        }
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.0["headers"][name.to_ascii_lowercase()] = json!(value);
        self
    }

    pub fn without_header(mut self, name: &str) -> Self {
        if let Some(h) = self.0["headers"].as_object_mut() {
            h.remove(&name.to_ascii_lowercase());
        }
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.0["body"] = json!(body);
        self.0["isBase64Encoded"] = json!(false);
        self.0["headers"]["content-length"] = json!(body.len().to_string());
        self
    }

    pub fn path(mut self, name: &str, value: &str) -> Self {
        self.0["pathParameters"][name] = json!(value);
        self
    }

    fn raw_path(mut self, path: &str) -> Self {
        self.0["rawPath"] = json!(path);
        self.0["requestContext"]["http"]["path"] = json!(path);
        self
    }

    pub fn build(&self) -> Request {
        lambda_http::request::from_str(&self.0.to_string()).expect("fixture is a valid v2 request")
    }
}

/// An SQS event in the shape of `events/process-orders.json` carrying these (message id,
/// body) pairs.
pub fn sqs_event(messages: &[(String, String)]) -> SqsEvent {
    let records: Vec<(String, Option<String>)> = messages
        .iter()
        .map(|(id, body)| (id.clone(), Some(body.clone())))
        .collect();
    sqs_records(&records)
}

/// [`sqs_event`] of (message id, body) records where `None` is a record without a body.
pub fn sqs_records(messages: &[(String, Option<String>)]) -> SqsEvent {
    let mut e = event("process-orders");
    let template = e["Records"][0].clone();
    e["Records"] = messages
        .iter()
        .map(|(id, body)| {
            let mut r = template.clone();
            r["messageId"] = json!(id);
            r["body"] = json!(body);
            r
        })
        .collect();
    serde_json::from_value(e).expect("fixture is a valid SQS event")
}

/// The end of an SQS-triggered invocation that starts now, as Lambda's context gives it
/// (epoch ms): now plus process-orders' `Timeout` in template.yaml.
pub fn invocation_deadline() -> flash_domain::clock::Millis {
    flash_domain::clock::now_ms() + 30_000
}
