//! The bench's chart, drawn from `bench.json` itself: two bar charts side by side, each design's
//! time to sell out and its write units per sold unit. A design that never sold out gets the
//! time its last buyer was answered, in another colour, as the ratios compare it.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const GREY: RGBColor = RGBColor(90, 90, 90);

/// One bar: its height, and whether it is a fallback (drawn in the second colour).
type Bar = Option<(f64, bool)>;

/// The chart for a `bench.json` report, as SVG text (no font files needed).
pub fn svg(report: &Value) -> anyhow::Result<String> {
    let designs: Vec<(&str, &Value)> = crate::DESIGNS
        .iter()
        .filter_map(|d| report["designs"].get(*d).map(|r| (*d, r)))
        .collect();
    let sellout: Vec<Bar> = designs
        .iter()
        .map(|(_, r)| {
            r["sellout_s"]
                .as_f64()
                .map(|s| (s, false))
                .or_else(|| r["all_decided_s"].as_f64().map(|s| (s, true)))
        })
        .collect();
    let units: Vec<Bar> = designs
        .iter()
        .map(|(_, r)| r["write_units_per_sold_unit"].as_f64().map(|u| (u, false)))
        .collect();
    let names: Vec<&str> = designs.iter().map(|(d, _)| *d).collect();
    let sale = &report["sale"];
    let model = match report["capacity_model"].get("scale") {
        Some(scale) => format!(
            "capacity model {} WCU/s per item × {scale}",
            report["capacity_model"]["item_write_units_per_s"]
        ),
        None => "capacity model off".to_owned(),
    };
    let title = format!(
        "Flash sale: {} buyers for {} units, {} in flight; {model}",
        sale["buyers"], sale["stock"], sale["concurrency"]
    );

    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1100, 520)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&title, ("sans-serif", 20))?;
        let (left, right) = root.split_horizontally(550);
        bars(
            &left,
            "Time to sell out",
            "seconds from the sale's opening (s)",
            &names,
            &sellout,
            [
                ("sold out", BLUE),
                ("never sold out: last buyer answered", ORANGE),
            ],
            2,
        )?;
        bars(
            &right,
            "DynamoDB write units per sold unit",
            "write units per unit sold (WU)",
            &names,
            &units,
            [("write units per sold unit", GREEN), ("", GREEN)],
            2,
        )?;
        root.present()?;
    }
    Ok(out)
}

/// A bar per design with its value written above it; a design without a value gets "n/a".
fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    names: &[&str],
    values: &[Bar],
    legend: [(&str, RGBColor); 2],
    decimals: usize,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let n = names.len().max(1) as u32;
    let y_max = values
        .iter()
        .flatten()
        .map(|v| v.0)
        .fold(0.0_f64, f64::max)
        .max(f64::EPSILON)
        // Headroom above the tallest bar for its value and the legend.
        * 1.4;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(62)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE.mix(0.0))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .x_desc("design")
        .y_desc(y_desc)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => names
                .get(*i as usize)
                .copied()
                .unwrap_or_default()
                .to_owned(),
            SegmentValue::Last => String::new(),
        })
        .draw()?;
    for (k, (label, color)) in legend.into_iter().enumerate() {
        let fallback = k == 1;
        let drawn: Vec<_> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|v| v.1 == fallback).map(|v| (i as u32, v.0)))
            .collect();
        if drawn.is_empty() {
            continue;
        }
        chart
            .draw_series(drawn.iter().map(|&(i, v)| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), v),
                    ],
                    color.filled(),
                );
                bar.set_margin(0, 0, 18, 18);
                bar
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled()));
    }
    chart.draw_series(values.iter().enumerate().map(|(i, v)| {
        let text = v.map_or("n/a".to_owned(), |v| format!("{:.decimals$}", v.0));
        let y = v.map_or(0.0, |v| v.0);
        Text::new(
            text,
            (SegmentValue::CenterOf(i as u32), y + y_max * 0.015),
            ("sans-serif", 14)
                .into_font()
                .color(&GREY)
                .pos(Pos::new(HPos::Center, VPos::Bottom)),
        )
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(GREY)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A report shaped like `bench.json`: version_lock never sold out, per_order has no write
    /// units (nothing sold), lease_lock did not run.
    fn report() -> Value {
        let design = |sellout: Option<f64>, decided: f64, wu: Option<f64>| {
            json!({"sellout_s": sellout, "all_decided_s": decided, "orders_per_s": 900.0,
                   "oversold": 0, "stranded": 0, "write_units_per_sold_unit": wu,
                   "stock_item_writes_per_sold_unit": 1.0, "throttles": 0, "conflicts": 0})
        };
        json!({
            "designs": {
                "version_lock": design(None, 61.25, Some(4.5)),
                "per_order": design(Some(21.5), 23.0, None),
                "pipeline": design(Some(4.18), 6.0, Some(3.46)),
            },
            "capacity_model": {"item_write_units_per_s": 1000.0, "scale": 0.1},
            "sale": {"buyers": 20000, "stock": 2000, "concurrency": 64},
        })
    }

    /// The chart's texts, as a reader sees them.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                Some(
                    t.split_once('>')?
                        .1
                        .split_once("</text>")?
                        .0
                        .trim()
                        .to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn both_panels_have_titled_axes_with_units() {
        let s = svg(&report()).expect("draws");
        for text in [
            "Flash sale: 20000 buyers for 2000 units, 64 in flight; capacity model 1000.0 WCU/s per item × 0.1",
            "Time to sell out",
            "seconds from the sale&apos;s opening (s)",
            "DynamoDB write units per sold unit",
            "write units per unit sold (WU)",
            "design",
        ] {
            assert!(s.contains(text), "missing {text:?}");
        }
    }

    #[test]
    fn each_design_that_ran_has_a_labelled_bar_in_the_bench_order() {
        let t = texts(&svg(&report()).expect("draws"));
        let at = |x: &str| {
            t.iter()
                .position(|t| t == x)
                .unwrap_or_else(|| panic!("missing {x}"))
        };
        assert!(at("version_lock") < at("per_order") && at("per_order") < at("pipeline"));
        assert!(!t.iter().any(|t| t == "lease_lock"));
        for value in ["4.18", "21.50", "3.46", "4.50", "n/a"] {
            at(value);
        }
    }

    #[test]
    fn a_design_that_never_sold_out_shows_its_last_answer_in_the_legend_colour() {
        let t = texts(&svg(&report()).expect("draws"));
        for x in ["sold out", "never sold out: last buyer answered", "61.25"] {
            assert!(t.iter().any(|t| t == x), "missing {x:?} in {t:?}");
        }
    }
}
