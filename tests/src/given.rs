//! The names and records tests start from: users, SKUs and order ids parsed from literals
//! (a bad literal is a broken test, so these panic), a queued order built field by field,
//! and the item ids a consumer reported failed.

use aws_lambda_events::event::sqs::SqsBatchResponse;
use flash_aws::http::OrderRequest;
use flash_domain::clock::{now_ms, Millis};
use flash_domain::order::ShardTake;
use flash_domain::{
    IdempotencyKey, Order, OrderId, OrderStatus, Product, Quantity, Reason, Sku, UserId,
};

pub fn sku(s: &str) -> Sku {
    Sku::parse(s).expect("valid sku")
}

pub fn user(s: &str) -> UserId {
    UserId::parse(s).expect("valid user")
}

/// The id `place-order` derives for `who` and `key`.
pub fn id_for(who: &str, key: &str) -> OrderId {
    OrderId::derive(&user(who), &IdempotencyKey::parse(key).expect("valid key"))
}

/// A product of `sku` on sale now, `stock` units ever added over `shards` shards, `limit` units
/// per buyer, a 900 s payment window; change fields for another.
pub fn product(sku: Sku, shards: u32, stock: u64, limit: Option<u32>) -> Product {
    Product {
        sku,
        name: "Phone".into(),
        stock_added: stock,
        per_user_limit: limit,
        sale_starts_at: None,
        sale_ends_at: None,
        payment_window_seconds: 900,
        shards,
        sold_out: false,
        low_stock: false,
        restocks: 0,
    }
}

/// A `queued` order of `quantity` units of `sku` by `owner`, created at `at`, as
/// `place-order` writes it but with no request fingerprint; change fields to store it in
/// another state.
pub fn queued_order(id: OrderId, owner: UserId, sku: Sku, quantity: u32, at: Millis) -> Order {
    Order {
        id,
        owner,
        sku,
        quantity: Quantity::new(quantity).expect("valid quantity"),
        status: OrderStatus::Queued,
        reason: None,
        created_at: at,
        updated_at: at,
        expires_at: None,
        fingerprint: String::new(),
        takes: Vec::new(),
        counted: false,
    }
}

/// One unit of `SKU-1` ordered by `owner`, stored directly in `status` (for `reason`) as the
/// pipeline would have left it: with its request fingerprint, a 900 s payment deadline when
/// pending, and its unit taken from shard 0 when the status holds stock.
pub fn stored_order(
    id: OrderId,
    owner: UserId,
    status: OrderStatus,
    reason: Option<Reason>,
) -> Order {
    let now = now_ms();
    let request = OrderRequest {
        sku: sku("SKU-1"),
        quantity: Quantity::new(1).expect("valid quantity"),
    };
    Order {
        id,
        owner,
        sku: request.sku.clone(),
        quantity: request.quantity,
        status,
        reason,
        created_at: now,
        updated_at: now,
        expires_at: (status == OrderStatus::Pending).then_some(now + 900_000),
        fingerprint: request.fingerprint(),
        takes: if status.holds_stock() {
            vec![ShardTake { shard: 0, units: 1 }]
        } else {
            Vec::new()
        },
        counted: false,
    }
}

/// The message ids a consumer reported failed, in its order.
pub fn failures(resp: &SqsBatchResponse) -> Vec<String> {
    resp.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}
