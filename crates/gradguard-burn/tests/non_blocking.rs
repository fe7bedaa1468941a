//! The non-blocking guarded step (issue "A guard you never turn off", item 3) on the CPU
//! backend: the same weights as the blocking fused step, reports a step late, a stop a step
//! late that still names the tensor, and its state in Burn's optimizer record format.

use burn::optim::GradientsParams;
use burn::tensor::Device;
use gradguard::{GuardError, NonFinitePolicy};
use gradguard_burn::{FusedRule, GuardedOptimizer, NonBlockingOptimizer, Placement};

mod common;

use common::{Mlp, device_guard, sine_batch as batch, weights};

fn device() -> Device {
    Device::flex().autodiff()
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
    common::non_blocking_norms_decide_as_the_host(&device());
}
