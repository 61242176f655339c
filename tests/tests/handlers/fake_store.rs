//! The fake keeps the adapter's semantics: failed conditions write nothing and say why.

use super::*;
use flash_domain::order::{transition, Event, ShardTake};
use flash_domain::ports::{Accepted, Advance, Commit, Store};

async fn two_queued_orders(env: &Env) -> (OrderId, OrderId) {
    let a = env.place_ok("alice", "k", 1).await;
    let b = env.place_ok("bob", "k", 1).await;
    (a, b)
}

fn commit(ids: &[&OrderId], units: u32, limit: Option<u32>) -> Commit {
    Commit {
        takes: vec![ShardTake { shard: 0, units }],
        accepted: ids
            .iter()
            .map(|id| Accepted {
                order_id: (*id).clone(),
                takes: vec![ShardTake { shard: 0, units: 1 }],
                expires_at: 1,
            })
            .collect(),
        counters: vec![(user("alice"), 1)],
        limit,
        now: 0,
    }
}

#[tokio::test]
async fn a_commit_with_one_failed_condition_writes_nothing_and_says_why() {
    // GIVEN one unit and two queued orders, one of them already decided
    let env = Env::with_product(r#"{"name":"Hot phone","stock":1}"#).await;
    let (a, b) = two_queued_orders(&env).await;
    assert!(env.store.reject(&b, Reason::SoldOut, 0).await.expect("up"));
    let before = env.store.snapshot();
    // WHEN a commit takes two units for both
    let refused = env
        .store
        .commit(&sku(SKU), &commit(&[&a, &b], 2, None))
        .await
        .expect("up")
        .expect_err("refused");
    // THEN it is refused with what the shard holds and which order was decided, and
    // nothing was written
    assert_eq!(refused.shards.len(), 1);
    assert_eq!(refused.shards[0].available, 1);
    assert_eq!(refused.decided, vec![b]);
    assert!(!refused.conflict);
    assert_eq!(env.store.snapshot(), before);
}

#[tokio::test]
async fn a_commit_past_a_buyers_limit_is_refused_with_the_counter() {
    // GIVEN alice already bought her limit of 1
    let env = Env::with_product(r#"{"name":"Hot phone","stock":5,"per_user_limit":1}"#).await;
    let (a, _) = two_queued_orders(&env).await;
    let c = commit(&[&a], 1, Some(1));
    env.store
        .commit(&sku(SKU), &c)
        .await
        .expect("up")
        .expect("committed");
    assert_eq!(env.store.bought(&sku(SKU), &user("alice")), 1);
    assert!(env.store.order(&a).expect("stored").counted);
    // WHEN another commit counts one more unit for her (an order admission would have
    // refused: it is queued while the limit is lifted)
    env.store
        .edit_product(&sku(SKU), |p| p.per_user_limit = None);
    let other = env.place_ok("alice", "k-2", 1).await;
    let refused = env
        .store
        .commit(&sku(SKU), &commit(&[&other], 1, Some(1)))
        .await
        .expect("up")
        .expect_err("refused");
    // THEN it is refused naming her counter
    assert_eq!(refused.counters, vec![(user("alice"), 1)]);
    assert_eq!(env.status(&other), OrderStatus::Queued);
}

#[tokio::test]
async fn an_advance_on_a_changed_status_or_another_owner_is_stale() {
    // GIVEN alice's pending order
    let env = Env::with_product(r#"{"name":"Hot phone","stock":5}"#).await;
    let id = env.pending_order("alice", "k", 1).await;
    let order = env.store.order(&id).expect("stored");
    let pay = transition(order.status, order.reason, Event::Pay).expect("allowed");
    let before = env.store.snapshot();
    // WHEN bob's write carries his ownership condition
    let bob = env.store.advance(&order, &pay, Some(&user("bob")), 5).await;
    // THEN it is stale and nothing changed
    assert!(matches!(bob, Ok(Advance::Stale)));
    assert_eq!(env.store.snapshot(), before);
    // WHEN alice pays, then a write from the stale read cancels
    let paid = env
        .store
        .advance(&order, &pay, Some(&user("alice")), 5)
        .await;
    assert!(matches!(paid, Ok(Advance::Done(ref o)) if o.status == OrderStatus::Paid));
    let cancel = transition(order.status, order.reason, Event::Cancel).expect("allowed");
    let late = env.store.advance(&order, &cancel, None, 6).await;
    // THEN the cancel is stale and the stock stays taken
    assert!(matches!(late, Ok(Advance::Stale)));
    assert_eq!(env.available(), 4);
}

#[tokio::test]
async fn an_injected_fault_fails_exactly_the_calls_it_names() {
    // GIVEN a store told to fail the next two calls
    let env = Env::with_product(r#"{"name":"Hot phone","stock":5}"#).await;
    env.store.fail(2);
    // WHEN three calls are made
    let results = [
        env.store.get_product(&sku(SKU)).await.is_ok(),
        env.store.read_bought(&sku(SKU), &[]).await.is_ok(),
        env.store.get_product(&sku(SKU)).await.is_ok(),
    ];
    // THEN the first two fail and the third works
    assert_eq!(results, [false, false, true]);
}
