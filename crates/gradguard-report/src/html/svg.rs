//! Hand-written SVG line charts on a linear or log axis, with markers and legends. Inline in the
//! report, so it opens offline with no script and no download.

use std::fmt::Write;

/// Ten distinguishable colors (Tableau 10).
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#59a14f", "#f28e2b", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
    "#bab0ac", "#e15759",
];
/// The color of the unremedied baseline.
pub const BASELINE: &str = "#d62728";

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart: `(x, y)` points, `None` where the value was not finite.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend text.
    pub label: String,
    /// Stroke color.
    pub color: String,
    /// Points in x order.
    pub points: Vec<(f64, Option<f64>)>,
    /// Drawn dashed (thresholds).
    pub dashed: bool,
    /// Stroke width.
    pub width: f64,
}

/// A marker at a point: spikes, skips, the first non-finite value.
#[derive(Debug, Clone)]
pub struct Marker {
    /// Where, in data x.
    pub x: f64,
    /// Where, in data y (`None`: at the top edge — a non-finite value).
    pub y: Option<f64>,
    /// Fill color.
    pub color: String,
    /// Hover text.
    pub title: String,
}

/// A line chart.
#[derive(Debug, Clone, Default)]
pub struct LineChart {
    /// The title above the plot.
    pub title: String,
    /// The x axis label.
    pub x_label: String,
    /// The y axis label.
    pub y_label: String,
    /// Log-scale y axis (non-positive values are dropped).
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
    /// The markers.
    pub markers: Vec<Marker>,
    /// Width and height in pixels.
    pub size: (f64, f64),
    /// Values above this are drawn at the top edge (keeps a blow-up from flattening the rest).
    pub y_max: Option<f64>,
}

const MARGIN: (f64, f64, f64, f64) = (58.0, 14.0, 30.0, 40.0); // left, right, top, bottom

fn nice_ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    if !(hi > lo) {
        return vec![lo];
    }
    let raw = (hi - lo) / count as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut ticks = Vec::new();
    while t <= hi + step * 1e-9 {
        ticks.push(t);
        t += step;
    }
    ticks
}

/// Ticks of a log axis spanning `lo..hi` in log10 units: the powers of ten inside, or — when
/// fewer than two fall inside (a range within a decade) — 1, 2 and 5 times them.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades: Vec<f64> = (lo.ceil() as i64..=hi.floor() as i64)
        .map(|e| e as f64)
        .collect();
    if decades.len() >= 2 {
        return decades;
    }
    (lo.floor() as i64..=hi.ceil() as i64)
        .flat_map(|e| [1.0f64, 2.0, 5.0].map(|m| m.log10() + e as f64))
        .filter(|t| (lo..=hi).contains(t))
        .collect()
}

pub(super) fn label(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e4).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

impl LineChart {
    fn transform(&self, y: f64) -> Option<f64> {
        if self.log_y {
            (y > 0.0 && y.is_finite()).then(|| y.log10())
        } else {
            y.is_finite().then_some(y)
        }
    }

    /// The chart as an `<svg>` element.
    pub fn render(&self) -> String {
        let (w, h) = if self.size.0 > 0.0 {
            self.size
        } else {
            (640.0, 260.0)
        };
        let (ml, mr, mt, mb) = MARGIN;
        let (pw, ph) = (w - ml - mr, h - mt - mb);
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0));
        let (mut x0, mut x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let ys = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|p| p.1))
            .chain(self.markers.iter().filter_map(|m| m.y))
            .filter_map(|y| self.transform(y));
        let (mut y0, mut y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        if let Some(cap) = self.y_max.and_then(|m| self.transform(m)) {
            y1 = y1.min(cap);
            y0 = y0.min(y1);
        }
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{t}</title><text x="{ml}" y="18" class="title">{t}</text>"#,
            t = escape(&self.title)
        );
        if !x0.is_finite() || !y0.is_finite() {
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" class="empty">no finite values</text></svg>"#,
                w / 2.0 - 50.0,
                h / 2.0
            );
            return out;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            (y0, y1) = (y0 - 0.5, y1 + 0.5);
        }
        let pad = (y1 - y0) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
        if !self.log_y && y0 > 0.0 && y0 < (y1 - y0) {
            y0 = 0.0;
        }
        x0 = x0.min(x1);
        let sx = |x: f64| ml + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| mt + (1.0 - (y - y0) / (y1 - y0)) * ph;
        // Grid and axes.
        let _ = write!(
            out,
            r#"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" class="plot"/>"#
        );
        let yticks: Vec<f64> = if self.log_y {
            log_ticks(y0, y1)
        } else {
            nice_ticks(y0, y1, 5)
        };
        let step = (yticks.len() / 6).max(1);
        for t in yticks.iter().step_by(step) {
            let y = sy(*t);
            let text = if self.log_y && t.fract() == 0.0 {
                format!("1e{t}")
            } else if self.log_y {
                label(10f64.powf(*t))
            } else {
                label(*t)
            };
            let _ = write!(
                out,
                r#"<line x1="{ml}" x2="{}" y1="{y:.1}" y2="{y:.1}" class="grid"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{text}</text>"#,
                ml + pw,
                ml - 4.0,
                y + 4.0
            );
        }
        for t in nice_ticks(x0, x1, 6) {
            let x = sx(t);
            let _ = write!(
                out,
                r#"<line x1="{x:.1}" x2="{x:.1}" y1="{mt}" y2="{}" class="grid"/><text x="{x:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
                mt + ph,
                mt + ph + 14.0,
                label(t)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text><text transform="translate(12 {}) rotate(-90)" class="axis" text-anchor="middle">{}</text>"#,
            ml + pw / 2.0,
            h - 6.0,
            escape(&self.x_label),
            mt + ph / 2.0,
            escape(&self.y_label)
        );
        // Lines: a gap wherever a value is missing or not finite.
        for s in &self.series {
            let mut d = String::new();
            let mut pen_down = false;
            for &(x, y) in &s.points {
                match y.and_then(|y| self.transform(y)) {
                    Some(y) => {
                        let _ = write!(
                            d,
                            "{}{:.1} {:.1}",
                            if pen_down { " L" } else { " M" },
                            sx(x),
                            sy(y.clamp(y0, y1))
                        );
                        pen_down = true;
                    }
                    None => pen_down = false,
                }
            }
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = write!(
                out,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="{}"{dash}><title>{}</title></path>"#,
                d.trim(),
                s.color,
                s.width,
                escape(&s.label)
            );
        }
        for m in &self.markers {
            let y = m.y.and_then(|y| self.transform(y)).map_or(mt + 4.0, sy);
            let shape = if m.y.is_none() {
                format!(
                    r#"<path d="M{x0:.1} {y0:.1} l8 8 m0 -8 l-8 8" stroke="{c}" stroke-width="2.5"/>"#,
                    x0 = sx(m.x) - 4.0,
                    y0 = y - 4.0,
                    c = m.color
                )
            } else {
                format!(
                    r#"<circle cx="{:.1}" cy="{y:.1}" r="3.5" fill="{}" stroke="white" stroke-width="0.8"/>"#,
                    sx(m.x),
                    m.color
                )
            };
            let _ = write!(out, "<g>{shape}<title>{}</title></g>", escape(&m.title));
        }
        out.push_str("</svg>");
        out
    }
}

/// Legend entries as HTML.
pub fn legend(series: &[Series]) -> String {
    let mut out = String::from(r#"<div class="legend">"#);
    for s in series {
        let style = if s.dashed {
            "border-top-style:dashed"
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<span><i style="border-color:{};{style}"></i>{}</span>"#,
            s.color,
            escape(&s.label)
        );
    }
    out.push_str("</div>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_axis_within_one_decade_still_has_ticks() {
        // 0.15 to 0.5: no power of ten inside, so 0.2 and 0.5.
        let ticks = log_ticks(0.15f64.log10(), 0.5f64.log10() + 1e-9);
        let values: Vec<f64> = ticks.iter().map(|t| 10f64.powf(*t)).collect();
        assert_eq!(values.len(), 2, "{values:?}");
        assert!((values[0] - 0.2).abs() < 1e-9 && (values[1] - 0.5).abs() < 1e-9);
        // Over decades: the powers of ten only.
        assert_eq!(log_ticks(-2.5, 1.2), vec![-2.0, -1.0, 0.0, 1.0]);
        let chart = LineChart {
            log_y: true,
            series: vec![Series {
                label: "a".into(),
                color: "#000".into(),
                points: vec![(0.0, Some(0.15)), (1.0, Some(0.5))],
                dashed: false,
                width: 1.0,
            }],
            ..Default::default()
        };
        assert!(chart.render().contains(">0.2<"));
    }

    #[test]
    fn a_gap_splits_the_line_and_log_axis_drops_non_positive_values() {
        let chart = LineChart {
            title: "t".into(),
            log_y: true,
            series: vec![Series {
                label: "a".into(),
                color: "#000".into(),
                points: vec![
                    (0.0, Some(1.0)),
                    (1.0, Some(10.0)),
                    (2.0, None),
                    (3.0, Some(0.0)),
                    (4.0, Some(100.0)),
                ],
                dashed: false,
                width: 1.0,
            }],
            ..Default::default()
        };
        let svg = chart.render();
        let path = svg.split("<path d=\"").nth(1).unwrap();
        let d = path.split('"').next().unwrap();
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
