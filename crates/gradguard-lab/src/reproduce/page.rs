//! The findings as one self-contained HTML page: a verdict table, then each paper's claim,
//! measurement, rule and figures (inline SVG, no script).

use std::fmt::Write;

use gradguard_report::html::{LineChart, Marker, PALETTE, STYLE, Series, escape, legend};

use super::{Figure, Finding};

fn chart(figure: &Figure) -> (LineChart, Vec<Series>) {
    let mut measured = 0;
    let series: Vec<Series> = figure
        .curves
        .iter()
        .map(|c| {
            let color = if c.reference {
                "#333".to_string()
            } else {
                measured += 1;
                PALETTE[(measured - 1) % PALETTE.len()].to_string()
            };
            Series {
                label: c.label.clone(),
                color,
                points: c.points.clone(),
                dashed: c.reference,
                width: if c.reference { 1.0 } else { 2.0 },
            }
        })
        .collect();
    // Every measured point as a dot (a grid of one rate or one depth has no line to draw), and
    // every point without a value as a cross on the top edge, saying why.
    let markers = figure
        .curves
        .iter()
        .zip(&series)
        .filter(|(c, _)| !c.reference)
        .flat_map(|(c, s)| {
            let dots = c.points.iter().filter_map(|&(x, y)| {
                y.map(|y| Marker {
                    x,
                    y: Some(y),
                    color: s.color.clone(),
                    title: format!("{}: {y:.4}", c.label),
                })
            });
            let crosses = c.marks.iter().map(|(x, why)| Marker {
                x: *x,
                y: None,
                color: s.color.clone(),
                title: format!("{}: {why}", c.label),
            });
            dots.chain(crosses).collect::<Vec<_>>()
        })
        .collect();
    let chart = LineChart {
        title: figure.title.clone(),
        markers,
        x_label: figure.x_label.clone(),
        y_label: figure.y_label.clone(),
        log_y: figure.log_y,
        series: series.clone(),
        size: (820.0, 300.0),
        ..Default::default()
    };
    (chart, series)
}

/// A finding's parts and their verdicts, e.g. " (attention-logit growth: yes; …)", or nothing.
fn parts(f: &Finding) -> String {
    if f.parts.is_empty() {
        return String::new();
    }
    let each: Vec<String> = f
        .parts
        .iter()
        .map(|p| {
            let (class, word) = if p.holds {
                ("good", "yes")
            } else {
                ("bad", "no")
            };
            format!("{}: <span class=\"{class}\">{word}</span>", escape(&p.name))
        })
        .collect();
    format!(" ({})", each.join("; "))
}

/// The page of `findings`.
pub fn html(findings: &[Finding]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gradguard \
         reproduce</title><style>{STYLE}</style></head><body><h1>gradguard reproduce</h1><p \
         class=\"note\">Results about exploding and vanishing gradients and transformer \
         instabilities, re-measured by the runs just made. A claim holds or not by the rule under it; nothing here is \
         copied from the papers but the claim.</p><table><caption>Verdicts</caption><tr>\
         <th>paper</th><th>holds</th><th>runs</th><th>budget</th><th>seconds</th></tr>"
    );
    for f in findings {
        let (class, word) = if f.holds {
            ("good", "yes")
        } else {
            ("bad", "no")
        };
        let _ = write!(
            out,
            "<tr><td>{}{}</td><td class=\"{class}\">{word}</td><td class=\"num\">{}</td><td>{}</td>\
             <td class=\"num\">{:.1}</td></tr>",
            escape(&f.name),
            parts(f),
            f.runs,
            f.budget.name(),
            f.wall_time_s
        );
    }
    out.push_str("</table>");
    for f in findings {
        let _ = write!(
            out,
            "<h2>{}</h2><p class=\"note\">{}</p><p><b>Paper claims:</b> {}</p><p><b>We \
             measured:</b> {}</p><p><b>Holds:</b> {} <span class=\"note\">({})</span></p>",
            escape(&f.name),
            escape(&f.paper),
            escape(&f.claim),
            escape(&f.measured),
            if f.holds { "yes" } else { "no" },
            escape(&f.rule)
        );
        if !f.parts.is_empty() {
            let _ = write!(out, "<p><b>Parts:</b>{}</p>", parts(f));
        }
        for figure in &f.figures {
            let (chart, series) = chart(figure);
            out.push_str(&chart.render());
            out.push_str(&legend(&series));
        }
    }
    out.push_str("</body></html>");
    out
}
