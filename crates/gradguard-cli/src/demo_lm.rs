//! The demo's transformer block: the lab's language model under AdamW over a rate grid, plain,
//! with a global clip and with the default guard — where models are trained today, and the
//! sentence the three curves support.

use gradguard_lab::sweep::RateCurve;
use gradguard_lab::tasks::Task;
use gradguard_lab::{Remedy, RunConfig};
use gradguard_report::{RemedyList, RunSummary};

/// The task's name in run summaries.
pub const LM_TASK: &str = "lm";

/// The rates of the block: from the task's best rate (3e-3 on the lab's text) to 33× it.
const RATES: [f64; 4] = [3e-3, 1e-2, 3e-2, 1e-1];

/// The three methods, one line each in the picture.
const METHODS: [&str; 3] = ["none", "clip-global", "guard"];

/// The runs of the block: every method at every rate, 150 steps (a few for `quick`).
pub fn lm_runs(quick: bool) -> Vec<RunConfig> {
    let mut base = RunConfig::for_task(Task::Lm);
    base.steps = if quick { 8 } else { 150 };
    if quick {
        base.seq_len = 16;
        base.batch = 4;
    }
    base.set_warmup(None);
    let mut runs = Vec::new();
    for lr in RATES {
        for method in METHODS {
            runs.push(RunConfig {
                lr,
                remedies: Remedy::parse_list(method).expect("the demo's methods parse"),
                ..base.clone()
            });
        }
    }
    runs
}

/// The runs of the block among `summaries`.
pub fn of_block<'a>(summaries: &[&'a RunSummary]) -> Vec<&'a RunSummary> {
    summaries
        .iter()
        .copied()
        .filter(|s| s.task == LM_TASK)
        .collect()
}

/// What the block showed, from its rate curves: where the guard and plain AdamW end at about ten
/// times the best plain rate, against the best-tuned plain run, and each method's LR
/// sensitivity. Empty without a plain and a guarded curve.
pub fn lm_claims(curves: &[RateCurve]) -> Vec<String> {
    // A method's curve: the same remedies as the method, whatever their settings.
    let curve = |method: &str| {
        let method: RemedyList = method.parse().expect("the demo's methods parse");
        curves
            .iter()
            .find(|c| c.task == LM_TASK && c.remedy.same_remedies(&method))
    };
    let (Some(plain), Some(guard)) = (curve("none"), curve("guard")) else {
        return Vec::new();
    };
    let best = plain.best_lr;
    // The largest rate of the grid up to ten times the best plain rate.
    let Some(far) = plain
        .lrs
        .iter()
        .rposition(|&lr| lr <= 10.0 * best * 1.001 && lr > best)
    else {
        return vec![format!(
            "lm: plain AdamW was best at the grid's largest rate ({best}); nothing above it to compare."
        )];
    };
    let above = |c: &RateCurve| 100.0 * (c.losses[far] / plain.best_loss - 1.0);
    let times = plain.lrs[far] / best;
    let mut out = vec![format!(
        "lm (a transformer under AdamW): at {times:.0}× the best plain rate ({} instead of {best}) the default guard ends {:+.1}% from the best-tuned plain run ({:.3}); plain AdamW ends {:+.1}%{}.",
        plain.lrs[far],
        above(guard),
        plain.best_loss,
        above(plain),
        curve("clip-global").map_or(String::new(), |c| format!(
            " and AdamW with a global clip {:+.1}%",
            above(c)
        )),
    )];
    let sensitivities: Vec<String> = [("default guard", guard), ("plain AdamW", plain)]
        .into_iter()
        .chain(curve("clip-global").map(|c| ("global clip", c)))
        .map(|(name, c)| format!("{name} {:.3}", c.sensitivity))
        .collect();
    out.push(format!(
        "lm: LR sensitivity over rates {}–{} (Wortsman et al. 2023; 0 = the rate does not matter): {}.",
        plain.lrs[0],
        plain.lrs[plain.lrs.len() - 1],
        sensitivities.join(", ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(remedy: &str, losses: [f64; 4]) -> RateCurve {
        RateCurve {
            task: LM_TASK.into(),
            remedy: remedy.parse().unwrap(),
            config: "{}".into(),
            lrs: RATES.to_vec(),
            losses: losses.to_vec(),
            failed: vec![0; 4],
            best_loss: losses.iter().copied().fold(f64::INFINITY, f64::min),
            best_lr: RATES[losses.iter().position(|&l| l == 2.0).unwrap_or(0)],
            sensitivity: 0.1,
            seeds: 1,
        }
    }

    #[test]
    fn the_claim_compares_ten_times_the_best_rate_with_the_best_run() {
        let curves = [
            curve("none", [2.0, 2.1, 2.2, 2.5]),
            curve("clip-global=1", [2.0, 2.1, 2.1, 2.4]),
            curve("guard", [2.0, 2.05, 2.02, 2.04]),
        ];
        let claims = lm_claims(&curves);
        // Best plain rate 3e-3; ten times it is 3e-2: the guard +1.0%, plain +10.0%, clip +5.0%.
        assert!(claims[0].contains("at 10×"), "{claims:?}");
        assert!(claims[0].contains("+1.0%"), "{claims:?}");
        assert!(claims[0].contains("plain AdamW ends +10.0%"), "{claims:?}");
        assert!(claims[0].contains("global clip +5.0%"), "{claims:?}");
        assert!(claims[1].contains("LR sensitivity"));
        assert!(lm_claims(&curves[..1]).is_empty());
    }
}
