//! A guarded training loop on a GPU through Burn's `wgpu` backend (Vulkan, Metal, DirectX).
//!
//! A 10-layer tanh MLP learns `y = sin(x₀ + … + x₇)` with Adam under the default guard — no
//! clipping rule picked by hand. Every 25th batch carries a NaN, as a bad record would. The
//! guard's statistics run where the gradients live, read back once per step; the corrupt steps
//! are skipped with the weights untouched.
//!
//! Run: `cargo run --release -p gradguard-burn --features wgpu --example wgpu_loop`
//! (on a machine without a GPU, Mesa's software Vulkan driver `llvmpipe` serves).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use gradguard::{Decision, Guard};
use gradguard_burn::GuardedOptimizer;

/// A deep tanh MLP on 8 inputs.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    head: Linear,
}

impl Mlp {
    /// `depth` hidden layers of `width` units.
    pub fn new(depth: usize, width: usize, device: &Device) -> Self {
        Mlp {
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
}

/// A deterministic batch; `corrupt` puts a NaN in the inputs.
fn batch(step: usize, corrupt: bool, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let n = 64;
    let mut x: Vec<f32> = (0..n * 8)
        .map(|i| (((i * 7919 + step * 104_729) % 2000) as f32 / 1000.0) - 1.0)
        .collect();
    let y: Vec<f32> = x.chunks(8).map(|r| r.iter().sum::<f32>().sin()).collect();
    if corrupt {
        x[5] = f32::NAN;
    }
    (
        Tensor::from_data(TensorData::new(x, [n, 8]), device),
        Tensor::from_data(TensorData::new(y, [n, 1]), device),
    )
}

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// Mean loss of the first 5 clean steps.
    pub first_loss: f64,
    /// Mean loss of the last 5 clean steps.
    pub last_loss: f64,
    /// Steps the guard skipped.
    pub skipped: usize,
    /// Device-to-host reads of statistics per step.
    pub reads_per_step: f64,
}

/// Trains for `steps` steps on `device` under the default guard.
pub fn run(steps: usize, device: &Device) -> Outcome {
    let mut model = Mlp::new(10, 64, device);
    let mut optim = GuardedOptimizer::new(AdamConfig::new().init(), Guard::default());
    let (mut losses, mut skipped, mut reads) = (Vec::new(), 0, 0u32);
    for s in 0..steps {
        if optim.skip_batch() {
            continue;
        }
        let (x, y) = batch(s, s % 25 == 24, device);
        let loss = model.loss(x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let step = match optim.step(3e-3, model, grads, Some(loss)) {
            Ok(step) => step,
            Err(stopped) => panic!("the guard stopped training: {}", stopped.error),
        };
        model = step.module;
        reads += step.host_reads;
        match step.report.decision {
            Decision::Skip => skipped += 1,
            _ => losses.extend(step.report.loss),
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Outcome {
        first_loss: mean(&losses[..5]),
        last_loss: mean(&losses[losses.len() - 5..]),
        skipped,
        reads_per_step: f64::from(reads) / steps as f64,
    }
}

#[allow(dead_code)] // A test includes this file as a module and calls `run` itself.
fn main() {
    let device = Device::wgpu(DeviceKind::DefaultDevice).autodiff();
    let outcome = run(100, &device);
    println!(
        "loss {:.4} → {:.4}, {} corrupt steps skipped, {:.1} statistics reads per step",
        outcome.first_loss, outcome.last_loss, outcome.skipped, outcome.reads_per_step
    );
}
