//! The step protocol owned by the core ([`Guard::guarded_step`]): what it asks an adapter to do,
//! in which order, and how it accounts for the update bound, reverts, snapshots and rollbacks.
//! The adapter here is a recorder: it logs each action and returns the update norms it is given.

mod common;

use common::batch;
use gradguard::detect::SpikeConfig;
use gradguard::rules::Chain;
use gradguard::{
    Decision, Gradients, Guard, GuardConfig, GuardError, HostGradients, OptimizerStep, SpikeAction,
    StepActions, StepReport, UnitLayout, UpdateBound, UpdateCheck, UpdateFamily, UpdateMeasure,
    UpdateNorms,
};

/// A model whose optimizer step produces the update norms it is given, logging every action.
struct Recorder {
    grads: HostGradients,
    norms: Vec<UpdateNorms>,
    snapshot: Option<u64>,
    log: Vec<String>,
}

impl Recorder {
    fn new(norms: Vec<UpdateNorms>) -> Self {
        Recorder {
            grads: batch(1.0),
            norms,
            snapshot: None,
            log: Vec::new(),
        }
    }

    /// The next step's gradients, scaled by `scale`; the log starts afresh.
    fn next(&mut self, scale: f32) -> &mut Self {
        self.grads = batch(scale);
        self.log.clear();
        self
    }
}

impl StepActions for Recorder {
    type Error = GuardError;
    const WEIGHT_LAYOUT: UnitLayout = UnitLayout::OutputFirst;

    fn gradients(&mut self) -> &mut dyn Gradients {
        &mut self.grads
    }

    fn has_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    fn step_optimizer(&mut self, step: OptimizerStep) -> Result<Vec<UpdateNorms>, GuardError> {
        self.log
            .push(format!("step at {} measuring {:?}", step.lr, step.measure));
        Ok(match step.measure {
            UpdateMeasure::Nothing => Vec::new(),
            _ => self.norms.clone(),
        })
    }

    fn undo_step(&mut self) -> Result<(), GuardError> {
        self.log.push("undo".into());
        Ok(())
    }

    fn scale_step(&mut self, check: &UpdateCheck) -> Result<(), GuardError> {
        self.log.push(format!("scale {:?}", check.scales));
        Ok(())
    }

    fn take_snapshot(&mut self, step: u64) -> Result<(), GuardError> {
        self.log.push(format!("snapshot {step}"));
        self.snapshot = Some(step);
        Ok(())
    }

    fn roll_back(&mut self) -> Result<(), GuardError> {
        self.log.push(format!("roll back to {:?}", self.snapshot));
        Ok(())
    }
}

fn guard(config: GuardConfig) -> Guard {
    Guard::new(config, Chain::default()).unwrap()
}

fn quiet() -> GuardConfig {
    GuardConfig {
        grad_spike: None,
        loss_spike: None,
        ..Default::default()
    }
}

/// A quiet guard whose update bound is told the optimizer is gradient descent.
fn told_gradient_descent() -> GuardConfig {
    GuardConfig {
        update_bound: Some(UpdateBound {
            family: Some(UpdateFamily::Proportional),
            ..UpdateBound::default()
        }),
        ..quiet()
    }
}

fn update(name: &str, weight: f64, update: f64) -> UpdateNorms {
    UpdateNorms {
        name: name.into(),
        len: 4,
        weight,
        update,
        units: Vec::new(),
        spread: None,
    }
}

/// One guarded step of a model whose optimizer's update has the given norms, at rate `lr`.
fn judge(g: &mut Guard, norms: &[UpdateNorms], lr: f64) -> Result<StepReport, GuardError> {
    g.guarded_step(&mut Recorder::new(norms.to_vec()), Some(1.0), lr)
}

/// [`judge`] of a step the bound must have checked: the bound's check.
fn checked(g: &mut Guard, norms: &[UpdateNorms], lr: f64) -> UpdateCheck {
    judge(g, norms, lr)
        .unwrap()
        .update
        .expect("the bound is on")
}

#[test]
fn a_healthy_step_is_stepped_at_the_guarded_rate_and_the_first_is_a_snapshot() {
    let mut g = guard(GuardConfig {
        update_bound: None,
        ..quiet()
    });
    let mut model = Recorder::new(Vec::new());
    let report = g.guarded_step(&mut model, Some(1.0), 0.1).unwrap();
    assert_eq!(report.decision, Decision::Apply);
    assert!(report.update.is_none());
    assert_eq!(model.log, ["step at 0.1 measuring Nothing", "snapshot 0"]);
    // The next applied steps take no snapshot until the cadence says so.
    g.guarded_step(model.next(1.0), Some(1.0), 0.1).unwrap();
    assert_eq!(model.log, ["step at 0.1 measuring Nothing"]);
}

#[test]
fn the_bound_measures_units_in_the_adapters_layout_unless_it_names_one() {
    let mut g = guard(quiet());
    let mut model = Recorder::new(vec![update("layers.0.weight", 1.0, 1e-3)]);
    g.guarded_step(&mut model, Some(1.0), 0.01).unwrap();
    assert_eq!(
        model.log[0], "step at 0.01 measuring Units(OutputFirst)",
        "{:?}",
        model.log
    );
    let mut g = guard(GuardConfig {
        update_bound: Some(UpdateBound {
            unit_layout: Some(UnitLayout::InputFirst),
            ..UpdateBound::default()
        }),
        ..quiet()
    });
    g.guarded_step(model.next(1.0), Some(1.0), 0.01).unwrap();
    assert_eq!(model.log[0], "step at 0.01 measuring Units(InputFirst)");
}

#[test]
fn an_oversized_update_is_scaled_and_a_non_finite_one_undone() {
    let mut g = guard(told_gradient_descent());
    let mut model = Recorder::new(vec![update("a", 1.0, 5.0), update("b", 1.0, 1e-4)]);
    let report = g.guarded_step(&mut model, Some(1.0), 0.1).unwrap();
    assert_eq!(report.decision, Decision::Apply);
    assert!(model.log[1].starts_with("scale ["), "{:?}", model.log);
    assert_eq!(model.log[2], "snapshot 0");
    assert!(
        report.reasons[0].starts_with("update bounded in"),
        "{report:?}"
    );
    assert_eq!(g.counters().bounded_steps, 1);

    model.norms = vec![update("a", 1.0, f64::INFINITY), update("b", 1.0, 1e-4)];
    let report = g.guarded_step(model.next(1.0), Some(1.0), 0.1).unwrap();
    assert_eq!(report.decision, Decision::Skip);
    assert!(!report.take_snapshot);
    assert_eq!(model.log.len(), 2);
    assert_eq!(model.log[1], "undo");
    assert!(
        report.reasons[0].contains("'a' is not finite: step undone"),
        "{report:?}"
    );
    assert_eq!(report.consecutive_bad, 1);
    let c = g.counters();
    assert_eq!((c.applied, c.skipped, c.consecutive_bad), (1, 1, 1));
}

#[test]
fn a_rollback_restores_the_snapshot_and_skips_the_next_batches() {
    let spike = SpikeConfig {
        window: 10,
        k: 4.0,
        min_history: 5,
        min_relative_std: 0.05,
    };
    let config = GuardConfig {
        grad_spike: Some(spike),
        on_spike: SpikeAction::Rollback { skip_batches: 2 },
        update_bound: None,
        ..quiet()
    };
    let calm = |g: &mut Guard, model: &mut Recorder| {
        for i in 0..8 {
            let scale = 1.0 + 0.01 * (i % 2) as f32;
            g.guarded_step(model.next(scale), Some(1.0), 0.1).unwrap();
        }
    };
    let mut g = guard(config.clone());
    let mut model = Recorder::new(Vec::new());
    calm(&mut g, &mut model);
    let report = g.guarded_step(model.next(1e4), Some(1.0), 0.1).unwrap();
    assert!(matches!(report.decision, Decision::Rollback { .. }));
    assert_eq!(model.log, ["roll back to Some(0)"]);
    assert_eq!(
        (0..3).map(|_| g.skip_batch()).collect::<Vec<_>>(),
        [true, true, false]
    );

    // A guard restored from a checkpoint names a snapshot this process never took: it skips.
    let mut resumed = guard(config);
    resumed.restore(&g.state()).unwrap();
    let mut fresh = Recorder::new(Vec::new());
    calm(&mut resumed, &mut fresh);
    fresh.snapshot = None;
    let before = resumed.counters().clone();
    let report = resumed
        .guarded_step(fresh.next(1e5), Some(1.0), 0.1)
        .unwrap();
    assert_eq!(report.decision, Decision::Skip, "{report:?}");
    assert!(fresh.log.is_empty(), "{:?}", fresh.log);
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.starts_with("no snapshot in this process")),
        "{report:?}"
    );
    assert!(!resumed.skip_batch());
    // Counted as a skip, not as a rollback that did not happen.
    let after = resumed.counters();
    assert_eq!(after.rolled_back, before.rolled_back);
    assert_eq!(after.skipped, before.skipped + 1);
}

#[test]
fn a_stop_after_the_optimizer_puts_the_model_back_first() {
    let mut g = guard(GuardConfig {
        max_consecutive_bad: 1,
        ..told_gradient_descent()
    });
    let mut model = Recorder::new(vec![update("layers.0.weight", 1.0, f64::NAN)]);
    let err = g.guarded_step(&mut model, Some(1.0), 0.1).unwrap_err();
    assert!(matches!(err, GuardError::TooManyBadSteps { count: 1, .. }));
    assert_eq!(model.log.last().map(String::as_str), Some("undo"));
}

/// An adapter whose optimizer state cannot be restored says so in the report.
struct Restarting(Recorder);

impl StepActions for Restarting {
    type Error = GuardError;
    const WEIGHT_LAYOUT: UnitLayout = UnitLayout::InputFirst;
    const RESTARTS_OPTIMIZER: bool = true;

    fn gradients(&mut self) -> &mut dyn Gradients {
        self.0.gradients()
    }
    fn has_snapshot(&self) -> bool {
        self.0.has_snapshot()
    }
    fn step_optimizer(&mut self, step: OptimizerStep) -> Result<Vec<UpdateNorms>, GuardError> {
        self.0.step_optimizer(step)
    }
    fn undo_step(&mut self) -> Result<(), GuardError> {
        self.0.undo_step()
    }
    fn scale_step(&mut self, check: &UpdateCheck) -> Result<(), GuardError> {
        self.0.scale_step(check)
    }
    fn take_snapshot(&mut self, step: u64) -> Result<(), GuardError> {
        self.0.take_snapshot(step)
    }
    fn roll_back(&mut self) -> Result<(), GuardError> {
        self.0.roll_back()
    }
}

#[test]
fn an_adapter_that_restarts_its_optimizer_is_reported() {
    let mut g = guard(told_gradient_descent());
    let mut model = Restarting(Recorder::new(vec![update("w", 1.0, f64::INFINITY)]));
    let report = g.guarded_step(&mut model, Some(1.0), 0.1).unwrap();
    assert!(
        report.reasons[0].ends_with("step undone, optimizer restarted"),
        "{report:?}"
    );
}

#[test]
fn an_oversized_update_backs_off_the_rate_and_the_bound_but_is_no_bad_step() {
    // A bound that shrinks with the multiplier (the default keeps τ fixed: min_ratio = τ).
    let bound = UpdateBound {
        max_ratio: 0.1,
        max_tensor_ratio: 0.1,
        min_ratio: 0.001,
        ..UpdateBound::default()
    };
    let config = GuardConfig {
        update_bound: Some(bound),
        ..quiet()
    };
    let mut g = guard(config);
    let report = judge(
        &mut g,
        &[update("a", 1.0, 5.0), update("b", 1.0, 0.001)],
        0.1,
    )
    .unwrap();
    assert_eq!(report.decision, Decision::Apply);
    let check = report.update.unwrap();
    assert!(check.global_scale < 1.0 && check.bounded == 2, "{check:?}");
    assert_eq!(g.lr_multiplier(), 0.5);
    assert_eq!(g.counters().consecutive_bad, 0);
    assert_eq!(g.counters().applied, 1);
    // The next step's bound is τ·m.
    let check = checked(&mut g, &[update("a", 1.0, 0.01)], 0.1);
    assert_eq!(check.max_ratio, 0.05);
    // The default's floor is τ itself: the global bound holds still while the rate backs off.
    let d = UpdateBound::default();
    assert_eq!(
        gradguard::check_update(&d, UpdateFamily::Proportional, 0.25, &[]).max_ratio,
        d.max_ratio
    );
    assert!(!check.changes_anything());
}

#[test]
fn non_finite_updates_are_bad_steps_and_stop_at_the_limit() {
    let mut g = guard(GuardConfig {
        max_consecutive_bad: 3,
        ..quiet()
    });
    for i in 0..3 {
        let result = judge(
            &mut g,
            &[update("layers.0.weight", 1.0, f64::INFINITY)],
            0.1,
        );
        if i < 2 {
            assert!(result.unwrap().update.unwrap().revert);
            assert_eq!(g.counters().consecutive_bad, i + 1);
            assert_eq!(g.counters().skipped, u64::from(i + 1));
            assert_eq!(g.counters().applied, 0);
        } else {
            let err = result.unwrap_err();
            assert!(matches!(err, GuardError::TooManyBadSteps { count: 3, .. }));
            assert!(err.to_string().contains("layers.0.weight"), "{err}");
        }
    }
}

#[test]
fn the_bound_can_be_switched_off() {
    let mut g = guard(GuardConfig {
        update_bound: None,
        ..quiet()
    });
    let report = judge(&mut g, &[update("a", 1.0, 1e9)], 0.1).unwrap();
    assert!(report.update.is_none());
    assert_eq!(g.lr_multiplier(), 1.0);
}

#[test]
fn the_guard_recognizes_the_optimizer_once_and_keeps_it_in_its_state() {
    let mut g = guard(quiet());
    // A first step that moves each of 4 values by the rate 0.005 (a ratio of 1%, inside every
    // bound): a normalizing optimizer's.
    let check = checked(&mut g, &[update("a", 1.0, 0.01)], 0.005);
    assert_eq!(check.family, UpdateFamily::Normalized);
    assert_eq!(g.counters().update_family, Some(UpdateFamily::Normalized));
    assert_eq!(g.counters().bounded_steps, 0);
    // Later steps do not re-recognize: a step far from the rate is still judged as Adam's, and
    // its oversized update (ratio 3 > τ) is counted as bounded.
    let check = checked(&mut g, &[update("a", 1.0, 3.0)], 0.005);
    assert_eq!(check.family, UpdateFamily::Normalized);
    assert_eq!(g.counters().bounded_steps, 1);
    let state = serde_json::to_string(&g.state()).unwrap();
    assert!(state.contains("normalized"), "{state}");
    // A bound that names the family skips the recognition.
    let mut g = guard(told_gradient_descent());
    let check = checked(&mut g, &[update("a", 1.0, 0.01)], 0.005);
    assert_eq!(check.family, UpdateFamily::Proportional);
    assert_eq!(g.counters().update_family, None);
}

#[test]
fn a_normalizing_optimizers_rate_follows_its_steps_and_warm_up_is_no_trouble() {
    let mut g = guard(quiet());
    let lr = 0.005;
    // One tensor of 4 values of norm 1 whose update's norm is `ratio`, at the schedule's `rate`.
    let judge = |g: &mut Guard, ratio: f64, rate: f64| checked(g, &[update("a", 1.0, ratio)], rate);
    // The first step (a normalizing optimizer's, ratio 1%) is recognized; nothing fires.
    judge(&mut g, 0.01, lr);
    assert_eq!(g.counters().update_family, Some(UpdateFamily::Normalized));
    // A warm-up: the rate doubles and the step (ratio 3%) is twice the bound: scaled, m kept.
    let check = judge(&mut g, 0.03, 2.0 * lr);
    assert!((check.global_scale - 0.5).abs() < 1e-12, "{check:?}");
    assert_eq!(g.lr_multiplier(), 1.0);
    // At a constant rate the same step lowers m by the factor it needed, 0.5.
    judge(&mut g, 0.03, 2.0 * lr);
    assert_eq!(g.lr_multiplier(), 0.5);
    // Steps within the bound raise it again by 5% each, up to 1.
    judge(&mut g, 0.001, 2.0 * lr);
    assert!((g.lr_multiplier() - 0.525).abs() < 1e-12);
    for _ in 0..20 {
        judge(&mut g, 0.001, 2.0 * lr);
    }
    assert_eq!(g.lr_multiplier(), 1.0);
    // Gradient descent keeps halving on an oversized step, warm-up or not.
    let mut g = guard(told_gradient_descent());
    judge(&mut g, 0.001, lr);
    judge(&mut g, 0.03, 2.0 * lr);
    assert_eq!(g.lr_multiplier(), 0.5);
}

#[test]
fn the_step_ahead_is_the_step_an_applied_decision_takes() {
    use gradguard::rules::{ClipByGlobalNorm, Rule, SkipIfNormAbove};
    use gradguard::{LossScaler, LossScalerConfig, NormType};
    let mut g = guard(quiet());
    // Before the optimizer is recognized: unit norms, its spread too.
    let ahead = g.step_ahead(0.01, UnitLayout::OutputFirst).unwrap();
    assert_eq!(ahead.measure, UpdateMeasure::Units(UnitLayout::OutputFirst));
    assert!(ahead.recognize);
    // Recognized as normalizing, then m halved by an oversized step at a constant rate.
    for ratio in [0.01, 0.03] {
        judge(&mut g, &[update("a", 1.0, ratio)], 0.005).unwrap();
    }
    assert_eq!(g.lr_multiplier(), 0.5);
    let ahead = g.step_ahead(0.005, UnitLayout::OutputFirst).unwrap();
    assert_eq!((ahead.lr, ahead.lr_multiplier), (0.0025, 0.5));
    assert_eq!(
        (ahead.measure, ahead.recognize),
        (UpdateMeasure::Tensors, false)
    );
    // The next applied step asks for exactly that step.
    let mut recorder = Recorder::new(vec![update("a", 1.0, 0.001)]);
    g.guarded_step(&mut recorder, Some(1.0), 0.005).unwrap();
    let asked = format!("step at {} measuring {:?}", ahead.lr, ahead.measure);
    assert_eq!(recorder.log[0], asked, "{:?}", recorder.log);
    // A skip rule leaves the gradients as they are; a clip or a loss scaler may rewrite them,
    // and without the bound there is nothing to measure.
    let with = |rule: Box<dyn Rule>| Guard::new(quiet(), Chain::new(vec![rule]).unwrap()).unwrap();
    let skip = with(Box::new(SkipIfNormAbove::new(10.0, NormType::L2).unwrap()));
    assert!(skip.step_ahead(0.01, UnitLayout::OutputFirst).is_some());
    let clip = with(Box::new(ClipByGlobalNorm::new(1.0).unwrap()));
    assert_eq!(clip.step_ahead(0.01, UnitLayout::OutputFirst), None);
    let scaler = LossScaler::new(LossScalerConfig::default()).unwrap();
    let scaled = guard(quiet()).with_loss_scaler(scaler);
    assert_eq!(scaled.step_ahead(0.01, UnitLayout::OutputFirst), None);
    let unbounded = guard(GuardConfig {
        update_bound: None,
        ..quiet()
    });
    assert_eq!(unbounded.step_ahead(0.01, UnitLayout::OutputFirst), None);
}
