//! The learning-rate range test (Smith 2017, "Cyclical learning rates", §3.3): train from the
//! initial weights while the rate grows geometrically, and report the largest rate before the
//! smoothed loss blows up.

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::models::Net;
use crate::objective::data_loss;
use crate::precision::Precision;
use crate::tasks::TaskData;

/// Steps of the range test.
pub const RANGE_STEPS: u64 = 100;
/// The smallest rate tried.
pub const RANGE_MIN_LR: f64 = 1e-5;
/// The largest rate tried.
pub const RANGE_MAX_LR: f64 = 10.0;

/// What the range test saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrRange {
    /// The largest rate whose step left the smoothed loss finite and within 4× its minimum.
    pub largest_stable: f64,
    /// `(rate, smoothed loss)` per step until the blow-up (`None`: not finite).
    pub curve: Vec<(f64, Option<f64>)>,
}

/// Runs the range test on `net` (consumed) with `optimizer`, on the task's first batches.
pub fn range_test(
    mut net: Net,
    mut optimizer: ModuleOptimizer,
    data: &TaskData,
    batch: usize,
    seed: u64,
    device: &Device,
    precision: Precision,
) -> LrRange {
    let ratio = (RANGE_MAX_LR / RANGE_MIN_LR).powf(1.0 / (RANGE_STEPS - 1) as f64);
    let (mut ema, mut best) = (0.0f64, f64::INFINITY);
    let mut largest_stable = RANGE_MIN_LR;
    let mut curve = Vec::new();
    for step in 0..RANGE_STEPS {
        let lr = RANGE_MIN_LR * ratio.powi(step as i32);
        let b = data.train_batch(step, batch, seed);
        let loss = data_loss(&net, &b, device, precision);
        let value = f64::from(loss.clone().into_scalar::<f32>());
        // Exponential moving average with bias correction (β = 0.98 in fastai; 0.9 here for a
        // 100-step test).
        ema = 0.9 * ema + 0.1 * value;
        let smoothed = ema / (1.0 - 0.9f64.powi(step as i32 + 1));
        if !smoothed.is_finite() || smoothed > 4.0 * best {
            curve.push((lr, smoothed.is_finite().then_some(smoothed)));
            break;
        }
        curve.push((lr, Some(smoothed)));
        best = best.min(smoothed);
        // This loss is the first to see the previous step's rate: that rate proved stable.
        if step > 0 {
            largest_stable = lr / ratio;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optimizer.step(lr, net, grads);
    }
    LrRange {
        largest_stable,
        curve,
    }
}
