//! `make demo`: a flash sale against the local stack, through the HTTP API as real buyers use
//! it. Creates a product, sends `--buyers` distinct buyers at `--concurrency` (each with its own
//! Idempotency-Key; a share of them impatiently send the same request twice), polls until every
//! order is decided, then checks the table with the invariant checker and reports. Exits
//! non-zero when anything was oversold, stranded, left undecided or dead-lettered.

mod chart;
mod client;
mod report;

use anyhow::{bail, Context};
use clap::Parser;
use client::Api;
use flash_aws::dynamo::WriteCounts;
use flash_domain::clock::{now_ms, parse_rfc3339};
use hyper::Method;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use local_gateway::jwt::Minter;
use report::{round, Latencies, Report};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A flash sale against the local stack's HTTP API, with a report and a chart under
/// `STATE/reports/`.
#[derive(Debug, Parser)]
#[command(name = "flash-demo", version)]
struct Args {
    /// The local stack's state directory (holds stack.env and the signing key).
    #[arg(long, default_value = ".local", value_name = "DIR")]
    state: PathBuf,
    /// Units of the product on sale.
    #[arg(long, default_value_t = 1_000, value_name = "N", value_parser = positive::<u64>)]
    stock: u64,
    /// Distinct buyers, one unit each.
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = positive::<usize>)]
    buyers: usize,
    /// Buyers' requests in flight at once.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = positive::<usize>)]
    concurrency: usize,
    /// One buyer in this many sends its request twice with the same Idempotency-Key.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = positive::<usize>)]
    replay_every: usize,
    /// Seconds to wait for every accepted order to be decided.
    #[arg(long = "timeout-s", default_value_t = 300, value_name = "S")]
    timeout_s: u64,
}

/// A number above zero: a sale of nothing, or with nobody, proves nothing.
fn positive<T: std::str::FromStr + PartialOrd + Default>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        Ok(_) => Err("must be above zero".into()),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

/// What happened to one buyer at the API.
#[derive(Default)]
struct Buyer {
    latencies_ms: Vec<f64>,
    order_id: Option<String>,
    refused: Option<String>,
    replayed: bool,
    replay_mismatch: bool,
}

#[derive(Default)]
struct Progress {
    placed: AtomicUsize,
    decided: AtomicUsize,
    available: AtomicUsize,
    done: AtomicBool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (k, v) in local_gateway::config::read_stack_env(&args.state)? {
        // Set before any client exists; the SDK reads the local endpoints from here.
        unsafe { std::env::set_var(k, v) };
    }
    let var = |k: &str| {
        std::env::var(k).with_context(|| format!("{k} missing from stack.env; is the stack up?"))
    };
    let api = Api::new(&var("API_URL")?);
    let minter = Minter::load(&args.state).context("loading the stack's signing key")?;
    let hour = Duration::from_secs(3600);
    let admin = minter.mint("demo-admin", true, hour)?;

    let sku = format!("DEMO-{}", now_ms());
    let created = api
        .call(
            Method::PUT,
            &format!("/products/{sku}"),
            &admin,
            &[],
            Some(&json!({"name": "Demo phone", "stock": args.stock})),
        )
        .await
        .context("creating the product; is the stack up (`make up`)?")?;
    if created.status != 201 {
        bail!(
            "creating the product answered {}: {}",
            created.status,
            created.body
        );
    }
    eprintln!(
        "product {sku}: {} units; minting {} buyer tokens",
        args.stock, args.buyers
    );
    let minter = Arc::new(minter);
    let tokens: Vec<String> = {
        let halves = [0, 1].map(|half| {
            let (minter, n) = (minter.clone(), args.buyers);
            tokio::task::spawn_blocking(move || {
                (0..n)
                    .filter(|i| i % 2 == half)
                    .map(|i| {
                        minter
                            .mint(&format!("buyer-{i}"), false, hour)
                            .map(|t| (i, t))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        });
        let mut all = Vec::new();
        for h in halves {
            all.extend(h.await??);
        }
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, t)| t).collect()
    };
    let tokens = Arc::new(tokens);
    let before = write_counts(&api, &admin).await?;

    eprintln!(
        "the sale opens: {} buyers, {} at a time",
        args.buyers, args.concurrency
    );
    let started = Instant::now();
    let started_ms = now_ms();
    let progress = Arc::new(Progress {
        available: AtomicUsize::new(args.stock as usize),
        ..Progress::default()
    });
    let stock_samples = Arc::new(Mutex::new(vec![(0.0, args.stock as f64)]));
    let sampler = tokio::spawn(sample(
        api.clone(),
        admin.clone(),
        sku.clone(),
        args.buyers,
        progress.clone(),
        stock_samples.clone(),
        started,
    ));

    let gate = Arc::new(Semaphore::new(args.concurrency));
    let tasks: Vec<_> = (0..args.buyers)
        .map(|i| {
            let (api, gate, tokens, progress, sku) = (
                api.clone(),
                gate.clone(),
                tokens.clone(),
                progress.clone(),
                sku.clone(),
            );
            let replay = i % args.replay_every == 0;
            tokio::spawn(async move {
                let _permit = gate.acquire().await.expect("semaphore never closes");
                let b = buy(&api, &tokens[i], &sku, &format!("{sku}-order-{i}"), replay).await;
                progress.placed.fetch_add(1, Relaxed);
                if b.refused.is_some() {
                    progress.decided.fetch_add(1, Relaxed); // answered at the API
                }
                b
            })
        })
        .collect();
    let mut buyers = Vec::with_capacity(args.buyers);
    for t in tasks {
        buyers.push(t.await?);
    }

    // Poll every accepted order until it is decided; the decision time is the order's own
    // `updated_at`, so polling granularity does not inflate it.
    let mut undecided: Vec<(usize, String)> = buyers
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.order_id.clone().map(|id| (i, id)))
        .collect();
    let mut decisions: Vec<(String, Option<String>, i64, i64)> = Vec::new(); // status, reason, created, updated
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    while !undecided.is_empty() && Instant::now() < deadline {
        let gate = Arc::new(Semaphore::new(args.concurrency));
        let polls: Vec<_> = undecided
            .iter()
            .cloned()
            .map(|(i, id)| {
                let (api, gate, tokens) = (api.clone(), gate.clone(), tokens.clone());
                tokio::spawn(async move {
                    let _permit = gate.acquire().await.expect("semaphore never closes");
                    let r = api
                        .call(Method::GET, &format!("/orders/{id}"), &tokens[i], &[], None)
                        .await;
                    ((i, id), r)
                })
            })
            .collect();
        let mut still = Vec::new();
        for p in polls {
            let ((i, id), r) = p.await?;
            match r {
                Ok(a) if a.status == 200 && a.body["status"] != "queued" => {
                    let t = |k: &str| a.body[k].as_str().and_then(parse_rfc3339).unwrap_or(0);
                    decisions.push((
                        a.body["status"].as_str().unwrap_or_default().to_owned(),
                        a.body["reason"].as_str().map(str::to_owned),
                        t("created_at"),
                        t("updated_at"),
                    ));
                    progress.decided.fetch_add(1, Relaxed);
                }
                _ => still.push((i, id)),
            }
        }
        undecided = still;
        if !undecided.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    progress.done.store(true, Relaxed);
    sampler.await?;

    let after = write_counts(&api, &admin).await?;
    let sdk = flash_aws::config::sdk_config().await;
    let store = flash_aws::DynamoStore::from_config(&sdk, var("TABLE_NAME")?);
    let audit = flash_aws::dynamo::ledger::audit(&store, &flash_domain::Sku::parse(&sku)?).await?;
    let dlq_messages = aws_sdk_sqs::Client::new(&sdk)
        .get_queue_attributes()
        .queue_url(var("ORDERS_DLQ_URL")?)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await?
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);

    let mut rejected_by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for (status, reason, _, _) in &decisions {
        if status == "rejected" {
            *rejected_by_reason
                .entry(reason.clone().unwrap_or_default())
                .or_default() += 1;
        }
    }
    for b in &buyers {
        if let Some(code) = &b.refused {
            *rejected_by_reason
                .entry(format!("{code} (at the API)"))
                .or_default() += 1;
        }
    }
    let last_decision = decisions.iter().map(|d| d.3).max().unwrap_or(started_ms);
    let last_sale = decisions
        .iter()
        .filter(|d| d.0 == "pending")
        .map(|d| d.3)
        .max();
    let duration_s = ((last_decision - started_ms) as f64 / 1000.0)
        .max(started.elapsed().as_secs_f64().min(0.001));
    let sold_units = audit.units_held;
    let per_sold = |x: f64| {
        if sold_units == 0 {
            0.0
        } else {
            round(x / sold_units as f64 * 1000.0) / 1000.0
        }
    };
    let writes = WriteCounts {
        write_requests: after.write_requests - before.write_requests,
        write_units: after.write_units - before.write_units,
        stock_item_writes: after.stock_item_writes - before.stock_item_writes,
    };
    let mut api_latency = Latencies::default();
    for ms in buyers.iter().flat_map(|b| &b.latencies_ms) {
        api_latency.record_ms(*ms);
    }
    let mut decision_latency = Latencies::default();
    for d in &decisions {
        decision_latency.record_ms((d.3 - d.2) as f64);
    }
    let report = Report {
        sku: sku.clone(),
        stock: args.stock,
        buyers: args.buyers,
        concurrency: args.concurrency,
        capacity_scale: std::env::var("CAPACITY_SCALE")
            .ok()
            .and_then(|s| s.parse().ok()),
        accepted: buyers.iter().filter(|b| b.order_id.is_some()).count(),
        sold_units,
        rejected: rejected_by_reason.values().sum(),
        rejected_by_reason,
        oversold: audit.oversold(),
        stranded: audit.stranded(),
        undecided: undecided.len().max(audit.undecided()),
        dlq_messages,
        replays: buyers.iter().filter(|b| b.replayed).count(),
        replay_mismatches: buyers.iter().filter(|b| b.replay_mismatch).count(),
        duration_s: round(duration_s),
        sellout_s: last_sale
            .filter(|_| audit.available == 0)
            .map(|t| round((t - started_ms) as f64 / 1000.0)),
        // Every buyer's order got an answer: decided by the processor, or refused at the API.
        orders_per_s: round(
            (decisions.len() + buyers.iter().filter(|b| b.refused.is_some()).count()) as f64
                / duration_s,
        ),
        api_latency_ms: api_latency.percentiles(),
        decision_latency_ms: decision_latency.percentiles(),
        ddb_write_requests: writes.write_requests,
        ddb_write_units: round(writes.write_units),
        stock_item_writes: writes.stock_item_writes,
        write_units_per_sold_unit: per_sold(writes.write_units),
        stock_item_writes_per_sold_unit: per_sold(writes.stock_item_writes as f64),
        invariant_violations: audit.violations.clone(),
    };

    let mut decided_curve: Vec<f64> = decisions
        .iter()
        .map(|d| (d.3 - started_ms) as f64 / 1000.0)
        .collect();
    decided_curve.sort_by(f64::total_cmp);
    let decided_points: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(
            decided_curve
                .iter()
                .enumerate()
                .map(|(i, t)| (t.max(0.0), (i + 1) as f64)),
        )
        .collect();
    let dir = args.state.join("reports");
    std::fs::create_dir_all(&dir)?;
    let stem = dir.join(format!("demo-{}", started_ms));
    let json_path = stem.with_extension("json");
    let svg_path = stem.with_extension("svg");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    let samples = stock_samples.lock().expect("sampler finished").clone();
    let title = format!("{sku}: {} buyers for {} units", args.buyers, args.stock);
    std::fs::write(
        &svg_path,
        chart::svg(&chart::Sale {
            title: &title,
            decided: &decided_points,
            stock: &samples,
            sellout_s: report.sellout_s,
            decision_latency: &decision_latency,
        })?,
    )?;

    println!("\nFlash sale {sku}\n{}", report.table());
    println!(
        "report: {}\nchart:  {}",
        json_path.display(),
        svg_path.display()
    );
    let failures = report.failures();
    if !failures.is_empty() {
        eprintln!("INVARIANTS FAILED:\n  {}", failures.join("\n  "));
        std::process::exit(1);
    }
    println!("all invariants hold: 0 oversold, 0 stranded, 0 undecided, 0 in the DLQ");
    Ok(())
}

/// One buyer: orders one unit, retrying 429/503 with the same key as a client should; a
/// replaying buyer sends the identical request again and must get the same order.
async fn buy(api: &Api, token: &str, sku: &str, key: &str, replay: bool) -> Buyer {
    let mut b = Buyer::default();
    let body = json!({"sku": sku, "quantity": 1});
    let headers = [("idempotency-key", key)];
    let post = || async {
        let t = Instant::now();
        let r = api
            .call(Method::POST, "/orders", token, &headers, Some(&body))
            .await;
        (r, t.elapsed().as_secs_f64() * 1000.0)
    };
    for attempt in 1.. {
        let (r, ms) = post().await;
        b.latencies_ms.push(ms);
        let retry = attempt < 6;
        match r {
            Ok(a) if a.status == 202 => {
                b.order_id = a.body["order_id"].as_str().map(str::to_owned);
                break;
            }
            Ok(a) if (a.status == 429 || a.status >= 500) && retry => {
                let wait = a.retry_after.unwrap_or(Duration::from_millis(200));
                tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
            }
            Err(_) if retry => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(a) => {
                let code = a.body["error"]["code"].as_str().unwrap_or("unknown");
                b.refused = Some(code.to_owned());
                return b;
            }
            Err(e) => {
                b.refused = Some(format!("transport error: {e}"));
                return b;
            }
        }
    }
    if replay {
        b.replayed = true;
        let (again, ms) = post().await;
        b.latencies_ms.push(ms);
        b.replay_mismatch = !matches!(&again, Ok(a) if a.status == 202
            && a.body["order_id"].as_str() == b.order_id.as_deref());
    }
    b
}

/// The gateway's count of DynamoDB writes made by the functions it runs.
async fn write_counts(api: &Api, token: &str) -> anyhow::Result<WriteCounts> {
    let a = api
        .call(Method::GET, "/_local/stats", token, &[], None)
        .await?;
    if a.status != 200 {
        bail!("GET /_local/stats answered {}", a.status);
    }
    Ok(serde_json::from_value(a.body)?)
}

/// Samples the stock every 200 ms for the chart and shows the sale's progress: two bars on
/// a terminal; on anything else (a CI log), where indicatif draws nothing, a plain line every
/// 5 s instead of bars redrawn with `\r`.
async fn sample(
    api: Api,
    token: String,
    sku: String,
    buyers: usize,
    progress: Arc<Progress>,
    samples: Arc<Mutex<Vec<(f64, f64)>>>,
    started: Instant,
) {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("  {prefix:>7} [{bar:30}] {pos:>6}/{len}  {msg}")
        .expect("the template is valid")
        .progress_chars("#>.");
    let bar = |name: &str| {
        let b = bars.add(ProgressBar::new(buyers as u64));
        b.set_style(style.clone());
        b.set_prefix(name.to_owned());
        b
    };
    let (placed_bar, decided_bar) = (bar("placed"), bar("decided"));
    let mut last_line = Instant::now();
    loop {
        let done = progress.done.load(Relaxed);
        if let Ok(a) = api
            .call(Method::GET, &format!("/products/{sku}"), &token, &[], None)
            .await
        {
            if let Some(avail) = a.body["available"].as_u64() {
                progress.available.store(avail as usize, Relaxed);
                samples
                    .lock()
                    .expect("no panics while held")
                    .push((started.elapsed().as_secs_f64(), avail as f64));
            }
        }
        let (placed, decided, available) = (
            progress.placed.load(Relaxed),
            progress.decided.load(Relaxed),
            progress.available.load(Relaxed),
        );
        let elapsed = started.elapsed().as_secs_f64();
        placed_bar.set_position(placed as u64);
        placed_bar.set_message(format!("{elapsed:.1} s"));
        decided_bar.set_position(decided.min(buyers) as u64);
        decided_bar.set_message(format!("stock left {available}"));
        if placed_bar.is_hidden() && (done || last_line.elapsed() >= Duration::from_secs(5)) {
            last_line = Instant::now();
            eprintln!(
                "  {elapsed:>5.1} s: placed {placed}/{buyers}, decided {decided}, stock left {available}"
            );
        }
        if done {
            placed_bar.finish();
            decided_bar.finish();
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("flash-demo").chain(args.iter().copied()))
    }

    /// The numbers the Makefile sets: stock, buyers, concurrency, replay_every, timeout_s.
    fn knobs(a: &Args) -> (u64, usize, usize, usize, u64) {
        (
            a.stock,
            a.buyers,
            a.concurrency,
            a.replay_every,
            a.timeout_s,
        )
    }

    #[test]
    fn no_arguments_give_the_documented_defaults() {
        let a = parse(&[]).expect("defaults parse");
        assert_eq!(a.state, PathBuf::from(".local"));
        assert_eq!(knobs(&a), (1_000, 10_000, 64, 10, 300));
    }

    #[test]
    fn the_makefile_flags_set_their_knobs() {
        let a = parse(&[
            "--state",
            "s",
            "--stock",
            "200",
            "--buyers",
            "2000",
            "--concurrency",
            "8",
            "--replay-every",
            "3",
            "--timeout-s",
            "9",
        ])
        .expect("parses");
        assert_eq!(a.state, PathBuf::from("s"));
        assert_eq!(knobs(&a), (200, 2_000, 8, 3, 9));
    }

    #[test]
    fn a_zero_or_unknown_knob_is_a_usage_error() {
        for bad in [
            &["--stock", "0"][..],
            &["--buyers", "many"],
            &["--concurrency", "-1"],
            &["--shards", "4"],
        ] {
            let e = parse(bad).expect_err("refused");
            assert!(e.use_stderr() && e.exit_code() == 2, "{bad:?}: {e}");
        }
    }
}
