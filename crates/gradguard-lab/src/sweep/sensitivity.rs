//! Learning-rate sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale
//! Transformer training instabilities", §3.1): how much a method's final loss depends on the rate.
//!
//! ```text
//! LR sensitivity = E_η [ min(L(η), L₀) ] − min_η L(η)
//! ```
//!
//! over the grid's rates η, with L(η) the final held-out loss at rate η (a diverged run counts as
//! L₀) and L₀ the loss at initialization. A method that trains alike at every rate scores 0; one
//! that diverges everywhere but at its best rate scores nearly L₀ − L_best. Computed per seed and
//! configuration, then averaged over seeds.

use std::collections::BTreeMap;

use gradguard_report::{RemedyList, RunSummary};
use serde::{Deserialize, Serialize};

use super::SweepRun;

/// One method's losses over the rate grid of one configuration, and its LR sensitivity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateCurve {
    /// The task.
    pub task: String,
    /// The method (its remedies).
    pub remedy: RemedyList,
    /// The configuration the curve belongs to, besides rate, remedy and seed (JSON).
    pub config: String,
    /// The rates, ascending.
    pub lrs: Vec<f64>,
    /// Mean over seeds of each rate's final held-out loss, min(L(η), L₀) (what the sensitivity
    /// averages).
    pub losses: Vec<f64>,
    /// Runs at each rate that diverged or were stopped.
    pub failed: Vec<usize>,
    /// The lowest mean loss of the curve.
    pub best_loss: f64,
    /// The rate of the lowest mean loss.
    pub best_lr: f64,
    /// The LR sensitivity, averaged over seeds.
    pub sensitivity: f64,
    /// Seeds averaged.
    pub seeds: usize,
}

/// LR sensitivity of one curve: `mean(min(L(η), L₀)) − min_η min(L(η), L₀)`; a non-finite or
/// missing loss counts as `L₀`.
pub fn lr_sensitivity(losses: &[Option<f64>], initial: f64) -> f64 {
    if losses.is_empty() {
        return 0.0;
    }
    let capped: Vec<f64> = losses
        .iter()
        .map(|l| match l {
            Some(v) if v.is_finite() => v.min(initial),
            _ => initial,
        })
        .collect();
    let best = capped.iter().copied().fold(f64::INFINITY, f64::min);
    capped.iter().sum::<f64>() / capped.len() as f64 - best
}

/// The summary's configuration without the keys named.
fn config_without(s: &RunSummary, keys: &[&str]) -> String {
    let mut c = s.config.clone();
    if let Some(obj) = c.as_object_mut() {
        for k in keys {
            obj.remove(*k);
        }
    }
    c.to_string()
}

/// The capped loss of a run: its final held-out loss, or its initial loss when it failed.
fn capped_loss(s: &RunSummary) -> Option<f64> {
    let initial = s.initial_loss?;
    let failed = s.diverged || s.stopped.is_some();
    Some(match s.final_loss {
        Some(l) if !failed && l.is_finite() => l.min(initial),
        _ => initial,
    })
}

/// Every method's rate curve, for the configurations of `runs` that were run at two or more
/// rates; empty when no grid has a rate axis.
pub fn rate_curves(runs: &[SweepRun]) -> Vec<RateCurve> {
    // (task, remedy, config) → seed → (rate, capped loss, failed) per run.
    type Key = (String, String, String);
    type Point = (f64, f64, bool);
    let mut groups: BTreeMap<Key, (RemedyList, BTreeMap<u64, Vec<Point>>)> = BTreeMap::new();
    for r in runs {
        let s = &r.summary;
        let Some(loss) = capped_loss(s) else {
            continue;
        };
        let Some(lr) = s.config.get("lr").and_then(|v| v.as_f64()) else {
            continue;
        };
        let key = (
            s.task.clone(),
            s.remedy.to_string(),
            config_without(s, &["lr", "remedies", "seed"]),
        );
        let failed = s.diverged || s.stopped.is_some();
        groups
            .entry(key)
            .or_insert_with(|| (s.remedy.clone(), BTreeMap::new()))
            .1
            .entry(s.seed)
            .or_default()
            .push((lr, loss, failed));
    }
    let mut curves = Vec::new();
    for ((task, _, config), (remedy, seeds)) in groups {
        let mut lrs: Vec<f64> = seeds.values().flat_map(|v| v.iter().map(|p| p.0)).collect();
        lrs.sort_by(f64::total_cmp);
        lrs.dedup();
        if lrs.len() < 2 {
            continue;
        }
        let mut sums = vec![0.0; lrs.len()];
        let mut counts = vec![0usize; lrs.len()];
        let mut failed = vec![0usize; lrs.len()];
        let mut sensitivity = 0.0;
        for points in seeds.values() {
            let capped: Vec<Option<f64>> = points.iter().map(|p| Some(p.1)).collect();
            sensitivity += lr_sensitivity(&capped, f64::INFINITY);
            for &(lr, loss, f) in points {
                let i = lrs.iter().position(|&x| x == lr).unwrap_or(0);
                sums[i] += loss;
                counts[i] += 1;
                failed[i] += usize::from(f);
            }
        }
        let losses: Vec<f64> = sums
            .iter()
            .zip(&counts)
            .map(|(s, &n)| s / n.max(1) as f64)
            .collect();
        let (best_i, best_loss) = losses
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f64::NAN));
        curves.push(RateCurve {
            task,
            remedy,
            config,
            best_lr: lrs[best_i],
            lrs,
            losses,
            failed,
            best_loss,
            sensitivity: sensitivity / seeds.len() as f64,
            seeds: seeds.len(),
        });
    }
    curves.sort_by(|a, b| (&a.task, &a.config).cmp(&(&b.task, &b.config)));
    curves
}

/// A short name for each curve's configuration: the settings that differ between the curves'
/// configurations, as `key=value` (empty when they all share one configuration).
pub fn config_labels(curves: &[RateCurve]) -> Vec<String> {
    let parsed: Vec<serde_json::Map<String, serde_json::Value>> = curves
        .iter()
        .map(|c| match serde_json::from_str(&c.config) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        })
        .collect();
    let mut keys: Vec<&String> = parsed.iter().flat_map(|m| m.keys()).collect();
    keys.sort();
    keys.dedup();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| parsed.iter().any(|m| m.get(*k) != parsed[0].get(*k)))
        .collect();
    parsed
        .iter()
        .map(|m| {
            let value = |k: &String| match m.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "–".into(),
            };
            differing
                .iter()
                .map(|k| format!("{k}={}", value(k)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(remedy: &str, config: &str) -> RateCurve {
        RateCurve {
            task: "mlp".into(),
            remedy: remedy.parse().unwrap(),
            config: config.into(),
            lrs: vec![0.1, 1.0],
            losses: vec![1.0, 2.0],
            failed: vec![0, 0],
            best_loss: 1.0,
            best_lr: 0.1,
            sensitivity: 0.5,
            seeds: 1,
        }
    }

    #[test]
    fn configurations_are_named_by_what_differs() {
        let curves = [
            curve("none", r#"{"depth":8,"activation":"relu","width":64}"#),
            curve("none", r#"{"depth":24,"activation":"relu","width":64}"#),
        ];
        assert_eq!(config_labels(&curves), ["depth=8", "depth=24"]);
        assert_eq!(config_labels(&curves[..1]), [""]);
    }

    #[test]
    fn a_known_table() {
        // L₀ = 4. Rates 1e-3…1e-1: 3.0, 2.0 (best), 2.5, diverged (NaN → 4), 5.0 (capped at 4).
        let losses = [Some(3.0), Some(2.0), Some(2.5), None, Some(5.0)];
        let s = lr_sensitivity(&losses, 4.0);
        assert!((s - ((3.0 + 2.0 + 2.5 + 4.0 + 4.0) / 5.0 - 2.0)).abs() < 1e-12);
        // Flat curve: 0. Diverging everywhere but one rate: nearly L₀ − best.
        assert_eq!(lr_sensitivity(&[Some(2.0); 4], 4.0), 0.0);
        assert!((lr_sensitivity(&[Some(2.0), None, None, None], 4.0) - 1.5).abs() < 1e-12);
        assert_eq!(lr_sensitivity(&[Some(f64::NAN)], 4.0), 0.0);
    }
}
