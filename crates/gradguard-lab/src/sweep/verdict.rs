//! The default guard against the best clipping rule, cell by cell: does `guard` alone protect a
//! run as well as a hand-picked clip?
//!
//! A cell is one configuration and seed (everything but the remedy). In each cell where the grid
//! ran `guard` and at least one of `clip-global` and `agc` at their defaults:
//! - **rescued**: the unprotected run (`none`) diverged or stopped and the guard's did not;
//! - **failed where a clip finished**: the guard's run diverged (non-finite, or its held-out loss
//!   ended 10% above its start) or stopped, while some clipping rule's run did not;
//! - **within target**: the guard's final held-out loss L_g ≤ 1.1 · L_best + 0.02, where L_best is
//!   the lower of `clip-global`'s and `agc`'s (a cell where neither finished counts as within).
//!
//! How much of the target the grid's own noise allows is measured the same way, where the grid
//! also runs *twins* of the two references — the same rule with its threshold a few percent off
//! (`agc=0.0101`, `clip-global=1.01`): a rule exactly as good as the cell's better reference, with
//! its own draw of the trajectory (at high rates a 1% change of a threshold decorrelates a run
//! within a few hundred steps: training is chaotic there). The twin of each cell's winner is held
//! to the guard's target; the cells where it is within are the ceiling of "as well as the best
//! clipping rule", cell by cell, on that grid.

use std::collections::BTreeMap;

use gradguard_report::{Remedy, RemedyList, RunSummary};
use serde::{Deserialize, Serialize};

use super::{SweepRun, cell};

/// The relative tolerance of the target: within 10% …
pub const RELATIVE_TOLERANCE: f64 = 0.10;
/// … plus this absolute slack (for losses near 0).
pub const ABSOLUTE_TOLERANCE: f64 = 0.02;

/// The references, at their defaults: (rule, threshold).
const REFERENCES: [(&str, f64); 2] = [("clip-global", 1.0), ("agc", 0.01)];
/// A twin of a reference: the same rule with a threshold within this fraction of the
/// reference's, and not equal to it.
pub const TWIN_TOLERANCE: f64 = 0.05;

/// The grid's own noise: the twin of each cell's better reference, held to the guard's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinVerdict {
    /// Cells where the better reference (or, where neither finished, either) had a twin.
    pub cells: usize,
    /// Of those, the twin's final loss is within 10% (+0.02) of the better reference's.
    pub within_target: usize,
}

/// The guard's worst cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorstCell {
    /// The run directory of the guard's run there.
    pub dir: String,
    /// The guard's final held-out loss (`None`: not finite).
    pub guard_loss: Option<f64>,
    /// The best of `clip-global` and `agc` there.
    pub best_clip_loss: Option<f64>,
    /// L_g − (1.1·L_best + 0.02): how far above the target (≤ 0 is within); `None` when the
    /// guard's run failed there.
    pub excess: Option<f64>,
}

/// What the grid says about the default guard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardVerdict {
    /// Cells compared.
    pub cells: usize,
    /// Cells where the unprotected run failed, and how many of them the guard rescued.
    pub unprotected_failed: usize,
    /// Of those, the guard's run did not fail.
    pub rescued: usize,
    /// Cells where the guard failed although a clipping rule finished finite.
    pub failed_where_clip_finished: usize,
    /// Cells where the guard's final loss is within 10% (+0.02) of the best clip's.
    pub within_target: usize,
    /// The cell where the guard is furthest above the target.
    pub worst: Option<WorstCell>,
    /// The same target met by the twin of each cell's better reference, where the grid ran
    /// twins: what the grid's noise leaves of "within target in every cell".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<TwinVerdict>,
}

/// The rule and threshold of a list that is one clipping rule with a threshold and no other
/// setting: `agc=0.0101` → (`agc`, 0.0101).
fn rule_and_threshold(remedies: &RemedyList) -> Option<(&'static str, f64)> {
    match &remedies[..] {
        [Remedy::Clip(rule)] if rule.keys().next().is_none() => Some((rule.name(), rule.value()?)),
        _ => None,
    }
}

/// The reference a list is (its index in [`REFERENCES`]), if it is one.
fn reference_of(remedies: &RemedyList) -> Option<usize> {
    let found = rule_and_threshold(remedies)?;
    REFERENCES.iter().position(|&reference| reference == found)
}

/// The reference a list is a twin of (its index in [`REFERENCES`]), if it is one.
fn twin_of(remedies: &RemedyList) -> Option<usize> {
    let (rule, value) = rule_and_threshold(remedies)?;
    REFERENCES
        .iter()
        .position(|&(r, v)| r == rule && value != v && ((value / v) - 1.0).abs() <= TWIN_TOLERANCE)
}

/// Whether a list is clipping rules only (any rule of the registry).
fn clips_only(remedies: &RemedyList) -> bool {
    !remedies.is_none() && remedies.iter().all(|r| matches!(r, Remedy::Clip(_)))
}

/// The target set by the better reference's final loss `best`: 1.1 · L_best + 0.02.
fn target(best: f64) -> f64 {
    best * (1.0 + RELATIVE_TOLERANCE) + ABSOLUTE_TOLERANCE
}

/// Whether `run` finished within the target set by `best`.
fn within(run: &RunSummary, best: f64) -> bool {
    !run.failed() && run.final_loss.is_some_and(|l| l <= target(best))
}

/// The verdict, or `None` when the grid has no cell with `guard` and `clip-global` or `agc`.
pub fn guard_verdict(runs: &[SweepRun]) -> Option<GuardVerdict> {
    let mut cells: BTreeMap<String, Vec<&SweepRun>> = BTreeMap::new();
    for r in runs {
        cells.entry(cell(&r.summary)).or_default().push(r);
    }
    let mut verdict = GuardVerdict {
        cells: 0,
        unprotected_failed: 0,
        rescued: 0,
        failed_where_clip_finished: 0,
        within_target: 0,
        worst: None,
        twin: None,
    };
    let mut twins = TwinVerdict {
        cells: 0,
        within_target: 0,
    };
    for remedies in cells.values() {
        let Some(guard) = remedies
            .iter()
            .find(|r| r.summary.remedy[..] == [Remedy::Guard])
        else {
            continue;
        };
        let reference = |i: usize| {
            remedies
                .iter()
                .find(|r| reference_of(&r.summary.remedy) == Some(i))
        };
        if (0..REFERENCES.len()).all(|i| reference(i).is_none()) {
            continue;
        }
        verdict.cells += 1;
        let g = &guard.summary;
        if remedies
            .iter()
            .find(|r| r.summary.unremedied())
            .is_some_and(|n| n.summary.failed())
        {
            verdict.unprotected_failed += 1;
            verdict.rescued += usize::from(!g.failed());
        }
        let any_clip_finished = remedies
            .iter()
            .filter(|r| clips_only(&r.summary.remedy))
            .any(|r| !r.summary.failed());
        if g.failed() && any_clip_finished {
            verdict.failed_where_clip_finished += 1;
        }
        // The better reference that finished: its index in REFERENCES and its final loss.
        let winner = (0..REFERENCES.len())
            .filter_map(|i| reference(i).map(|r| (i, &r.summary)))
            .filter(|(_, s)| !s.failed())
            .filter_map(|(i, s)| s.final_loss.map(|l| (i, l)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let best = winner.map(|(_, loss)| loss);
        let winner = winner.map(|(i, _)| i);
        // The twin of the reference that set `best` (any twin where no reference finished).
        let twin = remedies
            .iter()
            .find(|r| twin_of(&r.summary.remedy).is_some_and(|t| winner.is_none_or(|w| w == t)));
        if let Some(twin) = twin {
            twins.cells += 1;
            twins.within_target += usize::from(best.is_none_or(|b| within(&twin.summary, b)));
        }
        // Above the target by this much; `None`: the guard failed where a clip did not.
        let excess = match (best, g.final_loss.filter(|_| !g.failed())) {
            (None, _) => {
                // No reference finished: nothing to be within.
                verdict.within_target += 1;
                continue;
            }
            (Some(_), None) => None,
            (Some(b), Some(l)) => Some(l - target(b)),
        };
        if excess.is_some_and(|e| !(e > 0.0)) {
            verdict.within_target += 1;
        }
        let worse = |w: &WorstCell| match (excess, w.excess) {
            (None, _) => w.excess.is_some(),
            (Some(_), None) => false,
            (Some(a), Some(b)) => a > b,
        };
        if verdict.worst.as_ref().is_none_or(worse) {
            verdict.worst = Some(WorstCell {
                dir: guard.dir.clone(),
                guard_loss: g.final_loss,
                best_clip_loss: best,
                excess,
            });
        }
    }
    verdict.twin = (twins.cells > 0).then_some(twins);
    (verdict.cells > 0).then_some(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(remedy: &str, seed: u64, final_loss: Option<f64>) -> SweepRun {
        SweepRun {
            dir: format!("runs/{remedy}-s{seed}"),
            summary: RunSummary {
                task: "mlp".into(),
                remedy: remedy.parse().unwrap(),
                seed,
                steps: 10,
                final_loss,
                final_train_loss: final_loss,
                initial_loss: Some(2.0),
                trivial_loss: Some(2.3),
                accuracy: None,
                diverged: final_loss.is_none_or(|l| l >= 2.0),
                diverged_at: None,
                stopped: None,
                skipped_steps: 0,
                rollbacks: 0,
                bounded_steps: 0,
                update_family: None,
                non_finite_steps: 0,
                target_loss: 0.5,
                steps_to_target: None,
                lr: 0.1,
                largest_stable_lr: None,
                rate_choice: None,
                time_gradients: Vec::new(),
                logits: None,
                wall_time_s: 1.0,
                config: serde_json::json!({ "seed": seed, "remedies": [remedy] }),
            },
        }
    }

    #[test]
    fn cells_are_compared_seed_by_seed() {
        let runs = vec![
            // Seed 0: none explodes, the guard is within 10% + 0.02 of agc (1.0 → 1.12).
            run("none", 0, None),
            run("clip-global=1", 0, Some(1.2)),
            run("agc=0.01", 0, Some(1.0)),
            run("guard", 0, Some(1.11)),
            // Seed 1: the guard is finite but 50% worse than the clip.
            run("none", 1, Some(1.5)),
            run("clip-global=1", 1, Some(0.6)),
            run("guard", 1, Some(0.9)),
            // Seed 2: the guard explodes where the clip finished.
            run("none", 2, None),
            run("clip-global=1", 2, Some(0.7)),
            run("guard", 2, None),
        ];
        let v = guard_verdict(&runs).unwrap();
        assert_eq!(v.cells, 3);
        assert_eq!((v.unprotected_failed, v.rescued), (2, 1));
        assert_eq!(v.failed_where_clip_finished, 1);
        assert_eq!(v.within_target, 1);
        let worst = v.worst.unwrap();
        assert_eq!(worst.dir, "runs/guard-s2");
        assert_eq!(worst.excess, None);
        // The verdict survives a JSON round trip (sweep.json is read back by `report`).
        let text = serde_json::to_string(&guard_verdict(&runs)).unwrap();
        let back: Option<GuardVerdict> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.unwrap().cells, 3);
    }

    #[test]
    fn the_twin_of_each_cells_winner_is_held_to_the_same_target() {
        let mut runs = vec![
            // Seed 0: agc wins (1.0); its twin ends at 1.2, above 1.12; clip-global's twin is
            // not the winner's and does not count.
            run("clip-global=1", 0, Some(1.5)),
            run("clip-global=1.01", 0, Some(1.0)),
            run("agc=0.01", 0, Some(1.0)),
            run("agc=0.0101", 0, Some(1.2)),
            run("guard", 0, Some(1.0)),
            // Seed 1: clip-global wins (0.6); its twin is within (0.67 ≤ 0.68).
            run("clip-global=1", 1, Some(0.6)),
            run("clip-global=0.99", 1, Some(0.67)),
            run("agc=0.01", 1, Some(0.9)),
            run("guard", 1, Some(0.9)),
            // Seed 2: no twin of the winner; a rule 10% off is no twin.
            run("clip-global=1", 2, Some(0.6)),
            run("clip-global=1.1", 2, Some(0.6)),
            run("guard", 2, Some(0.6)),
        ];
        let v = guard_verdict(&runs).unwrap();
        assert_eq!(v.within_target, 2);
        assert_eq!(
            v.twin,
            Some(TwinVerdict {
                cells: 2,
                within_target: 1
            })
        );
        // A twin that fails is not within, whatever its loss.
        runs[6].summary.stopped = Some("too many bad steps".into());
        let twin = guard_verdict(&runs).unwrap().twin.unwrap();
        assert_eq!((twin.cells, twin.within_target), (2, 0));
        // Without twins there is no such line.
        runs.retain(|r| twin_of(&r.summary.remedy).is_none());
        assert_eq!(guard_verdict(&runs).unwrap().twin, None);
        let twin = |text: &str| twin_of(&text.parse().unwrap());
        assert_eq!(twin("agc=0.0101"), Some(1));
        assert_eq!(twin("agc=0.01"), None);
        assert_eq!(twin("clip-norm=1.01"), None);
        assert_eq!(twin("guard"), None);
        assert_eq!(twin("agc=0.0101:eps=0.01"), None);
        assert_eq!(reference_of(&"clip-global=1".parse().unwrap()), Some(0));
        assert_eq!(reference_of(&"clip-global".parse().unwrap()), Some(0));
    }

    #[test]
    fn no_verdict_without_both_sides() {
        assert!(guard_verdict(&[run("none", 0, None), run("guard", 0, Some(1.0))]).is_none());
    }
}
