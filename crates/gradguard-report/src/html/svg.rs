//! Hand-written SVG charts: line charts on a linear or log axis, and heatmaps. Inline in the
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

fn label(v: f64) -> String {
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
            (y0.ceil() as i64..=y1.floor() as i64)
                .map(|e| e as f64)
                .collect()
        } else {
            nice_ticks(y0, y1, 5)
        };
        let step = (yticks.len() / 6).max(1);
        for t in yticks.iter().step_by(step) {
            let y = sy(*t);
            let text = if self.log_y {
                format!("1e{t}")
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

/// A heatmap of `log10` values: `rows × columns`, `None` for a non-finite value.
#[derive(Debug, Clone)]
pub struct Heatmap {
    /// The title.
    pub title: String,
    /// Row labels, top to bottom.
    pub rows: Vec<String>,
    /// The x value of each column.
    pub columns: Vec<f64>,
    /// `cells[row][column]`: the value, `None` when not finite, NaN when absent, −∞ for an
    /// exact zero (drawn in the lowest color).
    pub cells: Vec<Vec<Option<f64>>>,
    /// The x axis label.
    pub x_label: String,
}

/// An RGBA PNG, base64-encoded.
fn png_base64(width: u32, height: u32, rgba: &[u8]) -> String {
    use base64::Engine;
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width.max(1), height.max(1));
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let written = encoder
        .write_header()
        .and_then(|mut w| w.write_image_data(rgba));
    debug_assert!(
        written.is_ok(),
        "an in-memory PNG of the right size encodes"
    );
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn rgb(hex: String) -> [u8; 4] {
    let h = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
    [h(1), h(3), h(5), 0xff]
}

/// Viridis, sampled at five points and interpolated.
fn viridis(t: f64) -> String {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = t.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

impl Heatmap {
    /// The heatmap as an `<svg>` element, with a color bar in powers of ten.
    pub fn render(&self) -> String {
        let label_w = 150.0;
        let (cols, rows) = (self.columns.len().max(1), self.rows.len().max(1));
        let cell_w = (460.0 / cols as f64).max(0.5);
        let cell_h = (220.0 / rows as f64).clamp(2.0, 16.0);
        let (pw, ph) = (cell_w * cols as f64, cell_h * rows as f64);
        let (top, w, h) = (26.0, label_w + pw + 90.0, 26.0 + ph + 40.0);
        let finite = self
            .cells
            .iter()
            .flatten()
            .filter_map(|c| *c)
            .filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let (lo, hi) = if lo.is_finite() {
            (lo, hi.max(lo + 1e-9))
        } else {
            (0.0, 1.0)
        };
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" role="img"><title>{t}</title><text x="4" y="16" class="title">{t}</text>"#,
            t = escape(&self.title)
        );
        let every = (rows as f64 * 11.0 / ph).ceil().max(1.0) as usize;
        for (r, name) in self.rows.iter().enumerate() {
            if r % every == 0 {
                let _ = write!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
                    label_w - 4.0,
                    top + r as f64 * cell_h + cell_h / 2.0 + 3.5,
                    escape(name)
                );
            }
        }
        // The cells as one embedded PNG, one pixel per cell, scaled without smoothing: a few
        // kilobytes per map where an SVG rectangle per cell would take megabytes.
        let mut pixels = Vec::with_capacity(rows * cols * 4);
        for r in 0..rows {
            for c in 0..cols {
                let v = self.cells.get(r).and_then(|row| row.get(c)).copied();
                let rgba = match v {
                    Some(Some(v)) if v.is_nan() => [0, 0, 0, 0],
                    Some(Some(v)) => rgb(viridis(((v - lo) / (hi - lo)).max(0.0))),
                    Some(None) => [0xe0, 0x00, 0x7a, 0xff],
                    None => [0, 0, 0, 0],
                };
                pixels.extend_from_slice(&rgba);
            }
        }
        let _ = write!(
            out,
            r#"<image x="{label_w}" y="{top}" width="{pw:.1}" height="{ph:.1}" preserveAspectRatio="none" style="image-rendering:pixelated" href="data:image/png;base64,{}"/>"#,
            png_base64(cols as u32, rows as u32, &pixels)
        );
        let first = self.columns.first().copied().unwrap_or(0.0);
        let last = self.columns.last().copied().unwrap_or(0.0);
        let _ = write!(
            out,
            r#"<text x="{label_w}" y="{:.1}" class="tick">{}</text><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text><text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"#,
            top + ph + 13.0,
            label(first),
            label_w + pw,
            top + ph + 13.0,
            label(last),
            label_w + pw / 2.0,
            top + ph + 30.0,
            escape(&self.x_label)
        );
        // Color bar.
        let bx = label_w + pw + 14.0;
        for i in 0..20 {
            let t = 1.0 - i as f64 / 19.0;
            let _ = write!(
                out,
                r#"<rect x="{bx:.1}" y="{:.1}" width="12" height="{:.2}" fill="{}"/>"#,
                top + i as f64 * ph / 20.0,
                ph / 20.0 + 0.2,
                viridis(t)
            );
        }
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" class="tick">1e{:.1}</text><text x="{:.1}" y="{:.1}" class="tick">1e{:.1}</text><rect x="{bx:.1}" y="{:.1}" width="12" height="8" fill="#e0007a"/><text x="{:.1}" y="{:.1}" class="tick">NaN/inf</text></svg>"##,
            bx + 15.0,
            top + 8.0,
            hi,
            bx + 15.0,
            top + ph,
            lo,
            top + ph + 8.0,
            bx + 15.0,
            top + ph + 16.0
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn viridis_ends() {
        assert_eq!(viridis(0.0), "#440154");
        assert_eq!(viridis(1.0), "#fde725");
    }
}

/// A grid of colored cells with a short text each: a phase diagram.
#[derive(Debug, Clone, Default)]
pub struct CategoryGrid {
    /// The title.
    pub title: String,
    /// The x axis label (under the columns).
    pub x_label: String,
    /// The y axis label (beside the rows).
    pub y_label: String,
    /// Column labels, left to right.
    pub columns: Vec<String>,
    /// Row labels, top to bottom.
    pub rows: Vec<String>,
    /// `cells[row][column]`: (fill color, text, hover text).
    pub cells: Vec<Vec<(String, String, String)>>,
    /// (color, meaning) pairs under the grid.
    pub legend: Vec<(String, String)>,
}

impl CategoryGrid {
    /// The grid as an `<svg>` element.
    pub fn render(&self) -> String {
        let (cell_w, cell_h, left, top) = (70.0, 22.0, 90.0, 30.0);
        let (cols, rows) = (self.columns.len(), self.rows.len());
        let (w, h) = (
            left + cell_w * cols as f64 + 20.0,
            top + cell_h * rows as f64 + 64.0,
        );
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"><title>{t}</title><text x="4" y="16" class="title">{t}</text>"#,
            t = escape(&self.title)
        );
        for (r, name) in self.rows.iter().enumerate() {
            let y = top + r as f64 * cell_h;
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
                left - 6.0,
                y + cell_h / 2.0 + 3.5,
                escape(name)
            );
            for (c, (fill, text, title)) in self.cells[r].iter().enumerate() {
                let x = left + c as f64 * cell_w;
                let _ = write!(
                    out,
                    r#"<g><rect x="{x:.1}" y="{y:.1}" width="{cell_w}" height="{cell_h}" fill="{fill}" stroke="white"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text><title>{}</title></g>"#,
                    x + cell_w / 2.0,
                    y + cell_h / 2.0 + 3.5,
                    escape(text),
                    escape(title)
                );
            }
        }
        let base = top + rows as f64 * cell_h;
        for (c, name) in self.columns.iter().enumerate() {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
                left + c as f64 * cell_w + cell_w / 2.0,
                base + 13.0,
                escape(name)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text><text transform="translate(12 {:.1}) rotate(-90)" class="axis" text-anchor="middle">{}</text>"#,
            left + cell_w * cols as f64 / 2.0,
            base + 28.0,
            escape(&self.x_label),
            top + rows as f64 * cell_h / 2.0,
            escape(&self.y_label)
        );
        let mut x = left;
        for (color, meaning) in &self.legend {
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
                base + 40.0,
                x + 16.0,
                base + 50.0,
                escape(meaning)
            );
            x += 30.0 + 7.0 * meaning.chars().count() as f64;
        }
        out.push_str("</svg>");
        out
    }
}
