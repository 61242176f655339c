//! In-memory fakes for the payment-timeout path and the reconciler: the payment-timeouts queue
//! (it records what was scheduled and with which delay, and can be told to fail), and the
//! reconciler's reads ([`Ledger`]) over [`FakeStore`], judged by the audit's own rules.

use crate::fake::FakeStore;
use crate::fixtures::sqs_event;
use crate::invariants::holdings;
use aws_lambda_events::event::sqs::SqsEvent;
use flash_domain::clock::Millis;
use flash_domain::expiry::{PaymentDue, TimeoutMessage};
use flash_domain::invariant_check::{check_at, Audit, Deadlines, Tally};
use flash_domain::ports::Ledger;
use flash_domain::ports::{PaymentTimeouts, Unscheduled};
use flash_domain::ports::{PortError, PortResult};
use flash_domain::{OrderId, Sku};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One scheduled timeout: the order, and the `DelaySeconds` its message was sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    pub order_id: OrderId,
    pub expires_at: Millis,
    pub delay_seconds: u32,
}

#[derive(Default)]
struct Inner {
    scheduled: Mutex<Vec<Scheduled>>,
    failures: AtomicUsize,
    calls: AtomicUsize,
}

/// The payment-timeouts queue in memory. Clones share one queue.
#[derive(Clone, Default)]
pub struct FakeTimeouts {
    inner: Arc<Inner>,
}

impl FakeTimeouts {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` scheduling calls fail as a whole (nothing of them is sent).
    pub fn fail(&self, n: usize) {
        self.inner.failures.store(n, Ordering::SeqCst);
    }

    /// Scheduling calls made, failed ones included.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Everything scheduled so far, oldest first.
    pub fn scheduled(&self) -> Vec<Scheduled> {
        self.messages().clone()
    }

    /// The orders scheduled so far, each once.
    pub fn orders(&self) -> BTreeSet<OrderId> {
        self.messages().iter().map(|s| s.order_id.clone()).collect()
    }

    /// Removes everything scheduled so far and delivers it as one SQS event (message ids
    /// `t0`, `t1`, ...), as if every delay had run out.
    pub fn take_event(&self) -> SqsEvent {
        let taken = std::mem::take(&mut *self.messages());
        let records: Vec<(String, String)> = taken
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("t{i}"), timeout_body(&s.order_id)))
            .collect();
        sqs_event(&records)
    }

    fn messages(&self) -> MutexGuard<'_, Vec<Scheduled>> {
        self.inner
            .scheduled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// The body `process-orders` sends for `order_id`.
pub fn timeout_body(order_id: &OrderId) -> String {
    serde_json::to_string(&TimeoutMessage {
        order_id: order_id.clone(),
    })
    .unwrap_or_default()
}

impl PaymentTimeouts for FakeTimeouts {
    async fn schedule_timeouts(&self, due: &[PaymentDue], now: Millis) -> Result<(), Unscheduled> {
        self.inner.calls.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .inner
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(Unscheduled {
                orders: due.iter().map(|d| d.order_id.clone()).collect(),
                cause: PortError::unavailable("sqs SendMessageBatch", "injected fault"),
            });
        }
        // As the adapter does: one message per order, whatever the batch repeated.
        let mut seen = BTreeSet::new();
        let mut messages = self.messages();
        for d in due {
            if seen.insert(d.order_id.clone()) {
                messages.push(Scheduled {
                    order_id: d.order_id.clone(),
                    expires_at: d.expires_at,
                    delay_seconds: d.delay_seconds(now),
                });
            }
        }
        Ok(())
    }
}

/// The in-memory table is always settled: nothing moves while one call holds its lock. The
/// first pass feeds the same streaming [`Tally`] the DynamoDB pass does; the re-read judges
/// the product whole, admission counts included, as the adapter's does.
impl Ledger for FakeStore {
    async fn tally_all(&self, deadlines: &Deadlines) -> PortResult<Vec<Audit>> {
        let state = self.snapshot();
        let skus: BTreeSet<Sku> = state
            .products
            .keys()
            .cloned()
            .chain(state.orders.values().map(|o| o.sku.clone()))
            .collect();
        Ok(skus
            .iter()
            .map(|sku| {
                let h = holdings(&state, sku);
                let mut t = Tally::new(sku.as_str(), *deadlines);
                if state.products.contains_key(sku) {
                    t.product(h.stock_added, h.per_user_limit);
                }
                h.shards.iter().for_each(|s| t.shard(*s));
                h.counters.iter().for_each(|(u, n)| t.counter(u, *n));
                let admissions = state.admissions(sku);
                admissions
                    .counts
                    .iter()
                    .for_each(|(u, n)| t.admission(u, *n));
                for o in &h.orders {
                    t.order(o, admissions.orders.contains(&o.id));
                }
                t.finish()
            })
            .collect())
    }

    async fn audit_settled(&self, sku: &Sku, deadlines: &Deadlines) -> PortResult<Option<Audit>> {
        let state = self.snapshot();
        let h = holdings(&state, sku);
        let limit = h.per_user_limit;
        let mut a = check_at(sku, h, Some(deadlines));
        let admissions = state.admissions(sku).check(&a, limit);
        a.violations.extend(admissions);
        Ok(Some(a))
    }
}
