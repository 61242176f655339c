//! `local-gateway serve`: the local API Gateway and SQS event source of a stack started by
//! `infra/stack.py up`. `local-gateway token`: a bearer token that gateway accepts.

use anyhow::{Context, Result};
use aws_sim::CapacityModel;
use clap::{Parser, Subcommand};
use flash_aws::{config, Aws, Env, SqsQueue};
use flash_domain::limits::PARTITION_WRITE_UNITS_PER_S;
use local_gateway::config::{read_stack_env, GatewayConfig};
use local_gateway::event_source::{poller_client, EventSource};
use local_gateway::functions::{HttpFunction, SqsFunction};
use local_gateway::jwt::{self, Verifier};
use local_gateway::sale::SalePage;
use local_gateway::server::{self, Gateway};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// `sam local start-api`'s port.
const DEFAULT_PORT: u16 = 3000;
const DEFAULT_TTL_S: u64 = 3600;
/// Variables whose value in the gateway's own environment wins over `stack.env`'s and the
/// template's.
const CALLER_KNOBS: [&str; 2] = ["RUST_LOG", "REDRIVE_DELAY_SECONDS"];
/// How long pollers may take to finish their batch in hand once shutdown begins.
const POLLER_DRAIN: Duration = Duration::from_secs(4);

/// The stack's API Gateway (HTTP API with its JWT authorizer) and Lambda SQS event source on
/// 127.0.0.1, for a stack started by `infra/stack.py up` (`make up` runs both).
#[derive(Debug, Parser)]
#[command(name = "local-gateway", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the template's routes and run its SQS event source mappings until SIGINT or
    /// SIGTERM. Also serves the local-only pages: /_local/stats (DynamoDB writes counted) and
    /// /_local/sale?sku=SKU (the live sale page).
    Serve {
        /// The stack's state directory (gateway.json, stack.env, jwt/), as `stack.py up`
        /// wrote it.
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// Loopback port to listen on (`sam local start-api`'s default).
        #[arg(long, default_value_t = DEFAULT_PORT)]
        port: u16,
        /// The functions reach DynamoDB through the capacity model: each item and each
        /// partition key value gets 1,000 write units a second x F, and concurrent
        /// transactions on one item conflict (off by default).
        #[arg(long, value_name = "F", value_parser = positive_scale)]
        capacity_scale: Option<f64>,
    },
    /// Print a bearer token (an RS256 JWT) that `serve` for the same state directory accepts.
    Token {
        /// The stack's state directory, whose jwt/ key pair signs the token.
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// The caller: the token's `sub` claim.
        #[arg(long, value_name = "USER", value_parser = non_empty)]
        sub: String,
        /// Add the flash-sale/admin scope.
        #[arg(long)]
        admin: bool,
        /// Seconds until the token expires.
        #[arg(long, default_value_t = DEFAULT_TTL_S)]
        ttl_seconds: u64,
    },
}

fn positive_scale(text: &str) -> Result<f64, String> {
    let scale: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if scale.is_finite() && scale > 0.0 {
        Ok(scale)
    } else {
        Err(format!("must be a number above 0, got {scale}"))
    }
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(text.to_owned())
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve {
            state,
            port,
            capacity_scale,
        } => serve(state, port, capacity_scale),
        Command::Token {
            state,
            sub,
            admin,
            ttl_seconds,
        } => jwt::mint(&state, &sub, admin, Duration::from_secs(ttl_seconds))
            .map(|token| println!("{token}"))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(state: PathBuf, port: u16, capacity_scale: Option<f64>) -> Result<()> {
    // The SDK reads the environment: load the stack's before any thread starts. Each function
    // gets its own environment, the template's; the knobs given by the caller
    // (`make up REDRIVE_DELAY_SECONDS=3`) win over the template's values.
    let knobs: Vec<(String, String)> = CALLER_KNOBS
        .iter()
        .filter_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (k.to_string(), v))
        })
        .collect();
    for (key, value) in read_stack_env(&state)? {
        std::env::set_var(key, value);
    }
    for (key, value) in &knobs {
        std::env::set_var(key, value);
    }
    flash_aws::telemetry::init();
    if jwt::ensure_keys(&state)? {
        tracing::info!(dir = %state.join("jwt").display(), "made the stack's token signing key pair");
    }
    let config = GatewayConfig::load(&state)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(state, port, config, &knobs, capacity_scale))
}

async fn run(
    state: PathBuf,
    port: u16,
    config: GatewayConfig,
    knobs: &[(String, String)],
    capacity_scale: Option<f64>,
) -> Result<()> {
    let sdk = flash_aws::config::sdk_config().await;
    // DynamoDB Local neither throttles nor raises TransactionConflict; under the capacity
    // model the functions meet both, as a sale on DynamoDB would. SQS is not modelled.
    let dynamo_sdk = match capacity_scale {
        Some(scale) => {
            let model = CapacityModel::new(PARTITION_WRITE_UNITS_PER_S, scale);
            tracing::info!(
                write_units_per_s_per_item = model.budget_per_item(),
                "functions reach DynamoDB through the capacity model"
            );
            aws_sim::sdk_config_with_capacity(sdk.clone(), &model)
        }
        None => sdk.clone(),
    };
    // `/_local/writes` reports what the functions wrote, as the bench and the demo read it.
    let aws = Aws::new(sdk.clone())
        .with_dynamodb(dynamo_sdk)
        .with_write_stats();

    let mut functions = HashMap::new();
    for route in &config.routes {
        if functions.contains_key(&route.binary) {
            continue;
        }
        let env = config.environment(&route.function, knobs)?;
        let built = HttpFunction::build(&route.binary, &aws, &env)
            .with_context(|| format!("{} cannot start", route.function))?;
        if let Some(function) = built {
            if route.binary == "place-order" {
                tracing::info!(
                    redrive_delay_s = config::redrive_delay(&env)?.as_secs(),
                    "place-order's re-drive copies arrive this long after their order"
                );
            }
            functions.insert(route.binary.clone(), Arc::new(function));
        }
    }
    let mut verifiers = HashMap::new();
    for (name, authorizer) in &config.authorizers {
        verifiers.insert(name.clone(), Verifier::load(&state, authorizer)?);
    }
    let store = aws.store(config::table_name(&Env::process())?);
    let sale = SalePage::new(
        store.clone(),
        aws_sdk_sqs::Client::new(&sdk),
        std::env::var("ORDERS_QUEUE_URL").ok(),
        std::env::var("ORDERS_DLQ_URL").ok(),
    );
    let gateway = Arc::new(
        // The functions share one store per table, and so its write statistics.
        Gateway::new(&config, functions, verifiers, store.stats().cloned())?.with_sale_page(sale),
    );

    let poller_client = poller_client(&sdk);
    let mut sources = Vec::new();
    for mapping in &config.event_source_mappings {
        let queue = SqsQueue::from_config(&sdk, &mapping.queue_url);
        let env = config.environment(&mapping.function, knobs)?;
        let function = SqsFunction::build(&mapping.binary, &aws, &env, queue)
            .with_context(|| format!("{} cannot start", mapping.function))?
            .with_context(|| {
                format!(
                    "no local handler for {} (binary {})",
                    mapping.function, mapping.binary
                )
            })?;
        let source = EventSource::new(
            mapping.clone(),
            poller_client.clone(),
            Arc::new(function),
            &config.region,
        );
        sources.push(Arc::new(source));
    }

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let (stop, stopped) = watch::channel(false);
    let pollers: Vec<_> = sources
        .into_iter()
        .flat_map(|s| s.spawn(&stopped))
        .collect();
    let server = tokio::spawn(server::serve(listener, gateway, stopped.clone()));
    tracing::info!(
        port,
        routes = config.routes.len(),
        event_source_mappings = config.event_source_mappings.len(),
        pollers = pollers.len(),
        "local gateway listening on 127.0.0.1"
    );

    shutdown_signal().await?;
    tracing::info!("stopping");
    let _ = stop.send(true);
    let _ = server.await;
    if tokio::time::timeout(POLLER_DRAIN, join_all(pollers))
        .await
        .is_err()
    {
        tracing::warn!("pollers still busy at shutdown");
    }
    Ok(())
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
