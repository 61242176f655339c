//! What every design shares: the sale's parameters, the buyers (a fixed pool of concurrent
//! workers, each serving one buyer at a time, like warm function instances), the clock that
//! marks sell-out and decisions, and what a design reports.

use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The flash sale every design runs: `buyers` distinct buyers, one unit each, for `stock` units
/// of one product, at most `concurrency` in flight.
#[derive(Debug, Clone)]
pub struct Sale {
    pub buyers: usize,
    pub stock: u64,
    pub concurrency: usize,
    /// A design still running after this long is stopped; its remaining buyers count as
    /// undecided and it gets no `all_decided_s`.
    pub timeout: Duration,
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
}

impl Run {
    pub fn start() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            sellout: OnceLock::new(),
        })
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
    /// Buyers never decided: the design hit the sale's timeout first.
    pub undecided: usize,
    /// 503 answers the buyers got (and came back after), by error code.
    pub unavailable: BTreeMap<String, u64>,
    /// When the last buyer got its answer from the API.
    pub last_answer: Duration,
}

impl Outcomes {
    pub fn count(&self, f: impl Fn(&Decision) -> bool) -> usize {
        self.decisions.iter().filter(|(d, _)| f(d)).count()
    }

    pub fn sold(&self) -> u64 {
        self.count(|d| *d == Decision::Sold) as u64
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
                    let decision = serve(&*design, worker, buyer, &run, &mut mine).await;
                    let at = run.elapsed();
                    mine.last_answer = mine.last_answer.max(at);
                    mine.decisions.push((decision, at));
                    answered.fetch_add(1, Relaxed);
                }
                let mut all = outcomes.lock().unwrap_or_else(|e| e.into_inner());
                all.decisions.append(&mut mine.decisions);
                all.undecided += mine.undecided;
                all.last_answer = all.last_answer.max(mine.last_answer);
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
    for call in 0..MAX_CALLS {
        match design.buy(worker, buyer, run).await {
            Answer::Decided(d) => return d,
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

/// One design's result, in the shape bench.json gives each design.
#[derive(Debug, Clone, Serialize)]
pub struct DesignReport {
    pub sellout_s: Option<f64>,
    pub all_decided_s: Option<f64>,
    pub orders_per_s: Option<f64>,
    pub oversold: u64,
    pub stranded: u64,
    pub write_units_per_sold_unit: Option<f64>,
    pub stock_item_writes_per_sold_unit: Option<f64>,
    pub throttles: u64,
    pub conflicts: u64,
}

/// What the table behind the report says: counts and checks that do not fit its shape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Details {
    pub sku: String,
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
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn per_unit(x: f64, sold: u64) -> Option<f64> {
    (sold > 0).then(|| round3(x / sold as f64))
}
