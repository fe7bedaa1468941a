//! AutoClip and ZClip against hand-computed sequences.

mod common;

use common::{apply, grads};
use gradguard::rules::{AutoClip, RuleAction, ZClip, ZClipConfig, percentile};

fn of_norm(n: f32) -> gradguard::HostGradients {
    // [n, 0] has L2 norm exactly n.
    grads(&[("w", &[2], vec![n, 0.0])])
}

#[test]
fn autoclip_clips_to_the_percentile_of_the_history() {
    let mut rule = AutoClip::new(50.0, 4).unwrap();
    let norms = [1.0f32, 3.0, 2.0, 10.0, 4.0];
    let mut thresholds = Vec::new();
    for &n in &norms {
        let (o, _) = apply(&mut rule, &of_norm(n));
        thresholds.push(o.threshold.unwrap());
    }
    // Window of 4: medians of [1], [1,3], [1,3,2], [1,3,2,10], [3,2,10,4].
    let expected = [1.0, 2.0, 2.0, 2.5, 3.5];
    for (t, e) in thresholds.iter().zip(expected) {
        assert!((t - e).abs() < 1e-6, "{thresholds:?}");
    }
    assert_eq!(rule.history().count(), 4);
    let mut v = vec![3.0, 2.0, 10.0, 4.0];
    assert_eq!(percentile(&mut v, 50.0), 3.5);
}

#[test]
fn autoclip_keeps_non_finite_norms_out_of_its_history() {
    let mut rule = AutoClip::new(10.0, 8).unwrap();
    apply(&mut rule, &of_norm(1.0));
    let (o, g) = apply(&mut rule, &grads(&[("w", &[2], vec![f32::NAN, 1.0])]));
    assert_eq!(o.action, RuleAction::NonFinite);
    assert!(g.tensors()[0].values[0].is_nan());
    assert_eq!(rule.history().collect::<Vec<_>>(), vec![1.0]);
}

#[test]
fn zclip_warms_up_then_clips_a_spike_with_the_reciprocal_threshold() {
    let mut rule = ZClip::new(ZClipConfig {
        warmup_steps: 4,
        ..Default::default()
    })
    .unwrap();
    for n in [1.0, 2.0, 1.0, 2.0] {
        let (o, _) = apply(&mut rule, &of_norm(n));
        assert_eq!(o.action, RuleAction::Unchanged);
    }
    let (mean, var) = rule.ema().unwrap();
    assert!((mean - 1.5).abs() < 1e-6 && (var - 0.25).abs() < 1e-6);
    // z = (10 − 1.5) / (0.5 + 1e-6) ≈ 17; threshold = μ + z_t·σ/(z/z_t) = 1.5 + 2.5²·0.5/z.
    let z = (10.0 - 1.5) / (0.5 + 1e-6);
    let threshold = 1.5 + 2.5 * 0.5 / (z / 2.5);
    let (o, clipped) = apply(&mut rule, &of_norm(10.0));
    assert_eq!(o.action, RuleAction::Scaled);
    assert!((o.threshold.unwrap() - threshold).abs() < 1e-9);
    assert!((common::exact_l2(&clipped) - threshold).abs() < 1e-5);
    // The EMA takes the clipped value, not the spike.
    let (mean2, var2) = rule.ema().unwrap();
    let expected_mean = 0.97 * 1.5 + 0.03 * threshold;
    assert!((mean2 - expected_mean).abs() < 1e-9);
    let expected_var = 0.97 * 0.25 + 0.03 * (threshold - expected_mean).powi(2);
    assert!((var2 - expected_var).abs() < 1e-9);
}

#[test]
fn zclip_leaves_normal_norms_alone() {
    let mut rule = ZClip::new(ZClipConfig {
        warmup_steps: 2,
        ..Default::default()
    })
    .unwrap();
    for n in [1.0, 1.2, 1.1, 0.9, 1.15] {
        let g = of_norm(n);
        let (_, out) = apply(&mut rule, &g);
        assert_eq!(out, g);
    }
}

/// Issue "Peer parity": Optax's `unitwise_norm` reduces axes 0–3 of a rank-5 (3-D conv, DHWIO)
/// tensor; the output-first layout reduces every axis but the first at any rank (as timm).
#[test]
fn unit_spans_cover_rank_five_kernels_as_optax_and_timm_do() {
    use gradguard::UnitLayout;
    let shape = [2, 3, 3, 4, 5];
    let span = UnitLayout::InputFirst
        .span("conv3d.weight", &shape)
        .unwrap();
    assert_eq!(
        (span.rows, span.cols, span.units_are_columns),
        (72, 5, true)
    );
    assert_eq!(span.units(), 5);
    let span = UnitLayout::OutputFirst
        .span("conv3d.weight", &shape)
        .unwrap();
    assert_eq!(
        (span.rows, span.cols, span.units_are_columns),
        (2, 180, false)
    );
    let err = UnitLayout::InputFirst
        .span("odd", &[2, 2, 2, 2, 2, 2])
        .unwrap_err();
    assert!(err.to_string().contains("rank 6"), "{err}");
    assert!(
        UnitLayout::OutputFirst
            .span("odd", &[2, 2, 2, 2, 2, 2])
            .is_ok()
    );
}

/// Issue "Peer parity": a NaN weight is a broken model. AGC names it, and the guard's non-finite
/// policy decides — never the silent λ·ε clip that `f64::max` dropping the NaN would give.
#[test]
fn agc_with_a_non_finite_weight_is_decided_by_the_policy() {
    use gradguard::rules::{AdaptiveGradClip, Chain, Rule};
    use gradguard::{Decision, Guard, GuardConfig, GuardError, HostTensor, NonFinitePolicy};
    let with_nan_weight = || {
        grads(&[("layer.weight", &[2, 2], vec![1.0, 2.0, 3.0, 4.0])])
            .with_parameters(vec![
                HostTensor::new("layer.weight", vec![2, 2], vec![1.0, 1.0, 1.0, f32::NAN]).unwrap(),
            ])
            .unwrap()
    };
    let guard = |policy| {
        let rules: Vec<Box<dyn Rule>> = vec![Box::new(AdaptiveGradClip::new(0.01).unwrap())];
        let config = GuardConfig {
            non_finite: policy,
            loss_spike: None,
            ..GuardConfig::default()
        };
        Guard::new(config, Chain::new(rules).unwrap()).unwrap()
    };
    let err = guard(NonFinitePolicy::Error)
        .step(&mut with_nan_weight(), None)
        .unwrap_err();
    match &err {
        GuardError::NonFiniteParameter {
            tensor,
            unit,
            value,
            rule,
            ..
        } => {
            // Input-first [in, out]: the NaN at flat index 3 is in column (unit) 1.
            assert_eq!(
                (tensor.as_str(), *unit, value.as_str()),
                ("layer.weight", 1, "NaN")
            );
            assert_eq!(rule, "agc");
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut g = with_nan_weight();
    let report = guard(NonFinitePolicy::Skip).step(&mut g, None).unwrap();
    assert_eq!(report.decision, Decision::Skip);
    assert!(
        report.reasons[0].contains("'layer.weight' unit 1 is NaN"),
        "{report:?}"
    );
    assert_eq!(g.tensors()[0].values, vec![1.0, 2.0, 3.0, 4.0]);
}

/// Issue "Peer parity": AdaGC replayed step by step against the published formula
/// (`scripts/reference/make_adagc_fixture.py` writes the fixture): the clipped gradients and each
/// tensor's EMA γ, through warm-up, a spike in each tensor, and a state saved and restored midway.
#[test]
fn adagc_matches_the_published_formula_step_by_step() {
    use gradguard::rules::{AdaGc, AdaGcConfig, Rule};
    let text = include_str!("fixtures/adagc.json");
    let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
    let c = &fixture["config"];
    let config = AdaGcConfig {
        lambda_abs: c["lambda_abs"].as_f64().unwrap(),
        lambda_rel: c["lambda_rel"].as_f64().unwrap(),
        beta: c["beta"].as_f64().unwrap(),
        warmup_steps: c["warmup_steps"].as_u64().unwrap(),
        eps: c["eps"].as_f64().unwrap(),
    };
    let mut rule = AdaGc::new(config).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let mut clipped_some = false;
    for (t, step) in fixture["steps"].as_array().unwrap().iter().enumerate() {
        if t == 6 {
            // A resumed run decides as the uninterrupted one.
            let mut resumed = AdaGc::new(config).unwrap();
            resumed.restore(&rule.state()).unwrap();
            rule = resumed;
        }
        let input = grads(&[
            ("a", &[6], floats(&step["grads"][0])),
            ("b", &[4], floats(&step["grads"][1])),
        ]);
        let (outcome, out) = apply(&mut rule, &input);
        clipped_some |= outcome.tensors_changed > 0;
        for (i, expected) in step["clipped"].as_array().unwrap().iter().enumerate() {
            for (got, want) in out.tensors()[i].values.iter().zip(floats(expected)) {
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                    "step {} tensor {i}: {got} vs {want}",
                    t + 1
                );
            }
        }
        for (got, want) in rule.gamma().iter().zip(step["gamma"].as_array().unwrap()) {
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-6 * want,
                "step {}: γ {got} vs {want}",
                t + 1
            );
        }
    }
    assert!(clipped_some);
}

#[test]
fn adagc_refuses_bad_settings() {
    use gradguard::rules::{AdaGc, AdaGcConfig};
    for config in [
        AdaGcConfig {
            beta: 1.0,
            ..AdaGcConfig::default()
        },
        AdaGcConfig {
            lambda_rel: 0.0,
            ..AdaGcConfig::default()
        },
        AdaGcConfig {
            lambda_abs: f64::NAN,
            ..AdaGcConfig::default()
        },
    ] {
        assert!(AdaGc::new(config).is_err(), "{config:?}");
    }
}
