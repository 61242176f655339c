//! `flashctl`, the operator's command line. It talks to the local stack (`.local/stack.env`) by
//! default, or to AWS (`--stack NAME`, or `--table` and the queue URLs) with the standard
//! credential chain, and runs the functions' own code: products go through the products
//! function's handler, `reconcile` is the reconcile function's audit. Every command takes
//! `--json`; an error is one line on stderr and exit status 2 (`reconcile` exits 1 when it
//! finds a violation).

mod dlq;
mod import;
mod output;
mod products;
mod sale_watch;
mod target;

use anyhow::Result;
use clap::{Parser, Subcommand};
use output::Out;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flashctl",
    version,
    about = "Operate a flash sale: products, orders, live view, DLQs, reconcile"
)]
struct Cli {
    /// Print JSON (one document, or one line per frame for `sale watch`) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    target: target::TargetArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, restock, read, list and import products.
    #[command(subcommand)]
    Product(products::ProductCommand),
    /// Read orders.
    #[command(subcommand)]
    Order(OrderCommand),
    /// Watch a sale.
    #[command(subcommand)]
    Sale(SaleCommand),
    /// List or redrive the messages of a dead-letter queue.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Check every invariant, as the reconcile function does; exit 1 if any is violated.
    Reconcile {
        /// Report only this product (the table is still read in one pass).
        #[arg(long)]
        sku: Option<String>,
    },
}

#[derive(Subcommand)]
enum OrderCommand {
    /// One order, as an admin sees it (owner included).
    Get { id: String },
}

#[derive(Subcommand)]
enum SaleCommand {
    /// A live view of one product's sale, refreshed every second.
    Watch {
        sku: String,
        /// Print one frame (two readings a second apart) and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between frames.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&e.into()),
    };
    match runtime.block_on(run(cli, out)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    // `{:#}` puts the whole cause chain on one line.
    eprintln!("flashctl: {e:#}");
    ExitCode::from(2)
}

async fn run(cli: Cli, out: Out) -> Result<ExitCode> {
    let target = target::resolve(&cli.target).await?;
    match cli.command {
        Command::Product(cmd) => products::run(&target, cmd, out).await?,
        Command::Order(OrderCommand::Get { id }) => products::order_get(&target, &id, out).await?,
        Command::Sale(SaleCommand::Watch {
            sku,
            once,
            interval,
        }) => sale_watch::run(&target, &sku, once, interval, out).await?,
        Command::Dlq(cmd) => dlq::run(&target, cmd, out).await?,
        Command::Reconcile { sku } => return reconcile(&target, sku, out).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn reconcile(target: &target::Target, sku: Option<String>, out: Out) -> Result<ExitCode> {
    use flash_domain::clock::now_ms;
    let sku = sku
        .map(|s| flash_domain::Sku::parse(&s))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--sku: {e}"))?;
    let reconciler =
        reconcile::Reconcile::new(target.store()).with_redrive_delay(target.redrive_delay_s);
    let (summary, products) = reconciler.run_on(now_ms(), sku.as_ref()).await?;
    if let Some(sku) = &sku {
        if products.is_empty() {
            anyhow::bail!("no product {sku} and no order naming it");
        }
    }
    if out.json {
        out.print_json(&serde_json::json!({"summary": summary, "products": products}));
    } else {
        for p in &products {
            let state = if !p.settled {
                "unsettled (stock moved on every re-read; judged next run)"
            } else if p.violation_count == 0 {
                "ok"
            } else {
                "VIOLATIONS"
            };
            println!(
                "{}: {state} (added {}, available {}, held {}, {} orders)",
                p.sku, p.stock_added, p.available, p.units_held, p.orders
            );
            for v in &p.violations {
                println!("  {}: {v}", p.sku);
            }
            if p.violation_count > p.violations.len() {
                println!(
                    "  {}: and {} more",
                    p.sku,
                    p.violation_count - p.violations.len()
                );
            }
        }
        println!(
            "{} products, {} violations ({} stale queued, {} overdue pending), {} unsettled",
            summary.products,
            summary.violations,
            summary.stale_queued,
            summary.overdue_pending,
            summary.unsettled
        );
    }
    Ok(if summary.violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `PathBuf` of the default stack file, relative to the working directory.
fn default_env_file() -> PathBuf {
    PathBuf::from(".local/stack.env")
}
