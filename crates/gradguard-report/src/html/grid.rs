//! Category grids: colored cells with a short text each — the probe's phase diagram.

use std::fmt::Write;

use super::svg::escape;

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
