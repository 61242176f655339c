//! `local-gateway serve`: the local API Gateway and SQS event source of a stack started by
//! `infra/stack.py up`. `local-gateway token`: a bearer token that gateway accepts.

use anyhow::{bail, Context, Result};
use aws_sim::CapacityModel;
use flash_aws::{config, Aws, Env, SqsQueue};
use local_gateway::config::{read_stack_env, GatewayConfig};
use local_gateway::event_source::{poller_client, EventSource};
use local_gateway::functions::{HttpFunction, SqsFunction};
use local_gateway::jwt::{self, Verifier};
use local_gateway::server::{self, Gateway};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const USAGE: &str = "usage:
  local-gateway serve --state DIR [--port 3000] [--capacity-scale F]
  local-gateway token --state DIR --sub USER [--admin] [--ttl-seconds 3600]";
/// `sam local start-api`'s port.
const DEFAULT_PORT: u16 = 3000;
const DEFAULT_TTL_S: u64 = 3600;
/// Variables whose value in the gateway's own environment wins over `stack.env`'s and the
/// template's.
const CALLER_KNOBS: [&str; 2] = ["RUST_LOG", "REDRIVE_DELAY_SECONDS"];
/// How long pollers may take to finish their batch in hand once shutdown begins.
const POLLER_DRAIN: Duration = Duration::from_secs(4);
/// DynamoDB's write budget per item, which `--capacity-scale` scales.
const ITEM_WRITE_UNITS_PER_S: f64 = 1000.0;

enum Command {
    Serve {
        state: PathBuf,
        port: u16,
        /// With `--capacity-scale F`: the functions reach DynamoDB through the capacity model
        /// at 1,000 WU/s × F per item.
        capacity_scale: Option<f64>,
    },
    Token {
        state: PathBuf,
        sub: String,
        admin: bool,
        ttl_s: u64,
    },
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Command> {
    let command = args.next().context("no command")?;
    if command != "serve" && command != "token" {
        bail!("unknown command {command}");
    }
    let (mut state, mut port, mut sub, mut admin, mut ttl_s) =
        (None, DEFAULT_PORT, None, false, DEFAULT_TTL_S);
    let mut capacity_scale = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--state" => state = Some(PathBuf::from(value()?)),
            "--port" if command == "serve" => port = value()?.parse().context("--port")?,
            "--capacity-scale" if command == "serve" => {
                let scale: f64 = value()?.parse().context("--capacity-scale")?;
                if !(scale.is_finite() && scale > 0.0) {
                    bail!("--capacity-scale must be a number above 0, got {scale}");
                }
                capacity_scale = Some(scale);
            }
            "--sub" if command == "token" => sub = Some(value()?),
            "--admin" if command == "token" => admin = true,
            "--ttl-seconds" if command == "token" => {
                ttl_s = value()?.parse().context("--ttl-seconds")?
            }
            _ => bail!("unknown argument {flag}"),
        }
    }
    let state = state.context("--state DIR is required")?;
    match command.as_str() {
        "serve" => Ok(Command::Serve {
            state,
            port,
            capacity_scale,
        }),
        "token" => {
            let sub = sub
                .filter(|s| !s.is_empty())
                .context("--sub USER is required")?;
            Ok(Command::Token {
                state,
                sub,
                admin,
                ttl_s,
            })
        }
        other => bail!("unknown command {other}"),
    }
}

fn main() -> ExitCode {
    let command = match parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("local-gateway: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Serve {
            state,
            port,
            capacity_scale,
        } => serve(state, port, capacity_scale),
        Command::Token {
            state,
            sub,
            admin,
            ttl_s,
        } => jwt::mint(&state, &sub, admin, Duration::from_secs(ttl_s))
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
            let model = CapacityModel::new(ITEM_WRITE_UNITS_PER_S, scale);
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
    let gateway = Arc::new(Gateway::new(
        &config,
        functions,
        verifiers,
        // The functions share one store per table, and so its write statistics.
        aws.store(config::table_name(&Env::process())?)
            .stats()
            .cloned(),
    )?);

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
