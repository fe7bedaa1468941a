//! The non-blocking guarded step (issue "A guard you never turn off", item 3) on the CPU
//! backend: the same weights as the blocking fused step, reports a step late, a stop a step
//! late that still names the tensor, and its state in Burn's optimizer record format.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use gradguard::{GuardError, NonFinitePolicy};
use gradguard_burn::{FusedRule, GuardedOptimizer, NonBlockingOptimizer, Placement};

mod common;

use common::{Mlp, device_guard, device_guard_of, weights};

fn device() -> Device {
    Device::flex().autodiff()
}

fn batch(dev: &Device, s: usize, poison: bool) -> (Tensor<2>, Tensor<2>) {
    let x: Vec<f32> = (0..16 * 8)
        .map(|i| (i as f32 * 0.3 + s as f32).sin())
        .collect();
    let mut y: Vec<f32> = (0..16).map(|i| (i as f32 * 0.2 + s as f32).cos()).collect();
    if poison {
        y[0] = f32::INFINITY;
    }
    (
        Tensor::from_data(TensorData::new(x, [16, 8]), dev),
        Tensor::from_data(TensorData::new(y, [16, 1]), dev),
    )
}

#[test]
fn matches_the_blocking_step_on_the_host_path() {
    common::non_blocking_matches_the_blocking_step(&device(), Placement::Host);
}

#[test]
fn matches_the_blocking_step_with_device_statistics() {
    common::non_blocking_matches_the_blocking_step(&device(), Placement::Device);
}

#[test]
fn the_default_guard_is_refused_with_the_reason() {
    let error = NonBlockingOptimizer::new(FusedRule::adam(), gradguard::Guard::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("update bound"), "{error}");
}

/// Under `NonFinitePolicy::Error` the poisoned step is skipped on the device, and the stop comes
/// with the next step, naming the tensor of the first non-finite value (no loss is given, so the
/// gradients are what stops it).
#[test]
fn a_stop_comes_a_step_late_and_names_the_tensor() {
    let dev = device();
    let mut model = Mlp::new(1, 8, &dev);
    let mut optim =
        NonBlockingOptimizer::new(FusedRule::adam(), device_guard(1.0, NonFinitePolicy::Error))
            .unwrap();
    let mut kept = Vec::new();
    for s in 0..3 {
        let (x, y) = batch(&dev, s, s == 1);
        let loss = model.loss(x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        match optim.step(1e-2, model, grads, None) {
            Ok(step) => {
                model = step.module;
                kept.push(weights(&model));
            }
            Err(stopped) => {
                assert_eq!(s, 2, "the stop of step 1 comes with step 2");
                match stopped.error {
                    GuardError::NonFiniteGradient { step, tensor, .. } => {
                        assert_eq!(step, 1);
                        assert!(tensor.starts_with("head") || tensor.starts_with("layers"));
                    }
                    other => panic!("unexpected error {other}"),
                }
                return;
            }
        }
        if s == 1 {
            assert_eq!(
                kept[0], kept[1],
                "the poisoned step was skipped on the device"
            );
        }
    }
    panic!("no stop");
}

/// The state saves in Burn's optimizer record format: loaded into a fresh non-blocking optimizer
/// it continues as the original does, and `GuardedOptimizer::fused` loads it too.
#[test]
fn the_state_round_trips_through_the_record_format() {
    let dev = device();
    let rule = FusedRule::adamw(0.1);
    let guard = || device_guard(1.0, NonFinitePolicy::Skip);
    let mut model = Mlp::new(1, 8, &dev);
    let mut optim = NonBlockingOptimizer::new(rule, guard()).unwrap();
    let step = |optim: &mut NonBlockingOptimizer, model: Mlp, s: usize| {
        let (x, y) = batch(&dev, s, false);
        let loss = model.loss(x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(1e-2, model, grads, Some(loss)).unwrap().module
    };
    for s in 0..3 {
        model = step(&mut optim, model, s);
    }
    // Before the last report is read, the step counts include the step queued last.
    let early = optim.optimizer_bytes().unwrap();
    optim.finish().unwrap();
    let bytes = optim.optimizer_bytes().unwrap();
    assert_eq!(early, bytes);
    let mut loaded = NonBlockingOptimizer::new(rule, guard()).unwrap();
    loaded.load_optimizer_bytes(bytes.clone()).unwrap();
    let a = step(&mut optim, model.clone(), 3);
    let b = step(&mut loaded, model, 3);
    assert_eq!(weights(&a), weights(&b));
    let mut fused = GuardedOptimizer::<Mlp>::fused(rule, guard());
    fused.load_optimizer_bytes(bytes).unwrap();
    assert!(fused.fused_optimizer().is_some_and(|f| f.has_state()));
}

/// The L1 and max-norm clips and a skip rule decide on the device as the host decides: the same
/// weights as the blocking fused step and the same decisions, step for step.
#[test]
fn every_norm_the_device_follows_decides_as_the_host() {
    use gradguard::NormType;
    use gradguard::rules::{ClipByGlobalNorm, Rule, SkipIfNormAbove};
    let dev = device();
    type Rules = fn() -> Vec<Box<dyn Rule>>;
    let chains: Vec<Rules> = vec![
        || {
            vec![Box::new(
                ClipByGlobalNorm::with_norm(100.0, NormType::L1).unwrap(),
            )]
        },
        || {
            vec![Box::new(
                ClipByGlobalNorm::with_norm(10.0, NormType::Inf).unwrap(),
            )]
        },
        || vec![Box::new(SkipIfNormAbove::new(30.0, NormType::L2).unwrap())],
    ];
    for chain in chains {
        let rule = FusedRule::adam();
        let mut blocking =
            GuardedOptimizer::fused(rule, device_guard_of(chain(), NonFinitePolicy::Skip));
        let mut non_blocking =
            NonBlockingOptimizer::new(rule, device_guard_of(chain(), NonFinitePolicy::Skip))
                .unwrap();
        let (mut a, mut b) = (Mlp::new(1, 8, &dev), Mlp::new(1, 8, &dev));
        b = b.load_record(a.clone().into_record());
        let (mut decisions, mut late) = (Vec::new(), Vec::new());
        for s in 0..8 {
            let (x, y) = batch(&dev, s, false);
            // Every third step's targets are 1,000 times larger: its norms are hundreds of times
            // those of the others (of order 1 whatever the random initialization), on the far
            // side of every limit above.
            let y = y.mul_scalar(if s % 3 == 0 { 1000.0 } else { 0.1 });
            let loss = a.loss(x.clone(), y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &a);
            let step = blocking.step(1e-2, a, grads, Some(loss)).unwrap();
            decisions.push((step.report.decision, step.report.rules[0].scale));
            a = step.module;
            let loss = b.loss(x, y);
            let grads = GradientsParams::from_grads(loss.backward(), &b);
            let step = non_blocking.step(1e-2, b, grads, Some(loss)).unwrap();
            late.extend(step.report.map(|r| (r.decision, r.rules[0].scale)));
            b = step.module;
            for (x, y) in weights(&a)
                .iter()
                .flatten()
                .zip(weights(&b).iter().flatten())
            {
                assert!((x - y).abs() <= 2e-6 * (1.0 + x.abs()), "step {s}: {x} {y}");
            }
        }
        late.extend(
            non_blocking
                .finish()
                .unwrap()
                .map(|r| (r.decision, r.rules[0].scale)),
        );
        for (d, l) in decisions.iter().zip(&late) {
            assert_eq!(d.0, l.0);
            let (x, y) = (d.1.unwrap_or(1.0), l.1.unwrap_or(1.0));
            assert!((x - y).abs() <= 1e-5 * x);
        }
        let changed = decisions
            .iter()
            .filter(|d| d.0 != gradguard::Decision::Apply || d.1.is_some_and(|s| s < 1.0))
            .count();
        assert!(changed > 0 && changed < decisions.len(), "{decisions:?}");
    }
}
