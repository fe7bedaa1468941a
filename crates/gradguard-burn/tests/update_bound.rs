//! The default guard's update bound (issue "A guard that needs no tuning"): an oversized update
//! is cut to the bound whatever the optimizer, a healthy step passes bit for bit, an overflowing
//! update is undone with the optimizer state.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use gradguard::{Decision, Guard, GuardConfig, UpdateBound, UpdateFamily};
use gradguard_burn::{GuardedOptimizer, Placement};

#[derive(Module, Debug)]
struct Net {
    layers: Vec<Linear>,
}

impl Net {
    fn new(device: &Device) -> Self {
        Net {
            layers: vec![
                LinearConfig::new(8, 16).init(device),
                LinearConfig::new(16, 16).init(device),
                LinearConfig::new(16, 1).init(device),
            ],
        }
    }

    /// Mean squared error against targets multiplied by `scale` (a large scale: a huge gradient).
    fn loss(&self, scale: f32, device: &Device) -> Tensor<1> {
        self.loss_on(scale, |_| true, device)
    }

    /// [`Self::loss`] with the input features `live` rejects held at 0 in every example (the
    /// always-blank border pixels of an image): the weights they feed get no gradient.
    fn loss_on(&self, scale: f32, live: impl Fn(usize) -> bool, device: &Device) -> Tensor<1> {
        let x: Vec<f32> = (0..32 * 8)
            .map(|i| {
                if live(i % 8) {
                    (i as f32 * 0.37).sin()
                } else {
                    0.0
                }
            })
            .collect();
        let y: Vec<f32> = (0..32).map(|i| (i as f32 * 0.11).cos() * scale).collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [32, 8]), device);
        let y = Tensor::<2>::from_data(TensorData::new(y, [32, 1]), device);
        let mut h = x;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(h);
            if i + 1 < self.layers.len() {
                h = h.tanh();
            }
        }
        (h - y).square().mean()
    }
}

fn weights<M: Module>(m: &M) -> Vec<Vec<f32>> {
    struct Copy(Vec<Vec<f32>>);
    impl ModuleVisitor for Copy {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0
                .push(p.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let mut c = Copy(Vec::new());
    m.visit(&mut c);
    c.0
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// ‖Δθ‖ / ‖θ‖ between two modules, over all parameters as one vector.
fn global_ratio(before: &[Vec<f32>], after: &[Vec<f32>]) -> f64 {
    let w = norm(before.iter().flatten().map(|&x| f64::from(x)));
    let d = norm(
        before
            .iter()
            .flatten()
            .zip(after.iter().flatten())
            .map(|(&a, &b)| f64::from(b) - f64::from(a)),
    );
    d / w
}

fn device() -> Device {
    Device::flex().autodiff()
}

fn step_once(
    optimizer: impl Into<ModuleOptimizer>,
    guard: Guard,
    lr: f64,
    scale: f32,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, gradguard::StepReport) {
    step_from(Net::new(&device()), optimizer, guard, lr, scale)
}

/// One guarded step of `net`.
fn step_from(
    net: Net,
    optimizer: impl Into<ModuleOptimizer>,
    guard: Guard,
    lr: f64,
    scale: f32,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, gradguard::StepReport) {
    let device = device();
    let before = weights(&net);
    let mut optim = GuardedOptimizer::new(optimizer, guard);
    let loss = net.loss(scale, &device);
    let grads = GradientsParams::from_grads(loss.backward(), &net);
    let step = optim.step(lr, net, grads, Some(loss)).unwrap();
    (before, weights(&step.module), step.report)
}

#[test]
fn an_oversized_sgd_step_is_cut_to_the_bound() {
    let (before, after, report) = step_once(SgdConfig::new().init(), Guard::default(), 1.0, 1e4);
    let check = report.update.expect("the default guard bounds updates");
    assert!(check.global_ratio > 10.0, "{check:?}");
    let bound = UpdateBound::default();
    let tau = bound.max_ratio;
    let measured = global_ratio(&before, &after);
    assert!(measured <= tau * (1.0 + 1e-4), "{measured} > {tau}");
    // Each unit moved at most τ_u of its norm (or of a typical unit's, for small ones): the step
    // is cut near the tighter of the two bounds, not far below it.
    let tightest = tau.min(bound.max_unit_ratio.unwrap_or(tau));
    assert!(
        measured >= tightest * 0.5,
        "{measured}: cut far below the bound"
    );
    assert_eq!(report.decision, Decision::Apply);
    assert!(after.iter().flatten().all(|v| v.is_finite()));
}

#[test]
fn the_bound_holds_for_adam_too() {
    // Adam's first step moves every weight by ≈ lr: at lr 1 that is far above the bound, which
    // recognizes Adam by that step and holds it to the normalized family's τ.
    let (before, after, report) = step_once(AdamConfig::new().init(), Guard::default(), 1.0, 1.0);
    let check = report.update.unwrap();
    assert!(check.bounded > 0);
    assert_eq!(check.family, UpdateFamily::Normalized);
    let tau = UpdateBound::default().normalized.max_ratio;
    assert!(global_ratio(&before, &after) <= tau * (1.0 + 1e-4));
}

#[test]
fn the_optimizers_family_is_recognized_from_its_first_step() {
    for (optimizer, family) in [
        (SgdConfig::new().init(), UpdateFamily::Proportional),
        (
            SgdConfig::new()
                .with_momentum(Some(MomentumConfig::new()))
                .init(),
            UpdateFamily::Proportional,
        ),
        (AdamConfig::new().init(), UpdateFamily::Normalized),
        (
            AdamWConfig::new().with_weight_decay(0.1).init(),
            UpdateFamily::Normalized,
        ),
    ] {
        // A small rate: nothing fires, so the family is all the step tells.
        let (_, _, report) = step_once(optimizer, Guard::default(), 1e-4, 1.0);
        let check = report.update.unwrap();
        assert_eq!(check.family, family, "{check:?}");
    }
}

#[test]
fn adam_is_recognized_where_dead_inputs_leave_part_of_every_unit_still() {
    // Five of the eight inputs are always 0: no unit of the first layer has all its weights
    // moved, so none moves by the rate per value; each weight that moved did so by the rate.
    let optimizers = || {
        [
            AdamConfig::new().init(),
            AdamWConfig::new().with_weight_decay(0.1).init(),
        ]
    };
    let placements = [Placement::Host, Placement::Device];
    for (optimizer, placement) in placements
        .into_iter()
        .flat_map(|p| optimizers().map(|o| (o, p)))
    {
        let device = device();
        let net = Net::new(&device);
        let mut optim =
            GuardedOptimizer::new(optimizer, Guard::default()).with_placement(placement);
        let loss = net.loss_on(1.0, |feature| feature < 3, &device);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        let step = optim.step(1e-4, net, grads, Some(loss)).unwrap();
        let check = step.report.update.unwrap();
        assert_eq!(check.family, UpdateFamily::Normalized, "{check:?}");
    }
    // Gradient descent on the same data stays gradient descent.
    let device = device();
    let net = Net::new(&device);
    let mut optim = GuardedOptimizer::new(SgdConfig::new().init(), Guard::default());
    let loss = net.loss_on(1.0, |feature| feature < 3, &device);
    let grads = GradientsParams::from_grads(loss.backward(), &net);
    let step = optim.step(1e-4, net, grads, Some(loss)).unwrap();
    assert_eq!(
        step.report.update.unwrap().family,
        UpdateFamily::Proportional
    );
}

/// A deep tanh MLP as Burn initializes it, on inputs and targets in [0, 1).
#[derive(Module, Debug)]
struct DeepNet {
    layers: Vec<Linear>,
    head: Linear,
}

impl DeepNet {
    fn new(depth: usize, width: usize, device: &Device) -> Self {
        DeepNet {
            layers: (0..depth)
                .map(|_| LinearConfig::new(width, width).init(device))
                .collect(),
            head: LinearConfig::new(width, 1).init(device),
        }
    }

    fn loss(&self, device: &Device) -> Tensor<1> {
        let width = self.head.weight.dims()[0];
        let fraction = |i: usize, a: f32| (i as f32 * a).fract();
        let x: Vec<f32> = (0..128 * width).map(|i| fraction(i, 0.618_034)).collect();
        let y: Vec<f32> = (0..128).map(|i| fraction(i, 0.414_214)).collect();
        let mut h = Tensor::<2>::from_data(TensorData::new(x, [128, width]), device);
        for l in &self.layers {
            h = l.forward(h).tanh();
        }
        let y = Tensor::<2>::from_data(TensorData::new(y, [128, 1]), device);
        (self.head.forward(h) - y).square().mean()
    }
}

#[test]
fn adam_is_recognized_where_its_epsilon_outweighs_the_first_layers_gradients() {
    // 16 × Linear(512), tanh, Burn's initialization: the gradients fade with depth into Adam's
    // ε (1e-5), so the first layers move by η·|g|/(|g| + ε), under η and spread, the last ones
    // by η alike, and the layers between approach η with values still spread. (The rule
    // before took Adam for gradient descent on six of six nets of this shape.)
    let device = device();
    for (optimizer, family) in [
        (AdamConfig::new().init(), UpdateFamily::Normalized),
        (
            AdamWConfig::new().with_weight_decay(0.1).init(),
            UpdateFamily::Normalized,
        ),
        (SgdConfig::new().init(), UpdateFamily::Proportional),
    ] {
        let net = DeepNet::new(16, 512, &device);
        let mut optim = GuardedOptimizer::new(optimizer, Guard::default());
        let loss = net.loss(&device);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        let step = optim.step(1e-3, net, grads, Some(loss)).unwrap();
        let check = step.report.update.unwrap();
        assert_eq!(check.family, family, "{check:?}");
    }
}

#[test]
fn a_healthy_step_is_bit_for_bit_the_optimizers() {
    let device = device();
    let net = Net::new(&device);
    for lr in [1e-4, 1e-3] {
        let plain = {
            let net = net.clone();
            let mut optim: ModuleOptimizer = AdamConfig::new().init();
            let loss = net.loss(1.0, &device);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            weights(&optim.step(lr, net, grads))
        };
        let mut optim = GuardedOptimizer::new(AdamConfig::new().init(), Guard::default());
        let loss = net.loss(1.0, &device);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        // Adam's first step moves every weight by its rate: at Adam's default 1e-3 that is
        // 0.2–0.6% of these units' norms — past gradient descent's unit-wise τ_u = 0.5%, inside
        // the limits of the normalized family the guard recognizes Adam by.
        let step = optim.step(lr, net.clone(), grads, Some(loss)).unwrap();
        let check = step.report.update.unwrap();
        assert!(!check.changes_anything(), "{lr}: {check:?}");
        assert_eq!(weights(&step.module), plain, "{lr}");
    }
}

#[test]
fn an_overflowing_update_is_undone_with_the_optimizer_state() {
    // Finite gradients, but lr · g overflows f32: the weights would become ±inf.
    let (before, after, report) = step_once(SgdConfig::new().init(), Guard::default(), 1e38, 1e3);
    let check = report.update.unwrap();
    assert!(check.revert, "{check:?}");
    assert_eq!(report.decision, Decision::Skip);
    assert_eq!(after, before);
}

#[test]
fn without_the_bound_the_optimizer_goes_unchecked() {
    let config = GuardConfig {
        update_bound: None,
        ..GuardConfig::default()
    };
    let guard = Guard::new(config, Default::default()).unwrap();
    let (before, after, report) = step_once(SgdConfig::new().init(), guard, 1.0, 1e4);
    assert!(report.update.is_none());
    assert!(global_ratio(&before, &after) > 1.0);
}

#[test]
fn host_and_device_placements_bound_alike() {
    // The host path (f64 sums over the CPU backend's buffers) and the device path (tensor ops in
    // f32, scaled by each tensor's largest value) measure the same update.
    let device = device();
    let net = Net::new(&device);
    let run = |placement: Placement| {
        let net = net.clone();
        let mut optim = GuardedOptimizer::new(SgdConfig::new().init(), Guard::default())
            .with_placement(placement);
        let loss = net.loss(1e4, &device);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        let step = optim.step(1.0, net, grads, Some(loss)).unwrap();
        (weights(&step.module), step.report.update.unwrap())
    };
    let (host_w, host) = run(Placement::Host);
    let (dev_w, dev) = run(Placement::Device);
    assert!(
        (host.global_ratio / dev.global_ratio - 1.0).abs() < 1e-5,
        "{host:?} {dev:?}"
    );
    assert_eq!(host.bounded, dev.bounded);
    for (a, b) in host_w.iter().flatten().zip(dev_w.iter().flatten()) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "{a} {b}");
    }
}

#[test]
fn for_sgd_the_unit_wise_bound_is_agc_with_lambda_tau_over_the_rate() {
    // Only the unit-wise bound (the global and per-tensor bounds out of reach) against AGC at
    // λ = τ_u/η on the gradient, unbounded: plain SGD takes the same step, unit by unit.
    use gradguard::rules::{AdaptiveGradClip, Chain, Rule};
    let (tau, lr) = (0.005, 0.5);
    let units_only = GuardConfig {
        update_bound: Some(UpdateBound {
            max_ratio: 1e9,
            max_tensor_ratio: 1e9,
            min_ratio: 1e9,
            max_unit_ratio: Some(tau),
            ..UpdateBound::default()
        }),
        ..GuardConfig::default()
    };
    let net = Net::new(&device());
    let (before, bounded, report) = step_from(
        net.clone(),
        SgdConfig::new().init(),
        Guard::new(units_only, Chain::default()).unwrap(),
        lr,
        10.0,
    );
    let check = report.update.unwrap();
    assert!(
        check.bounded_units > 0 && check.global_scale == 1.0,
        "{check:?}"
    );
    let agc: Vec<Box<dyn Rule>> = vec![Box::new(AdaptiveGradClip::new(tau / lr).unwrap())];
    let no_bound = GuardConfig {
        update_bound: None,
        ..GuardConfig::default()
    };
    let guard = Guard::new(no_bound, Chain::new(agc).unwrap()).unwrap();
    let (_, clipped, _) = step_from(net, SgdConfig::new().init(), guard, lr, 10.0);
    // The two differ only in the floor under a unit's weight norm (AGC: ε = 1e-3; the bound: a
    // typical unit's norm, rms(θ)·√n_u): compare the units of the weight matrices above both.
    let all: Vec<f64> = before.iter().flatten().map(|&x| f64::from(x)).collect();
    let rms = norm(all.iter().copied()) / (all.len() as f64).sqrt();
    let mut compared = 0;
    for (t, fan_in) in [(0, 8), (2, 16), (4, 16)] {
        let outs = before[t].len() / fan_in;
        for unit in 0..outs {
            let column = |w: &[f32]| -> Vec<f64> {
                (0..fan_in).map(|i| f64::from(w[i * outs + unit])).collect()
            };
            if norm(column(&before[t]).into_iter()) < rms * (fan_in as f64).sqrt() {
                continue;
            }
            compared += 1;
            // The bound computes w + s·(w' − w) in f32: its rounding is relative to the weights
            // before the step as well as after (a weight that crossed zero ends far smaller
            // than its error; a random initialization found one).
            let columns = column(&bounded[t])
                .into_iter()
                .zip(column(&clipped[t]))
                .zip(column(&before[t]));
            for ((x, y), b) in columns {
                assert!(
                    (x - y).abs() <= 1e-6 * x.abs().max(b.abs()).max(1e-3),
                    "tensor {t}: {x} vs {y} (before the step: {b})"
                );
            }
        }
    }
    assert!(compared >= 10, "{compared} units compared");
    assert_ne!(bounded, before);
}
