//! `dlq list|redrive [--queue orders|timeouts]`: the messages a dead-letter queue holds, and
//! moving them back to the queue they came from (each sent to the source with its body and
//! attributes, then deleted from the DLQ; a message is never deleted before its copy is
//! sent, so a failure midway leaves it in one queue or, at worst, in both, which the
//! consumers' idempotency absorbs).

use crate::output::Out;
use crate::target::Target;
use anyhow::{anyhow, Context, Result};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, SendMessageBatchRequestEntry};
use clap::{Subcommand, ValueEnum};
use flash_aws::sqs::SqsQueue;
use flash_domain::ports::Redelivery;
use serde_json::json;
use std::time::Duration;

/// How long a listed message stays hidden while the listing goes on (released at the end).
const LIST_VISIBILITY_S: i32 = 30;
/// How long a message being moved stays hidden: a failed move lets it come back.
const MOVE_VISIBILITY_S: i32 = 60;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// The messages of a DLQ (each once; they stay in it).
    List {
        #[arg(long, value_enum, default_value_t = Which::Orders)]
        queue: Which,
    },
    /// Moves every message of a DLQ back to its source queue and says how many.
    Redrive {
        #[arg(long, value_enum, default_value_t = Which::Orders)]
        queue: Which,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    /// The orders queue's DLQ (process-orders).
    Orders,
    /// The payment-timeouts queue's DLQ (expire-orders).
    Timeouts,
}

/// (source queue, its DLQ).
fn queues(target: &Target, which: Which) -> Result<(&str, &str)> {
    let (source, dlq, name) = match which {
        Which::Orders => (&target.orders_queue, &target.orders_dlq, "orders"),
        Which::Timeouts => (
            &target.timeouts_queue,
            &target.timeouts_dlq,
            "payment timeouts",
        ),
    };
    match (source, dlq) {
        (Some(s), Some(d)) => Ok((s, d)),
        _ => Err(anyhow!(
            "the {name} queue or its DLQ is not known: pass --stack, or the queue URLs"
        )),
    }
}

pub async fn run(target: &Target, cmd: DlqCommand, out: Out) -> Result<()> {
    match cmd {
        DlqCommand::List { queue } => list(target, queue, out).await,
        DlqCommand::Redrive { queue } => redrive(target, queue, out).await,
    }
}

async fn receive(target: &Target, url: &str, visibility: i32) -> Result<Vec<Message>> {
    Ok(target
        .sqs()
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(visibility)
        .wait_time_seconds(0)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .map_err(aws_sdk_sqs::Error::from)
        .context("sqs ReceiveMessage")?
        .messages
        .unwrap_or_default())
}

async fn list(target: &Target, which: Which, out: Out) -> Result<()> {
    let (_, dlq) = queues(target, which)?;
    let sqs = target.sqs();
    let mut seen = Vec::new();
    loop {
        let batch = receive(target, dlq, LIST_VISIBILITY_S).await?;
        if batch.is_empty() {
            break;
        }
        seen.extend(batch);
    }
    // Visible again at once: listing takes nothing out of the DLQ.
    let now: Vec<(String, Duration)> = seen
        .iter()
        .filter_map(|m| Some((m.receipt_handle()?.to_owned(), Duration::ZERO)))
        .collect();
    SqsQueue::new(sqs, dlq).redeliver_after(&now).await?;
    let attr = |m: &Message, k: MessageSystemAttributeName| {
        m.attributes()
            .and_then(|a| a.get(&k))
            .cloned()
            .unwrap_or_default()
    };
    let rows: Vec<_> = seen
        .iter()
        .map(|m| {
            json!({
                "message_id": m.message_id(),
                "body": m.body(),
                "sent_at_ms": attr(m, MessageSystemAttributeName::SentTimestamp),
                "receive_count": attr(m, MessageSystemAttributeName::ApproximateReceiveCount),
            })
        })
        .collect();
    if out.json {
        out.print_json(&json!({"queue": dlq, "messages": rows}));
    } else {
        for r in &rows {
            println!(
                "{}  received {} times  {}",
                r["message_id"].as_str().unwrap_or("-"),
                r["receive_count"].as_str().unwrap_or("?"),
                r["body"].as_str().unwrap_or("")
            );
        }
        println!("{} messages in {dlq}", rows.len());
    }
    Ok(())
}

async fn redrive(target: &Target, which: Which, out: Out) -> Result<()> {
    let (source, dlq) = queues(target, which)?;
    let sqs = target.sqs();
    let mut moved = 0usize;
    loop {
        let batch = receive(target, dlq, MOVE_VISIBILITY_S).await?;
        if batch.is_empty() {
            break;
        }
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, m)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(m.body().unwrap_or_default())
                    .set_message_attributes(m.message_attributes().cloned())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .context("building SendMessageBatch")?;
        let sent = sqs
            .send_message_batch()
            .queue_url(source)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(aws_sdk_sqs::Error::from)
            .context("sqs SendMessageBatch")?;
        // Only what reached the source queue leaves the DLQ.
        let handles: Vec<&str> = sent
            .successful()
            .iter()
            .filter_map(|ok| batch.get(ok.id().parse::<usize>().ok()?)?.receipt_handle())
            .collect();
        let deleted = flash_aws::sqs::delete_messages(&sqs, dlq, &handles).await;
        moved += deleted.deleted;
        if let Some(why) = deleted.not_deleted.first() {
            return Err(anyhow!(
                "moved {moved}, then a message stayed in the DLQ as well: {why}"
            ));
        }
        if let Some(f) = sent.failed().first() {
            return Err(anyhow!(
                "moved {moved}, then the source queue refused a message: {}",
                f.message().unwrap_or(f.code())
            ));
        }
    }
    if out.json {
        out.print_json(&json!({"moved": moved, "from": dlq, "to": source}));
    } else {
        println!("moved {moved} messages from {dlq} to {source}");
    }
    Ok(())
}
