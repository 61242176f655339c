//! Scenarios against the real local stack: DynamoDB Local and fauxqs over HTTP, driven
//! through the same handler code the Lambdas run. Every scenario ends with the invariant
//! checker reading the table.

use aws_sdk_dynamodb::types::AttributeValue;
use flash_aws::dynamo::WriteCounts;
use flash_aws::{DynamoStore, SqsQueue};
use flash_domain::{OrderStatus, Reason};
use flash_tests::drain::{delete, drain, receive_batch};
use flash_tests::fixtures::{json_body as body, sqs_event, Req};
use flash_tests::invariant_assertions::{audit, AuditAssertions};
use flash_tests::stack::{self, place_accepted, unique_sku};
use lambda_http::{Body, Response};
use place_order::PlaceOrder;
use process_orders::ProcessOrders;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod duplicates_and_returns;
mod invariant_checker;
mod pipeline;
mod purchase_limits;
mod rate_limit;
mod redelivery;
mod sold_out;

struct Sale {
    sku: String,
    store: DynamoStore,
    place: Arc<PlaceOrder<DynamoStore, SqsQueue>>,
    process: ProcessOrders<DynamoStore, flash_tests::fake_expiry::FakeTimeouts>,
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl Sale {
    /// GIVEN a product with `spec` (name and stock set here) and a queue of its own.
    async fn open(prefix: &str, spec: Value) -> Sale {
        // Its writes are counted, as the local stack counts the functions' writes.
        let store = stack::store().await.with_write_stats();
        let sku = unique_sku(prefix);
        stack::create_product(&store, &sku, &spec).await;
        let (queue, url) = stack::test_queue(prefix).await;
        Sale {
            sku,
            place: Arc::new(PlaceOrder::new(store.clone(), queue)),
            process: ProcessOrders {
                store: store.clone(),
                timeouts: flash_tests::fake_expiry::FakeTimeouts::new(),
            },
            store,
            sqs: stack::sqs().await,
            url,
        }
    }

    /// GIVEN `stock` units of a product called `name`, limited to `limit` per buyer.
    async fn limited(prefix: &str, name: &str, stock: u64, limit: u32) -> Sale {
        let spec = json!({"name": name, "stock": stock, "per_user_limit": limit});
        Sale::open(prefix, spec).await
    }

    /// The writes the sale's store has sent so far.
    fn writes(&self) -> WriteCounts {
        self.store
            .stats()
            .expect("a sale's store counts its writes")
            .snapshot()
    }

    /// `who`'s order of one unit under `key`.
    fn one_unit(&self, who: &str, key: &str) -> Req {
        Req::place_order(
            who,
            key,
            &json!({"sku": self.sku, "quantity": 1}).to_string(),
        )
    }

    /// `who` orders one unit under `key`; the answer.
    async fn place_one_unit(&self, who: &str, key: &str) -> Response<Body> {
        self.place.handle(self.one_unit(who, key).build()).await
    }

    /// `buyers` distinct buyers order `quantity(i)` units at once, at most `concurrency` in
    /// flight. Returns the order ids of the 202s.
    async fn rush(
        &self,
        buyers: usize,
        concurrency: usize,
        quantity: impl Fn(usize) -> u32,
    ) -> Vec<String> {
        let reqs = (0..buyers)
            .map(|i| {
                Req::place_order(
                    &format!("buyer-{i}"),
                    &format!("{}-key-{i}", self.sku),
                    &json!({"sku": self.sku, "quantity": quantity(i)}).to_string(),
                )
            })
            .collect();
        place_accepted(&self.place, reqs, concurrency).await
    }

    /// Writes behind the pipeline's back: `update`, with `:v` bound to `value`, on the item at
    /// `key`.
    async fn tamper(
        &self,
        key: HashMap<String, AttributeValue>,
        update: &str,
        value: AttributeValue,
    ) {
        self.store
            .client()
            .update_item()
            .table_name(self.store.table())
            .set_key(Some(key))
            .update_expression(update)
            .expression_attribute_values(":v", value)
            .send()
            .await
            .expect("update");
    }

    async fn drain(&self, consumers: usize) -> flash_tests::drain::DrainStats {
        let stats = drain(
            &self.process,
            &self.sqs,
            &self.url,
            consumers,
            100,
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(stats.failures, 0, "{stats:?}");
        stats
    }
}

/// Sends `reqs` to `place` all at once; the responses in the same order.
async fn at_once(
    place: &Arc<PlaceOrder<DynamoStore, SqsQueue>>,
    reqs: Vec<Req>,
) -> Vec<Response<Body>> {
    let all = reqs.len();
    stack::spawn_gated(reqs, all, |req| {
        let place = place.clone();
        async move { place.handle(req.build()).await }
    })
    .await
}

/// How many of `resps` have `status`; every other one must be a 409 `purchase_limit`.
fn count_admitted(resps: &[Response<Body>]) -> usize {
    for r in resps.iter().filter(|r| r.status() != 202) {
        assert_eq!(
            (r.status().as_u16(), body(r)["error"]["code"].clone()),
            (409, json!("purchase_limit"))
        );
    }
    resps.iter().filter(|r| r.status() == 202).count()
}
