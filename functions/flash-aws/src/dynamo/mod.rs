//! The single-table DynamoDB store: [`DynamoStore`] and its [`Store`] implementation, one
//! file per concern.
//!
//! - [`keys`]: the table layout, every key built and parsed;
//! - [`codec`]: orders and products to and from items;
//! - [`products`]: create a product, add stock, the sold-out flag, read the shards;
//! - [`orders`]: create, read, reject and advance an order;
//! - [`group_commit`]: a group of orders decided in one transaction, and its refusal;
//! - [`rate_bucket`]: the per-caller rate limit ([`DynamoRateLimit`]), a token bucket an item;
//! - [`returns`]: stock given back when an order leaves the states that hold it;
//! - [`writes`] and [`cancel`]: the update builder, the transaction, and what its
//!   cancellation means;
//! - [`write_stats`]: write traffic, counted for the local stack and the bench;
//! - [`ledger`]: the reads behind the invariant checks (the reconciler's `Ledger`).
//!
//! Every change is a conditional write: the condition is the optimistic lock, and a failed
//! condition is a business answer, decoded from the values DynamoDB returns with it.

mod cancel;
pub mod codec;
mod group_commit;
pub mod keys;
pub mod ledger;
mod orders;
mod products;
mod rate_bucket;
mod returns;
mod write_stats;
mod writes;

pub use codec::{decode_order, decode_product, encode_order};
pub use keys::*;
pub use orders::REJECTED_KEPT_S;
pub use rate_bucket::{DynamoRateLimit, RateHints};
pub use write_stats::{WriteCounts, WriteStats};

use aws_sdk_dynamodb::types::KeysAndAttributes;
use aws_sdk_dynamodb::Client;
use flash_domain::clock::Millis;
use flash_domain::limits::BATCH_GET_MAX_KEYS;
use flash_domain::order::Transition;
use flash_domain::ports::{
    Advance, Commit, CommitRefused, CreateOrder, KeyRecord, PortError, PortResult, ProductWrite,
    ShardStock, Store,
};
use flash_domain::{Order, OrderId, Product, ProductPut, Reason, Sku, UserId};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use writes::sdk;

#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// Counted only when something reads them ([`Self::with_write_stats`]).
    stats: Option<Arc<WriteStats>>,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            stats: None,
        }
    }

    /// Counts this store's (and its clones') writes in [`Self::stats`], asking DynamoDB for
    /// the capacity each one consumed. For the local stack and the bench, which report write
    /// units; off by default, so deployed functions send no `ReturnConsumedCapacity`.
    pub fn with_write_stats(mut self) -> Self {
        self.stats = Some(Arc::default());
        self
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

    /// The items of `keys` that exist, read consistently. A key named twice is read once:
    /// BatchGetItem refuses a request that repeats one.
    pub(super) async fn batch_get(&self, mut keys: Vec<Item>) -> PortResult<Vec<Item>> {
        let mut seen = HashSet::new();
        keys.retain(|k| {
            let key = |name| codec::get_s(k, name).map(str::to_owned);
            seen.insert((key("pk"), key("sk")))
        });
        let mut out = Vec::new();
        // BatchGetItem may hand some keys back unprocessed.
        for chunk in keys.chunks(BATCH_GET_MAX_KEYS) {
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

    fn get_products(
        &self,
        skus: &[Sku],
    ) -> impl Future<Output = PortResult<HashMap<Sku, Product>>> + Send {
        Self::get_products(self, skus)
    }

    fn create_product(
        &self,
        product: &Product,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> impl Future<Output = PortResult<ProductWrite>> + Send {
        Self::create_product(self, product, stock, key)
    }

    fn add_stock(
        &self,
        put: &ProductPut,
        stock: &[(u32, u64)],
        key: Option<&KeyRecord>,
    ) -> impl Future<Output = PortResult<ProductWrite>> + Send {
        Self::add_stock(self, put, stock, key)
    }

    fn mark_sold_out(&self, product: &Product) -> impl Future<Output = PortResult<bool>> + Send {
        Self::mark_sold_out(self, product)
    }

    fn clear_sold_out(&self, sku: &Sku) -> impl Future<Output = PortResult<()>> + Send {
        Self::clear_sold_out(self, sku)
    }

    fn mark_low_stock(&self, sku: &Sku) -> impl Future<Output = PortResult<()>> + Send {
        Self::mark_low_stock(self, sku)
    }

    fn read_shards(
        &self,
        product: &Product,
    ) -> impl Future<Output = PortResult<Vec<ShardStock>>> + Send {
        Self::read_shards(self, product)
    }

    fn read_shards_of(
        &self,
        products: &[&Product],
    ) -> impl Future<Output = PortResult<HashMap<Sku, Vec<ShardStock>>>> + Send {
        Self::read_shards_of(self, products)
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
        DynamoStore::new(Client::from_conf(config), "flash")
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
            low_stock: false,
            restocks: 0,
        };
        let put = ProductPut {
            sku: sku.clone(),
            name: product.name.clone(),
            stock: 5,
            shards: None,
            settings: Default::default(),
        };
        assert!(store.add_stock(&put, &[(0, 5)], None).await.is_err());
        assert!(store
            .create_product(&product, &[(0, 5)], None)
            .await
            .is_err());
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
