//! The local stack the emulator tests run against: DynamoDB Local and fauxqs, started by
//! `make test` (`infra/stack.py up`), which writes their endpoints to a `stack.env` file.
//! Without it these tests fail loudly; they never skip.

use crate::fixtures::{json_body, Req};
use aws_sdk_sqs::types::QueueAttributeName;
use flash_aws::dynamo::{DynamoRateLimit, RateHints};
use flash_aws::{DynamoStore, SqsQueue};
use place_order::PlaceOrder;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// The local stack's `stack.env` (`STACK_ENV`, or `make test`'s).
pub fn env_file() -> std::path::PathBuf {
    match std::env::var("STACK_ENV") {
        Ok(p) => p.into(),
        Err(_) => {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/test/stack.env")
        }
    }
}

/// The stack's state directory: `stack.env`'s, beside `gateway.json`.
pub fn state_dir() -> std::path::PathBuf {
    let file = env_file();
    file.parent().map(|p| p.to_owned()).unwrap_or(file)
}

/// The variables of `stack.env`, also exported to this process so the SDK finds the endpoints.
pub fn vars() -> &'static HashMap<String, String> {
    static VARS: OnceLock<HashMap<String, String>> = OnceLock::new();
    VARS.get_or_init(|| {
        let path = env_file();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the local stack is not running ({}: {e}). Run the tests with `make test`, \
                 which starts DynamoDB Local and fauxqs, or start them with `make stack-up`.",
                path.display()
            )
        });
        let vars: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
            .collect();
        for (k, v) in &vars {
            // Safe: set once, before any test starts a client, under the OnceLock.
            unsafe { std::env::set_var(k, v) };
        }
        vars
    })
}

pub fn var(name: &str) -> String {
    vars()
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} missing from stack.env"))
}

pub async fn sdk() -> aws_config::SdkConfig {
    vars();
    flash_aws::config::sdk_config().await
}

/// The SDK configuration of the stack with `faults` under its HTTP client, and retries that
/// back off in milliseconds rather than seconds (the attempts are the SDK's default three).
pub async fn faulty_sdk(faults: &crate::sdk_faults::SdkFaults) -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    use std::time::Duration;
    sdk()
        .await
        .into_builder()
        .http_client(faults.http_client(aws_sim::judge::default_https_client()))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(5))
                .with_max_backoff(Duration::from_millis(40)),
        )
        .build()
}

/// The store the scenarios use. Their handlers take no per-caller rate limit: they send many
/// requests as one caller (an admin cancelling 40 orders at once); the rate limit has
/// scenarios of its own ([`rate_limit`]).
pub async fn store() -> DynamoStore {
    DynamoStore::from_config(&sdk().await, var("TABLE_NAME"))
}

/// The table's rate limit, callers taking tokens from `bucket`. Each one keeps its own hints,
/// as one Lambda instance would.
pub async fn rate_limit(bucket: flash_domain::token_bucket::TokenBucket) -> DynamoRateLimit {
    DynamoRateLimit::new(store().await, bucket, RateHints::default())
}

pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk().await)
}

/// A fresh queue for one test, with the orders queue's visibility timeout, so tests running
/// in parallel never drain each other's messages.
pub async fn test_queue(name: &str) -> (SqsQueue, String) {
    let client = sqs().await;
    let unique = format!("{name}-{}", rand::random::<u32>());
    let url = client
        .create_queue()
        .queue_name(unique)
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .send()
        .await
        .expect("fauxqs answers CreateQueue")
        .queue_url
        .expect("queue url");
    (SqsQueue::new(client, url.clone()), url)
}

/// A SKU no other test uses.
pub fn unique_sku(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A queue and its DLQ as template.yaml's redrive policy has them (`max_receives` receives,
/// then the DLQ), with a visibility timeout of `visibility_s` so a failed record comes back as
/// soon as the test needs. Returns the queue's URL, the DLQ's URL and the queue's ARN.
pub async fn queue_with_dlq(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    visibility_s: u32,
    max_receives: u32,
) -> (String, String, String) {
    let arn = |url: String| async move {
        sqs.get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("GetQueueAttributes")
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .expect("the queue's arn")
    };
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .expect("CreateQueue (DLQ)")
        .queue_url
        .expect("a queue url");
    let redrive = serde_json::json!({
        "deadLetterTargetArn": arn(dlq.clone()).await,
        "maxReceiveCount": max_receives.to_string(),
    });
    let url = sqs
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_s.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("a queue url");
    let queue_arn = arn(url.clone()).await;
    (url, dlq, queue_arn)
}

/// Creates `sku` from `spec` through the products function, as an admin's first `PUT` does.
pub async fn create_product(store: &DynamoStore, sku: &str, spec: &serde_json::Value) {
    let products = products::Products::new(store.clone());
    let req = crate::fixtures::Req::put_product(sku, &spec.to_string());
    let resp = products.handle(req.build()).await;
    let body = crate::fixtures::json_body(&resp);
    assert_eq!(resp.status(), 201, "{body:?}");
}

/// A table of its own with the template's key schema, so the reconciler sees only what the
/// test put there.
pub async fn fresh_table() -> DynamoStore {
    let sdk = sdk().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let name = format!("reconcile-{:08x}", rand::random::<u32>());
    let key = |name: &str, kind| {
        aws_sdk_dynamodb::types::KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("key")
    };
    let attr = |name: &str| {
        aws_sdk_dynamodb::types::AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
            .build()
            .expect("attribute")
    };
    client
        .create_table()
        .table_name(&name)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .key_schema(key("pk", aws_sdk_dynamodb::types::KeyType::Hash))
        .key_schema(key("sk", aws_sdk_dynamodb::types::KeyType::Range))
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .send()
        .await
        .expect("DynamoDB Local creates the table");
    DynamoStore::new(client, name)
}

/// The `flashctl` binary the workspace build put beside the test binaries
/// (`target/<profile>/flashctl`); `make test` builds it before running the tests.
pub fn flashctl_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test binary>
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("flashctl"))
        .expect("a target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p flashctl`; `make test` does)",
        bin.display()
    );
    bin
}

/// Runs `task(item)` for every item, each as a task of its own, at most `concurrency` at a
/// time; their outputs in the order of `items`.
pub async fn spawn_gated<T, F, Fut>(
    items: impl IntoIterator<Item = T>,
    concurrency: usize,
    task: F,
) -> Vec<Fut::Output>
where
    F: Fn(T) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let gate = Arc::new(Semaphore::new(concurrency));
    let tasks: Vec<_> = items
        .into_iter()
        .map(|item| {
            let (gate, work) = (gate.clone(), task(item));
            tokio::spawn(async move {
                let _permit = gate.acquire().await.expect("semaphore");
                work.await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// Sends `reqs` to `place`, at most `concurrency` in flight. Every answer must be a 202; the
/// order ids they name, in the order of `reqs`.
pub async fn place_accepted(
    place: &Arc<PlaceOrder<DynamoStore, SqsQueue>>,
    reqs: Vec<Req>,
    concurrency: usize,
) -> Vec<String> {
    let resps = spawn_gated(reqs, concurrency, |req| {
        let place = place.clone();
        async move { place.handle(req.build()).await }
    })
    .await;
    let mut ids = Vec::new();
    for resp in resps {
        assert_eq!(resp.status(), 202, "{:?}", json_body(&resp));
        let id = json_body(&resp)["order_id"]
            .as_str()
            .expect("order_id")
            .to_owned();
        ids.push(id);
    }
    ids
}
