//! `make bench`: one flash sale — one hot product, `--buyers` buyers for `--stock` units,
//! `--concurrency` at a time — through four designs, each on a fresh SKU and under its own
//! instance of the same DynamoDB capacity model (the per-item and per-partition write budgets,
//! scaled by `--scale`, and transaction conflicts), against the local stack in `--state`:
//!
//! - `version_lock`: read stock and version, conditional write on the version, ≤ 3 retries;
//! - `lease_lock`: a lease item taken with a conditional put (5 s expiry), stock read and
//!   written under it, lease released;
//! - `per_order`: one conditional decrement per order;
//! - `pipeline`: ours, place-order → SQS → process-orders, until every order is decided.
//!
//! Each design runs the sale once unreported before its measured run. Before `pipeline` it
//! measures the local ceiling (see `ceiling.rs`). It prints a table and the ratios and writes
//! `--report` (default `.local/reports/bench.json`). `--cold-start` instead measures each
//! function's cold start and adds it to that report.

mod ceiling;
mod cold_start;
mod hot;
mod lease_lock;
mod per_order;
mod pipeline;
mod report;
mod sale;
mod version_lock;

use anyhow::{bail, Context};
use aws_sim::CapacityModel;
use report::Results;
use sale::Sale;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Mixed calls on both emulators before anything is measured.
const WARM_UP: Duration = Duration::from_secs(10);

pub const DESIGNS: [&str; 4] = ["version_lock", "lease_lock", "per_order", "pipeline"];

const USAGE: &str = "usage:
  flash-bench [--state DIR] [--buyers N] [--stock N] [--concurrency N] [--scale F]
              [--item-write-units N] [--designs a,b,...] [--shards N] [--ceiling-s S | --no-ceiling]
              [--no-model] [--timeout-s S] [--report FILE]
  flash-bench --cold-start [--lambda-dir DIR] [--starts N] [--report FILE]";

pub struct Args {
    pub state: PathBuf,
    pub buyers: usize,
    pub stock: u64,
    pub concurrency: usize,
    pub scale: f64,
    pub item_write_units: f64,
    pub designs: Vec<String>,
    /// Shards for the pipeline's product; the product's default (from the stock) when absent.
    pub shards: Option<u32>,
    pub ceiling: Option<Duration>,
    /// `--no-model`: run the designs without the capacity model.
    pub model: bool,
    pub timeout: Duration,
    pub report: PathBuf,
    pub cold_start: bool,
    pub lambda_dir: PathBuf,
    pub starts: usize,
}

/// DynamoDB's per-item write budget, before scaling.
pub const ITEM_WRITE_UNITS_PER_S: f64 = 1000.0;
/// The budget is scaled down so it bites on one machine. At 0.1 an item takes 100 write
/// units/s: a tenth of what DynamoDB Local does for one item here (about 1,000 conditional
/// writes/s with the model off) and a small part of the local ceiling (600–1,000 orders/s), so
/// the item's budget, not the emulator, bounds a design that writes one item per order — as on
/// AWS, where one item's 1,000 WCU/s is a sliver of what the table takes.
pub const DEFAULT_SCALE: f64 = 0.1;

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        state: PathBuf::from(".local/bench"),
        buyers: 20_000,
        stock: 2_000,
        concurrency: 64,
        scale: DEFAULT_SCALE,
        item_write_units: ITEM_WRITE_UNITS_PER_S,
        designs: DESIGNS.map(str::to_owned).to_vec(),
        shards: None,
        ceiling: Some(Duration::from_secs(2)),
        model: true,
        timeout: Duration::from_secs(900),
        report: PathBuf::from(".local/reports/bench.json"),
        cold_start: false,
        lambda_dir: PathBuf::from("target/lambda-bench"),
        starts: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--state" => a.state = value()?.into(),
            "--buyers" => a.buyers = value()?.parse().context("--buyers")?,
            "--stock" => a.stock = value()?.parse().context("--stock")?,
            "--concurrency" => a.concurrency = value()?.parse().context("--concurrency")?,
            "--scale" => a.scale = value()?.parse().context("--scale")?,
            "--item-write-units" => {
                a.item_write_units = value()?.parse().context("--item-write-units")?
            }
            "--designs" => {
                a.designs = value()?.split(',').map(|d| d.trim().to_owned()).collect();
                if let Some(d) = a.designs.iter().find(|d| !DESIGNS.contains(&d.as_str())) {
                    bail!("unknown design {d}; the designs are {}", DESIGNS.join(", "));
                }
            }
            "--shards" => a.shards = Some(value()?.parse().context("--shards")?),
            "--ceiling-s" => {
                a.ceiling = Some(Duration::from_secs_f64(
                    value()?.parse().context("--ceiling-s")?,
                ))
            }
            "--no-ceiling" => a.ceiling = None,
            "--no-model" => a.model = false,
            "--timeout-s" => {
                a.timeout = Duration::from_secs(value()?.parse().context("--timeout-s")?)
            }
            "--report" => a.report = value()?.into(),
            "--cold-start" => a.cold_start = true,
            "--lambda-dir" => a.lambda_dir = value()?.into(),
            "--starts" => a.starts = value()?.parse().context("--starts")?,
            other => bail!("unknown argument {other}"),
        }
    }
    if a.buyers == 0 || a.stock == 0 || a.concurrency == 0 || a.starts == 0 {
        bail!("--buyers, --stock, --concurrency and --starts must be positive");
    }
    if !(a.scale > 0.0 && a.item_write_units > 0.0) {
        bail!("--scale and --item-write-units must be positive");
    }
    Ok(a)
}

/// The local stack `infra/stack.py up --state DIR` started.
pub struct Stack {
    pub state: PathBuf,
    pub table: String,
    pub queue_url: String,
    pub dlq_url: Option<String>,
    /// Plain SDK configuration (no capacity model): setup, measuring reads, SQS.
    pub sdk: aws_config::SdkConfig,
}

impl Stack {
    /// Exports `STATE/stack.env` to this process; call before any thread starts.
    fn export_env(state: &std::path::Path) -> anyhow::Result<()> {
        for (k, v) in local_gateway::config::read_stack_env(state)? {
            // Set before the runtime and any client exist; the SDK reads the endpoints here.
            unsafe { std::env::set_var(k, v) };
        }
        Ok(())
    }

    async fn load(state: PathBuf) -> anyhow::Result<Self> {
        let var = |k: &str| {
            std::env::var(k)
                .with_context(|| format!("{k} missing from stack.env; is the stack up?"))
        };
        Ok(Self {
            table: var("TABLE_NAME")?,
            queue_url: var("ORDERS_QUEUE_URL")?,
            dlq_url: var("ORDERS_DLQ_URL").ok(),
            sdk: flash_aws::config::sdk_config().await,
            state,
        })
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flash-bench: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // The functions' own logs (batches, groups, orders), to stderr, only when asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let result = if args.cold_start {
        cold_starts(&args)
    } else {
        Stack::export_env(&args.state).and_then(|()| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(sale(&args))
        })
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flash-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn sale(args: &Args) -> anyhow::Result<ExitCode> {
    let stack = Stack::load(args.state.clone()).await?;
    let sale = Sale {
        buyers: args.buyers,
        stock: args.stock,
        concurrency: args.concurrency,
        timeout: args.timeout,
    };
    let budget = CapacityModel::new(args.item_write_units, args.scale).budget_per_item();
    if !args.model {
        hot::disable_model();
        eprintln!("capacity model OFF (--no-model): the emulators' own limits only");
    }
    eprintln!(
        "flash sale: {} buyers for {} units, {} at a time; capacity model {} WCU/s per item × {} = {budget} WCU/s per item",
        sale.buyers, sale.stock, sale.concurrency, args.item_write_units, args.scale
    );
    let stamp = flash_domain::clock::now_ms();
    let mut results = Results::new(&sale, args.item_write_units, args.scale, budget, args.model);
    eprintln!("warming up the emulators ({} s)", WARM_UP.as_secs());
    ceiling::warm_up(&stack, sale.concurrency, WARM_UP).await?;
    if let Some(d) = args.ceiling {
        eprintln!(
            "local ceiling: 2 rounds of {:.0} s each for PutItem, SendMessage, both",
            d.as_secs_f64()
        );
        results.ceiling = Some(ceiling::measure(&stack, sale.concurrency, d).await?);
    }
    // Each design runs the sale twice, each time on a fresh SKU: a rehearsal, unreported, then
    // the measured run. DynamoDB Local is a JVM, and the mixed warm-up does not bring every code
    // path a design uses up to speed: the pipeline's first full sale in a fresh stack sold out
    // in a median 6.36 s (9 runs, 4.8–7.6 s), its next one in 4.18 s (11 runs, 2.9–5.9 s).
    for design in &args.designs {
        let sku = format!("BENCH-{design}-{stamp}");
        eprintln!("{design}: rehearsal, {sku}-R ...");
        let (r, d) = run_design(design, &stack, &sale, args, format!("{sku}-R")).await?;
        eprintln!("{design} rehearsal: {}", report::summary(&r, &d));
        let failures = report::failures(&r, &d);
        if design == "pipeline" && !failures.is_empty() {
            bail!("pipeline rehearsal: {}", failures.join("; "));
        }
        eprintln!("{design}: {sku} ...");
        let outcome = run_design(design, &stack, &sale, args, sku).await?;
        eprintln!("{design}: {}", report::summary(&outcome.0, &outcome.1));
        results.designs.insert(design.clone(), outcome);
    }
    println!("{}", results.table());
    let json = results.json();
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("report: {}", args.report.display());
    let failures = results.pipeline_failures();
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("PIPELINE INVARIANTS FAILED:\n  {}", failures.join("\n  "));
        Ok(ExitCode::FAILURE)
    }
}

/// One sale through `design` on a fresh SKU, under its own instance of the capacity model.
async fn run_design(
    design: &str,
    stack: &Stack,
    sale: &Sale,
    args: &Args,
    sku: String,
) -> anyhow::Result<(sale::DesignReport, sale::Details)> {
    let model = CapacityModel::new(args.item_write_units, args.scale);
    match design {
        "version_lock" => version_lock::run(sale, &model, &stack.table, sku).await,
        "lease_lock" => lease_lock::run(sale, &model, &stack.table, sku).await,
        "per_order" => per_order::run(sale, &model, &stack.table, sku).await,
        "pipeline" => pipeline::run(stack, sale, &model, sku, args.shards).await,
        other => bail!("unknown design {other}"),
    }
}

fn cold_starts(args: &Args) -> anyhow::Result<ExitCode> {
    eprintln!(
        "cold starts: {} starts per function from {}",
        args.starts,
        args.lambda_dir.display()
    );
    let measured = cold_start::measure_all(&args.lambda_dir, args.starts)?;
    println!("{}", report::cold_start_table(&measured));
    let mut json: serde_json::Value = std::fs::read_to_string(&args.report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    json["cold_start"] = serde_json::to_value(
        measured
            .iter()
            .map(|(f, m)| (f.clone(), m.report.clone()))
            .collect::<std::collections::BTreeMap<_, _>>(),
    )?;
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("report: {} (cold_start)", args.report.display());
    Ok(ExitCode::SUCCESS)
}
