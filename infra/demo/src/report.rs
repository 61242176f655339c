//! The demo's report: the table printed at the end, the JSON of the API contract, and an SVG
//! chart of orders decided and stock remaining over time.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: round(at(0.50)),
            p99: round(at(0.99)),
            max: round(at(1.0)),
        }
    }
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
            "time to decision p50 / p99 / max (ms)",
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

/// Two lines over time: orders decided (cumulative) and stock remaining, each on its own
/// scale (left and right axes).
pub fn svg(decided: &[(f64, f64)], stock: &[(f64, f64)], title: &str) -> String {
    let (w, h, pad) = (800.0, 400.0, 60.0);
    let t_max = decided
        .iter()
        .chain(stock)
        .map(|p| p.0)
        .fold(0.1_f64, f64::max);
    let d_max = decided.iter().map(|p| p.1).fold(1.0_f64, f64::max);
    let s_max = stock.iter().map(|p| p.1).fold(1.0_f64, f64::max);
    let x = |t: f64| pad + t / t_max * (w - 2.0 * pad);
    let y = |v: f64, max: f64| h - pad - v / max * (h - 2.0 * pad);
    let line = |pts: &[(f64, f64)], max: f64| {
        pts.iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v, max)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{cx}" y="24" text-anchor="middle" font-size="15">{title}</text>
<line x1="{pad}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{yb}" stroke="#1f77b4"/>
<line x1="{xr}" y1="{pad}" x2="{xr}" y2="{yb}" stroke="#d62728"/>
<text x="{cx}" y="{xl}" text-anchor="middle">seconds since the sale opened (0 to {t_max:.1})</text>
<text x="{pad}" y="{yt}" fill="#1f77b4">orders decided (max {d_max:.0})</text>
<text x="{xr}" y="{yt}" fill="#d62728" text-anchor="end">stock remaining (max {s_max:.0})</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{dl}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{sl}"/>
</svg>
"##,
        cx = w / 2.0,
        yb = h - pad,
        xr = w - pad,
        xl = h - pad + 35.0,
        yt = pad - 10.0,
        dl = line(decided, d_max),
        sl = line(stock, s_max),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_median_and_the_tail() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99), (51.0, 99.0));
        assert_eq!(Percentiles::of(vec![]).p99, 0.0);
    }

    #[test]
    fn the_chart_draws_both_series_inside_the_frame() {
        let s = svg(&[(0.0, 0.0), (1.0, 10.0)], &[(0.0, 5.0), (1.0, 0.0)], "t");
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("60.0,340.0") && s.contains("740.0,60.0"));
    }
}
