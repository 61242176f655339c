//! The printed tables and `bench.json`: `designs`, `catalog`, `ratios`, `cost`, `run_order`,
//! `aws_projection`, `capacity_model` and `cold_start`, plus `sale`, `local_ceiling`,
//! `ratio_basis` and `details` (counts and checks behind each design's numbers).

use crate::ceiling::Ceiling;
use crate::cold_start::Measured;
use crate::sale::{round3, DesignReport, Details, Sale};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub struct Results {
    pub sale: Sale,
    pub catalog_sale: Sale,
    pub item_write_units: f64,
    pub scale: f64,
    pub budget: f64,
    pub model: bool,
    pub designs: BTreeMap<String, (DesignReport, Details)>,
    /// The catalog scenario's runs, by design.
    pub catalog: BTreeMap<String, (DesignReport, Details)>,
    pub ceiling: Option<Ceiling>,
    /// `scenario.design` of each measured run, in the order they ran.
    pub run_order: Vec<String>,
}

type Runs = BTreeMap<String, (DesignReport, Details)>;
pub type RunsRef = Runs;

/// A design's time to compare: when it sold out, or when its last buyer had an answer if it
/// never did (version_lock strands stock, so it may not).
fn basis(r: &DesignReport) -> Option<(f64, &'static str)> {
    r.sellout_s.map(|s| (s, "sellout_s")).or(r
        .all_decided_s
        .map(|s| (s, "all_decided_s (never sold out)")))
}

fn opt(x: Option<f64>, decimals: usize) -> String {
    x.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

impl Results {
    pub fn new(
        sale: &Sale,
        catalog_sale: &Sale,
        item_write_units: f64,
        scale: f64,
        budget: f64,
        model: bool,
    ) -> Self {
        Self {
            sale: sale.clone(),
            catalog_sale: catalog_sale.clone(),
            catalog: BTreeMap::new(),
            run_order: Vec::new(),
            item_write_units,
            scale,
            budget,
            model,
            designs: BTreeMap::new(),
            ceiling: None,
        }
    }

    fn pipeline(&self) -> Option<&DesignReport> {
        self.designs.get("pipeline").map(|(r, _)| r)
    }

    pub fn ratios(&self) -> (Value, Value) {
        let mut ratios = serde_json::Map::new();
        let mut basis_of = serde_json::Map::new();
        let ours = self.pipeline().and_then(basis);
        if let Some((_, how)) = ours {
            basis_of.insert("pipeline".into(), json!(how));
        }
        for other in ["version_lock", "lease_lock", "per_order"] {
            let theirs = self.designs.get(other).and_then(|(r, _)| basis(r));
            if let Some((_, how)) = theirs {
                basis_of.insert(other.into(), json!(how));
            }
            let ratio = match (theirs, ours) {
                (Some((t, _)), Some((o, _))) if o > 0.0 => Some(round3(t / o)),
                _ => None,
            };
            ratios.insert(format!("sellout_speedup_vs_{other}"), json!(ratio));
        }
        // Like against like: the ceiling is the emulators' rate for what an accepted order
        // costs at the API (a conditional put and a send), so it is compared with the orders
        // the pipeline accepted per second while it was accepting them. Every answer per
        // second (most of them 409s that write nothing) is reported under its own name.
        let pipeline_note = |name: &str| {
            self.designs
                .get("pipeline")
                .and_then(|(_, d)| d.notes.get(name))
                .and_then(Value::as_f64)
        };
        let over_ceiling = |x: Option<f64>| match (x, &self.ceiling) {
            (Some(x), Some(c)) if c.ceiling_orders_per_s > 0.0 => {
                Some(round3(x / c.ceiling_orders_per_s))
            }
            _ => None,
        };
        ratios.insert(
            "pipeline_fraction_of_local_ceiling".into(),
            json!(over_ceiling(pipeline_note("accepted_202_per_s"))),
        );
        ratios.insert(
            "pipeline_answered_per_s_over_local_ceiling".into(),
            json!(over_ceiling(pipeline_note("answered_per_s"))),
        );
        let catalog_basis = |d: &str| self.catalog.get(d).and_then(|(r, _)| basis(r));
        let ratio = |a: Option<(f64, &str)>, b: Option<(f64, &str)>| match (a, b) {
            (Some((a, _)), Some((b, _))) if b > 0.0 => Some(round3(a / b)),
            _ => None,
        };
        ratios.insert(
            "pipeline_catalog_vs_single_sellout".into(),
            json!(ratio(catalog_basis("pipeline"), ours)),
        );
        ratios.insert(
            "catalog_speedup_vs_per_order".into(),
            json!(ratio(catalog_basis("per_order"), catalog_basis("pipeline"))),
        );
        // What the designs add to the sell-out beyond what the buyers allow (a catalog cannot
        // sell out before its least-wanted SKU's last unit has been asked for).
        let lag = |runs: &Runs, d: &str| {
            runs.get(d)
                .and_then(|(r, _)| r.sellout_lag_s)
                .map(|s| (s, "sellout_lag_s"))
        };
        ratios.insert(
            "pipeline_catalog_vs_single_sellout_lag".into(),
            json!(ratio(
                lag(&self.catalog, "pipeline"),
                lag(&self.designs, "pipeline")
            )),
        );
        ratios.insert(
            "catalog_sellout_lag_speedup_vs_per_order".into(),
            json!(ratio(
                lag(&self.catalog, "per_order"),
                lag(&self.catalog, "pipeline")
            )),
        );
        (Value::Object(ratios), Value::Object(basis_of))
    }

    /// `cost`: per scenario and design, dollars per million buyers and per thousand units
    /// sold, by service; and the prices.
    pub fn cost(&self) -> Value {
        let priced = |runs: &Runs, sale: &Sale| {
            runs.iter()
                .map(|(name, (_, d))| (name.clone(), d.usage.cost(sale.buyers, d.sold)))
                .collect::<serde_json::Map<_, _>>()
        };
        json!({
            "single": priced(&self.designs, &self.sale),
            "catalog": priced(&self.catalog, &self.catalog_sale),
            "prices": crate::cost::prices_json(),
        })
    }

    /// The catalog scenario: its sale, its designs and their details.
    fn catalog_json(&self) -> Value {
        let c = &self.catalog_sale.catalog;
        let (designs, details) = split(&self.catalog);
        json!({
            "designs": designs,
            "sale": {
                "buyers": self.catalog_sale.buyers,
                "stock": self.catalog_sale.stock,
                "skus": c.skus(),
                "hot_stock": c.stocks.first(),
                "tail_skus": c.skus().saturating_sub(1),
                "tail_stock_each": c.stocks.get(1),
                "hot_buyers": c.demand().first(),
            },
            "details": details,
        })
    }

    pub fn json(&self) -> Value {
        let (ratios, basis) = self.ratios();
        let (designs, details) = split(&self.designs);
        json!({
            "designs": designs,
            "catalog": self.catalog_json(),
            "run_order": self.run_order,
            "cost": self.cost(),
            "aws_projection": crate::projection::project(self),
            "ratios": ratios,
            "capacity_model": if self.model {
                json!({"item_write_units_per_s": self.item_write_units, "scale": self.scale})
            } else {
                Value::Null
            },
            "cold_start": {},
            "sale": {
                "buyers": self.sale.buyers,
                "stock": self.sale.stock,
                "concurrency": self.sale.concurrency,
                "units_per_order": 1,
                "budget_per_item_write_units_per_s": self.budget,
            },
            "local_ceiling": self.ceiling,
            "ratio_basis": basis,
            "details": details,
        })
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let model = if self.model {
            format!(
                "capacity model: {} WCU/s per item × scale {} = {} WCU/s per item",
                self.item_write_units, self.scale, self.budget
            )
        } else {
            "capacity model OFF".to_owned()
        };
        let _ = writeln!(
            t,
            "\nFlash sale: {} buyers for {} units (1 each), {} in flight; {model}\n",
            self.sale.buyers, self.sale.stock, self.sale.concurrency,
        );
        design_rows(&mut t, &self.designs);
        if !self.catalog.is_empty() {
            let c = &self.catalog_sale.catalog;
            let _ = writeln!(
                t,
                "\nCatalog: the same {} buyers for {} units over {} SKUs: 1 hot SKU of {} units \
                 ({} buyers), {} tail SKUs of {} units (Zipf-picked by the rest)\n",
                self.catalog_sale.buyers,
                self.catalog_sale.stock,
                c.skus(),
                c.stocks.first().copied().unwrap_or(0),
                c.demand().first().copied().unwrap_or(0),
                c.skus().saturating_sub(1),
                c.stocks.get(1).copied().unwrap_or(0),
            );
            design_rows(&mut t, &self.catalog);
        }
        let _ = writeln!(t, "\nmeasured in this order: {}", self.run_order.join(", "));
        let _ = writeln!(
            t,
            "\nWU/sold: write units the capacity model admitted (every design, pipeline \
             included) per unit sold. stockW/sold: write requests on stock items per unit sold \
             (simple designs: counted by the bench; pipeline: flash_aws WriteStats, refused \
             transaction attempts included). met_s: when the last SKU had been asked for all \
             its units (no design can sell out sooner); lag_s: the longest any SKU stayed on \
             sale after it had been asked for all its units."
        );
        for (name, (_, d)) in &self.designs {
            let _ = writeln!(
                t,
                "  {name}: refused {:?}; undecided {}; 503s {:?}; stock left {}{}",
                d.refused,
                d.undecided,
                d.unavailable_answers,
                d.stock_left,
                if d.violations.is_empty() {
                    String::new()
                } else {
                    format!("; VIOLATIONS {:?}", d.violations)
                }
            );
        }
        if let Some((_, d)) = self.designs.get("pipeline") {
            let _ = writeln!(
                t,
                "  pipeline: {}",
                serde_json::to_string(&d.notes).unwrap_or_default()
            );
        }
        if let Some((r, d)) = self.designs.get("per_order").filter(|_| self.model) {
            // Until the sell-out every order writes the stock item once.
            let writes_per_unit = d.stock_item_writes as f64 / d.sold.max(1) as f64;
            let bound = self.budget / writes_per_unit.max(f64::EPSILON);
            let rate = r.sellout_s.map(|s| d.sold as f64 / s);
            let _ = writeln!(
                t,
                "\nper_order bound: {} WCU/s per item ÷ {writes_per_unit:.3} stock-item writes per \
                 unit = {bound:.0} units/s; measured {} units/s to the sell-out ({}% of the \
                 bound), {} throttles",
                self.budget,
                opt(rate, 0),
                opt(rate.map(|o| o / bound * 100.0), 0),
                r.throttles
            );
        }
        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                t,
                "\nlocal ceiling: {:.0} orders/s = {}.\n  alone: PutItem {:.0}/s, SendMessage \
                 {:.0}/s (1/(1/put + 1/send) = {:.0}/s)",
                c.ceiling_orders_per_s,
                c.definition,
                c.put_item_per_s,
                c.send_message_per_s,
                c.put_and_send_model_per_s
            );
        }
        cost_rows(&mut t, &self.cost());
        let _ = writeln!(t, "\nAWS projection: {}", crate::projection::project(self));
        let (ratios, basis) = self.ratios();
        let _ = writeln!(t, "\nratios:");
        if let Some(m) = ratios.as_object() {
            for (k, v) in m {
                let _ = writeln!(t, "  {k:<36} {v}");
            }
        }
        let _ = writeln!(t, "  (compared on: {basis})");
        t
    }

    /// Our design must hold every invariant, in both scenarios.
    pub fn pipeline_failures(&self) -> Vec<String> {
        let single = self.designs.get("pipeline").map(|(r, d)| failures(r, d));
        let catalog = self.catalog.get("pipeline").map(|(r, d)| {
            failures(r, d)
                .into_iter()
                .map(|f| format!("catalog: {f}"))
                .collect()
        });
        single.into_iter().chain(catalog).flatten().collect()
    }
}

/// One row per design of one scenario.
fn design_rows(t: &mut String, runs: &Runs) {
    let _ = writeln!(
        t,
        "{:<13} {:>9} {:>7} {:>6} {:>9} {:>9} {:>10} {:>6} {:>8} {:>8} {:>8} {:>11} {:>17} {:>9} {:>9}",
        "design",
        "sellout_s",
        "met_s",
        "lag_s",
        "decided_s",
        "orders/s",
        "accepted/s",
        "sold",
        "oversold",
        "stranded",
        "WU/sold",
        "stockW/sold",
        "decision p50/p99/max ms",
        "throttles",
        "conflicts"
    );
    for name in crate::DESIGNS {
        let Some((r, d)) = runs.get(name) else {
            continue;
        };
        let decision = r.decision_ms.map_or("-".to_owned(), |p| {
            format!("{:.0}/{:.0}/{:.0}", p.p50, p.p99, p.max)
        });
        let _ = writeln!(
            t,
            "{:<13} {:>9} {:>7} {:>6} {:>9} {:>9} {:>10} {:>6} {:>8} {:>8} {:>8} {:>11} {:>17} {:>9} {:>9}",
            name,
            opt(r.sellout_s, 2),
            opt(r.demand_met_s, 2),
            opt(r.sellout_lag_s, 2),
            opt(r.all_decided_s, 2),
            opt(r.orders_per_s, 0),
            opt(r.accepted_orders_per_s, 0),
            d.sold,
            r.oversold,
            r.stranded,
            opt(r.write_units_per_sold_unit, 2),
            opt(r.stock_item_writes_per_sold_unit, 3),
            decision,
            r.throttles,
            r.conflicts
        );
    }
}

/// The cost table: dollars per million buyers and per thousand units sold, by service.
fn cost_rows(t: &mut String, cost: &Value) {
    let _ = writeln!(
        t,
        "\nCost on AWS (us-east-1, on-demand, arm64; prices in bench.json cost.prices):\n"
    );
    let _ = writeln!(
        t,
        "{:<9} {:<13} {:>11} {:>13} {:>11} {:>9} {:>9} {:>9}  largest",
        "scenario",
        "design",
        "$/1M buyers",
        "$/1k units",
        "api_gateway",
        "lambda",
        "sqs",
        "dynamodb"
    );
    for scenario in ["single", "catalog"] {
        for name in crate::DESIGNS {
            let c = &cost[scenario][name];
            if c.is_null() {
                continue;
            }
            let by = |k: &str| opt(c["by_service"][k].as_f64(), 2);
            let _ = writeln!(
                t,
                "{:<9} {:<13} {:>11} {:>13} {:>11} {:>9} {:>9} {:>9}  {}",
                scenario,
                name,
                opt(c["usd_per_million_buyers"].as_f64(), 2),
                opt(c["usd_per_thousand_units_sold"].as_f64(), 3),
                by("api_gateway"),
                by("lambda"),
                by("sqs"),
                by("dynamodb"),
                c["largest_line_item"].as_str().unwrap_or("-")
            );
        }
    }
    let _ = writeln!(
        t,
        "(by service: $ per million buyers; a buyer refused at the API costs its request and \
         invocation only)"
    );
}

/// The invariants a sale broke: violations the checker found, units oversold or stranded,
/// orders left undecided.
pub fn failures(r: &DesignReport, d: &Details) -> Vec<String> {
    let mut f: Vec<String> = d.violations.clone();
    if r.oversold > 0 {
        f.push(format!("{} units oversold", r.oversold));
    }
    if r.stranded > 0 {
        f.push(format!("{} units stranded", r.stranded));
    }
    if d.undecided > 0 {
        f.push(format!("{} orders undecided", d.undecided));
    }
    f
}

/// One line per design as it finishes.
pub fn summary(r: &DesignReport, d: &Details) -> String {
    format!(
        "sold {} of the stock, sold out at {} s, all decided at {} s ({} orders/s), {} throttles, {} conflicts",
        d.sold,
        opt(r.sellout_s, 2),
        opt(r.all_decided_s, 2),
        opt(r.orders_per_s, 0),
        r.throttles,
        r.conflicts
    )
}

pub fn cold_start_table(measured: &BTreeMap<String, Measured>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nCold start (x86_64 `cargo lambda build --release` binaries run on this machine; the \
         deployed target is arm64): exec → first Runtime API request\n"
    );
    let _ = writeln!(
        t,
        "{:<15} {:>10} {:>8} {:>8} {:>12} {:>10}",
        "function", "median_ms", "min_ms", "max_ms", "binary_MB", "zip_MB"
    );
    for (f, m) in measured {
        let _ = writeln!(
            t,
            "{:<15} {:>10.2} {:>8.2} {:>8.2} {:>12.2} {:>10.2}",
            f,
            m.report.init_ms_median,
            m.min_ms,
            m.max_ms,
            m.report.binary_bytes as f64 / 1e6,
            m.report.zip_bytes as f64 / 1e6
        );
    }
    t
}

/// A scenario's reports and its details, each by design name, for the JSON report.
fn split(
    runs: &BTreeMap<String, (DesignReport, Details)>,
) -> (
    BTreeMap<&String, &DesignReport>,
    BTreeMap<&String, &Details>,
) {
    let designs = runs.iter().map(|(k, (r, _))| (k, r)).collect();
    let details = runs.iter().map(|(k, (_, d))| (k, d)).collect();
    (designs, details)
}
