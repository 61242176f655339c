//! The demo's chart, an SVG in two panels: orders decided and stock left over the sale's
//! seconds, with the sell-out moment marked; below, how long orders waited for their decision.

use crate::report::Latencies;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const BLUE: RGBColor = RGBColor(31, 119, 180);
const RED: RGBColor = RGBColor(214, 39, 40);
const GREY: RGBColor = RGBColor(90, 90, 90);
const ORANGE: RGBColor = RGBColor(255, 127, 14);

/// What the chart shows.
pub struct Sale<'a> {
    pub title: &'a str,
    /// `(seconds since the sale opened, orders decided so far)`.
    pub decided: &'a [(f64, f64)],
    /// `(seconds since the sale opened, units available)`, as sampled during the sale.
    pub stock: &'a [(f64, f64)],
    pub sellout_s: Option<f64>,
    pub decision_latency: &'a Latencies,
}

/// The chart as SVG text (plotters' SVG backend writes text as `<text>`: no font files).
pub fn svg(sale: &Sale) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, 860)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(sale.title, ("sans-serif", 22))?;
        let (top, bottom) = root.split_vertically(440);
        timeline(&top, sale)?;
        histogram(&bottom, sale.decision_latency)?;
        root.present()?;
    }
    Ok(out)
}

/// One panel of the SVG.
type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn timeline(area: &Panel, sale: &Sale) -> anyhow::Result<()> {
    let t_max = sale
        .decided
        .iter()
        .chain(sale.stock)
        .map(|p| p.0)
        .chain(sale.sellout_s)
        .fold(0.1_f64, f64::max)
        * 1.03;
    let d_max = sale.decided.iter().map(|p| p.1).fold(1.0_f64, f64::max) * 1.05;
    let s_max = sale.stock.iter().map(|p| p.1).fold(1.0_f64, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption("Orders decided and stock left", ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..d_max)?
        .set_secondary_coord(0.0..t_max, 0.0..s_max);
    axes(
        &mut chart,
        "time since the sale opened (s)",
        1,
        "orders decided (count)",
    )?;
    chart
        .configure_secondary_axes()
        .y_desc("stock left (units)")
        .label_style(("sans-serif", 13).into_font().color(&RED))
        .axis_desc_style(("sans-serif", 14).into_font().color(&RED))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart
        .draw_series(line(sale.decided, BLUE))?
        .label("orders decided (left axis)")
        .legend(swatch(BLUE));
    chart
        .draw_secondary_series(line(sale.stock, RED))?
        .label("stock left (right axis)")
        .legend(swatch(RED));
    if let Some(s) = sale.sellout_s {
        mark(&mut chart, s, d_max, GREY, format!("sold out at {s:.2} s"))?;
        chart.draw_series([Text::new(
            format!("sold out {s:.2} s"),
            (s + t_max * 0.006, d_max * 0.97),
            ("sans-serif", 13).into_font().color(&GREY),
        )])?;
    }
    // Lower right is free in a sale: stock is down to zero there and the decided line high.
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn histogram(area: &Panel, latency: &Latencies) -> anyhow::Result<()> {
    let max = latency.max_ms().max(1.0);
    let width = nice_step(max / 40.0);
    let bins = latency.bins(width);
    let x_max = bins.last().map_or(max, |b| b.0 + width).max(max) * 1.02;
    // Headroom above the tallest bin for the legend.
    let y_max = bins.iter().map(|b| b.1).max().unwrap_or(1).max(1) as f64 * 1.3;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Time to decision ({} orders, bins of {width} ms)",
                latency.len()
            ),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .margin_right(82)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    axes(
        &mut chart,
        "time from order accepted to decided (ms)",
        0,
        "orders (count)",
    )?;
    chart
        .draw_series(bins.iter().map(|&(start, n)| {
            Rectangle::new(
                [(start, 0.0), (start + width, n as f64)],
                BLUE.mix(0.7).filled(),
            )
        }))?
        .label("orders per bin")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], BLUE.mix(0.7).filled()));
    for (name, q, color) in [("p50", 0.50, GREY), ("p99", 0.99, ORANGE)] {
        let v = latency.quantile_ms(q);
        mark(&mut chart, v, y_max, color, format!("{name} {v:.0} ms"))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// The primary axes, described, their x labels with `x_decimals` decimals and their y labels
/// whole, without grid lines.
fn axes<'a>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    x_desc: &str,
    x_decimals: usize,
    y_desc: &str,
) -> anyhow::Result<()> {
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.x_decimals$}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// `points` joined by a line of `color`.
fn line<DB: DrawingBackend>(points: &[(f64, f64)], color: RGBColor) -> LineSeries<DB, (f64, f64)> {
    LineSeries::new(points.iter().copied(), color.stroke_width(2))
}

/// The legend's sample of a [`line`] of `color`.
fn swatch(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
}

/// A dashed vertical line at `x`, from 0 to `top`, listed in the legend as `label`.
fn mark<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    x: f64,
    top: f64,
    color: RGBColor,
    label: String,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .draw_series(DashedLineSeries::new(
            [(x, 0.0), (x, top)],
            6,
            4,
            color.stroke_width(2),
        ))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

/// The series legend, boxed, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(GREY)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// A bin width of 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(sellout_s: Option<f64>) -> String {
        let mut latency = Latencies::default();
        for ms in [120.0, 250.0, 260.0, 900.0] {
            latency.record_ms(ms);
        }
        svg(&Sale {
            title: "DEMO-1: 10 buyers for 4 units",
            decided: &[(0.0, 0.0), (0.5, 2.0), (1.2, 10.0)],
            stock: &[(0.0, 4.0), (0.4, 1.0), (0.8, 0.0)],
            sellout_s,
            decision_latency: &latency,
        })
        .expect("the chart draws")
    }

    #[test]
    fn the_chart_has_titled_axes_with_units_and_a_legend() {
        let s = chart(Some(0.8));
        for text in [
            "DEMO-1: 10 buyers for 4 units",
            "time since the sale opened (s)",
            "orders decided (count)",
            "stock left (units)",
            "orders decided (left axis)",
            "stock left (right axis)",
        ] {
            assert!(s.contains(text), "missing {text:?}");
        }
        assert!(s.matches("<polyline").count() >= 2, "both series drawn");
    }

    #[test]
    fn the_sell_out_moment_is_marked_and_named_in_the_legend() {
        let s = chart(Some(0.8));
        assert!(s.contains("sold out at 0.80 s"));
        assert!(s.contains("sold out 0.80 s"));
        assert!(!chart(None).contains("sold out"));
    }

    #[test]
    fn the_second_panel_is_the_time_to_decision_histogram() {
        let s = chart(None);
        for text in [
            "Time to decision (4 orders, bins of 50 ms)",
            "time from order accepted to decided (ms)",
            "orders (count)",
            "orders per bin",
            "p50 250 ms",
            "p99 900 ms",
        ] {
            assert!(s.contains(text), "missing {text:?}");
        }
    }

    #[test]
    fn bin_widths_are_round_numbers() {
        assert_eq!(nice_step(22.5), 50.0);
        assert_eq!(nice_step(0.3), 1.0);
        assert_eq!(nice_step(180.0), 200.0);
        assert_eq!(nice_step(1000.0), 1000.0);
    }
}
