//! The demo's report: the latency percentiles, the table printed at the end and the JSON of
//! the API contract.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latencies, kept in microseconds to 3 significant digits (HdrHistogram: constant memory,
/// at most 0.1% off) and reported in milliseconds. Up to an hour; longer ones count as an hour.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self(
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("bounds and 3 significant digits are within HdrHistogram's limits"),
        )
    }
}

impl Latencies {
    pub fn record_ms(&mut self, ms: f64) {
        self.0
            .saturating_record((ms.max(0.0) * 1000.0).round() as u64);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The latency that `q` of the samples do not exceed (nearest rank); 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        Self::ms(self.0.median_equivalent(self.0.value_at_quantile(q)))
    }

    pub fn max_ms(&self) -> f64 {
        Self::ms(self.0.median_equivalent(self.0.max()))
    }

    /// A value read back from the histogram (the middle of its bucket: 974 ms reads as
    /// 974.08), rounded to the 3 significant digits it keeps, so it says no more than it knows.
    fn ms(us: u64) -> f64 {
        let ms = us as f64 / 1000.0;
        if ms <= 0.0 {
            return 0.0;
        }
        let unit = 10f64.powf(ms.log10().floor() - 2.0);
        round((ms / unit).round() * unit)
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.quantile_ms(0.50),
            p99: self.quantile_ms(0.99),
            max: self.max_ms(),
        }
    }

    /// Sample counts in bins of `width_ms`, from 0 to the largest sample: `(bin start, count)`.
    pub fn bins(&self, width_ms: f64) -> Vec<(f64, u64)> {
        if self.0.is_empty() {
            return Vec::new();
        }
        let step = ((width_ms * 1000.0).round() as u64).max(1);
        let mut out = Vec::new();
        let mut start = 0.0;
        for v in self.0.iter_linear(step) {
            out.push((start, v.count_since_last_iteration()));
            start += width_ms;
        }
        out
    }
}

#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub sku: String,
    pub stock: u64,
    pub buyers: usize,
    pub concurrency: usize,
    /// The stack's `CAPACITY_SCALE` when its functions ran under the capacity model.
    pub capacity_scale: Option<f64>,
    /// Orders answered 202.
    pub accepted: usize,
    pub sold_units: u64,
    /// Orders rejected, by the processor or at the API.
    pub rejected: usize,
    pub rejected_by_reason: BTreeMap<String, usize>,
    pub oversold: u64,
    pub stranded: u64,
    pub undecided: usize,
    pub dlq_messages: u64,
    /// Retries with the same Idempotency-Key that got another order id (must be 0).
    pub replay_mismatches: usize,
    pub replays: usize,
    pub duration_s: f64,
    pub sellout_s: Option<f64>,
    /// Buyers' orders answered (decided, or refused at the API) per second.
    pub orders_per_s: f64,
    pub api_latency_ms: Percentiles,
    pub decision_latency_ms: Percentiles,
    pub ddb_write_requests: u64,
    pub ddb_write_units: f64,
    pub stock_item_writes: u64,
    pub write_units_per_sold_unit: f64,
    pub stock_item_writes_per_sold_unit: f64,
    pub invariant_violations: Vec<String>,
}

impl Report {
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for (what, n) in [
            ("oversold", self.oversold),
            ("stranded", self.stranded),
            ("undecided", self.undecided as u64),
            ("dlq_messages", self.dlq_messages),
            ("replay_mismatches", self.replay_mismatches as u64),
        ] {
            if n > 0 {
                f.push(format!("{what}: {n}"));
            }
        }
        f.extend(self.invariant_violations.iter().cloned());
        f
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<34} {v:>14}");
        };
        row("stock (units)", self.stock.to_string());
        row(
            "buyers / concurrency",
            format!("{} / {}", self.buyers, self.concurrency),
        );
        if let Some(scale) = self.capacity_scale {
            row(
                "capacity model (WU/s per item)",
                format!("{:.0} (x {scale})", 1000.0 * scale),
            );
        }
        row("accepted (202)", self.accepted.to_string());
        row("sold (units)", self.sold_units.to_string());
        row("rejected", self.rejected.to_string());
        for (reason, n) in &self.rejected_by_reason {
            row(&format!("  rejected: {reason}"), n.to_string());
        }
        row(
            "replays (same key) / mismatches",
            format!("{} / {}", self.replays, self.replay_mismatches),
        );
        row("oversold", self.oversold.to_string());
        row("stranded", self.stranded.to_string());
        row("undecided", self.undecided.to_string());
        row("DLQ messages", self.dlq_messages.to_string());
        row("duration (s)", format!("{:.2}", self.duration_s));
        row(
            "sold out after (s)",
            self.sellout_s.map_or("-".into(), |s| format!("{s:.2}")),
        );
        row(
            "orders answered per second",
            format!("{:.0}", self.orders_per_s),
        );
        row(
            "API latency p50 / p99 (ms)",
            format!("{} / {}", self.api_latency_ms.p50, self.api_latency_ms.p99),
        );
        row(
            "time to decision p50/p99/max (ms)",
            format!(
                "{} / {} / {}",
                self.decision_latency_ms.p50,
                self.decision_latency_ms.p99,
                self.decision_latency_ms.max
            ),
        );
        row(
            "DynamoDB write requests",
            self.ddb_write_requests.to_string(),
        );
        row(
            "DynamoDB write units",
            format!("{:.0}", self.ddb_write_units),
        );
        row("stock-item writes", self.stock_item_writes.to_string());
        row(
            "write units per sold unit",
            format!("{:.2}", self.write_units_per_sold_unit),
        );
        row(
            "stock-item writes per sold unit",
            format!("{:.3}", self.stock_item_writes_per_sold_unit),
        );
        row(
            "invariant violations",
            self.invariant_violations.len().to_string(),
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(ms: impl IntoIterator<Item = f64>) -> Latencies {
        let mut l = Latencies::default();
        ms.into_iter().for_each(|m| l.record_ms(m));
        l
    }

    fn tail(l: &Latencies) -> [f64; 3] {
        let p = l.percentiles();
        [p.p50, p.p99, p.max]
    }

    #[test]
    fn percentiles_of_one_to_a_hundred_ms_are_the_nearest_ranks() {
        let l = of((1..=100).map(f64::from));
        assert_eq!(tail(&l), [50.0, 99.0, 100.0]);
        assert_eq!(
            l.percentiles(),
            Percentiles {
                p50: 50.0,
                p99: 99.0,
                max: 100.0
            }
        );
    }

    #[test]
    fn one_slow_sample_in_a_hundred_sets_the_max_but_not_the_p99() {
        let l = of((0..99).map(|_| 20.0).chain([4_000.0]));
        assert_eq!(tail(&l), [20.0, 20.0, 4_000.0]);
    }

    #[test]
    fn two_slow_samples_in_a_hundred_set_the_p99() {
        let l = of((0..98).map(|_| 20.0).chain([3_000.0, 4_000.0]));
        assert_eq!(tail(&l), [20.0, 3_000.0, 4_000.0]);
    }

    #[test]
    fn values_keep_three_significant_digits() {
        let l = of([974.0, 1802.0, 40.13, 0.5]);
        assert_eq!(tail(&l), [40.1, 1_800.0, 1_800.0]);
        assert_eq!(l.quantile_ms(0.75), 974.0);
        assert_eq!(l.quantile_ms(0.0), 0.5);
    }

    #[test]
    fn no_samples_report_zeros() {
        assert_eq!(Latencies::default().percentiles(), Percentiles::default());
        assert!(Latencies::default().bins(10.0).is_empty());
    }

    #[test]
    fn bins_count_every_sample_once() {
        let l = of([1.0, 2.0, 15.0, 29.0, 31.0]);
        let bins = l.bins(10.0);
        assert_eq!(bins.iter().map(|b| b.1).sum::<u64>(), 5);
        assert_eq!(bins[0], (0.0, 2));
        assert_eq!(bins[1].1, 1);
    }
}
