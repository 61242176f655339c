//! The capacity model (`infra/aws-sim`) in front of DynamoDB Local over HTTP: what it lets
//! through is what DynamoDB Local stores, and it throttles and conflicts as DynamoDB does.

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use aws_sim::{sdk_config_with_capacity, CapacityModel};
use flash_tests::stack;
use std::time::{Duration, Instant};

/// A hot item throttles single writes and conflicts concurrent transactions, and exactly the
/// writes that were let through are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_local_throttles_and_conflicts_like_dynamodb() {
    let table = stack::var("TABLE_NAME");
    let model = CapacityModel::new(1000.0, 0.05);
    let sdk = stack::sdk().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk_config_with_capacity(sdk, &model));
    let pk = format!("CAPTEST#{}", std::process::id());
    let add = |sk: &str| {
        Update::builder()
            .table_name(&table)
            .key("pk", AttributeValue::S(pk.clone()))
            .key("sk", AttributeValue::S(sk.into()))
            .update_expression("ADD n :one")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .build()
            .expect("valid update")
    };
    let stored = |sk: &'static str| {
        let (client, table, pk) = (client.clone(), table.clone(), pk.clone());
        async move {
            let item = client
                .get_item()
                .table_name(table)
                .key("pk", AttributeValue::S(pk))
                .key("sk", AttributeValue::S(sk.into()))
                .consistent_read(true)
                .send()
                .await
                .expect("read")
                .item
                .expect("item written");
            item["n"]
                .as_n()
                .expect("number")
                .parse::<u64>()
                .expect("integer")
        }
    };

    // Single-item writes on one item: throttled beyond the budget, retried by the SDK.
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            let hot = add("HOT#SINGLE");
            tokio::spawn(async move {
                let (mut ok, mut throttled) = (0u64, 0u64);
                for _ in 0..10 {
                    let result = client
                        .update_item()
                        .table_name(hot.table_name())
                        .set_key(Some(hot.key().clone()))
                        .update_expression(hot.update_expression())
                        .set_expression_attribute_values(hot.expression_attribute_values().cloned())
                        .send()
                        .await;
                    match result.map_err(|e| e.into_service_error()) {
                        Ok(_) => ok += 1,
                        Err(UpdateItemError::ThrottlingException(_)) => throttled += 1,
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                }
                (ok, throttled)
            })
        })
        .collect();
    let (mut ok, mut throttled) = (0, 0);
    for task in tasks {
        let (o, t) = task.await.expect("joined");
        ok += o;
        throttled += t;
    }
    let elapsed = started.elapsed();
    let stats = model.stats();
    println!("single: {ok} ok, {throttled} failed throttled in {elapsed:?}; {stats:?}");
    assert_eq!(stored("HOT#SINGLE").await, ok);
    // Most throttles are absorbed by the SDK's retries; some may exhaust them.
    assert!(stats.throttles > 0 && stats.throttles >= 3 * throttled);
    assert!(ok as f64 <= 50.0 + 50.0 * elapsed.as_secs_f64());

    // Concurrent transactions on one item: conflicts, which the SDK does not retry.
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let client = client.clone();
            let hot = add("HOT#TX");
            let own = add(&format!("OWN#{task}"));
            tokio::spawn(async move {
                let (mut ok, mut conflict, mut throttled) = (0u64, 0u64, 0u64);
                for _ in 0..25 {
                    let result = client
                        .transact_write_items()
                        .transact_items(TransactWriteItem::builder().update(hot.clone()).build())
                        .transact_items(TransactWriteItem::builder().update(own.clone()).build())
                        .send()
                        .await;
                    match result {
                        Ok(_) => ok += 1,
                        Err(e) => match e.into_service_error() {
                            TransactWriteItemsError::TransactionCanceledException(c) => {
                                let has = |code: &str| {
                                    c.cancellation_reasons()
                                        .iter()
                                        .any(|r| r.code() == Some(code))
                                };
                                if has("TransactionConflict") {
                                    conflict += 1;
                                } else if has("ThrottlingError") {
                                    throttled += 1;
                                }
                            }
                            other => panic!("expected TransactionCanceledException, got {other:?}"),
                        },
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ok, conflict, throttled)
            })
        })
        .collect();
    let (mut ok, mut conflict, mut throttled) = (0, 0, 0);
    for task in tasks {
        let (o, c, t) = task.await.expect("joined");
        ok += o;
        conflict += c;
        throttled += t;
    }
    let elapsed = started.elapsed();
    let before = stats;
    let stats = model.stats();
    println!(
        "transactions: {ok} ok, {conflict} conflicts, {throttled} throttled in {elapsed:?}; \
         {stats:?}"
    );
    assert_eq!(stored("HOT#TX").await, ok);
    assert_eq!(stats.conflicts - before.conflicts, conflict);
    assert_eq!(stats.throttles - before.throttles, throttled);
    assert!(conflict > 0);
    assert!((2 * ok) as f64 <= 50.0 + 50.0 * elapsed.as_secs_f64());
}
