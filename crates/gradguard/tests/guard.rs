//! The guard's decisions, counters and errors, step by step.

mod common;

use common::{batch, grads};
use gradguard::detect::SpikeConfig;
use gradguard::rules::{
    Chain, ClipByGlobalNorm, ClipByValue, Rule, SkipIfNormAbove, ZClip, ZClipConfig, ZeroNonFinite,
};
use gradguard::{
    Decision, Gradients, Guard, GuardConfig, GuardError, HostGradients, LrBackoff, NonFinitePolicy,
    NormType, SpikeAction, UpdateBound,
};

fn poisoned(value: f32) -> HostGradients {
    grads(&[
        ("layers.0.weight", &[2, 2], vec![1.0, 2.0, 3.0, 4.0]),
        ("layers.1.weight", &[3], vec![1.0, value, value]),
    ])
}

fn guard(config: GuardConfig, rules: Vec<Box<dyn Rule>>) -> Guard {
    Guard::new(config, Chain::new(rules).unwrap()).unwrap()
}

fn quiet() -> GuardConfig {
    GuardConfig {
        grad_spike: None,
        loss_spike: None,
        ..Default::default()
    }
}

#[test]
fn nan_under_error_names_the_tensor_and_index() {
    let mut g = guard(
        GuardConfig {
            non_finite: NonFinitePolicy::Error,
            ..quiet()
        },
        vec![],
    );
    let err = g.step(&mut poisoned(f32::NAN), Some(1.0)).unwrap_err();
    match &err {
        GuardError::NonFiniteGradient {
            tensor,
            index,
            value,
            count,
            step,
        } => {
            assert_eq!(
                (tensor.as_str(), *index, value.as_str(), *count, *step),
                ("layers.1.weight", 1, "NaN", 2, 0)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("'layers.1.weight' flat index 1 is NaN")
    );
}

#[test]
fn non_finite_under_skip_leaves_gradients_and_skips() {
    // Without the update bound a non-finite skip also backs the rate off.
    let config = GuardConfig {
        update_bound: None,
        ..quiet()
    };
    let mut g = guard(config, vec![Box::new(ClipByGlobalNorm::new(1.0).unwrap())]);
    let mut grads = poisoned(f32::NEG_INFINITY);
    let before = grads.clone();
    let report = g.step(&mut grads, Some(1.0)).unwrap();
    assert_eq!(report.decision, Decision::Skip);
    assert!(report.reasons[0].contains("first -inf in 'layers.1.weight' at index 1"));
    assert!(report.rules.is_empty());
    assert_eq!(grads, before);
    assert_eq!(g.counters().skipped, 1);
    assert_eq!(g.counters().non_finite_steps, 1);
    assert_eq!(report.lr_multiplier, 0.5);
}

#[test]
fn non_finite_under_zero_repairs_then_clips() {
    let config = GuardConfig {
        non_finite: NonFinitePolicy::Zero,
        ..quiet()
    };
    let mut g = guard(config, vec![Box::new(ClipByGlobalNorm::new(1.0).unwrap())]);
    let mut grads = poisoned(f32::NAN);
    let report = g.step(&mut grads, Some(1.0)).unwrap();
    assert_eq!(report.decision, Decision::Apply);
    assert_eq!(grads.tensors()[1].values[1], 0.0);
    assert!(report.norm_before.is_nan());
    assert!((report.norm_after - 1.0).abs() < 1e-5);
    assert!((common::exact_l2(&grads) - 1.0).abs() < 1e-5);
}

#[test]
fn non_finite_under_apply_passes_through_without_rules() {
    let config = GuardConfig {
        non_finite: NonFinitePolicy::Apply,
        ..GuardConfig::default()
    };
    let mut g = guard(config, vec![Box::new(ClipByGlobalNorm::new(1.0).unwrap())]);
    let mut grads = poisoned(f32::INFINITY);
    let before = grads.clone();
    let report = g.step(&mut grads, Some(f64::NAN)).unwrap();
    assert_eq!(report.decision, Decision::Apply);
    assert!(
        report.rules.is_empty(),
        "no rule runs on a pass-through step"
    );
    assert_eq!(grads, before);
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.starts_with("applied: 2 non-finite"))
    );
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("applied: non-finite loss NaN"))
    );
    assert_eq!(g.counters().non_finite_steps, 1);
    assert_eq!(g.counters().skipped, 0);
    assert_eq!(report.lr_multiplier, 1.0);
    // A finite step afterwards is clipped as usual.
    let report = g.step(&mut batch(10.0), Some(1.0)).unwrap();
    assert_eq!(report.rules.len(), 1);
    assert!((report.norm_after - 1.0).abs() < 1e-5);
}

#[test]
fn non_finite_loss_is_skipped_or_an_error() {
    let mut g = guard(quiet(), vec![]);
    assert_eq!(
        g.step(&mut batch(1.0), Some(f64::NAN)).unwrap().decision,
        Decision::Skip
    );
    let mut strict = guard(
        GuardConfig {
            non_finite: NonFinitePolicy::Error,
            ..quiet()
        },
        vec![],
    );
    assert!(matches!(
        strict.step(&mut batch(1.0), Some(f64::INFINITY)),
        Err(GuardError::NonFiniteLoss { step: 0, .. })
    ));
}

fn spiky(on_spike: SpikeAction) -> Guard {
    guard(
        GuardConfig {
            grad_spike: Some(SpikeConfig {
                window: 10,
                k: 4.0,
                min_history: 5,
                min_relative_std: 0.05,
            }),
            loss_spike: None,
            on_spike,
            snapshot_every: 3,
            ..Default::default()
        },
        vec![],
    )
}

#[test]
fn a_gradient_spike_is_skipped_and_the_lr_backs_off_then_recovers() {
    let mut g = spiky(SpikeAction::Skip);
    for i in 0..8 {
        let r = g
            .step(&mut batch(1.0 + 0.01 * (i % 2) as f32), Some(1.0))
            .unwrap();
        assert_eq!(r.decision, Decision::Apply);
    }
    let r = g.step(&mut batch(1e3), Some(1.0)).unwrap();
    assert_eq!(r.decision, Decision::Skip);
    assert!(r.reasons[0].starts_with("gradient norm spike"));
    assert_eq!(r.lr_multiplier, 0.5);
    assert_eq!(g.counters().spikes, 1);
    // 50 calm steps (the default recover_after) bring the multiplier back to 1.
    for _ in 0..50 {
        g.step(&mut batch(1.0), Some(1.0)).unwrap();
    }
    assert_eq!(g.lr_multiplier(), 1.0);
}

#[test]
fn a_spike_under_rollback_names_the_last_snapshot() {
    let mut g = spiky(SpikeAction::Rollback { skip_batches: 7 });
    let mut snapshots = Vec::new();
    for i in 0..8 {
        let r = g.step(&mut batch(1.0), Some(1.0)).unwrap();
        if r.take_snapshot {
            snapshots.push(i);
        }
    }
    assert_eq!(snapshots, vec![0, 3, 6]);
    let r = g.step(&mut batch(1e4), Some(1.0)).unwrap();
    assert_eq!(
        r.decision,
        Decision::Rollback {
            to_step: 6,
            skip_batches: 7
        }
    );
    assert_eq!(g.counters().rolled_back, 1);
}

#[test]
fn a_spike_under_stop_is_a_typed_error() {
    let mut g = spiky(SpikeAction::Stop);
    for _ in 0..6 {
        g.step(&mut batch(1.0), Some(1.0)).unwrap();
    }
    let err = g.step(&mut batch(1e4), Some(1.0)).unwrap_err();
    assert!(
        matches!(err, GuardError::GradientSpike { step: 6, .. }),
        "{err:?}"
    );
}

#[test]
fn the_guard_gives_up_after_too_many_bad_steps() {
    let mut g = guard(
        GuardConfig {
            max_consecutive_bad: 3,
            ..quiet()
        },
        vec![],
    );
    g.step(&mut poisoned(f32::NAN), None).unwrap();
    g.step(&mut poisoned(f32::NAN), None).unwrap();
    let err = g.step(&mut poisoned(f32::NAN), None).unwrap_err();
    assert!(
        matches!(
            err,
            GuardError::TooManyBadSteps {
                step: 2,
                count: 3,
                ..
            }
        ),
        "{err:?}"
    );
    // A good step in between resets the count.
    let mut g = guard(
        GuardConfig {
            max_consecutive_bad: 2,
            ..quiet()
        },
        vec![],
    );
    for _ in 0..5 {
        g.step(&mut poisoned(f32::NAN), None).unwrap();
        g.step(&mut batch(1.0), None).unwrap();
    }
}

#[test]
fn lr_multiplier_never_drops_below_its_floor() {
    let mut g = guard(
        GuardConfig {
            max_consecutive_bad: 100,
            lr: LrBackoff {
                backoff: 0.1,
                min: 0.01,
                ..Default::default()
            },
            update_bound: None,
            ..quiet()
        },
        vec![],
    );
    for _ in 0..10 {
        g.step(&mut poisoned(f32::NAN), None).unwrap();
    }
    assert_eq!(g.lr_multiplier(), 0.01);
}

/// Regression test for the default guard's stall under frequent bad batches (issue "A guard that
/// needs no tuning"): with the update bound watching the rate, skipping a NaN batch does not back
/// the rate off, however often it happens; the skips are still counted and a run of them still
/// stops the guard.
#[test]
fn under_the_update_bound_nan_batches_are_skipped_without_slowing_the_rate() {
    let mut g = guard(quiet(), vec![]);
    for i in 0..200 {
        let r = if i % 25 == 24 {
            g.step(&mut poisoned(f32::NAN), Some(f64::NAN)).unwrap()
        } else {
            g.step(&mut batch(1.0), Some(1.0)).unwrap()
        };
        assert_eq!(r.lr_multiplier, 1.0, "step {i}: {r:?}");
    }
    assert_eq!(g.counters().skipped, 8);
    assert_eq!(g.counters().non_finite_steps, 8);
    let stopped = (0..30).find_map(|_| g.step(&mut poisoned(f32::NAN), None).err());
    assert!(
        matches!(stopped, Some(GuardError::TooManyBadSteps { .. })),
        "{stopped:?}"
    );
}

#[test]
fn a_skip_rule_skips_the_step_and_reports_why() {
    let mut g = guard(
        quiet(),
        vec![Box::new(SkipIfNormAbove::new(2.0, NormType::L2).unwrap())],
    );
    let mut big = batch(10.0);
    let before = big.clone();
    let r = g.step(&mut big, None).unwrap();
    assert_eq!(r.decision, Decision::Skip);
    assert!(r.reasons[0].starts_with("rule 'skip-above'"));
    assert_eq!(big, before);
    assert_eq!(
        g.step(&mut batch(1.0), None).unwrap().decision,
        Decision::Apply
    );
}

#[test]
fn report_carries_per_tensor_norms_before_and_after() {
    let mut g = guard(quiet(), vec![Box::new(ClipByValue::new(0.2).unwrap())]);
    let mut b = batch(1.0);
    let r = g.step(&mut b, Some(0.3)).unwrap();
    assert_eq!(r.tensors.len(), 2);
    assert_eq!(r.tensors[0].name, "layers.0.weight");
    assert_eq!(r.tensors[0].max_abs_before, 1.0);
    let after = b.stats();
    assert!((r.tensors[0].norm_after - after[0].l2()).abs() < 1e-12);
    assert!((r.norm_after - gradguard::combined(&after).l2()).abs() < 1e-12);
    assert_eq!(r.loss, Some(0.3));
}

#[test]
fn inconsistent_chains_are_rejected_loudly() {
    let zero_after_clip: Vec<Box<dyn Rule>> = vec![
        Box::new(ClipByGlobalNorm::new(1.0).unwrap()),
        Box::new(ZeroNonFinite),
    ];
    let err = Chain::new(zero_after_clip).unwrap_err().to_string();
    assert!(
        err.contains("'zero-non-finite' must come before 'clip-global'"),
        "{err}"
    );

    let two_zclips: Vec<Box<dyn Rule>> = vec![
        Box::new(ZClip::new(ZClipConfig::default()).unwrap()),
        Box::new(ZClip::new(ZClipConfig::default()).unwrap()),
    ];
    assert!(
        Chain::new(two_zclips)
            .unwrap_err()
            .to_string()
            .contains("'zclip' appears twice")
    );

    let dead_skip: Vec<Box<dyn Rule>> = vec![
        Box::new(ClipByGlobalNorm::new(1.0).unwrap()),
        Box::new(SkipIfNormAbove::new(5.0, NormType::L2).unwrap()),
    ];
    assert!(
        Chain::new(dead_skip)
            .unwrap_err()
            .to_string()
            .contains("can never fire")
    );

    let fine: Vec<Box<dyn Rule>> = vec![
        Box::new(ZeroNonFinite),
        Box::new(SkipIfNormAbove::new(100.0, NormType::L2).unwrap()),
        Box::new(ClipByGlobalNorm::new(1.0).unwrap()),
    ];
    assert!(Chain::new(fine).is_ok());
}

#[test]
fn bad_configuration_values_are_rejected() {
    assert!(ClipByGlobalNorm::new(-1.0).is_err());
    assert!(ClipByGlobalNorm::new(f64::NAN).is_err());
    assert!(ClipByValue::new(-0.5).is_err());
    assert!(gradguard::rules::AutoClip::new(101.0, 10).is_err());
    assert!(gradguard::rules::AutoClip::new(10.0, 0).is_err());
    assert!("0.5".parse::<NormType>().is_err());
    assert!("fro".parse::<NormType>().is_err());
    assert_eq!("INF".parse::<NormType>().unwrap(), NormType::Inf);
    let bad = GuardConfig {
        max_consecutive_bad: 0,
        ..Default::default()
    };
    assert!(Guard::new(bad, Chain::default()).is_err());
}

#[test]
fn max_norm_inf_never_produces_nan() {
    let mut rule = ClipByGlobalNorm::new(f64::INFINITY).unwrap();
    let g = batch(3e38);
    let (outcome, clipped) = common::apply(&mut rule, &g);
    assert_eq!(clipped, g);
    assert_eq!(outcome.scale, Some(1.0));
}

#[test]
fn bad_update_bounds_are_refused() {
    let config = GuardConfig {
        update_bound: Some(UpdateBound {
            max_ratio: -1.0,
            ..UpdateBound::default()
        }),
        ..quiet()
    };
    let err = Guard::new(config, Chain::default()).unwrap_err();
    assert!(err.to_string().contains("max_ratio"), "{err}");
}

/// Issue "Peer parity": norm and clip split as PyTorch 2.6 did. Two pipeline stages each hold
/// half of the gradients; the total is reduced from their power sums before the root, and each
/// stage clipped with it ends exactly as the whole clipped at once.
#[test]
fn clipping_with_a_reduced_total_equals_clipping_the_whole() {
    use gradguard::norm::total_norm;
    use gradguard::rules::clip_with_norm;
    for norm in [NormType::L1, NormType::L2, NormType::P(3.0)] {
        let stage = |scale: f32, name: &str| {
            grads(&[(name, &[3], vec![3.0 * scale, -4.0 * scale, 0.5 * scale])])
        };
        let (mut a, mut b) = (stage(1.0, "a"), stage(7.0, "b"));
        let mut whole = grads(&[
            ("a", &[3], vec![3.0, -4.0, 0.5]),
            ("b", &[3], vec![21.0, -28.0, 3.5]),
        ]);
        let p = norm.p();
        let partial = |g: &HostGradients| total_norm(g, &g.stats(), norm).powf(p);
        let total = (partial(&a) + partial(&b)).powf(1.0 / p);
        assert!((total - total_norm(&whole, &whole.stats(), norm)).abs() < 1e-9 * total);
        for g in [&mut a, &mut b] {
            let mut stats = g.stats();
            let outcome = clip_with_norm(g, &mut stats, 1.0, total);
            assert_eq!(outcome.norm, Some(total));
        }
        let mut rule = ClipByGlobalNorm::with_norm(1.0, norm).unwrap();
        let mut stats = whole.stats();
        rule.apply(&mut whole, &mut stats).unwrap();
        let split: Vec<f32> = [a, b]
            .iter()
            .flat_map(|g| g.tensors()[0].values.clone())
            .collect();
        let joint: Vec<f32> = whole
            .tensors()
            .iter()
            .flat_map(|t| t.values.clone())
            .collect();
        assert_eq!(split, joint, "{norm:?}");
    }
}
