//! The [`Store`] contract: what every store must answer, method by method, written once and
//! run against both the in-memory `FakeStore` and the DynamoDB adapter on DynamoDB Local
//! (`tests/tests/store_contract.rs`). The fake's claim to keep the adapter's semantics "item for
//! item" rests on these: each case drives one method through its outcomes (a duplicate put, a
//! commit refused with the shards' values, the reject of a decided order, the stock a cancel
//! returns) and checks the answer and what the table holds after it.
//!
//! Each case takes a store and a SKU of its own; the orders it writes have ids derived from
//! that SKU, so cases on a shared table never meet.

use crate::given::{queued_order, user};
use flash_domain::clock::{now_ms, Millis};
use flash_domain::order::{transition, Event, ShardTake, Transition};
use flash_domain::ports::{
    Accepted, Advance, Commit, CreateOrder, KeyRecord, ProductWrite, ShardStock, Store,
};
use flash_domain::product::{Change, Settings};
use flash_domain::{
    IdempotencyKey, Order, OrderId, OrderStatus, Product, ProductPut, Reason, Sku, UserId,
};
use std::collections::HashMap;

/// A product of `sku` with `shards` shards, 10 units added and `limit` units per buyer.
fn product(sku: &Sku, shards: u32, limit: Option<u32>) -> Product {
    crate::given::product(sku.clone(), shards, 10, limit)
}

/// A buyer of this case only.
fn buyer(sku: &Sku, name: &str) -> UserId {
    user(&format!("{name}-{sku}"))
}

/// A queued order of `quantity` units by `who`, its id derived as `place-order` derives it.
fn order(sku: &Sku, who: &str, key: &str, quantity: u32) -> Order {
    let owner = buyer(sku, who);
    let id = OrderId::derive(&owner, &IdempotencyKey::parse(key).expect("valid key"));
    let mut o = queued_order(id, owner, sku.clone(), quantity, now_ms());
    o.fingerprint = format!("fp-{key}");
    o
}

async fn create<S: Store>(store: &S, p: &Product, units: u64) {
    let written = store
        .create_product(p, &p.split(units), None)
        .await
        .expect("create_product");
    assert_eq!(written, ProductWrite::Written);
}

/// alice's order of `a` units and bob's of `b`, both written `queued`.
async fn two_orders<S: Store>(store: &S, sku: &Sku, a: u32, b: u32) -> (Order, Order) {
    let (o1, o2) = (order(sku, "alice", "k-1", a), order(sku, "bob", "k-1", b));
    for o in [&o1, &o2] {
        store.create_order(o).await.expect("create");
    }
    (o1, o2)
}

async fn stored<S: Store>(store: &S, id: &OrderId) -> Order {
    store
        .get_order(id)
        .await
        .expect("get_order")
        .expect("the order exists")
}

async fn shards<S: Store>(store: &S, p: &Product) -> Vec<(u32, u64)> {
    let read = store.read_shards(p).await.expect("read_shards");
    read.iter().map(|s| (s.shard, s.available)).collect()
}

/// `owner`'s transition `t` of `order` at `now`, as the store answers it.
async fn advance<S: Store>(
    store: &S,
    order: &Order,
    t: &Transition,
    owner: Option<&UserId>,
    now: Millis,
) -> Advance {
    store.advance(order, t, owner, now).await.expect("advance")
}

/// The order a transition the store had to write (`why` says why) leaves.
fn done(answer: Advance, why: &str) -> Order {
    match answer {
        Advance::Done(o) => o,
        Advance::Stale => panic!("{why}"),
    }
}

/// Each order takes `units` from shard 0; the commit raises each buyer's counter when `limit`.
fn commit(orders: &[&Order], limit: Option<u32>, now: Millis) -> Commit {
    let take = |o: &Order| ShardTake {
        shard: 0,
        units: o.quantity.get(),
    };
    Commit {
        takes: vec![ShardTake {
            shard: 0,
            units: orders.iter().map(|o| o.quantity.get()).sum(),
        }],
        accepted: orders
            .iter()
            .map(|o| Accepted {
                order_id: o.id.clone(),
                takes: vec![take(o)],
                expires_at: now + 900_000,
            })
            .collect(),
        counters: orders
            .iter()
            .map(|o| (o.owner.clone(), o.quantity.get()))
            .collect(),
        limit,
        now,
    }
}

/// `o` as the commit that accepted it at `now` leaves it.
fn accepted(o: &Order, limit: Option<u32>, now: Millis) -> Order {
    let mut a = o.clone();
    a.status = OrderStatus::Pending;
    a.updated_at = now;
    a.expires_at = Some(now + 900_000);
    a.takes = vec![ShardTake {
        shard: 0,
        units: o.quantity.get(),
    }];
    a.counted = limit.is_some();
    a
}

/// A product is created once (the second put is `Raced` and changes nothing), reads back as
/// written, spreads its stock over its shards, and takes new stock and the settings a restock
/// names from `add_stock`, keeping the others; `add_stock` of an unknown product writes nothing.
/// A key's record goes in with its write, and a second write under it is `KeyUsed` with that
/// record and adds nothing.
pub async fn products_are_created_once_read_back_and_restocked<S: Store>(store: &S, sku: &Sku) {
    let mut p = product(sku, 3, Some(2));
    p.sale_ends_at = Some(now_ms() + 3_600_000);
    create(store, &p, 10).await;
    let mut again = p.clone();
    again.name = "Other".into();
    let raced = store
        .create_product(&again, &again.split(99), None)
        .await
        .expect("create");
    assert_eq!(raced, ProductWrite::Raced);
    assert_eq!(store.get_product(sku).await.expect("get"), Some(p.clone()));
    assert_eq!(shards(store, &p).await, [(0, 4), (1, 3), (2, 3)]);

    // A restock that clears the limit and names nothing else: the sale window stays.
    let restock = ProductPut {
        sku: sku.clone(),
        name: "Phone 2".into(),
        stock: 5,
        shards: None,
        settings: Settings {
            per_user_limit: Change::Clear,
            ..Settings::default()
        },
    };
    let key = KeyRecord {
        id: format!("key-{sku}"),
        fingerprint: restock.fingerprint(),
        created: false,
    };
    let written = store
        .add_stock(&restock, &p.split(5), Some(&key))
        .await
        .expect("add_stock");
    assert_eq!(written, ProductWrite::Written);
    let mut expected = p.clone();
    expected.name = "Phone 2".into();
    expected.per_user_limit = None;
    expected.stock_added = 15;
    expected.restocks = 1;
    assert_eq!(
        store.get_product(sku).await.expect("get"),
        Some(expected.clone())
    );
    assert_eq!(shards(store, &p).await, [(0, 6), (1, 5), (2, 4)]);

    // The same key again: the record written with the restock comes back, nothing is added.
    let retried = store
        .add_stock(&restock, &p.split(5), Some(&key))
        .await
        .expect("add_stock again");
    assert_eq!(retried, ProductWrite::KeyUsed(key));
    assert_eq!(store.get_product(sku).await.expect("get"), Some(expected));
    assert_eq!(shards(store, &p).await, [(0, 6), (1, 5), (2, 4)]);

    let ghost = Sku::parse(&format!("{sku}-GHOST")).expect("valid sku");
    let unknown = ProductPut {
        sku: ghost.clone(),
        ..restock
    };
    let missing = store
        .add_stock(&unknown, &[(0, 5)], None)
        .await
        .expect("add");
    assert_eq!(missing, ProductWrite::Raced);
    assert_eq!(store.get_product(&ghost).await.expect("get"), None);
}

/// The sold-out flag is set only on condition that no stock came back since the product was
/// read; clearing it raises `restocks`, and clearing an unknown product creates nothing.
pub async fn the_sold_out_flag_is_set_only_while_no_stock_came_back<S: Store>(
    store: &S,
    sku: &Sku,
) {
    let p = product(sku, 1, None);
    create(store, &p, 1).await;
    assert!(store.mark_sold_out(&p).await.expect("mark"));
    let flagged = store.get_product(sku).await.expect("get").expect("exists");
    assert!(flagged.sold_out);
    store.clear_sold_out(sku).await.expect("clear");
    let cleared = store.get_product(sku).await.expect("get").expect("exists");
    assert_eq!((cleared.sold_out, cleared.restocks), (false, 1));
    // `p` was read before the stock came back: its flag would hide units.
    assert!(!store.mark_sold_out(&p).await.expect("mark"));
    assert!(
        !store
            .get_product(sku)
            .await
            .expect("get")
            .expect("exists")
            .sold_out
    );
    assert!(store.mark_sold_out(&cleared).await.expect("mark"));

    let ghost = Sku::parse(&format!("{sku}-GHOST")).expect("valid sku");
    store.clear_sold_out(&ghost).await.expect("clear");
    assert_eq!(store.get_product(&ghost).await.expect("get"), None);
}

/// The low-stock hint is set on an existing product (twice is the same as once), cleared by
/// a restock, and never creates a product.
pub async fn the_low_stock_hint_is_set_and_a_restock_clears_it<S: Store>(store: &S, sku: &Sku) {
    let p = product(sku, 2, None);
    create(store, &p, 8).await;
    store.mark_low_stock(sku).await.expect("hint");
    store.mark_low_stock(sku).await.expect("hint again");
    let hinted = store.get_product(sku).await.expect("get").expect("exists");
    assert!(hinted.low_stock);
    // Nothing else moved.
    assert_eq!(
        Product {
            low_stock: false,
            ..hinted
        },
        p
    );
    let restock = ProductPut {
        sku: sku.clone(),
        name: p.name.clone(),
        stock: 4,
        shards: None,
        settings: Settings::default(),
    };
    let written = store
        .add_stock(&restock, &p.split(4), None)
        .await
        .expect("add_stock");
    assert_eq!(written, ProductWrite::Written);
    let restocked = store.get_product(sku).await.expect("get").expect("exists");
    assert!(!restocked.low_stock);

    let ghost = Sku::parse(&format!("{sku}-GHOST")).expect("valid sku");
    store.mark_low_stock(&ghost).await.expect("hint");
    assert_eq!(store.get_product(&ghost).await.expect("get"), None);
}

/// An order is written once: a duplicate put answers the stored order, which reads back item
/// for item; a batch read leaves out missing ids and names each order once.
pub async fn an_order_is_written_once_and_read_back_item_for_item<S: Store>(store: &S, sku: &Sku) {
    let o = order(sku, "alice", "k-1", 2);
    assert!(matches!(
        store.create_order(&o).await.expect("create"),
        CreateOrder::Created
    ));
    let mut replay = o.clone();
    replay.fingerprint = "fp-other".into();
    match store.create_order(&replay).await.expect("create") {
        CreateOrder::Exists(existing) => assert_eq!(existing, o),
        _ => panic!("a duplicate put must answer the stored order"),
    }
    assert_eq!(stored(store, &o.id).await, o);
    let missing = order(sku, "bob", "k-1", 1).id;
    assert_eq!(store.get_order(&missing).await.expect("get"), None);
    let read = store
        .get_orders(&[o.id.clone(), missing, o.id.clone()])
        .await
        .expect("get_orders");
    assert_eq!(read, [o]);
}

/// A limited order raises its buyer's admission count in the same write, up to the limit; the
/// one that would pass it is refused with the count, a replay answers the order whatever the
/// count says, and a rejection gives the units back.
pub async fn limited_orders_are_admitted_up_to_the_limit<S: Store>(store: &S, sku: &Sku) {
    let created = |r: CreateOrder| matches!(r, CreateOrder::Created);
    let (o1, o2, o3) = (
        order(sku, "alice", "k-1", 1),
        order(sku, "alice", "k-2", 1),
        order(sku, "alice", "k-3", 1),
    );
    assert!(created(
        store.create_limited_order(&o1, 2).await.expect("1")
    ));
    assert!(created(
        store.create_limited_order(&o2, 2).await.expect("2")
    ));
    match store.create_limited_order(&o3, 2).await.expect("3") {
        CreateOrder::LimitReached { admitted } => assert_eq!(admitted, 2),
        _ => panic!("the third unit passes the limit of 2"),
    }
    assert_eq!(store.get_order(&o3.id).await.expect("get"), None);
    match store.create_limited_order(&o1, 2).await.expect("replay") {
        CreateOrder::Exists(existing) => assert_eq!(existing, o1),
        _ => panic!("a replay answers the order"),
    }
    let big = order(sku, "bob", "k-1", 3);
    match store.create_limited_order(&big, 2).await.expect("big") {
        CreateOrder::LimitReached { admitted } => assert_eq!(admitted, 0),
        _ => panic!("an order larger than the limit is never admitted"),
    }
    assert!(store
        .reject(&o1.id, Reason::SoldOut, now_ms())
        .await
        .expect("reject"));
    assert!(created(
        store.create_limited_order(&o3, 2).await.expect("3 again")
    ));
}

/// A commit takes the stock, makes each order `pending` with its takes and deadline, and
/// raises the buyers' purchase counters, all in one write.
pub async fn a_commit_takes_stock_accepts_orders_and_counts_purchases<S: Store>(
    store: &S,
    sku: &Sku,
) {
    let p = product(sku, 2, Some(3));
    create(store, &p, 10).await;
    let (o1, o2) = two_orders(store, sku, 2, 1).await;
    let now = now_ms();
    assert!(store
        .commit(sku, &commit(&[&o1, &o2], Some(3), now))
        .await
        .expect("commit")
        .is_ok());
    assert_eq!(shards(store, &p).await, [(0, 2), (1, 5)]);
    assert_eq!(stored(store, &o1.id).await, accepted(&o1, Some(3), now));
    assert_eq!(stored(store, &o2.id).await, accepted(&o2, Some(3), now));
    let bought = store
        .read_bought(
            sku,
            &[o1.owner.clone(), o2.owner.clone(), buyer(sku, "carol")],
        )
        .await
        .expect("read_bought");
    let expected: HashMap<UserId, u32> = [(o1.owner.clone(), 2), (o2.owner.clone(), 1)].into();
    assert_eq!(bought, expected);
}

/// A refused commit writes nothing and says why, from the values its failed conditions
/// returned: the shards short of stock with what they hold, the orders no longer queued, the
/// buyers whose counter would pass the limit with what they bought.
pub async fn a_refused_commit_writes_nothing_and_says_why<S: Store>(store: &S, sku: &Sku) {
    let p = product(sku, 2, Some(2));
    create(store, &p, 3).await; // shard 0 holds 2, shard 1 holds 1
    let (o1, o2) = two_orders(store, sku, 2, 1).await;
    let now = now_ms();
    let refused = store
        .commit(sku, &commit(&[&o1, &o2], Some(2), now))
        .await
        .expect("commit")
        .expect_err("3 units from a shard of 2");
    assert_eq!(
        refused.shards,
        [ShardStock {
            shard: 0,
            available: 2
        }]
    );
    assert!(refused.decided.is_empty() && refused.counters.is_empty() && !refused.conflict);
    assert_eq!(shards(store, &p).await, [(0, 2), (1, 1)]);
    assert_eq!(stored(store, &o1.id).await, o1);

    // alice buys her limit; a second order of hers is refused with her counter.
    assert!(store
        .commit(sku, &commit(&[&o1], Some(2), now))
        .await
        .expect("commit")
        .is_ok());
    let o3 = order(sku, "alice", "k-2", 1);
    store.create_order(&o3).await.expect("create");
    let refused = store
        .commit(sku, &commit(&[&o3], Some(2), now))
        .await
        .expect("commit")
        .expect_err("past alice's limit");
    assert_eq!(refused.counters, [(o1.owner.clone(), 2)]);
    assert!(refused.decided.is_empty());

    // bob's order was rejected meanwhile: a commit that accepts it finds it decided.
    assert!(store
        .reject(&o2.id, Reason::SoldOut, now)
        .await
        .expect("reject"));
    store.clear_sold_out(sku).await.expect("clear");
    let refused = store
        .commit(sku, &commit(&[&o2], Some(2), now))
        .await
        .expect("commit")
        .expect_err("bob's order is no longer queued");
    assert_eq!(refused.decided, std::slice::from_ref(&o2.id));
    assert_eq!(stored(store, &o2.id).await.status, OrderStatus::Rejected);
}

/// A queued order is rejected once, with its reason; a decided one is not rejected.
pub async fn only_a_queued_order_is_rejected_and_only_once<S: Store>(store: &S, sku: &Sku) {
    let p = product(sku, 1, None);
    create(store, &p, 5).await;
    let (o1, o2) = two_orders(store, sku, 1, 1).await;
    let now = now_ms();
    assert!(store
        .reject(&o1.id, Reason::SaleNotOpen, now)
        .await
        .expect("1"));
    let rejected = stored(store, &o1.id).await;
    assert_eq!(
        (rejected.status, rejected.reason, rejected.updated_at),
        (OrderStatus::Rejected, Some(Reason::SaleNotOpen), now)
    );
    assert!(!store.reject(&o1.id, Reason::SoldOut, now).await.expect("2"));
    assert_eq!(stored(store, &o1.id).await, rejected);
    assert!(store
        .commit(sku, &commit(&[&o2], None, now))
        .await
        .expect("commit")
        .is_ok());
    assert!(!store.reject(&o2.id, Reason::SoldOut, now).await.expect("3"));
    assert_eq!(stored(store, &o2.id).await.status, OrderStatus::Pending);
}

/// An advance applies only to the status (and owner, and payment window) it was read with:
/// otherwise it is stale and writes nothing.
pub async fn an_advance_applies_only_to_the_order_as_read<S: Store>(store: &S, sku: &Sku) {
    let p = product(sku, 1, None);
    create(store, &p, 5).await;
    let o = order(sku, "alice", "k-1", 1);
    store.create_order(&o).await.expect("create");
    let now = now_ms();
    store
        .commit(sku, &commit(&[&o], None, now))
        .await
        .expect("commit")
        .expect("accepted");
    let pending = stored(store, &o.id).await;
    let pay = transition(OrderStatus::Pending, None, Event::Pay).expect("pay");
    let intruder = buyer(sku, "mallory");
    assert!(matches!(
        advance(store, &pending, &pay, Some(&intruder), now).await,
        Advance::Stale
    ));
    // Past the payment window, paying is stale too.
    let late = now + 900_001;
    assert!(matches!(
        advance(store, &pending, &pay, Some(&o.owner), late).await,
        Advance::Stale
    ));
    assert_eq!(stored(store, &o.id).await, pending);
    let paid = done(
        advance(store, &pending, &pay, Some(&o.owner), now + 1).await,
        "the owner pays in time",
    );
    let mut expected = pending.clone();
    expected.apply(&pay, now + 1);
    assert_eq!(paid, expected);
    assert_eq!(stored(store, &o.id).await, expected);
    // The order as first read is no longer what is stored.
    assert!(matches!(
        advance(store, &pending, &pay, None, now + 2).await,
        Advance::Stale
    ));
}

/// A cancel returns the order's units to the shards it took them from, gives back the
/// buyer's purchase count, and clears the sold-out flag, once: the same cancel again is stale.
pub async fn a_cancel_returns_the_units_and_the_count_once<S: Store>(store: &S, sku: &Sku) {
    let p = product(sku, 1, Some(2));
    create(store, &p, 2).await;
    let o = order(sku, "alice", "k-1", 2);
    store.create_order(&o).await.expect("create");
    let now = now_ms();
    store
        .commit(sku, &commit(&[&o], Some(2), now))
        .await
        .expect("commit")
        .expect("accepted");
    let flagged = store.get_product(sku).await.expect("get").expect("exists");
    assert!(store.mark_sold_out(&flagged).await.expect("mark"));
    let pending = stored(store, &o.id).await;
    let cancel = transition(OrderStatus::Pending, None, Event::Cancel).expect("cancel");
    let canceled = done(
        advance(store, &pending, &cancel, Some(&o.owner), now + 1).await,
        "the owner cancels a pending order",
    );
    assert_eq!(
        (canceled.status, canceled.reason),
        (OrderStatus::Canceled, Some(Reason::BuyerCanceled))
    );
    assert_eq!(shards(store, &p).await, [(0, 2)]);
    let bought = store
        .read_bought(sku, std::slice::from_ref(&o.owner))
        .await
        .expect("read_bought");
    assert_eq!(bought.get(&o.owner).copied().unwrap_or(0), 0);
    let product = store.get_product(sku).await.expect("get").expect("exists");
    assert_eq!((product.sold_out, product.restocks), (false, 1));
    assert!(matches!(
        advance(store, &pending, &cancel, Some(&o.owner), now + 2).await,
        Advance::Stale
    ));
    assert_eq!(shards(store, &p).await, [(0, 2)]);
}
