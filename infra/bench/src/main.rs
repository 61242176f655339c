//! `make bench`: one flash sale — one hot product, `--buyers` buyers for `--stock` units,
//! `--concurrency` at a time — through four designs, then the same buyers and units as a
//! catalog (one hot SKU with half the units that half the buyers want, a tail of 4-unit SKUs
//! the other half pick by Zipf's law; see `catalog.rs`) through `--catalog-designs`; each run
//! on fresh SKUs and under its own instance of the same DynamoDB capacity model (the per-item
//! and per-partition write budgets, scaled by `--scale`, and transaction conflicts), against
//! the local stack in `--state`:
//!
//! - `version_lock`: read stock and version, conditional write on the version, ≤ 3 retries;
//! - `lease_lock`: a lease item taken with a conditional put (5 s expiry), stock read and
//!   written under it, lease released;
//! - `per_order`: one conditional decrement per order;
//! - `pipeline`: ours, place-order → SQS → process-orders, until every order is decided.
//!
//! Every run is rehearsed once, unreported, and every measured run comes after every
//! rehearsal, in `--measure-order` (recorded as `run_order`). First it measures the local
//! ceiling (see `ceiling.rs`). It prints the tables, the ratios, the cost per order on AWS
//! (`cost.rs`, `prices.rs` reading `prices.json`) and a projection of the ceilings on AWS (`projection.rs`), and
//! writes `--report` (default `.local/reports/bench.json`) and a chart of the designs beside
//! it (`bench.svg`). `--cold-start` instead measures each function's cold start and adds it to
//! that report.

mod catalog;
mod ceiling;
mod chart;
mod cold_start;
mod cost;
mod hot;
mod lease_lock;
mod per_order;
mod pipeline;
mod prices;
mod projection;
mod report;
mod sale;
mod version_lock;

use anyhow::{bail, Context};
use aws_sim::CapacityModel;
use catalog::Catalog;
use clap::Parser;
use flash_domain::limits::PARTITION_WRITE_UNITS_PER_S;
use report::Results;
use sale::Sale;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Mixed calls on both emulators before anything is measured.
const WARM_UP: Duration = Duration::from_secs(10);

pub const DESIGNS: [&str; 4] = ["version_lock", "lease_lock", "per_order", "pipeline"];
/// The designs that sell a catalog: the two locks keep one stock item.
pub const CATALOG_DESIGNS: [&str; 2] = ["per_order", "pipeline"];

/// One flash sale through four designs under DynamoDB's per-item write budget, against the
/// local stack; or, with `--cold-start`, each function's cold start. Writes `--report` (JSON)
/// and, for the sale, a chart of the designs beside it (same name, `.svg`).
#[derive(Debug, Parser)]
#[command(name = "flash-bench", version)]
pub struct Args {
    /// The local stack's state directory (holds stack.env).
    #[arg(long, default_value = ".local/bench", value_name = "DIR")]
    pub state: PathBuf,
    /// Distinct buyers, one unit each.
    #[arg(long, default_value_t = 20_000, value_name = "N", value_parser = positive::<usize>)]
    pub buyers: usize,
    /// Units of the one hot product.
    #[arg(long, default_value_t = 2_000, value_name = "N", value_parser = positive::<u64>)]
    pub stock: u64,
    /// Buyers in flight at once.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = positive::<usize>)]
    pub concurrency: usize,
    /// Scale of the per-item write budget, so that it bites on one machine.
    #[arg(long, default_value_t = DEFAULT_SCALE, value_name = "F", value_parser = positive::<f64>)]
    pub scale: f64,
    /// DynamoDB's per-item write budget in write units per second, before scaling.
    #[arg(long, default_value_t = PARTITION_WRITE_UNITS_PER_S, value_name = "N", value_parser = positive::<f64>)]
    pub item_write_units: f64,
    /// The designs to run, comma-separated, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "A,B,...",
        default_value = "version_lock,lease_lock,per_order,pipeline",
        value_parser = design
    )]
    pub designs: Vec<String>,
    /// The designs that also sell the catalog, comma-separated; empty for none.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "A,B,...",
        default_value = "per_order,pipeline",
        value_parser = catalog_design
    )]
    pub catalog_designs: Vec<String>,
    /// Zipf's exponent for the catalog's tail SKUs.
    #[arg(long, default_value_t = catalog::ZIPF_S, value_name = "S", value_parser = positive::<f64>)]
    pub zipf_s: f64,
    /// Seed of the catalog's buyers' picks.
    #[arg(long, default_value_t = catalog::CATALOG_SEED, value_name = "N")]
    pub catalog_seed: u64,
    /// The order of the measured runs, by design (each design's single-product run, then its
    /// catalog run) [default: the order of --designs]. Every rehearsal comes first either way.
    #[arg(long, value_delimiter = ',', value_name = "A,B,...", value_parser = design)]
    pub measure_order: Vec<String>,
    /// Shards for the pipeline's (hot) product [default: the product's own, from the stock].
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// Seconds of each local-ceiling round, measured before `pipeline`.
    #[arg(long = "ceiling-s", default_value_t = 2.0, value_name = "S", value_parser = positive::<f64>)]
    pub ceiling_s: f64,
    /// Skip the local-ceiling measurement.
    #[arg(long, conflicts_with = "ceiling_s")]
    pub no_ceiling: bool,
    /// Run the designs without the capacity model: the emulators' own limits only.
    #[arg(long)]
    pub no_model: bool,
    /// Seconds after which a design is stopped; its remaining buyers count as undecided.
    #[arg(long = "timeout-s", default_value_t = 900, value_name = "S")]
    pub timeout_s: u64,
    /// The JSON report; the sale's chart goes beside it with the extension `.svg`.
    #[arg(long, default_value = ".local/reports/bench.json", value_name = "FILE")]
    pub report: PathBuf,
    /// Measure each function's cold start instead of running the sale.
    #[arg(long)]
    pub cold_start: bool,
    /// Where `cargo lambda build` put the functions' bootstrap binaries (`--cold-start`).
    #[arg(long, default_value = "target/lambda-bench", value_name = "DIR")]
    pub lambda_dir: PathBuf,
    /// Cold starts measured per function (`--cold-start`).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = positive::<usize>)]
    pub starts: usize,
}

impl Args {
    /// The measured runs' order: `--measure-order`, then any design it leaves out.
    pub fn measure_order(&self) -> Vec<String> {
        let mut order: Vec<String> = self
            .measure_order
            .iter()
            .filter(|d| self.designs.contains(d))
            .cloned()
            .collect();
        for d in &self.designs {
            if !order.contains(d) {
                order.push(d.clone());
            }
        }
        order
    }

    /// Whether `design` also sells the catalog.
    pub fn sells_catalog(&self, design: &str) -> bool {
        self.catalog_designs.iter().any(|d| d == design)
    }

    /// How long each local-ceiling round lasts; `None` with `--no-ceiling`.
    pub fn ceiling(&self) -> Option<Duration> {
        (!self.no_ceiling).then(|| Duration::from_secs_f64(self.ceiling_s))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    /// The chart's path: the report's, with `.svg`.
    pub fn chart(&self) -> PathBuf {
        self.report.with_extension("svg")
    }
}

/// The budget is scaled down so it bites on one machine. At 0.1 an item takes 100 write
/// units/s: a tenth of what DynamoDB Local does for one item here (about 1,000 conditional
/// writes/s with the model off) and a small part of the local ceiling (600–1,000 orders/s), so
/// the item's budget, not the emulator, bounds a design that writes one item per order — as on
/// AWS, where one item's 1,000 WCU/s is a sliver of what the table takes.
pub const DEFAULT_SCALE: f64 = 0.1;

/// A number above zero: a sale of nothing, or with nobody, proves nothing.
fn positive<T: std::str::FromStr + PartialOrd + Default>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        Ok(_) => Err("must be above zero".into()),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

fn catalog_design(s: &str) -> Result<String, String> {
    let d = s.trim();
    if d.is_empty() || CATALOG_DESIGNS.contains(&d) {
        Ok(d.to_owned())
    } else {
        Err(format!(
            "the catalog runs only {}",
            CATALOG_DESIGNS.join(", ")
        ))
    }
}

fn design(s: &str) -> Result<String, String> {
    let d = s.trim();
    if DESIGNS.contains(&d) {
        Ok(d.to_owned())
    } else {
        Err(format!(
            "unknown design; the designs are {}",
            DESIGNS.join(", ")
        ))
    }
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
    let args = Args::parse();
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
        timeout: args.timeout(),
        catalog: Arc::new(Catalog::single(args.stock, args.buyers)),
    };
    let catalog_sale = sale.with_catalog(Catalog::zipf(
        args.stock,
        args.buyers,
        args.zipf_s,
        args.catalog_seed,
    ));
    let budget = CapacityModel::new(args.item_write_units, args.scale).budget_per_item();
    if args.no_model {
        hot::disable_model();
        eprintln!("capacity model OFF (--no-model): the emulators' own limits only");
    }
    eprintln!(
        "flash sale: {} buyers for {} units, {} at a time; capacity model {} WCU/s per item × {} = {budget} WCU/s per item",
        sale.buyers, sale.stock, sale.concurrency, args.item_write_units, args.scale
    );
    let stamp = flash_domain::clock::now_ms();
    let mut results = Results::new(
        &sale,
        &catalog_sale,
        args.item_write_units,
        args.scale,
        budget,
        !args.no_model,
    );
    eprintln!("warming up the emulators ({} s)", WARM_UP.as_secs());
    ceiling::warm_up(&stack, sale.concurrency, WARM_UP).await?;
    if let Some(d) = args.ceiling() {
        eprintln!(
            "local ceiling: 2 rounds of {:.0} s each for PutItem, SendMessage, both",
            d.as_secs_f64()
        );
        results.ceiling = Some(ceiling::measure(&stack, sale.concurrency, d).await?);
    }
    // Each run happens twice, each time on fresh SKUs: a rehearsal, unreported, then the
    // measured run. DynamoDB Local is a JVM, and the mixed warm-up does not bring every code
    // path a design uses up to speed: the pipeline's first full sale in a fresh stack sold out
    // in a median 6.36 s (9 runs, 4.8–7.6 s), its next one in 4.18 s (11 runs, 2.9–5.9 s).
    // Every rehearsal comes before every measured run, so no design is measured on an
    // emulator the others have warmed further than it.
    let scenarios = |design: &str| {
        let mut s = vec![("single", &sale)];
        if args.sells_catalog(design) {
            s.push(("catalog", &catalog_sale));
        }
        s
    };
    let sku_of = |scenario: &str, design: &str| match scenario {
        "catalog" => format!("BENCH-{design}-{stamp}-C"),
        _ => format!("BENCH-{design}-{stamp}"),
    };
    for design in &args.designs {
        for (scenario, sale) in scenarios(design) {
            let sku = format!("{}-R", sku_of(scenario, design));
            eprintln!("{scenario} {design}: rehearsal, {sku} ...");
            let (r, d) = run_design(design, &stack, sale, args, sku).await?;
            eprintln!("{scenario} {design} rehearsal: {}", report::summary(&r, &d));
            let failures = report::failures(&r, &d);
            if design == "pipeline" && !failures.is_empty() {
                bail!("{scenario} pipeline rehearsal: {}", failures.join("; "));
            }
        }
    }
    for design in &args.measure_order() {
        for (scenario, sale) in scenarios(design) {
            let sku = sku_of(scenario, design);
            eprintln!("{scenario} {design}: {sku} ...");
            let outcome = run_design(design, &stack, sale, args, sku).await?;
            eprintln!(
                "{scenario} {design}: {}",
                report::summary(&outcome.0, &outcome.1)
            );
            results.run_order.push(format!("{scenario}.{design}"));
            match scenario {
                "catalog" => results.catalog.insert(design.clone(), outcome),
                _ => results.designs.insert(design.clone(), outcome),
            };
        }
    }
    println!("{}", results.table());
    let json = results.json();
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("report: {}", args.report.display());
    std::fs::write(args.chart(), chart::svg(&json)?)?;
    println!("chart:  {}", args.chart().display());
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
    let setup = |sku| hot::Setup {
        sale,
        model: &model,
        table: &stack.table,
        sku,
    };
    match design {
        "version_lock" => version_lock::run(setup(sku)).await,
        "lease_lock" => lease_lock::run(setup(sku)).await,
        "per_order" => per_order::run(setup(sku)).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("flash-bench").chain(args.iter().copied()))
    }

    #[test]
    fn no_arguments_give_the_documented_defaults() {
        let a = parse(&[]).expect("defaults parse");
        assert_eq!(a.state, PathBuf::from(".local/bench"));
        assert_eq!((a.buyers, a.stock, a.concurrency), (20_000, 2_000, 64));
        assert_eq!((a.scale, a.item_write_units), (0.1, 1000.0));
        assert_eq!(a.designs, DESIGNS.map(str::to_owned));
        assert_eq!(a.shards, None);
        assert_eq!(a.ceiling(), Some(Duration::from_secs(2)));
        assert!(!a.no_model && !a.cold_start);
        assert_eq!(a.timeout(), Duration::from_secs(900));
        assert_eq!(a.report, PathBuf::from(".local/reports/bench.json"));
        assert_eq!(a.chart(), PathBuf::from(".local/reports/bench.svg"));
        assert_eq!(
            (a.lambda_dir, a.starts),
            (PathBuf::from("target/lambda-bench"), 20)
        );
    }

    #[test]
    fn the_makefile_flags_set_their_knobs() {
        let a = parse(&[
            "--state",
            "s",
            "--buyers",
            "50",
            "--stock",
            "5",
            "--concurrency",
            "4",
            "--scale",
            "0.5",
            "--designs",
            "pipeline, per_order",
            "--shards",
            "3",
            "--no-ceiling",
            "--no-model",
            "--report",
            "r/b.json",
        ])
        .expect("parses");
        assert_eq!((a.buyers, a.stock, a.concurrency, a.scale), (50, 5, 4, 0.5));
        assert_eq!(a.designs, ["pipeline", "per_order"]);
        assert_eq!((a.shards, a.ceiling(), a.no_model), (Some(3), None, true));
        assert_eq!(a.chart(), PathBuf::from("r/b.svg"));
        let c = parse(&["--cold-start", "--lambda-dir", "d", "--starts", "3"]).expect("parses");
        assert!(c.cold_start);
        assert_eq!((c.lambda_dir, c.starts), (PathBuf::from("d"), 3));
    }

    #[test]
    fn the_catalog_runs_per_order_and_the_pipeline_and_the_measured_order_can_be_chosen() {
        let a = parse(&[]).expect("defaults parse");
        assert_eq!(a.catalog_designs, CATALOG_DESIGNS.map(str::to_owned));
        assert_eq!((a.zipf_s, a.catalog_seed), (1.0, 13));
        assert_eq!(a.measure_order(), DESIGNS.map(str::to_owned));
        let b = parse(&["--measure-order", "pipeline,per_order"]).expect("parses");
        assert_eq!(
            b.measure_order(),
            ["pipeline", "per_order", "version_lock", "lease_lock"]
        );
        assert!(b.sells_catalog("pipeline") && !b.sells_catalog("lease_lock"));
        let none = parse(&["--catalog-designs", ""]).expect("parses");
        assert!(!none.sells_catalog("pipeline"));
        assert!(parse(&["--catalog-designs", "version_lock"]).is_err());
    }

    #[test]
    fn a_bad_knob_is_a_usage_error() {
        for bad in [
            &["--scale", "0"][..],
            &["--buyers", "0"],
            &["--designs", "pipeline,optimistic"],
            &["--ceiling-s", "1", "--no-ceiling"],
            &["--stock"],
        ] {
            let e = parse(bad).expect_err("refused");
            assert!(e.use_stderr() && e.exit_code() == 2, "{bad:?}: {e}");
        }
    }
}
