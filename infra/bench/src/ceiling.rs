//! The local ceiling: how fast the emulators themselves take the calls one order needs at the
//! very least — one conditional PutItem of its record on DynamoDB Local and one SendMessage on
//! fauxqs — measured in the same run, at the same concurrency, without the capacity model.
//! No order pipeline on this machine can admit orders faster than the two done together.

use crate::hot::order_record;
use crate::sale::round3;
use crate::Stack;
use aws_sdk_dynamodb::types::KeysAndAttributes;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFINITION: &str = "orders/s at which the emulators complete the minimum calls of one \
order, each worker doing one conditional PutItem of an order record on DynamoDB Local then one \
SendMessage of its message on fauxqs, same concurrency as the sale, no capacity model, best of \
2 rounds";

/// Calls completed before this are not counted (connections, JIT).
const WARM_UP: Duration = Duration::from_millis(500);
/// Rounds of the three measurements; each rate is the best round.
const ROUNDS: usize = 2;

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub definition: &'static str,
    pub concurrency: usize,
    /// Each rate is the best of this many rounds of `seconds_each`.
    pub rounds: usize,
    pub seconds_each: f64,
    pub put_item_per_s: f64,
    pub send_message_per_s: f64,
    /// What `put_item_per_s` and `send_message_per_s` allow if the two shared the machine
    /// perfectly: 1 / (1/put + 1/send). For comparison with the measured pair.
    pub put_and_send_model_per_s: f64,
    pub put_and_send_per_s: f64,
    pub ceiling_orders_per_s: f64,
}

/// Calls per second `op` completes with `concurrency` workers, counting only calls that end in
/// the `duration` after the warm-up.
async fn rate<F, Fut>(concurrency: usize, duration: Duration, op: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let (from, until) = (started + WARM_UP, started + WARM_UP + duration);
    let seq = Arc::new(AtomicU64::new(0));
    let counted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, seq, counted) = (op.clone(), seq.clone(), counted.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let ok = op(seq.fetch_add(1, Relaxed)).await;
                    let end = Instant::now();
                    if ok && end >= from && end < until {
                        counted.fetch_add(1, Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    counted.load(Relaxed) as f64 / duration.as_secs_f64()
}

pub async fn measure(
    stack: &Stack,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
    let ddb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk);
    let queue_url = scratch_queue(&sqs, "BenchCeiling").await?;
    let tag = format!("CEIL{:08x}", rand::random::<u32>());
    let body = serde_json::json!({
        "order_id": format!("{:032x}", 0), "sku": "BENCH-PIPELINE-0000000000000", "quantity": 1,
        "user_id": "buyer-00000"
    })
    .to_string();

    let put = {
        let (ddb, table, tag) = (ddb.clone(), stack.table.clone(), tag.clone());
        move |i: u64| {
            let (ddb, table, tag) = (ddb.clone(), table.clone(), tag.clone());
            async move { put_record(&ddb, &table, &tag, i).await }
        }
    };
    let send = {
        let (sqs, url, body) = (sqs.clone(), queue_url.clone(), body.clone());
        move |_| {
            let (sqs, url, body) = (sqs.clone(), url.clone(), body.clone());
            async move {
                sqs.send_message()
                    .queue_url(url)
                    .message_body(body)
                    .send()
                    .await
                    .is_ok()
            }
        }
    };
    // Each rate is the best of two rounds, taken in turns: a ceiling is the most the emulators
    // did, and the machine's load (and the JVM's compiler) varies from second to second.
    let (mut put_item_per_s, mut send_message_per_s, mut put_and_send_per_s) = (0f64, 0f64, 0f64);
    for _ in 0..ROUNDS {
        put_item_per_s = put_item_per_s.max(rate(concurrency, duration, put.clone()).await);
        send_message_per_s =
            send_message_per_s.max(rate(concurrency, duration, send.clone()).await);
        let (put, send) = (put.clone(), send.clone());
        let both = rate(concurrency, duration, move |i| {
            let (put, send) = (put.clone(), send.clone());
            async move { put(i + (1 << 40)).await && send(i).await }
        })
        .await;
        put_and_send_per_s = put_and_send_per_s.max(both);
    }
    let _ = sqs.delete_queue().queue_url(&queue_url).send().await;
    Ok(Ceiling {
        definition: DEFINITION,
        concurrency,
        rounds: ROUNDS,
        seconds_each: duration.as_secs_f64(),
        put_item_per_s: round3(put_item_per_s),
        send_message_per_s: round3(send_message_per_s),
        put_and_send_model_per_s: round3(1.0 / (1.0 / put_item_per_s + 1.0 / send_message_per_s)),
        put_and_send_per_s: round3(put_and_send_per_s),
        ceiling_orders_per_s: round3(put_and_send_per_s),
    })
}

/// A new queue named `prefix` and the time, for one measurement; its URL.
async fn scratch_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> anyhow::Result<String> {
    let created = sqs
        .create_queue()
        .queue_name(format!("{prefix}-{}", flash_domain::clock::now_ms()))
        .send()
        .await?;
    Ok(created.queue_url.unwrap_or_default())
}

/// A BatchGetItem of `keys` (as built) in `table`; whether it was answered.
async fn batch_get(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: Result<KeysAndAttributes, aws_sdk_dynamodb::error::BuildError>,
) -> bool {
    match keys {
        Ok(k) => ddb
            .batch_get_item()
            .request_items(table, k)
            .send()
            .await
            .is_ok(),
        Err(_) => false,
    }
}

async fn put_record(ddb: &aws_sdk_dynamodb::Client, table: &str, tag: &str, i: u64) -> bool {
    ddb.put_item()
        .table_name(table)
        .set_item(Some(order_record(
            tag,
            i as usize,
            flash_domain::clock::now_ms(),
        )))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await
        .is_ok()
}

/// A fresh DynamoDB Local is a cold JVM: its first thousands of calls run several times slower
/// than later ones. Every kind of call the designs make is exercised here first, so no design
/// pays for the warm-up of the emulators.
pub async fn warm_up(stack: &Stack, concurrency: usize, duration: Duration) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
    let ddb = aws_sdk_dynamodb::Client::new(&stack.sdk);
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk);
    let queue_url = scratch_queue(&sqs, "BenchWarmUp").await?;
    let tag = format!("WARM{:08x}", rand::random::<u32>());
    let table = stack.table.clone();
    let key = |pk: String, sk: &str| {
        std::collections::HashMap::from([
            ("pk".to_owned(), crate::hot::s(pk)),
            ("sk".to_owned(), crate::hot::s(sk)),
        ])
    };
    let op = move |i: u64| {
        let (ddb, sqs, url, table, tag) = (
            ddb.clone(),
            sqs.clone(),
            queue_url.clone(),
            table.clone(),
            tag.clone(),
        );
        async move {
            // The pipeline's layout: each shard a partition of its own.
            let sku = flash_domain::Sku::parse(&tag).ok();
            let shard = |n: u64| {
                sku.as_ref().map_or_else(
                    || {
                        key(
                            format!("PRODUCT#{tag}#SHARD#{n:03}"),
                            &format!("SHARD#{n:03}"),
                        )
                    },
                    |sku| flash_aws::dynamo::shard_key(sku, n as u32),
                )
            };
            let hot = shard(i % 4);
            match i % 8 {
                0 => put_record(&ddb, &table, &tag, i).await,
                1 => ddb
                    .update_item()
                    .table_name(&table)
                    .set_key(Some(hot))
                    .update_expression("ADD available :one")
                    .condition_expression("attribute_not_exists(available) OR available >= :zero")
                    .expression_attribute_values(":one", crate::hot::n(1))
                    .expression_attribute_values(":zero", crate::hot::n(0))
                    .send()
                    .await
                    .is_ok(),
                2 => ddb
                    .get_item()
                    .table_name(&table)
                    .set_key(Some(hot))
                    .consistent_read(true)
                    .send()
                    .await
                    .is_ok(),
                3 => {
                    let keys = KeysAndAttributes::builder()
                        .set_keys(Some((0..4).map(shard).collect()))
                        .consistent_read(true)
                        .build();
                    batch_get(&ddb, &table, keys).await
                }
                4 => {
                    let items = (0..10)
                        .filter_map(|j| {
                            Update::builder()
                                .table_name(&table)
                                .set_key(Some(key(format!("ORDER#{tag}-{i}-{j}"), "ORDER")))
                                .update_expression("SET #s = :s")
                                .expression_attribute_names("#s", "status")
                                .expression_attribute_values(":s", crate::hot::s("pending"))
                                .build()
                                .ok()
                                .map(|u| TransactWriteItem::builder().update(u).build())
                        })
                        .collect();
                    ddb.transact_write_items()
                        .set_transact_items(Some(items))
                        .send()
                        .await
                        .is_ok()
                }
                5 => {
                    let keys = (0..10)
                        .map(|j| key(format!("ORDER#{tag}-{}-{j}", i.saturating_sub(4)), "ORDER"))
                        .collect();
                    let keys = KeysAndAttributes::builder().set_keys(Some(keys)).build();
                    batch_get(&ddb, &table, keys).await
                }
                6 => sqs
                    .send_message()
                    .queue_url(&url)
                    .message_body("{}")
                    .send()
                    .await
                    .is_ok(),
                _ => {
                    let got = sqs
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(10)
                        .send()
                        .await;
                    for m in got.ok().and_then(|g| g.messages).unwrap_or_default() {
                        if let Some(h) = m.receipt_handle {
                            let _ = sqs
                                .delete_message()
                                .queue_url(&url)
                                .receipt_handle(h)
                                .send()
                                .await;
                        }
                    }
                    true
                }
            }
        }
    };
    rate(concurrency, duration, op).await;
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk);
    if let Ok(list) = sqs
        .list_queues()
        .queue_name_prefix("BenchWarmUp-")
        .send()
        .await
    {
        for url in list.queue_urls() {
            let _ = sqs.delete_queue().queue_url(url).send().await;
        }
    }
    Ok(())
}
