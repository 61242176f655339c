//! Where flashctl acts: the table and the queues, and the SDK configuration to reach them.
//! In order of precedence: `--stack NAME` (resolved through CloudFormation's
//! DescribeStackResources, with the standard credential chain), `--table` and the queue URLs
//! given as flags (or their environment variables), or the local stack's `stack.env`.

use anyhow::{bail, Context, Result};
use aws_config::SdkConfig;
use clap::Args;
use flash_aws::{Aws, DynamoStore};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// The local stack's variables (endpoints, table, queues).
    #[arg(long, global = true, value_name = "FILE", env = "FLASHCTL_STACK_ENV")]
    env_file: Option<PathBuf>,
    /// A deployed SAM stack: its table and queues are looked up in CloudFormation.
    #[arg(long, global = true, value_name = "NAME", conflicts_with = "env_file")]
    stack: Option<String>,
    /// The orders table (with AWS, instead of --stack).
    #[arg(long, global = true, env = "TABLE_NAME", conflicts_with = "stack")]
    table: Option<String>,
    #[arg(
        long,
        global = true,
        env = "ORDERS_QUEUE_URL",
        conflicts_with = "stack"
    )]
    orders_queue_url: Option<String>,
    #[arg(long, global = true, env = "ORDERS_DLQ_URL", conflicts_with = "stack")]
    orders_dlq_url: Option<String>,
    #[arg(
        long,
        global = true,
        env = "PAYMENT_TIMEOUTS_QUEUE_URL",
        conflicts_with = "stack"
    )]
    timeouts_queue_url: Option<String>,
    #[arg(
        long,
        global = true,
        env = "PAYMENT_TIMEOUTS_DLQ_URL",
        conflicts_with = "stack"
    )]
    timeouts_dlq_url: Option<String>,
    /// place-order's re-drive delay, for when a queued order is overdue (`reconcile`).
    #[arg(
        long,
        global = true,
        env = "REDRIVE_DELAY_SECONDS",
        default_value_t = 900
    )]
    redrive_delay_seconds: u32,
}

/// The resources of one deployment.
pub struct Target {
    pub aws: Aws,
    pub sdk: SdkConfig,
    pub table: String,
    pub orders_queue: Option<String>,
    pub orders_dlq: Option<String>,
    pub timeouts_queue: Option<String>,
    pub timeouts_dlq: Option<String>,
    pub redrive_delay_s: u32,
}

impl Target {
    pub fn store(&self) -> DynamoStore {
        self.aws.store(&self.table)
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }
}

/// Reads `KEY=value` lines.
fn read_env_file(path: &PathBuf) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (start the local stack with `make up`, or pass --stack NAME or --table for AWS)",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect())
}

pub async fn resolve(args: &TargetArgs) -> Result<Target> {
    let mut a = args.clone();
    let mut redrive = args.redrive_delay_seconds;
    if a.stack.is_none() && (a.table.is_none() || a.env_file.is_some()) {
        let path = a.env_file.clone().unwrap_or_else(crate::default_env_file);
        let vars = read_env_file(&path)?;
        for (k, v) in &vars {
            if k.starts_with("AWS_") {
                // Before any SDK client exists: the endpoints and the local credentials.
                std::env::set_var(k, v);
            }
        }
        // A flag names a resource over the file (a table of its own, a queue of its own).
        let get = |k: &str| vars.get(k).cloned();
        let pick = |flag: &mut Option<String>, k: &str| {
            if flag.is_none() {
                *flag = get(k);
            }
        };
        pick(&mut a.table, "TABLE_NAME");
        pick(&mut a.orders_queue_url, "ORDERS_QUEUE_URL");
        pick(&mut a.orders_dlq_url, "ORDERS_DLQ_URL");
        pick(&mut a.timeouts_queue_url, "PAYMENT_TIMEOUTS_QUEUE_URL");
        pick(&mut a.timeouts_dlq_url, "PAYMENT_TIMEOUTS_DLQ_URL");
        if let Some(d) = get("REDRIVE_DELAY_SECONDS").and_then(|d| d.parse().ok()) {
            redrive = d;
        }
        if a.table.is_none() {
            bail!("{} names no TABLE_NAME", path.display());
        }
    }
    let sdk = flash_aws::config::sdk_config().await;
    if let Some(stack) = &a.stack {
        let found = stack_resources(&sdk, stack).await?;
        let get = |id: &str| found.get(id).cloned();
        a.table =
            Some(get("OrdersTable").with_context(|| format!("stack {stack} has no OrdersTable"))?);
        a.orders_queue_url = get("OrdersQueue");
        a.orders_dlq_url = get("OrdersDeadLetterQueue");
        a.timeouts_queue_url = get("PaymentTimeoutsQueue");
        a.timeouts_dlq_url = get("PaymentTimeoutsDeadLetterQueue");
    }
    // An empty value names nothing (as an unset variable would).
    for v in [
        &mut a.table,
        &mut a.orders_queue_url,
        &mut a.orders_dlq_url,
        &mut a.timeouts_queue_url,
        &mut a.timeouts_dlq_url,
    ] {
        if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
            *v = None;
        }
    }
    let Some(table) = a.table else {
        bail!("no table: pass --stack NAME, --table NAME or --env-file FILE");
    };
    Ok(Target {
        aws: Aws::new(sdk.clone()),
        sdk,
        table,
        orders_queue: a.orders_queue_url,
        orders_dlq: a.orders_dlq_url,
        timeouts_queue: a.timeouts_queue_url,
        timeouts_dlq: a.timeouts_dlq_url,
        redrive_delay_s: redrive,
    })
}

/// Physical ids by logical id (a table's name, a queue's URL).
async fn stack_resources(sdk: &SdkConfig, stack: &str) -> Result<HashMap<String, String>> {
    let cfn = aws_sdk_cloudformation::Client::new(sdk);
    let resp = cfn
        .describe_stack_resources()
        .stack_name(stack)
        .send()
        .await
        .map_err(aws_sdk_cloudformation::Error::from)
        .with_context(|| format!("DescribeStackResources of stack {stack}"))?;
    Ok(resp
        .stack_resources
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| Some((r.logical_resource_id?, r.physical_resource_id?)))
        .collect())
}
