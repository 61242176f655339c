//! What every design shares: the sale's parameters, the buyers (a fixed pool of concurrent
//! workers, each serving one buyer at a time, like warm function instances), the clock that
//! marks sell-out and decisions, and what a design reports.

use crate::catalog::Catalog;
use crate::cost::Usage;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The flash sale every design runs: `buyers` distinct buyers, one unit each, for `stock` units
/// in all, at most `concurrency` in flight; `catalog` says which SKUs hold them and which one
/// each buyer wants (one product in the single-product scenario).
#[derive(Debug, Clone)]
pub struct Sale {
    pub buyers: usize,
    pub stock: u64,
    pub concurrency: usize,
    /// A design still running after this long is stopped; its remaining buyers count as
    /// undecided and it gets no `all_decided_s`.
    pub timeout: Duration,
    pub catalog: Arc<Catalog>,
}

impl Sale {
    /// The same buyers and capacity over another catalog of the same stock.
    pub fn with_catalog(&self, catalog: Catalog) -> Self {
        Self {
            stock: catalog.total_stock(),
            catalog: Arc::new(catalog),
            ..self.clone()
        }
    }

    /// The SKU (index) `buyer` wants.
    pub fn choice(&self, buyer: usize) -> usize {
        self.catalog.choice.get(buyer).copied().unwrap_or(0) as usize
    }
}

/// A buyer's final answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Sold,
    SoldOut,
    /// Refused for a reason other than stock: retries exhausted, lock wait timed out, or the
    /// service kept answering 503.
    Refused(&'static str),
    /// `pipeline` only: accepted (202); the processor decides it later.
    Queued,
}

/// What one synchronous API call answered.
pub enum Answer {
    Decided(Decision),
    /// A 503 (DynamoDB throttled the call past the SDK's own retries, or it failed): the buyer
    /// comes back after a pause, as every client of every design would.
    Unavailable(String),
}

/// A buyer whose calls keep answering 503 gives up after this many.
const MAX_CALLS: u32 = 12;

/// One design's sale, driven by the shared worker pool.
pub trait Design: Send + Sync + 'static {
    /// One API call by `buyer`, served by worker `worker` (0..concurrency).
    fn buy(&self, worker: usize, buyer: usize, run: &Run) -> impl Future<Output = Answer> + Send;
}

/// The sale's clock.
#[derive(Debug)]
pub struct Run {
    started: Instant,
    sellout: OnceLock<Duration>,
    /// SKUs not yet sold out; the sell-out is when the last one goes.
    skus_left: AtomicUsize,
    /// When each SKU (by index) ran out.
    sku_sellouts: Vec<OnceLock<Duration>>,
}

impl Run {
    /// A sale of `skus` SKUs: sold out once each has been reported with
    /// [`Run::sku_sold_out`].
    pub fn start_catalog(skus: usize) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            sellout: OnceLock::new(),
            skus_left: AtomicUsize::new(skus),
            sku_sellouts: (0..skus).map(|_| OnceLock::new()).collect(),
        })
    }

    /// SKU `sku` (its index in the catalog) just ran out; the last one to go marks the
    /// sell-out. A second report of the same SKU changes nothing.
    pub fn sku_sold_out(&self, sku: usize) {
        let newly = self
            .sku_sellouts
            .get(sku)
            .is_some_and(|at| at.set(self.started.elapsed()).is_ok());
        if newly && self.skus_left.fetch_sub(1, Relaxed) == 1 {
            self.mark_sellout();
        }
    }

    /// When SKU `sku` ran out; for a single product, the sell-out.
    pub fn sku_sellout(&self, sku: usize) -> Option<Duration> {
        match self.sku_sellouts.len() {
            1 => self.sellout(),
            _ => self.sku_sellouts.get(sku).and_then(|at| at.get().copied()),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// The stock just reached zero (the first call wins).
    pub fn mark_sellout(&self) {
        let _ = self.sellout.set(self.started.elapsed());
    }

    pub fn sellout(&self) -> Option<Duration> {
        self.sellout.get().copied()
    }
}

/// Every buyer's answer and when it came.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub decisions: Vec<(Decision, Duration)>,
    /// The buyer of each of `decisions`, in the same order.
    pub buyers: Vec<usize>,
    /// When each of `buyers` made their first call.
    pub arrivals: Vec<Duration>,
    /// Buyers never decided: the design hit the sale's timeout first.
    pub undecided: usize,
    /// 503 answers the buyers got (and came back after), by error code.
    pub unavailable: BTreeMap<String, u64>,
    /// When the last buyer got its answer from the API.
    pub last_answer: Duration,
    /// Each API call's duration in whole milliseconds, rounded up as Lambda bills it (every
    /// call is one API Gateway request and one invocation of the design's function).
    pub call_ms: Vec<u64>,
    /// Each decided buyer's time from its first call to its answer, in milliseconds.
    pub answer_ms: Vec<f64>,
}

impl Outcomes {
    pub fn count(&self, f: impl Fn(&Decision) -> bool) -> usize {
        self.decisions.iter().filter(|(d, _)| f(d)).count()
    }

    pub fn sold(&self) -> u64 {
        self.count(|d| *d == Decision::Sold) as u64
    }

    /// (units sold, buyers refused) of each SKU of `sale`'s catalog.
    pub fn per_sku(&self, sale: &Sale) -> Vec<(u64, u64)> {
        let skus = sale.catalog.skus();
        let mut out = vec![(0, 0); skus];
        for ((d, _), &buyer) in self.decisions.iter().zip(&self.buyers) {
            let (sold, refused) = &mut out[sale.choice(buyer).min(skus - 1)];
            match d {
                Decision::Sold => *sold += 1,
                Decision::Queued => {}
                _ => *refused += 1,
            }
        }
        out
    }

    /// When each SKU of `sale`'s catalog had been asked for all its units (its buyers' first
    /// calls, one unit each): no design can sell a SKU out sooner. `None` for a SKU that never
    /// drew that many buyers.
    pub fn demand_met(&self, sale: &Sale) -> Vec<Option<Duration>> {
        let mut arrivals = vec![Vec::new(); sale.catalog.skus()];
        for (&buyer, &at) in self.buyers.iter().zip(&self.arrivals) {
            if let Some(a) = arrivals.get_mut(sale.choice(buyer)) {
                a.push(at);
            }
        }
        arrivals
            .into_iter()
            .zip(&sale.catalog.stocks)
            .map(|(mut a, &stock)| {
                a.sort();
                let stock = usize::try_from(stock).ok()?;
                stock.checked_sub(1).and_then(|i| a.get(i).copied())
            })
            .collect()
    }

    /// (when the last SKU had been asked for all its units, the longest any SKU stayed on sale
    /// after that moment of its own): the first is what the buyers allow, the second what the
    /// design adds. The lag is `None` unless every SKU sold out.
    pub fn sellout_lag(&self, sale: &Sale, run: &Run) -> (Option<f64>, Option<f64>) {
        let met = self.demand_met(sale);
        let last_met = met.iter().flatten().max().map(|d| round3(d.as_secs_f64()));
        let lag = longest_lag(&met, |sku| run.sku_sellout(sku));
        (last_met, lag.map(|d| round3(d.as_secs_f64())))
    }

    /// Refusals by reason (sold out included).
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (d, _) in &self.decisions {
            let key = match d {
                Decision::SoldOut => "sold_out",
                Decision::Refused(why) => why,
                Decision::Sold | Decision::Queued => continue,
            };
            *out.entry(key.to_owned()).or_default() += 1;
        }
        out
    }
}

/// The longest time from a SKU's demand being met to its sell-out, over every SKU; `None`
/// when any SKU never sold out or never drew enough buyers.
fn longest_lag(
    met: &[Option<Duration>],
    sellout: impl Fn(usize) -> Option<Duration>,
) -> Option<Duration> {
    met.iter()
        .enumerate()
        .map(|(sku, m)| Some(sellout(sku)?.saturating_sub((*m)?)))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
}

/// Runs every buyer through `design`, `sale.concurrency` at a time, each worker on its own
/// task so the pool uses every core.
pub async fn run_buyers<D: Design>(design: Arc<D>, sale: &Sale, run: &Arc<Run>) -> Outcomes {
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let ticker = tokio::spawn(progress(run.clone(), answered.clone(), sale.buyers));
    let workers: Vec<_> = (0..sale.concurrency)
        .map(|worker| {
            let (design, run, next, outcomes, answered) = (
                design.clone(),
                run.clone(),
                next.clone(),
                outcomes.clone(),
                answered.clone(),
            );
            let (buyers, timeout) = (sale.buyers, sale.timeout);
            tokio::spawn(async move {
                let mut mine = Outcomes::default();
                loop {
                    let buyer = next.fetch_add(1, Relaxed);
                    if buyer >= buyers {
                        break;
                    }
                    if run.elapsed() > timeout {
                        mine.undecided += 1;
                        continue;
                    }
                    mine.arrivals.push(run.elapsed());
                    let decision = serve(&*design, worker, buyer, &run, &mut mine).await;
                    let at = run.elapsed();
                    mine.last_answer = mine.last_answer.max(at);
                    mine.decisions.push((decision, at));
                    mine.buyers.push(buyer);
                    answered.fetch_add(1, Relaxed);
                }
                let mut all = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                all.decisions.append(&mut mine.decisions);
                all.buyers.append(&mut mine.buyers);
                all.arrivals.append(&mut mine.arrivals);
                all.undecided += mine.undecided;
                all.last_answer = all.last_answer.max(mine.last_answer);
                all.call_ms.append(&mut mine.call_ms);
                all.answer_ms.append(&mut mine.answer_ms);
                for (code, n) in mine.unavailable {
                    *all.unavailable.entry(code).or_default() += n;
                }
            })
        })
        .collect();
    for w in workers {
        // A worker that panicked loses its buyers; they show up as missing decisions.
        let _ = w.await;
    }
    ticker.abort();
    Arc::try_unwrap(outcomes)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default()
}

/// A line on stderr every few seconds, so a long design shows it is moving.
async fn progress(run: Arc<Run>, answered: Arc<AtomicUsize>, buyers: usize) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        eprintln!(
            "  {:>5.0} s: {}/{buyers} buyers answered",
            run.elapsed().as_secs_f64(),
            answered.load(Relaxed)
        );
    }
}

/// One buyer until decided: calls again after a 503, with a jittered exponential pause (what a
/// client honouring `Retry-After` does).
async fn serve<D: Design>(
    design: &D,
    worker: usize,
    buyer: usize,
    run: &Run,
    mine: &mut Outcomes,
) -> Decision {
    let first = Instant::now();
    for call in 0..MAX_CALLS {
        let started = Instant::now();
        let answer = design.buy(worker, buyer, run).await;
        mine.call_ms
            .push(started.elapsed().as_micros().div_ceil(1000) as u64);
        match answer {
            Answer::Decided(d) => {
                mine.answer_ms.push(first.elapsed().as_secs_f64() * 1000.0);
                return d;
            }
            Answer::Unavailable(code) => {
                *mine.unavailable.entry(code).or_default() += 1;
                tokio::time::sleep(backoff(Duration::from_millis(100), call, 2_000)).await;
            }
        }
    }
    Decision::Refused("unavailable")
}

/// `base · 2^attempt`, capped at `cap_ms`, times a random factor in [0.5, 1.5).
pub fn backoff(base: Duration, attempt: u32, cap_ms: u64) -> Duration {
    let ms = (base.as_millis() as u64)
        .saturating_mul(1 << attempt.min(16))
        .min(cap_ms) as f64;
    Duration::from_secs_f64(ms * (0.5 + rand::random::<f64>()) / 1000.0)
}

/// p50 / p99 / max of a set of milliseconds, from an HdrHistogram (3 significant digits).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Tracks 1 ms to an hour; longer values count as an hour.
    pub fn of(ms: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).ok()?;
        for v in ms {
            h.saturating_record(v.max(0.0).round() as u64);
        }
        (!h.is_empty()).then(|| Self {
            p50: h.value_at_quantile(0.5) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            max: h.max() as f64,
        })
    }
}

/// One design's result, in the shape bench.json gives each design.
#[derive(Debug, Clone, Serialize)]
pub struct DesignReport {
    pub sellout_s: Option<f64>,
    /// When the last SKU had been asked for all its units: the soonest the buyers let any
    /// design sell out.
    pub demand_met_s: Option<f64>,
    /// The longest any SKU stayed on sale after it had been asked for all its units: the
    /// sell-out's part that is the design's own.
    pub sellout_lag_s: Option<f64>,
    pub all_decided_s: Option<f64>,
    /// `all_decided_s` under the name `API.md` gives the catalog's designs.
    pub decided_s: Option<f64>,
    /// Orders accepted (sold, or queued to be decided) per second of the sale until every
    /// order was decided.
    pub accepted_orders_per_s: Option<f64>,
    /// Each order's time from its first call to its decision (for `pipeline`, from the order's
    /// acceptance to its decision in the table).
    pub decision_ms: Option<Percentiles>,
    pub orders_per_s: Option<f64>,
    pub oversold: u64,
    pub stranded: u64,
    /// Buyers or orders never decided (the run's timeout, or orders still queued).
    pub undecided: u64,
    pub write_units_per_sold_unit: Option<f64>,
    pub stock_item_writes_per_sold_unit: Option<f64>,
    pub throttles: u64,
    pub conflicts: u64,
}

/// What the table behind the report says: counts and checks that do not fit its shape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Details {
    /// The SKU (a catalog's first).
    pub sku: String,
    /// SKUs on sale.
    pub skus: usize,
    pub sold: u64,
    pub stock_left: i64,
    pub refused: BTreeMap<String, u64>,
    pub undecided: u64,
    /// 503 answers buyers got and came back after, by error code.
    pub unavailable_answers: BTreeMap<String, u64>,
    pub write_units: f64,
    pub stock_item_writes: u64,
    /// Everything else worth knowing about this design's run.
    pub notes: BTreeMap<String, serde_json::Value>,
    pub violations: Vec<String>,
    /// What the run would be billed for on AWS (see `cost.rs`).
    pub usage: Usage,
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn per_unit(x: f64, sold: u64) -> Option<f64> {
    (sold > 0).then(|| round3(x / sold as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skus_demand_is_met_when_its_stock_th_buyer_arrives_and_the_lag_runs_from_there() {
        let ms = Duration::from_millis;
        // SKU 0 holds 2 units, SKU 1 one; buyers alternate between them.
        let catalog = Catalog {
            stocks: vec![2, 1],
            choice: vec![0, 1, 0, 1, 0],
        };
        let sale = Sale {
            buyers: 5,
            stock: 3,
            concurrency: 2,
            timeout: Duration::from_secs(60),
            catalog: Arc::new(catalog),
        };
        // Recorded in answer order, not arrival order.
        let outcomes = Outcomes {
            buyers: vec![4, 2, 1, 0, 3],
            arrivals: vec![ms(50), ms(30), ms(20), ms(10), ms(40)],
            ..Outcomes::default()
        };
        let met = outcomes.demand_met(&sale);
        // SKU 0's second buyer (buyer 2) came at 30 ms; SKU 1's first (buyer 1) at 20 ms.
        assert_eq!(met, vec![Some(ms(30)), Some(ms(20))]);
        let sellouts = [Some(ms(100)), Some(ms(500))];
        assert_eq!(longest_lag(&met, |i| sellouts[i]), Some(ms(480)));
        // A SKU that never sold out leaves no lag to report.
        assert_eq!(longest_lag(&met, |i| [Some(ms(100)), None][i]), None);
        // A SKU with fewer buyers than units is never met.
        let short = Sale {
            catalog: Arc::new(Catalog {
                stocks: vec![9, 1],
                choice: vec![0, 1, 0, 1, 0],
            }),
            ..sale
        };
        assert_eq!(outcomes.demand_met(&short), vec![None, Some(ms(20))]);
    }

    #[test]
    fn percentiles_of_a_few_seconds_are_not_clipped() {
        let p = Percentiles::of((1..=100).map(|i| f64::from(i) * 100.0)).expect("values");
        // Three significant digits: within 0.1 %.
        for (got, want) in [(p.p50, 5_000.0), (p.p99, 9_900.0), (p.max, 10_000.0)] {
            assert!((got - want).abs() <= want / 1000.0, "{got} vs {want}");
        }
        assert!(Percentiles::of(std::iter::empty()).is_none());
    }
}
