//! A plain Burn training loop guarded by gradguard.
//!
//! A 12-layer tanh MLP learns a smooth function; every 40th batch is corrupt (a NaN in its
//! inputs), as a bad record in a data set would be. The guard skips those steps, clips the global
//! norm, and writes per-step telemetry (`metrics.jsonl`, TensorBoard events). Without it, the first
//! corrupt batch turns every weight into NaN for good.
//!
//! Run: `cargo run --release -p gradguard-burn --example plain_loop`

use std::path::Path;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use gradguard::rules::{Chain, ClipByGlobalNorm, Rule};
use gradguard::{Guard, GuardConfig};
use gradguard_burn::{FusedRule, GuardedOptimizer};
use gradguard_report::{JsonlSink, MetricsRecord, Sink, Sinks, TensorBoardSink};

/// A deep tanh MLP.
#[derive(Module, Debug)]
pub struct DeepMlp {
    layers: Vec<Linear>,
    head: Linear,
}

impl DeepMlp {
    /// `depth` hidden layers of `width` units on 8 inputs.
    pub fn new(depth: usize, width: usize, device: &Device) -> Self {
        DeepMlp {
            layers: (0..depth)
                .map(|i| LinearConfig::new(if i == 0 { 8 } else { width }, width).init(device))
                .collect(),
            head: LinearConfig::new(width, 1).init(device),
        }
    }

    /// Mean squared error on a batch.
    pub fn loss(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
        let mut h = x;
        for layer in &self.layers {
            h = layer.forward(h).tanh();
        }
        (self.head.forward(h) - y).square().mean()
    }

    /// Whether every weight is finite.
    pub fn is_finite(&self) -> bool {
        let mut finite = true;
        for l in self.layers.iter().chain(std::iter::once(&self.head)) {
            let w: Vec<f32> = l
                .weight
                .val()
                .into_data()
                .try_to_vec()
                .expect("f32 weights");
            finite &= w.iter().all(|v| v.is_finite());
        }
        finite
    }
}

/// A deterministic batch of `y = sin(x₀ + … + x₇)`; `corrupt` puts a NaN in the inputs.
pub fn batch(step: usize, corrupt: bool, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let n = 64;
    let mut x: Vec<f32> = (0..n * 8)
        .map(|i| (((i * 7919 + step * 104_729) % 2000) as f32 / 1000.0) - 1.0)
        .collect();
    let y: Vec<f32> = x.chunks(8).map(|r| r.iter().sum::<f32>().sin()).collect();
    if corrupt {
        x[3] = f32::NAN;
    }
    (
        Tensor::from_data(TensorData::new(x, [n, 8]), device),
        Tensor::from_data(TensorData::new(y, [n, 1]), device),
    )
}

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// Mean loss of the first 10 clean steps.
    pub first_loss: f64,
    /// Mean loss of the last 10 clean steps.
    pub last_loss: f64,
    /// Steps the guard skipped.
    pub skipped: u64,
    /// Whether the weights are finite at the end.
    pub finite: bool,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Trains for `steps` steps, guarded (telemetry into `out`) or not.
pub fn run(steps: usize, guarded: bool, out: &Path) -> Outcome {
    let device = Device::flex().autodiff();
    let mut model = DeepMlp::new(12, 64, &device);
    let lr = 1e-3;
    let mut losses = Vec::new();
    let corrupt = |s: usize| s % 40 == 39;
    if !guarded {
        let mut optim: ModuleOptimizer = AdamConfig::new().init();
        for s in 0..steps {
            let (x, y) = batch(s, corrupt(s), &device);
            let loss = model.loss(x, y);
            losses.push(f64::from(loss.clone().into_scalar::<f32>()));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
        }
        return Outcome {
            first_loss: mean(&losses[..10]),
            last_loss: mean(&losses[losses.len() - 10..]),
            skipped: 0,
            finite: model.is_finite(),
        };
    }
    std::fs::create_dir_all(out).expect("output folder");
    let mut sinks = Sinks::new()
        .with(JsonlSink::create(out.join("metrics.jsonl")).expect("metrics file"))
        .with(TensorBoardSink::create(out).expect("event file"));
    let rules: Vec<Box<dyn Rule>> = vec![Box::new(ClipByGlobalNorm::new(1.0).expect("valid"))];
    let guard = Guard::new(
        GuardConfig::default(),
        Chain::new(rules).expect("consistent"),
    )
    .expect("valid configuration");
    // Burn's Adam, step for step (the unguarded loop above uses it), with the guard's update
    // bound measured in the optimizer's own pass.
    let mut optim = GuardedOptimizer::fused(FusedRule::adam(), guard);
    for s in 0..steps {
        if optim.skip_batch() {
            continue;
        }
        let (x, y) = batch(s, corrupt(s), &device);
        let loss = model.loss(x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let step = match optim.step(lr, model, grads, Some(loss)) {
            Ok(step) => step,
            Err(stopped) => panic!("the guard stopped training: {}", stopped.error),
        };
        model = step.module;
        if let Some(l) = step.report.loss.filter(|l| l.is_finite()) {
            losses.push(l);
        }
        sinks
            .write(&MetricsRecord::from_report(&step.report, lr))
            .expect("telemetry");
    }
    sinks.flush().expect("telemetry");
    Outcome {
        first_loss: mean(&losses[..10]),
        last_loss: mean(&losses[losses.len() - 10..]),
        skipped: optim.guard().counters().skipped,
        finite: model.is_finite(),
    }
}

#[allow(dead_code)]
fn main() {
    let out = Path::new("target/plain_loop");
    let plain = run(400, false, out);
    let guarded = run(400, true, out);
    println!(
        "without the guard: loss {:.4} -> {:.4}, weights finite: {}",
        plain.first_loss, plain.last_loss, plain.finite
    );
    println!(
        "with the guard:    loss {:.4} -> {:.4}, weights finite: {}, {} corrupt steps skipped",
        guarded.first_loss, guarded.last_loss, guarded.finite, guarded.skipped
    );
    println!("telemetry: {}", out.display());
}
