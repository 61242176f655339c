//! The circuit breakers in front of DynamoDB and SQS.

use super::*;
use flash_domain::breaker_state::{BreakerConfig, State};
use std::ops::Range;
use std::time::Duration;

const COOL_DOWN: Duration = Duration::from_secs(5);

/// place-order with breakers that open after 3 failures within 10 s, for 5 s.
fn handler(env: &Env) -> PlaceOrder<FakeStore, FakeQueue, FakeStore> {
    PlaceOrder::new(env.store.clone(), env.queue.clone())
        .with_rate_limit(env.store.clone())
        .with_breakers(BreakerConfig {
            failures: 3,
            window: Duration::from_secs(10),
            cool_down: COOL_DOWN,
        })
}

async fn place(h: &PlaceOrder<FakeStore, FakeQueue, FakeStore>, key: &str) -> Resp {
    Resp::from(h.handle(Req::place_order("alice", key, ONE).build()).await)
}

/// SKU-1 on sale, and place-order over it with breakers.
async fn on_sale_with_breakers() -> (Env, PlaceOrder<FakeStore, FakeQueue, FakeStore>) {
    let env = Env::on_sale().await;
    let h = handler(&env);
    (env, h)
}

/// Alice's orders under keys `k-0`, `k-1`, ... for `keys`, whatever they are answered.
async fn place_each(h: &PlaceOrder<FakeStore, FakeQueue, FakeStore>, keys: Range<usize>) {
    for i in keys {
        place(h, &format!("k-{i}")).await;
    }
}

/// Alice's orders under keys `{prefix}-{i}` for `keys` are each refused 503 `unavailable`.
async fn assert_each_unavailable(
    h: &PlaceOrder<FakeStore, FakeQueue, FakeStore>,
    prefix: &str,
    keys: Range<usize>,
) {
    for i in keys {
        assert_error(
            &place(h, &format!("{prefix}-{i}")).await,
            503,
            "unavailable",
        );
    }
}

fn retry_after(r: &Resp) -> u64 {
    r.retry_after
        .as_deref()
        .and_then(|s| s.parse().ok())
        .expect("Retry-After in seconds")
}

#[tokio::test(start_paused = true)]
async fn repeated_throttling_opens_it_and_orders_are_refused_at_once_without_a_call() {
    // GIVEN DynamoDB throttling every call
    let (env, h) = on_sale_with_breakers().await;
    env.store.throttle(usize::MAX);
    // WHEN three orders fail against it
    assert_each_unavailable(&h, "k", 0..3).await;
    // THEN the breaker is open: the next order is refused 503 with the cool-down as
    // Retry-After, and neither DynamoDB nor SQS is called
    assert_eq!(h.breakers().0.state(), State::Open);
    let (calls, sends) = (env.store.calls(), env.queue.calls());
    tokio::time::advance(Duration::from_secs(1)).await;
    let r = place(&h, "k-3").await;
    assert_error(&r, 503, "unavailable");
    assert_eq!(retry_after(&r), 4);
    assert_eq!((env.store.calls(), env.queue.calls()), (calls, sends));
    assert!(env.store.orders().is_empty());
}

#[tokio::test(start_paused = true)]
async fn after_the_cool_down_one_probe_closes_it_when_the_dependency_is_back() {
    // GIVEN a breaker opened by throttling
    let (env, h) = on_sale_with_breakers().await;
    env.store.throttle(3);
    place_each(&h, 0..3).await;
    assert_eq!(h.breakers().0.state(), State::Open);
    // WHEN the cool-down passes and DynamoDB has recovered
    tokio::time::advance(COOL_DOWN).await;
    let r = place(&h, "k-probe").await;
    // THEN the probe goes through and closes the breaker; orders flow again
    assert_eq!(r.status, 202, "body: {}", r.body);
    assert_eq!(h.breakers().0.state(), State::Closed);
    assert_eq!(place(&h, "k-next").await.status, 202);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again_for_another_cool_down() {
    // GIVEN a breaker opened by throttling, and its cool-down over
    let (env, h) = on_sale_with_breakers().await;
    env.store.throttle(4);
    place_each(&h, 0..3).await;
    tokio::time::advance(COOL_DOWN).await;
    // WHEN the probe is throttled too
    assert_error(&place(&h, "k-probe").await, 503, "unavailable");
    // THEN it is open again, for a whole new cool-down
    assert_eq!(h.breakers().0.state(), State::Open);
    let r = place(&h, "k-after").await;
    assert_error(&r, 503, "unavailable");
    assert_eq!(retry_after(&r), 5);
    tokio::time::advance(COOL_DOWN).await;
    assert_eq!(place(&h, "k-later").await.status, 202);
}

#[tokio::test(start_paused = true)]
async fn an_sqs_breaker_opened_by_throttled_sends_sheds_orders_before_any_write() {
    // GIVEN SQS throttling: three orders refused with 503, written or not
    let (env, h) = on_sale_with_breakers().await;
    env.queue.throttle(3);
    assert_each_unavailable(&h, "k", 0..3).await;
    assert_eq!(h.breakers().1.state(), State::Open);
    // WHEN another order comes while it is open
    let before = env.store.snapshot();
    let calls = env.store.calls();
    let r = place(&h, "k-3").await;
    // THEN it is refused at once: no DynamoDB write is left waiting for a queue, and the
    // one call is the read that looks for an order the key already names (a replay of a
    // decided order would get its 202 with no send)
    assert_error(&r, 503, "unavailable");
    assert_eq!(
        (env.store.snapshot(), env.store.calls()),
        (before, calls + 1)
    );
    // AND after the cool-down the first caller's retry is the probe that enqueues it
    tokio::time::advance(COOL_DOWN).await;
    let replay = place(&h, "k-0").await;
    assert_eq!(replay.status, 202, "body: {}", replay.body);
    assert_eq!(h.breakers().1.state(), State::Closed);
    assert_eq!(env.queue.sent().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn while_only_the_sqs_breaker_is_open_a_replay_of_a_decided_order_gets_its_202() {
    // GIVEN alice's order, accepted, and then an SQS breaker opened by throttled sends
    let (env, h) = on_sale_with_breakers().await;
    let id = env.pending_order("alice", "k-0", 1).await;
    env.queue.throttle(3);
    assert_each_unavailable(&h, "k", 1..4).await;
    assert_eq!(h.breakers().1.state(), State::Open);
    // WHEN she replays her first request
    let r = place(&h, "k-0").await;
    // THEN the stored order answers, with nothing to send
    assert_eq!((r.status, r.order_id()), (202, id), "body: {}", r.body);
    assert_eq!(r.body["status"], "pending");
    // AND a new order is still shed
    assert_error(&place(&h, "k-9").await, 503, "unavailable");
}

#[tokio::test(start_paused = true)]
async fn business_answers_and_spread_out_failures_do_not_open_it() {
    // GIVEN failures that are not throttling, and throttles more than 10 s apart
    let (env, h) = on_sale_with_breakers().await;
    env.store.fail(3);
    assert_each_unavailable(&h, "f", 0..3).await;
    for i in 0..4 {
        env.store.throttle(1);
        place(&h, &format!("t-{i}")).await;
        tokio::time::advance(Duration::from_secs(6)).await;
    }
    // WHEN orders are refused for business reasons
    let other = json!({"sku": SKU, "quantity": 1001}).to_string();
    assert_error(
        &Resp::from(
            h.handle(Req::place_order("alice", "bad", &other).build())
                .await,
        ),
        400,
        "invalid_request",
    );
    // THEN the breaker stayed closed throughout
    assert_eq!(h.breakers().0.state(), State::Closed);
    assert_eq!(place(&h, "k-ok").await.status, 202);
}
