//! The reconciler, run on a schedule: for every product, checks conservation (stock ever
//! added = available in all shards + units held by live orders) and the other invariants the
//! invariant checker knows (`flash_aws::audit`), without writing anything. It logs one line
//! per product and a summary, and publishes `ReconcilerViolations` (namespace `FlashSale`, no
//! dimensions) as an Embedded Metric Format line, which an alarm watches.
//!
//! A first pass audits every product from one read of the table. During a sale that pass can
//! see a transaction half done (a scan is not a snapshot), so a product that looks wrong is
//! audited again on its own, bracketed by reads of its stock, until a reading comes out
//! settled (no stock moved while it read); only settled violations count. A product that
//! never settles within the attempts is reported `unsettled` and checked again next run.

use flash_aws::audit::{Audit, Ledger};
use flash_aws::config::{self, Aws, ConfigError, Env};
use flash_aws::telemetry::{self, Unit};
use flash_aws::DynamoStore;
use flash_domain::clock::{now_ms, Millis};
use flash_domain::ports::PortResult;
use flash_domain::{OrderStatus, Sku};
use serde::Serialize;
use std::time::Duration;

/// The metric the reconciler publishes: invariant violations found in a run.
pub const METRIC: &str = "ReconcilerViolations";
/// Settled readings to try for a product that looked wrong in the first pass.
const CONFIRM_ATTEMPTS: usize = 3;
const CONFIRM_PAUSE: Duration = Duration::from_secs(1);
/// A pending order this long past its payment deadline means its timeout was lost or is
/// stuck (the timeouts queue retries for up to 5 × 180 s before its DLQ).
const OVERDUE_AFTER_MS: Millis = 20 * 60 * 1000;

/// What the run found, as the invocation answers it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub products: usize,
    /// Violations over all products: the metric's value.
    pub violations: usize,
    pub products_with_violations: usize,
    /// Products whose stock kept moving while they were re-read: not judged this run.
    pub unsettled: usize,
    /// Pending orders far past their payment deadline, over all products.
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
    pub overdue_pending: usize,
    pub settled: bool,
    pub violations: Vec<String>,
}

pub struct Reconcile<L> {
    pub ledger: L,
    confirm_pause: Duration,
}

impl Reconcile<DynamoStore> {
    /// The deployed function from its environment: `TABLE_NAME`.
    pub fn from_env(aws: &Aws, env: &Env) -> Result<Self, ConfigError> {
        Ok(Self::new(aws.store(config::table_name(env)?)))
    }
}

impl<L: Ledger> Reconcile<L> {
    pub fn new(ledger: L) -> Self {
        Self {
            ledger,
            confirm_pause: CONFIRM_PAUSE,
        }
    }

    /// Waits `pause` between the attempts to get a settled reading (tests shorten it).
    pub fn with_confirm_pause(mut self, pause: Duration) -> Self {
        self.confirm_pause = pause;
        self
    }

    /// One scheduled run: checks, logs, publishes the metric, answers the summary.
    pub async fn handle(&self) -> PortResult<Summary> {
        let (summary, products) = self.run(now_ms()).await?;
        for p in &products {
            if p.violations.is_empty() {
                tracing::info!(
                    sku = p.sku,
                    stock_added = p.stock_added,
                    available = p.available,
                    units_held = p.units_held,
                    orders = p.orders,
                    overdue_pending = p.overdue_pending,
                    settled = p.settled,
                    violations = 0,
                    "product reconciled"
                );
            } else {
                tracing::error!(
                    sku = p.sku,
                    stock_added = p.stock_added,
                    available = p.available,
                    units_held = p.units_held,
                    orders = p.orders,
                    overdue_pending = p.overdue_pending,
                    settled = p.settled,
                    violations = p.violations.len(),
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
            overdue_pending = summary.overdue_pending,
            "reconciliation done"
        );
        // Its own line on stdout, as CloudWatch Logs needs it to extract the metric.
        println!("{}", metric_record(&summary, now_ms()));
        Ok(summary)
    }

    /// Audits every product and confirms what looks wrong; reads only.
    pub async fn run(&self, now: Millis) -> PortResult<(Summary, Vec<ProductCheck>)> {
        let mut summary = Summary::default();
        let mut products = Vec::new();
        for first in self.ledger.audit_all().await? {
            let (audit, settled) = if first.violations.is_empty() {
                (first, true)
            } else {
                self.confirm(first).await?
            };
            let check = product_check(&audit, settled, now);
            summary.products += 1;
            summary.overdue_pending += check.overdue_pending;
            if !settled {
                summary.unsettled += 1;
            } else if !check.violations.is_empty() {
                summary.violations += check.violations.len();
                summary.products_with_violations += 1;
            }
            products.push(check);
        }
        Ok((summary, products))
    }

    /// A settled reading of a product the first pass found wrong, or the last reading and
    /// `false` when none settled.
    async fn confirm(&self, first: Audit) -> PortResult<(Audit, bool)> {
        // Orders naming a key no product can have: no race explains them, keep the reading.
        let Ok(sku) = Sku::parse(&first.sku) else {
            return Ok((first, true));
        };
        for attempt in 0..CONFIRM_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(self.confirm_pause).await;
            }
            if let Some(settled) = self.ledger.audit_settled(&sku).await? {
                return Ok((settled, true));
            }
        }
        Ok((first, false))
    }
}

fn product_check(a: &Audit, settled: bool, now: Millis) -> ProductCheck {
    ProductCheck {
        sku: a.sku.clone(),
        stock_added: a.stock_added,
        available: a.available,
        units_held: a.units_held,
        orders: a.orders.len(),
        overdue_pending: a
            .orders
            .iter()
            .filter(|o| o.status == OrderStatus::Pending)
            .filter(|o| o.expires_at.is_some_and(|e| e + OVERDUE_AFTER_MS < now))
            .count(),
        settled,
        violations: a.violations.clone(),
    }
}

/// The EMF record [`Reconcile::handle`] prints for `summary`, stamped `timestamp_ms`.
pub fn metric_record(summary: &Summary, timestamp_ms: Millis) -> serde_json::Value {
    telemetry::emf(
        &[(METRIC, summary.violations as f64, Unit::Count)],
        &[],
        timestamp_ms,
    )
}
