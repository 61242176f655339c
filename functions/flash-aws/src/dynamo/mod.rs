//! The single-table DynamoDB store: [`DynamoStore`] and its [`Store`] implementation, one
//! file per concern.
//!
//! - [`keys`]: the table layout, every key built and parsed;
//! - [`codec`]: orders and products to and from items;
//! - [`products`]: create a product, add stock, the sold-out flag, read the shards;
//! - [`orders`]: create, read, reject and advance an order;
//! - [`group_commit`]: a group of orders decided in one transaction, and its refusal;
//! - [`rate_bucket`]: the per-caller token bucket;
//! - [`returns`]: stock given back when an order leaves the states that hold it;
//! - [`writes`] and [`cancel`]: the update builder, the transaction, and what its
//!   cancellation means;
//! - [`write_stats`]: write traffic, counted for the local stack and the bench.
//!
//! Every change is a conditional write: the condition is the optimistic lock, and a failed
//! condition is a business answer, decoded from the values DynamoDB returns with it.

mod cancel;
pub mod codec;
mod group_commit;
pub mod keys;
mod orders;
mod products;
mod rate_bucket;
mod returns;
mod write_stats;
mod writes;

pub use codec::{decode_order, decode_product};
pub use keys::*;
pub use orders::REJECTED_KEPT_S;
pub use write_stats::{WriteCounts, WriteStats};

use aws_sdk_dynamodb::types::KeysAndAttributes;
use aws_sdk_dynamodb::Client;
use flash_domain::clock::Millis;
use flash_domain::order::Transition;
use flash_domain::ports::{
    Advance, Commit, CommitRefused, CreateOrder, PortError, PortResult, ShardStock, Store,
};
use flash_domain::token_bucket::{Micros, TokenBucket};
use flash_domain::{Order, OrderId, Product, Reason, Sku, UserId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use writes::sdk;

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// Counted only when something reads them ([`Self::with_write_stats`]).
    stats: Option<Arc<WriteStats>>,
    rate_limit: Option<TokenBucket>,
    /// The last `tat` this process saw for each caller's bucket. `tat` only grows, so a
    /// remembered value is a lower bound: it picks the right write first, and when it already
    /// says the bucket is empty the request is refused after a read, without a write.
    rate_hints: Arc<Mutex<HashMap<UserId, Micros>>>,
}

impl DynamoStore {
    /// A store with the default rate limit on write routes
    /// ([`crate::config::default_rate_limit`]).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            stats: None,
            rate_limit: crate::config::default_rate_limit(),
            rate_hints: Arc::default(),
        }
    }

    /// Sets the per-caller token bucket [`Store::take_token`] takes from; `None` admits
    /// everything.
    pub fn with_rate_limit(mut self, bucket: Option<TokenBucket>) -> Self {
        self.rate_limit = bucket;
        self
    }

    /// Counts this store's (and its clones') writes in [`Self::stats`], asking DynamoDB for
    /// the capacity each one consumed. For the local stack and the bench, which report write
    /// units; off by default, so deployed functions send no `ReturnConsumedCapacity`.
    pub fn with_write_stats(mut self) -> Self {
        self.stats = Some(Arc::default());
        self
    }

    pub fn rate_limit(&self) -> Option<TokenBucket> {
        self.rate_limit
    }

    pub fn from_config(sdk: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), table)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The writes counted so far; `None` unless [`Self::with_write_stats`] turned them on.
    pub fn stats(&self) -> Option<&Arc<WriteStats>> {
        self.stats.as_ref()
    }

    pub(super) async fn batch_get(&self, keys: Vec<Item>) -> PortResult<Vec<Item>> {
        let mut out = Vec::new();
        // BatchGetItem takes at most 100 keys and may hand some back unprocessed.
        for chunk in keys.chunks(100) {
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| PortError::unavailable("building BatchGetItem", e))?,
            );
            let mut rounds = 0;
            while let Some(req) = request.take() {
                rounds += 1;
                if rounds > 10 {
                    return Err(PortError::Contention);
                }
                let resp = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, req)
                    .send()
                    .await
                    .map_err(sdk("dynamodb BatchGetItem"))?;
                if let Some(mut r) = resp.responses {
                    out.extend(r.remove(&self.table).unwrap_or_default());
                }
                request = resp
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
                if request.is_some() {
                    tokio::time::sleep(std::time::Duration::from_millis(20 * rounds)).await;
                }
            }
        }
        Ok(out)
    }
}

/// Each method is written in the file of its concern, as an inherent method of the same name
/// (inherent methods win over the trait's, so `Self::name` below is that one). The trait
/// method hands back that method's future rather than awaiting it inside one of its own: the
/// extra layer on every store call was enough to pass the compiler's query depth limit when
/// laying out `process-orders`' handler future.
impl Store for DynamoStore {
    fn get_product(&self, sku: &Sku) -> impl Future<Output = PortResult<Option<Product>>> + Send {
        Self::get_product(self, sku)
    }

    fn create_product(
        &self,
        product: &Product,
        stock: &[(u32, u64)],
    ) -> impl Future<Output = PortResult<bool>> + Send {
        Self::create_product(self, product, stock)
    }

    fn add_stock(
        &self,
        product: &Product,
        added: u64,
        stock: &[(u32, u64)],
    ) -> impl Future<Output = PortResult<bool>> + Send {
        Self::add_stock(self, product, added, stock)
    }

    fn mark_sold_out(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send {
        Self::mark_sold_out(self, product)
    }

    fn clear_sold_out(&self, sku: &Sku) -> impl Future<Output = PortResult<()>> + Send {
        Self::clear_sold_out(self, sku)
    }

    fn read_shards(
        &self,
        product: &Product,
    ) -> impl Future<Output = PortResult<Vec<ShardStock>>> + Send {
        Self::read_shards(self, product)
    }

    fn read_bought(
        &self,
        sku: &Sku,
        users: &[UserId],
    ) -> impl Future<Output = PortResult<HashMap<UserId, u32>>> + Send {
        Self::read_bought(self, sku, users)
    }

    fn create_order(&self, order: &Order) -> impl Future<Output = PortResult<CreateOrder>> + Send {
        Self::create_order(self, order)
    }

    fn create_limited_order(
        &self,
        order: &Order,
        limit: u32,
    ) -> impl Future<Output = PortResult<CreateOrder>> + Send {
        Self::create_limited_order(self, order, limit)
    }

    fn get_order(&self, id: &OrderId) -> impl Future<Output = PortResult<Option<Order>>> + Send {
        Self::get_order(self, id)
    }

    fn get_orders(&self, ids: &[OrderId]) -> impl Future<Output = PortResult<Vec<Order>>> + Send {
        Self::get_orders(self, ids)
    }

    fn commit(
        &self,
        sku: &Sku,
        c: &Commit,
    ) -> impl Future<Output = PortResult<Result<(), CommitRefused>>> + Send {
        Self::commit(self, sku, c)
    }

    fn reject(
        &self,
        id: &OrderId,
        reason: Reason,
        now: Millis,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        Self::reject(self, id, reason, now)
    }

    fn advance(
        &self,
        order: &Order,
        t: &Transition,
        owner: Option<&UserId>,
        now: Millis,
    ) -> impl Future<Output = PortResult<Advance>> + Send {
        Self::advance(self, order, t, owner, now)
    }

    fn take_token(
        &self,
        caller: &UserId,
        now: Millis,
    ) -> impl Future<Output = PortResult<Result<(), Duration>>> + Send {
        Self::take_token(self, caller, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_runtime_api::client::http::{
        http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
    };
    use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
    use aws_smithy_types::body::SdkBody;
    use flash_domain::{OrderStatus, Quantity};

    /// Answers every request with a `TransactionCanceledException` that lists no reasons.
    #[derive(Debug)]
    struct CanceledWithoutReasons;

    impl HttpConnector for CanceledWithoutReasons {
        fn call(&self, _: HttpRequest) -> HttpConnectorFuture {
            let body = serde_json::json!({
                "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons []",
                "CancellationReasons": [],
            })
            .to_string();
            let mut response = HttpResponse::new(
                400.try_into().expect("a valid status"),
                SdkBody::from(body.clone()),
            );
            let headers = response.headers_mut();
            headers.insert("content-type", "application/x-amz-json-1.0");
            headers.insert("content-length", body.len().to_string());
            headers.insert("x-amzn-requestid", "no-reasons");
            HttpConnectorFuture::ready(Ok(response))
        }
    }

    fn store_canceled_without_reasons() -> DynamoStore {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
            .endpoint_url("http://127.0.0.1:1")
            .http_client(http_client_fn(|_, _| {
                SharedHttpConnector::new(CanceledWithoutReasons)
            }))
            .build();
        DynamoStore::new(Client::from_conf(config), "flash").with_rate_limit(None)
    }

    #[tokio::test]
    async fn a_canceled_transaction_with_no_reasons_is_an_error_not_a_panic() {
        let store = store_canceled_without_reasons();
        let sku = Sku::parse("SKU-1").expect("valid sku");
        let product = Product {
            sku: sku.clone(),
            name: "Phone".into(),
            stock_added: 10,
            per_user_limit: Some(2),
            sale_starts_at: None,
            sale_ends_at: None,
            payment_window_seconds: 900,
            shards: 1,
            sold_out: false,
            restocks: 0,
        };
        assert!(store.add_stock(&product, 5, &[(0, 5)]).await.is_err());
        let order = Order {
            id: OrderId::parse("0123456789abcdef0123456789abcdef").expect("valid id"),
            owner: UserId::parse("alice").expect("valid user"),
            sku,
            quantity: Quantity::new(1).expect("valid quantity"),
            status: OrderStatus::Queued,
            reason: None,
            created_at: 0,
            updated_at: 0,
            expires_at: None,
            fingerprint: String::new(),
            takes: Vec::new(),
            counted: false,
        };
        assert!(store.create_limited_order(&order, 2).await.is_err());
        assert!(store.reject(&order.id, Reason::SoldOut, 0).await.is_err());
    }
}
