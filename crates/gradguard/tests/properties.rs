//! Invariants of the rules and the guard, over random gradients (proptest).

mod common;

use common::{apply, close, exact_l2};
use gradguard::rules::{
    AdaptiveGradClip, AutoClip, Chain, ClipByGlobalNorm, ClipByValue, ClipPerTensorNorm, NORM_EPS,
    Rule, ZClip,
};
use gradguard::{
    Gradients, Guard, GuardConfig, GuardState, HostGradients, HostTensor, NormType, UnitLayout,
    UpdateFamily, UpdateNorms, UpdateSpread,
};
use proptest::prelude::*;

/// A value with a log-uniform magnitude in [1e-8, 1e8] and a random sign (or an exact zero).
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        1 => Just(0.0f32),
        12 => (-8.0f64..8.0, any::<bool>()).prop_map(|(e, neg)| {
            let v = 10f64.powf(e) as f32;
            if neg { -v } else { v }
        }),
    ]
}

fn gradients() -> impl Strategy<Value = HostGradients> {
    prop::collection::vec(prop::collection::vec(value(), 0..200), 1..6).prop_map(|ts| {
        HostGradients::new(
            ts.into_iter()
                .enumerate()
                .map(|(i, v)| {
                    HostTensor::new(format!("layers.{i}.weight"), vec![v.len()], v).unwrap()
                })
                .collect(),
        )
        .unwrap()
    })
}

fn norm_type() -> impl Strategy<Value = NormType> {
    prop_oneof![
        Just(NormType::L1),
        Just(NormType::L2),
        Just(NormType::Inf),
        (1.1f64..8.0).prop_map(NormType::P),
    ]
}

fn exact_norm(g: &HostGradients, p: NormType) -> f64 {
    let all = g
        .tensors()
        .iter()
        .flat_map(|t| t.values.iter())
        .map(|&x| f64::from(x).abs());
    match p {
        NormType::Inf => all.fold(0.0, f64::max),
        p => all.map(|x| x.powf(p.p())).sum::<f64>().powf(1.0 / p.p()),
    }
}

fn bits(g: &HostGradients) -> Vec<u32> {
    g.tensors()
        .iter()
        .flat_map(|t| t.values.iter().map(|v| v.to_bits()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn update_sums_fed_in_slices_are_the_whole_tensors(
        rows in 1usize..40,
        cols in 1usize..300,
        units_are_columns in any::<bool>(),
        blocks in 1usize..4,
        seed in any::<u32>(),
    ) {
        use gradguard::kernel::{BLOCK, UpdateSums, unit_update_norms, update_norms};
        use gradguard::UnitSpan;
        let n = rows * cols;
        let before: Vec<f32> = (0..n).map(|i| ((i as f32 + seed as f32 * 1e-3) * 0.37).sin()).collect();
        let after: Vec<f32> = before.iter().enumerate().map(|(i, x)| x + ((i as f32) * 0.11).cos() * 1e-2).collect();
        let span = UnitSpan { rows, cols, units_are_columns };
        let whole = (update_norms(&before, &after), unit_update_norms(&before, &after, span));
        let mut sums = UpdateSums::new(Some(span));
        for (b, a) in before.chunks(blocks * BLOCK).zip(after.chunks(blocks * BLOCK)) {
            sums.add(b, a);
        }
        prop_assert_eq!(sums.finish(), whole);
    }

    #[test]
    fn global_norm_after_clipping_is_at_most_max_norm(g in gradients(), p in norm_type(), max in 1e-6f64..1e6) {
        let (outcome, clipped) = apply(&mut ClipByGlobalNorm::with_norm(max, p).unwrap(), &g);
        let total = outcome.norm.unwrap();
        prop_assert!(close(total, exact_norm(&g, p), 1e-6, 0.0), "total {} vs exact {}", total, exact_norm(&g, p));
        prop_assert!(exact_norm(&clipped, p) <= max * (1.0 + 1e-6));
    }

    #[test]
    fn below_the_threshold_gradients_are_bit_for_bit_unchanged(g in gradients(), p in norm_type(), headroom in 0.0f64..10.0) {
        let total = exact_norm(&g, p);
        let max = total * (1.0 + 1e-5) + NORM_EPS + headroom;
        let (_, clipped) = apply(&mut ClipByGlobalNorm::with_norm(max, p).unwrap(), &g);
        prop_assert_eq!(bits(&clipped), bits(&g));
        let (_, per_tensor) = apply(&mut ClipPerTensorNorm::new(max, p).unwrap(), &g);
        prop_assert_eq!(bits(&per_tensor), bits(&g));
        let limit = g.stats().iter().map(|s| s.max_abs).fold(0.0, f64::max);
        let (_, valued) = apply(&mut ClipByValue::new(limit).unwrap(), &g);
        prop_assert_eq!(bits(&valued), bits(&g));
    }

    /// PyTorch's ε makes a second clip shrink the norm by at most another relative ~1e-6/max_norm:
    /// twice equals once up to that, and value clipping is exactly idempotent.
    #[test]
    fn clipping_twice_equals_clipping_once(g in gradients(), max in 1e-2f64..1e3, limit in 1e-3f64..1e3) {
        let mut rule = ClipByGlobalNorm::new(max).unwrap();
        let (_, once) = apply(&mut rule, &g);
        let (_, twice) = apply(&mut rule, &once);
        for (a, b) in once.tensors().iter().flat_map(|t| &t.values).zip(twice.tensors().iter().flat_map(|t| &t.values)) {
            prop_assert!(close(f64::from(*b), f64::from(*a), 2e-6 + 2.0 * NORM_EPS / max, 0.0), "{} vs {}", a, b);
        }
        let mut value = ClipByValue::new(limit).unwrap();
        let (_, once) = apply(&mut value, &g);
        let (_, twice) = apply(&mut value, &once);
        prop_assert_eq!(bits(&once), bits(&twice));
    }

    #[test]
    fn global_clipping_preserves_direction(g in gradients(), max in 1e-3f64..1e3) {
        let (outcome, clipped) = apply(&mut ClipByGlobalNorm::new(max).unwrap(), &g);
        let scale = outcome.scale.unwrap_or(1.0);
        for (a, b) in g.tensors().iter().flat_map(|t| &t.values).zip(clipped.tensors().iter().flat_map(|t| &t.values)) {
            prop_assert!(close(f64::from(*b), f64::from(*a) * scale, 1e-6, 1e-37), "{} * {} vs {}", a, scale, b);
            prop_assert!(a.signum() == b.signum() || *b == 0.0);
        }
    }

    #[test]
    fn scaling_the_input_scales_the_reported_norm(g in gradients(), p in norm_type(), alpha in -1e3f64..1e3) {
        prop_assume!(alpha.abs() > 1e-3);
        let mut scaled = g.clone();
        for t in scaled.tensors_mut() {
            for v in &mut t.values {
                *v = (f64::from(*v) * alpha) as f32;
            }
        }
        let mut rule = ClipByGlobalNorm::with_norm(f64::INFINITY, p).unwrap();
        let (a, _) = apply(&mut rule, &g);
        let (b, _) = apply(&mut rule, &scaled);
        prop_assert!(close(b.norm.unwrap(), a.norm.unwrap() * alpha.abs(), 1e-5, 1e-30));
    }

    #[test]
    fn fused_statistics_match_exact_f64(g in gradients()) {
        let stats = g.stats();
        for (s, t) in stats.iter().zip(g.tensors()) {
            let sq: f64 = t.values.iter().map(|&x| f64::from(x).powi(2)).sum();
            let ab: f64 = t.values.iter().map(|&x| f64::from(x).abs()).sum();
            let mx = t.values.iter().map(|&x| f64::from(x).abs()).fold(0.0, f64::max);
            prop_assert!(close(s.sum_squares, sq, 1e-6, 0.0));
            prop_assert!(close(s.sum_abs, ab, 1e-6, 0.0));
            prop_assert_eq!(s.max_abs, mx);
            prop_assert_eq!(s.len, t.values.len());
        }
        prop_assert!(close(gradguard::combined(&stats).l2(), exact_l2(&g), 1e-6, 0.0));
    }

    #[test]
    fn agc_bounds_every_unit_and_layouts_agree(
        rows in 1usize..6, cols in 1usize..6, seed in any::<u64>(), clipping in 1e-3f64..1.0,
    ) {
        let mut state = seed | 1;
        let mut next = move || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; ((state % 2001) as f32 - 1000.0) / 100.0 };
        let g: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
        let transpose = |v: &[f32]| -> Vec<f32> { (0..rows * cols).map(|k| v[(k % rows) * cols + k / rows]).collect() };
        let input_first = HostGradients::new(vec![HostTensor::new("w", vec![rows, cols], g.clone()).unwrap()]).unwrap()
            .with_parameters(vec![HostTensor::new("w", vec![rows, cols], w.clone()).unwrap()]).unwrap();
        let output_first = HostGradients::new(vec![HostTensor::new("w", vec![cols, rows], transpose(&g)).unwrap()]).unwrap()
            .with_parameters(vec![HostTensor::new("w", vec![cols, rows], transpose(&w)).unwrap()]).unwrap();
        let mut a = AdaptiveGradClip { clipping, eps: 1e-3, layout: UnitLayout::InputFirst };
        let mut b = AdaptiveGradClip { clipping, eps: 1e-3, layout: UnitLayout::OutputFirst };
        let (_, ca) = apply(&mut a, &input_first);
        let (_, cb) = apply(&mut b, &output_first);
        prop_assert_eq!(transpose(&ca.tensors()[0].values), cb.tensors()[0].values.clone());
        if rows > 1 && cols > 1 {
            // Input-first: each column is a unit.
            for c in 0..cols {
                let gn = (0..rows).map(|r| f64::from(ca.tensors()[0].values[r * cols + c]).powi(2)).sum::<f64>().sqrt();
                let wn = (0..rows).map(|r| f64::from(w[r * cols + c]).powi(2)).sum::<f64>().sqrt();
                prop_assert!(gn <= clipping * wn.max(1e-3) * (1.0 + 1e-6), "unit {}: {} > {}", c, gn, clipping * wn);
            }
        }
    }

    /// A guard saved after k steps and restored into a fresh guard makes exactly the decisions
    /// of the guard that never stopped.
    #[test]
    fn resumed_guard_equals_uninterrupted_guard(
        scales in prop::collection::vec(prop_oneof![8 => 0.5f32..2.0, 1 => 50.0f32..500.0, 1 => Just(f32::NAN)], 10..80),
        split in 0usize..80,
    ) {
        let make = || {
            let rules: Vec<Box<dyn Rule>> = vec![
                Box::new(AutoClip::new(50.0, 16).unwrap()),
                Box::new(ZClip::new(gradguard::rules::ZClipConfig { warmup_steps: 5, ..Default::default() }).unwrap()),
            ];
            let config = GuardConfig {
                grad_spike: Some(gradguard::detect::SpikeConfig { window: 8, k: 3.0, min_history: 4, min_relative_std: 0.05 }),
                max_consecutive_bad: 1000,
                lr: gradguard::LrBackoff { recover_after: 3, ..Default::default() },
                ..Default::default()
            };
            Guard::new(config, Chain::new(rules).unwrap()).unwrap()
        };
        let batch = |i: usize, s: f32| {
            let v: Vec<f32> = (0..64).map(|j| s * (((i * 31 + j * 17) % 13) as f32 - 6.0)).collect();
            HostGradients::new(vec![HostTensor::new("w", vec![64], v).unwrap()]).unwrap()
        };
        let loss = |i: usize| 1.0 / (1.0 + i as f64);
        let split = split.min(scales.len());
        let mut whole = make();
        let expected: Vec<String> = scales.iter().enumerate().map(|(i, &s)| {
            serde_json::to_string(&whole.step(&mut batch(i, s), Some(loss(i))).unwrap()).unwrap()
        }).collect();
        let mut first = make();
        let mut got: Vec<String> = scales[..split].iter().enumerate().map(|(i, &s)| {
            serde_json::to_string(&first.step(&mut batch(i, s), Some(loss(i))).unwrap()).unwrap()
        }).collect();
        let saved = serde_json::to_string(&first.state()).unwrap();
        let mut resumed = make();
        resumed.restore(&serde_json::from_str::<GuardState>(&saved).unwrap()).unwrap();
        got.extend(scales[split..].iter().enumerate().map(|(k, &s)| {
            let i = split + k;
            serde_json::to_string(&resumed.step(&mut batch(i, s), Some(loss(i))).unwrap()).unwrap()
        }));
        prop_assert_eq!(got, expected);
        prop_assert_eq!(serde_json::to_string(&resumed.state()).unwrap(), serde_json::to_string(&whole.state()).unwrap());
    }

    /// The family is recognized from the shape of the step, not its units: scaling the rate and
    /// every update by c, or the weights by w, changes nothing; and a step in which every unit
    /// moves by the rate per value (within the factor 1.25) is a normalizing optimizer's.
    #[test]
    fn the_family_is_scale_free_and_a_step_at_the_rate_is_normalized(
        steps in prop::collection::vec(prop::collection::vec(0.0f64..3.0, 1..8), 1..6),
        lr in 1e-6f64..1.0,
        c in 1e-3f64..1e3,
        w in 1e-3f64..1e3,
        jitter in prop::collection::vec(0.81f64..1.24, 8),
    ) {
        let unit_len = 16usize;
        let tensor = |i: usize, per_value: &[f64], scale: f64, weights: f64| UpdateNorms {
            name: format!("t{i}"),
            len: per_value.len() * unit_len,
            weight: weights * (per_value.len() as f64).sqrt(),
            update: scale * per_value.iter().map(|s| s * s * unit_len as f64).sum::<f64>().sqrt(),
            units: per_value
                .iter()
                .map(|s| (weights, scale * s * (unit_len as f64).sqrt()))
                .collect(),
            spread: Some(UpdateSpread {
                sum_abs: scale * per_value.iter().map(|s| s * unit_len as f64).sum::<f64>(),
                max_abs: scale * per_value.iter().fold(0.0f64, |a, &b| a.max(b)),
            }),
        };
        let norms: Vec<UpdateNorms> = steps.iter().enumerate().map(|(i, s)| tensor(i, s, lr, 1.0)).collect();
        let scaled: Vec<UpdateNorms> = steps.iter().enumerate().map(|(i, s)| tensor(i, s, lr * c, w)).collect();
        prop_assert_eq!(UpdateFamily::recognize(&norms, lr), UpdateFamily::recognize(&scaled, lr * c));
        // Every unit of every tensor at the rate, up to the jitter: normalized.
        let at_rate: Vec<UpdateNorms> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let per_value: Vec<f64> = (0..s.len()).map(|u| jitter[(i + u) % jitter.len()]).collect();
                tensor(i, &per_value, lr, w)
            })
            .collect();
        prop_assert_eq!(UpdateFamily::recognize(&at_rate, lr), Some(UpdateFamily::Normalized));
    }
}
