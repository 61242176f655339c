//! The reconciler, run on a schedule: for every product, checks the invariants
//! (`flash_domain::invariant_check`: never oversell, conservation, consistent orders, buyers'
//! counters and admission counts) and that no order outlived its safety net (`queued` past the
//! re-drive delay plus a margin, `pending` past its payment deadline plus a grace), without
//! writing anything. It logs one line per product and a summary, and publishes
//! `ReconcilerViolations` (namespace `FlashSale`, no dimensions; overdue orders included), which
//! an alarm watches, beside `StaleQueuedOrders` and `OverduePendingOrders`, as one Embedded
//! Metric Format line.
//!
//! A first pass judges every product from one streaming read of the table, in memory that does
//! not grow with the number of orders. During a sale that pass can see a transaction half done
//! (a scan is not a snapshot), so a product that looks wrong is re-read on its own, bracketed by
//! reads of its stock and with each buyer in doubt read in one snapshot, until a reading comes
//! out settled; only settled violations count. A product that never settles within the
//! attempts is reported `unsettled` and checked again next run.

use flash_aws::config::{self, Aws, ConfigError, Env};
use flash_aws::telemetry::{self, Unit};
use flash_aws::DynamoStore;
use flash_domain::clock::{now_ms, Millis};
use flash_domain::invariant_check::{Audit, Deadlines};
use flash_domain::ports::{Ledger, PortResult};
use flash_domain::Sku;
use serde::Serialize;
use std::time::Duration;

/// The metric the reconciler publishes: invariant violations found in a run.
pub const METRIC: &str = "ReconcilerViolations";
/// Beside it, the overdue orders among them.
pub const STALE_QUEUED_METRIC: &str = "StaleQueuedOrders";
pub const OVERDUE_PENDING_METRIC: &str = "OverduePendingOrders";
/// Settled readings to try for a product that looked wrong in the first pass.
const CONFIRM_ATTEMPTS: usize = 3;
const CONFIRM_PAUSE: Duration = Duration::from_secs(1);

/// What the run found, as the invocation answers it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub products: usize,
    /// Violations over all products: the metric's value (overdue orders included).
    pub violations: usize,
    pub products_with_violations: usize,
    /// Products whose stock kept moving while they were re-read: not judged this run.
    pub unsettled: usize,
    /// Queued orders older than the re-drive delay plus its margin, over all products.
    pub stale_queued: usize,
    /// Pending orders past their payment deadline plus its grace, over all products.
    pub overdue_pending: usize,
}

/// One product's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductCheck {
    pub sku: String,
    pub stock_added: u64,
    pub available: i64,
    pub units_held: u64,
    pub orders: usize,
    pub stale_queued: usize,
    pub overdue_pending: usize,
    pub settled: bool,
    /// Every violation found: those named in `violations` and those only counted.
    pub violation_count: usize,
    pub violations: Vec<String>,
}

pub struct Reconcile<L> {
    pub ledger: L,
    redrive_delay_s: u32,
    confirm_pause: Duration,
}

impl Reconcile<DynamoStore> {
    /// The deployed function from its environment: `TABLE_NAME`, and `REDRIVE_DELAY_SECONDS`
    /// (place-order's, for when a queued order is overdue).
    pub fn from_env(aws: &Aws, env: &Env) -> Result<Self, ConfigError> {
        let delay = config::redrive_delay(env)?.as_secs();
        Ok(Self::new(aws.store(config::table_name(env)?))
            .with_redrive_delay(u32::try_from(delay).unwrap_or(u32::MAX)))
    }
}

impl<L: Ledger> Reconcile<L> {
    pub fn new(ledger: L) -> Self {
        Self {
            ledger,
            redrive_delay_s: config::REDRIVE_DELAY_SECONDS as u32,
            confirm_pause: CONFIRM_PAUSE,
        }
    }

    /// Waits `pause` between the attempts to get a settled reading (tests shorten it).
    pub fn with_confirm_pause(mut self, pause: Duration) -> Self {
        self.confirm_pause = pause;
        self
    }

    /// The delay of place-order's re-drive copy: a queued order older than it (plus a
    /// margin) is overdue.
    pub fn with_redrive_delay(mut self, seconds: u32) -> Self {
        self.redrive_delay_s = seconds;
        self
    }

    /// The deadlines a run at `now` judges by.
    pub fn deadlines(&self, now: Millis) -> Deadlines {
        Deadlines::new(now, self.redrive_delay_s)
    }

    /// One scheduled run: checks, logs, publishes the metric, answers the summary.
    pub async fn handle(&self) -> PortResult<Summary> {
        let (summary, products) = self.run(now_ms()).await?;
        for p in &products {
            tracing::info!(
                sku = p.sku,
                stock_added = p.stock_added,
                available = p.available,
                units_held = p.units_held,
                orders = p.orders,
                stale_queued = p.stale_queued,
                overdue_pending = p.overdue_pending,
                settled = p.settled,
                violations = p.violation_count,
                "product reconciled"
            );
            if !p.violations.is_empty() {
                tracing::error!(
                    sku = p.sku,
                    violations = p.violation_count,
                    details = p.violations.join("; "),
                    "product breaks an invariant"
                );
            }
        }
        tracing::info!(
            products = summary.products,
            violations = summary.violations,
            products_with_violations = summary.products_with_violations,
            unsettled = summary.unsettled,
            stale_queued = summary.stale_queued,
            overdue_pending = summary.overdue_pending,
            "reconciliation done"
        );
        // Its own line on stdout, as CloudWatch Logs needs it to extract the metric.
        println!("{}", metric_record(&summary, now_ms()));
        Ok(summary)
    }

    /// Audits every product and confirms what looks wrong; reads only.
    pub async fn run(&self, now: Millis) -> PortResult<(Summary, Vec<ProductCheck>)> {
        self.run_on(now, None).await
    }

    /// [`Reconcile::run`], or with `only` that one product (still judged from one pass).
    pub async fn run_on(
        &self,
        now: Millis,
        only: Option<&Sku>,
    ) -> PortResult<(Summary, Vec<ProductCheck>)> {
        let deadlines = self.deadlines(now);
        let mut summary = Summary::default();
        let mut products = Vec::new();
        for first in self.ledger.tally_all(&deadlines).await? {
            if only.is_some_and(|sku| sku.as_str() != first.sku) {
                continue;
            }
            let (audit, settled) = if first.violation_count() == 0 {
                (first, true)
            } else {
                self.confirm(first, &deadlines).await?
            };
            let check = product_check(&audit, settled);
            summary.products += 1;
            if !settled {
                summary.unsettled += 1;
            } else if check.violation_count > 0 {
                summary.violations += check.violation_count;
                summary.products_with_violations += 1;
                summary.stale_queued += check.stale_queued;
                summary.overdue_pending += check.overdue_pending;
            }
            products.push(check);
        }
        Ok((summary, products))
    }

    /// A settled reading of a product the first pass found wrong, or the last reading and
    /// `false` when none settled.
    async fn confirm(&self, first: Audit, deadlines: &Deadlines) -> PortResult<(Audit, bool)> {
        // Orders naming a key no product can have: no race explains them, keep the reading.
        let Ok(sku) = Sku::parse(&first.sku) else {
            return Ok((first, true));
        };
        for attempt in 0..CONFIRM_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(self.confirm_pause).await;
            }
            if let Some(settled) = self.ledger.audit_settled(&sku, deadlines).await? {
                return Ok((settled, true));
            }
        }
        Ok((first, false))
    }
}

fn product_check(a: &Audit, settled: bool) -> ProductCheck {
    ProductCheck {
        sku: a.sku.clone(),
        stock_added: a.stock_added,
        available: a.available,
        units_held: a.units_held,
        orders: a.orders_seen,
        stale_queued: a.stale_queued,
        overdue_pending: a.overdue_pending,
        settled,
        violation_count: a.violation_count(),
        violations: a.violations.clone(),
    }
}

/// The EMF record [`Reconcile::handle`] prints for `summary`, stamped `timestamp_ms`.
pub fn metric_record(summary: &Summary, timestamp_ms: Millis) -> serde_json::Value {
    telemetry::emf(
        &[
            (METRIC, summary.violations as f64, Unit::Count),
            (
                STALE_QUEUED_METRIC,
                summary.stale_queued as f64,
                Unit::Count,
            ),
            (
                OVERDUE_PENDING_METRIC,
                summary.overdue_pending as f64,
                Unit::Count,
            ),
        ],
        &[],
        timestamp_ms,
    )
}
