//! The fused guarded optimizer (issue "A guard you never turn off"): Burn's SGD, Adam and AdamW
//! step for step, bit for bit where the guard does not act, and the same guarded run as the
//! plain guarded optimizer where it does (bounded steps, undone steps, rollbacks).

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use gradguard::rules::Chain;
use gradguard::{Decision, Guard, GuardConfig, NonFinitePolicy, StepReport};
use gradguard_burn::{AdamMoments, FusedOptimizer, FusedRule, GuardedOptimizer};

mod common;

use common::{Mlp as Net, weights};

/// Mean squared error of `net` on batch `k` against targets multiplied by `scale`.
fn batch_loss(net: &Net, k: usize, scale: f32, device: &Device) -> Tensor<1> {
    let x: Vec<f32> = (0..16 * 8)
        .map(|i| ((i + 131 * k) as f32 * 0.37).sin())
        .collect();
    let y: Vec<f32> = (0..16)
        .map(|i| ((i + 17 * k) as f32 * 0.11).cos() * scale)
        .collect();
    let x = Tensor::<2>::from_data(TensorData::new(x, [16, 8]), device);
    let y = Tensor::<2>::from_data(TensorData::new(y, [16, 1]), device);
    net.loss(x, y)
}

/// Two hidden layers of width 100 (the second's 10,000 values are stepped and measured in slices
/// that cut its rows), with fixed weights: uniform in ±0.1 (a hash of the position) and biases in
/// [0.05, 0.1], so whether the bound acts does not depend on a random draw.
fn new_net(device: &Device) -> Net {
    struct Fixed(usize);
    impl ModuleMapper for Fixed {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            self.0 += 1;
            let k = self.0;
            param.map(|t| {
                let dims = t.dims();
                let n: usize = dims.iter().product();
                let unit = |i: usize| ((i * 7919 + k * 104_729) % 1000) as f32 / 1000.0;
                let values: Vec<f32> = (0..n)
                    .map(|i| {
                        if D == 1 {
                            0.05 + 0.05 * unit(i)
                        } else {
                            0.2 * unit(i) - 0.1
                        }
                    })
                    .collect();
                let fixed = Tensor::<D>::from_data(TensorData::new(values, dims), &t.device());
                if t.is_require_grad() {
                    fixed.require_grad()
                } else {
                    fixed
                }
            })
        }
    }
    Net::new(2, 100, device).map(&mut Fixed(0))
}

fn device() -> Device {
    Device::flex().autodiff()
}

/// The default guard with `config`'s changes and no rule.
fn guard_with(config: GuardConfig) -> Guard {
    Guard::new(config, Chain::default()).unwrap()
}

fn rules() -> Vec<FusedRule> {
    let adamw = AdamMoments {
        beta_2: 0.95,
        ..AdamMoments::default()
    };
    vec![
        FusedRule::Sgd { weight_decay: None },
        FusedRule::Sgd {
            weight_decay: Some(1e-2),
        },
        FusedRule::Adam {
            moments: AdamMoments::default(),
            weight_decay: None,
        },
        FusedRule::Adam {
            moments: AdamMoments::default(),
            weight_decay: Some(1e-2),
        },
        FusedRule::AdamW {
            moments: adamw,
            weight_decay: 0.1,
        },
    ]
}

fn lr_of(rule: FusedRule) -> f64 {
    match rule {
        FusedRule::Sgd { .. } => 5e-5,
        _ => 3e-4,
    }
}

/// `steps` steps of Burn's own optimizer for `rule`, unguarded: the weights after each.
fn plain_run(rule: FusedRule, mut net: Net, steps: usize) -> Vec<Vec<Vec<f32>>> {
    let (device, mut optim) = (device(), rule.to_burn());
    (0..steps)
        .map(|k| {
            let loss = batch_loss(&net, k, 1.0, &device);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(lr_of(rule), net.clone(), grads);
            weights(&net)
        })
        .collect()
}

/// A guarded run of `optim` from `net` over `scales` (one batch each, `lr` each step): the weights and the
/// report after each step.
fn guarded_run(
    mut optim: GuardedOptimizer<Net>,
    mut net: Net,
    lr: f64,
    scales: &[f32],
) -> Vec<(Vec<Vec<f32>>, StepReport)> {
    let device = device();
    let mut out = Vec::new();
    for (k, &scale) in scales.iter().enumerate() {
        if optim.skip_batch() {
            continue;
        }
        let loss = batch_loss(&net, k, scale, &device);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        let step = optim.step(lr, net, grads, Some(loss)).unwrap();
        net = step.module;
        out.push((weights(&net), step.report));
    }
    out
}

fn same_runs(a: &[(Vec<Vec<f32>>, StepReport)], b: &[(Vec<Vec<f32>>, StepReport)]) {
    assert_eq!(a.len(), b.len());
    for (k, ((wa, ra), (wb, rb))) in a.iter().zip(b).enumerate() {
        assert_eq!(ra.decision, rb.decision, "step {k}");
        assert_eq!(ra.reasons, rb.reasons, "step {k}");
        // Debug text: a reverted step's ratios are NaN, equal in both runs but not to each other.
        assert_eq!(
            format!("{:?}", ra.update),
            format!("{:?}", rb.update),
            "step {k}"
        );
        assert_eq!(wa, wb, "weights after step {k}");
    }
}

/// The same guarded run twice from one network: `GuardedOptimizer::new` over Burn's optimizer
/// of `rule`, and `GuardedOptimizer::fused`, each with a guard from `guard`.
type Run = Vec<(Vec<Vec<f32>>, StepReport)>;
fn plain_and_fused(
    rule: FusedRule,
    guard: impl Fn() -> Guard,
    lr: f64,
    scales: &[f32],
) -> (Run, Run) {
    let net = new_net(&device());
    let plain = guarded_run(
        GuardedOptimizer::new(rule.to_burn(), guard()),
        net.clone(),
        lr,
        scales,
    );
    let fused = guarded_run(GuardedOptimizer::fused(rule, guard()), net, lr, scales);
    (plain, fused)
}

#[test]
fn fused_steps_are_burns_optimizers_bit_for_bit() {
    for rule in rules() {
        let net = new_net(&device());
        let plain = plain_run(rule, net.clone(), 12);
        let without_bound = guard_with(GuardConfig {
            update_bound: None,
            ..GuardConfig::default()
        });
        for guard in [Guard::default(), without_bound] {
            let run = guarded_run(
                GuardedOptimizer::fused(rule, guard),
                net.clone(),
                lr_of(rule),
                &[1.0; 12],
            );
            for (k, (w, report)) in run.iter().enumerate() {
                assert_eq!(report.decision, Decision::Apply, "{rule:?} step {k}");
                assert!(
                    report.update.as_ref().is_none_or(|u| u.bounded == 0),
                    "{rule:?} step {k}: the bound fired, so this does not test equality: {:?}",
                    report.reasons
                );
                assert_eq!(w, &plain[k], "{rule:?}: weights after step {k}");
            }
        }
    }
}

#[test]
fn fused_and_plain_guards_agree_where_the_bound_scales_steps() {
    for rule in rules() {
        let lr = lr_of(rule) * 300.0;
        let scales = [1.0, 50.0, 1.0, 200.0, 1.0, 1.0, 80.0, 1.0];
        let (plain, fused) = plain_and_fused(rule, Guard::default, lr, &scales);
        assert!(
            plain
                .iter()
                .any(|(_, r)| r.update.as_ref().is_some_and(|u| u.bounded > 0)),
            "{rule:?}: the bound never fired"
        );
        same_runs(&plain, &fused);
    }
}

#[test]
fn a_non_finite_update_is_dropped_with_the_moments_it_would_have_made() {
    let guard = || {
        guard_with(GuardConfig {
            non_finite: NonFinitePolicy::Apply,
            ..GuardConfig::default()
        })
    };
    for rule in rules() {
        let scales = [1.0, 1.0, f32::NAN, 1.0, 1.0];
        let (plain, fused) = plain_and_fused(rule, guard, lr_of(rule), &scales);
        let undone = &fused[2];
        assert_eq!(undone.1.decision, Decision::Skip, "{rule:?}");
        assert_eq!(undone.0, fused[1].0, "{rule:?}: the weights moved");
        same_runs(&plain, &fused);
    }
}

#[test]
fn a_rollback_restores_the_fused_state_of_the_snapshot() {
    let guard = || {
        guard_with(GuardConfig {
            snapshot_every: 4,
            ..GuardConfig::default()
        })
    };
    let mut scales = vec![1.0f32; 40];
    scales[30] = 1e4;
    for rule in rules() {
        let (plain, fused) = plain_and_fused(rule, guard, lr_of(rule), &scales);
        assert!(
            fused
                .iter()
                .any(|(_, r)| matches!(r.decision, Decision::Rollback { .. })),
            "{rule:?}: no rollback"
        );
        same_runs(&plain, &fused);
    }
}

/// A guard that never acts on these healthy steps: no update bound.
fn quiet_guard() -> Guard {
    guard_with(GuardConfig {
        update_bound: None,
        ..GuardConfig::default()
    })
}

/// Trains `net` on batches `first..first + steps`, each step by `step(net, gradients, loss)`.
fn train(
    mut net: Net,
    first: usize,
    steps: usize,
    mut step: impl FnMut(Net, GradientsParams, Tensor<1>) -> Net,
) -> Net {
    let device = device();
    for k in first..first + steps {
        let loss = batch_loss(&net, k, 1.0, &device);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = step(net, grads, loss);
    }
    net
}

/// `steps` guarded steps of `optim` from `net`, batches `first..`.
fn continue_fused(
    optim: &mut GuardedOptimizer<Net>,
    net: Net,
    first: usize,
    steps: usize,
    lr: f64,
) -> Net {
    train(net, first, steps, |net, grads, loss| {
        optim.step(lr, net, grads, Some(loss)).unwrap().module
    })
}

/// `steps` steps of a Burn optimizer from `net`, batches `first..`.
fn continue_burn(
    optim: &mut burn::optim::ModuleOptimizer,
    net: Net,
    first: usize,
    steps: usize,
    lr: f64,
) -> Net {
    train(net, first, steps, |net, grads, _| {
        optim.step(lr, net, grads)
    })
}

#[test]
fn a_fused_record_loads_into_burns_optimizer_and_back() {
    for rule in rules() {
        let lr = lr_of(rule);
        // Fused for three steps, then Burn's optimizer from the fused record, against fused on.
        let mut fused = GuardedOptimizer::fused(rule, quiet_guard());
        let net = continue_fused(&mut fused, new_net(&device()), 0, 3, lr);
        let bytes = fused.fused_optimizer().unwrap().into_bytes().unwrap();
        // The same state saved again from a copy loaded from the record: the same bytes.
        let copy = FusedOptimizer::new(rule).from_bytes(bytes.clone()).unwrap();
        assert_eq!(
            copy.into_bytes().unwrap()[..],
            bytes[..],
            "{rule:?}: a state's record is the same bytes every time"
        );
        let mut burn = rule.to_burn().from_bytes(bytes).unwrap();
        let by_burn = continue_burn(&mut burn, net.clone(), 3, 3, lr);
        let by_fused = continue_fused(&mut fused, net, 3, 3, lr);
        assert_eq!(
            weights(&by_burn),
            weights(&by_fused),
            "{rule:?}: Burn from fused"
        );

        // Burn's optimizer for three steps, then fused from Burn's record, against Burn on.
        let mut burn = rule.to_burn();
        let net = continue_burn(&mut burn, new_net(&device()), 0, 3, lr);
        let loaded = FusedOptimizer::new(rule)
            .from_bytes(burn.into_bytes().unwrap())
            .unwrap();
        let mut fused = GuardedOptimizer::fused(rule, quiet_guard());
        fused.set_fused_optimizer(loaded);
        let by_fused = continue_fused(&mut fused, net.clone(), 3, 3, lr);
        let by_burn = continue_burn(&mut burn, net, 3, 3, lr);
        assert_eq!(
            weights(&by_burn),
            weights(&by_fused),
            "{rule:?}: fused from Burn"
        );
    }
}

#[test]
fn a_record_the_fused_rules_cannot_continue_is_an_error() {
    let rule = rules()[2];
    let garbage =
        FusedOptimizer::new(rule).from_bytes(burn::tensor::Bytes::from_bytes_vec(vec![7; 64]));
    assert!(garbage.is_err());
    // AMSGrad keeps a third moment the fused Adam does not.
    let mut amsgrad = burn::optim::AdamConfig::new().with_amsgrad(true).init();
    continue_burn(&mut amsgrad, new_net(&device()), 0, 2, 1e-3);
    let err = FusedOptimizer::new(rule)
        .from_bytes(amsgrad.into_bytes().unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("AMSGrad"), "{err}");
    // A guarded optimizer that fails to load keeps its fused optimizer and its state.
    let mut fused = GuardedOptimizer::fused(rule, quiet_guard());
    continue_fused(&mut fused, new_net(&device()), 0, 2, 1e-3);
    let saved = fused.optimizer_bytes().unwrap();
    let bad = burn::tensor::Bytes::from_bytes_vec(vec![7; 64]);
    assert!(fused.load_optimizer_bytes(bad).is_err());
    assert!(fused.fused_optimizer().is_some_and(|f| f.has_state()));
    fused.load_optimizer_bytes(saved).unwrap();
}
