//! Heatmaps: a grid of values on a log scale, drawn as one embedded PNG inside an SVG.

use std::fmt::Write;

use super::svg::{escape, label};

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
    fn viridis_ends() {
        assert_eq!(viridis(0.0), "#440154");
        assert_eq!(viridis(1.0), "#fde725");
    }
}
