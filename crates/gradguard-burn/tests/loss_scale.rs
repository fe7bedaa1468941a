//! Dynamic loss scaling through the guarded optimizer: scaled backward, unscaled step.

mod common;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{DType, Device, Tensor, TensorData};
use gradguard::{Decision, Guard, GuardConfig, LossScaler};
use gradguard_burn::{GuardedOptimizer, Placement};

#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn loss(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
        let mut h = x;
        for l in &self.layers {
            h = l.forward(h).tanh();
        }
        (h - y).square().mean()
    }
}

fn batch(step: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let x: Vec<f32> = (0..16 * 8)
        .map(|i| ((i + 3 * step) as f32 * 0.37).sin())
        .collect();
    let y: Vec<f32> = (0..16 * 8)
        .map(|i| ((i + step) as f32 * 0.11).cos())
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [16, 8]), device),
        Tensor::from_data(TensorData::new(y, [16, 8]), device),
    )
}

fn weights(m: &Mlp) -> Vec<Vec<f32>> {
    m.layers
        .iter()
        .map(|l| l.weight.val().into_data().try_to_vec::<f32>().unwrap())
        .collect()
}

fn optimizer(scaled: bool) -> GuardedOptimizer<Mlp> {
    GuardedOptimizer::new(SgdConfig::new().init(), guard(scaled))
}

fn guard(scaled: bool) -> Guard {
    let guard = Guard::new(
        GuardConfig {
            update_bound: None,
            ..GuardConfig::default()
        },
        Default::default(),
    )
    .unwrap();
    if scaled {
        guard.with_loss_scaler(LossScaler::default())
    } else {
        guard
    }
}

#[test]
fn a_scaled_run_takes_the_unscaled_runs_steps_bit_for_bit() {
    let device = Device::flex().autodiff();
    let start = Mlp {
        layers: (0..4)
            .map(|_| LinearConfig::new(8, 8).init(&device))
            .collect(),
    };
    let mut runs = Vec::new();
    for scaled in [false, true] {
        let mut model = start.clone();
        let mut optim = optimizer(scaled);
        let mut losses = Vec::new();
        for s in 0..5 {
            let (x, y) = batch(s, &device);
            let loss = optim.scale_loss(model.loss(x, y));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let step = optim.step(0.1, model, grads, Some(loss)).unwrap();
            assert_eq!(step.report.decision, Decision::Apply);
            assert_eq!(step.report.loss_scale.is_some(), scaled);
            losses.push(step.report.loss.unwrap());
            model = step.module;
        }
        runs.push((weights(&model), losses));
    }
    assert_eq!(runs[0], runs[1]);
}

#[test]
fn an_overflowing_scaled_step_is_skipped_and_the_scale_halved() {
    let device = Device::flex().autodiff();
    let model = Mlp {
        layers: vec![LinearConfig::new(8, 8).init(&device)],
    };
    let before = weights(&model);
    let mut optim = optimizer(true);
    let (x, y) = batch(0, &device);
    let loss = optim.scale_loss(model.loss(x, y));
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    // Overflow, as an f16 gradient at too large a scale would.
    let id = model.layers[0].weight.id;
    let g = grads.remove::<2>(id).unwrap();
    grads.register::<2>(id, g.mul_scalar(f32::INFINITY));
    let step = optim.step(0.1, model, grads, Some(loss)).unwrap();
    assert_eq!(step.report.decision, Decision::Skip);
    assert_eq!(step.report.consecutive_bad, 0);
    assert_eq!(weights(&step.module), before);
    let update = step.report.loss_scale.unwrap();
    assert_eq!((update.scale, update.next_scale), (65_536.0, 32_768.0));
    // The telemetry records the scale of every step (JSONL, TensorBoard's `loss_scale`).
    let record = gradguard_report::MetricsRecord::from_report(&step.report, 0.1);
    assert_eq!(record.loss_scale, Some(65_536.0));
}

#[test]
fn half_precision_models_step_through_the_guard_on_both_placements() {
    let device = Device::flex().autodiff();
    for placement in [Placement::Host, Placement::Device] {
        let tested = common::half_precision_models_step(&device, placement);
        assert_eq!(tested, [DType::F16, DType::BF16], "flex computes in both");
    }
}

/// burn-train's `Learner` path: `LearnerGuard::scale_loss` in `step`, the guard unscales in
/// `optimize`; the steps are the unscaled ones, bit for bit.
#[cfg(feature = "learner")]
#[test]
fn the_learner_guard_scales_and_unscales_as_the_optimizer_does() {
    use gradguard_burn::LearnerGuard;
    let device = Device::flex().autodiff();
    let start = Mlp {
        layers: (0..3)
            .map(|_| LinearConfig::new(8, 8).init(&device))
            .collect(),
    };
    let mut runs = Vec::new();
    for scaled in [false, true] {
        let guard = LearnerGuard::new(guard(scaled));
        let mut optim = SgdConfig::new().init();
        let mut model = start.clone();
        for s in 0..4 {
            let (x, y) = batch(s, &device);
            let loss = guard.scale_loss(model.loss(x, y));
            guard.record_loss(loss.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = guard.optimize(model, &mut optim, 0.1.into(), grads);
        }
        assert_eq!(guard.counters().step, 4);
        runs.push(weights(&model));
    }
    assert_eq!(runs[0], runs[1]);
}
