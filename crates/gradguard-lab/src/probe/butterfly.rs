//! Sensitivity to initial conditions, made visible: train the same network twice from initial
//! weights `ε` apart, on the same batches, and watch the distance between the two runs.
//! Growth like `ε·e^{γt}` is the signature of chaos; γ is fitted while the distance is small.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::Net;
use crate::objective::data_loss;
use crate::plan::Plan;
use crate::plan::build_net;
use crate::tasks::TaskData;

/// Generator stream of the perturbation.
const BUTTERFLY_STREAM: u64 = 4;

/// Two runs from nearby starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Butterfly {
    /// The initial distance ‖θ_A − θ_B‖.
    pub epsilon: f64,
    /// ‖θ_A − θ_B‖ after each step (index 0: before the first).
    pub distance: Vec<Option<f64>>,
    /// Training loss of run A at each step.
    pub loss_a: Vec<Option<f64>>,
    /// Training loss of run B at each step.
    pub loss_b: Vec<Option<f64>>,
    /// γ: the fitted growth rate of ln distance per step while it is below 1000·ε.
    pub growth_rate: Option<f64>,
    /// ln 2 / γ: steps for the distance to double (when it grows).
    pub doubling_steps: Option<f64>,
}

/// Adds `values` (in module order) to the float parameters.
struct Shift<'a> {
    values: &'a [f32],
    at: usize,
}

impl ModuleMapper for Shift<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let values = self.values;
        let start = self.at;
        let mut taken = 0;
        let param = param.map(|t| {
            let shape = t.shape();
            taken = shape.num_elements();
            let device = t.device();
            let slice = values[start..start + taken].to_vec();
            let shift = Tensor::<D>::from_data(TensorData::new(slice, shape), &device);
            (t.inner() + shift.inner()).autodiff().require_grad()
        });
        self.at += taken;
        param
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Trains `config`'s network (its task, model and initialization; plain SGD at its rate, no
/// remedy) twice for `config.steps` steps, the second from weights moved by `epsilon` in a
/// random direction.
pub fn butterfly(config: &RunConfig, epsilon: f64) -> Result<Butterfly, LabError> {
    if !(epsilon > 0.0 && epsilon.is_finite()) {
        return Err(LabError::Config(format!(
            "epsilon must be positive, got {epsilon}"
        )));
    }
    let config = RunConfig {
        remedies: config
            .remedies
            .iter()
            .filter(|r| {
                matches!(
                    r.family(),
                    crate::Family::Init | crate::Family::Normalize | crate::Family::Architecture
                )
            })
            .copied()
            .collect(),
        ..config.clone()
    };
    let data = TaskData::new(config.task, config.seq_len, config.seed)?;
    let plan = Plan::new(&config, &data)?;
    let device = Device::flex().autodiff();
    let mut a = build_net(&plan, &data, config.seed, &device)?;
    let n = a.parameters_flat().len();
    let mut rng = crate::tasks::rng(config.seed, BUTTERFLY_STREAM, 0);
    let direction: Vec<f64> = (0..n)
        .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal))
        .collect();
    let norm = direction.iter().map(|v| v * v).sum::<f64>().sqrt();
    let shift: Vec<f32> = direction
        .iter()
        .map(|v| (epsilon * v / norm) as f32)
        .collect();
    let mut b = build_net(&plan, &data, config.seed, &device)?.map(&mut Shift {
        values: &shift,
        at: 0,
    });
    let distance = |a: &Net, b: &Net| -> Option<f64> {
        let d = a
            .parameters_flat()
            .iter()
            .zip(b.parameters_flat())
            .map(|(x, y)| (f64::from(*x) - f64::from(y)).powi(2))
            .sum::<f64>()
            .sqrt();
        finite(d)
    };
    let measured_epsilon = distance(&a, &b).unwrap_or(epsilon);
    let (mut opt_a, mut opt_b) = (SgdConfig::new().init(), SgdConfig::new().init());
    let mut out = Butterfly {
        epsilon: measured_epsilon,
        distance: vec![Some(measured_epsilon)],
        loss_a: Vec::new(),
        loss_b: Vec::new(),
        growth_rate: None,
        doubling_steps: None,
    };
    let sgd =
        |net: Net, opt: &mut burn::optim::ModuleOptimizer, batch: &crate::tasks::HostBatch| {
            let loss = data_loss(&net, batch, &device, config.precision);
            let value = finite(f64::from(loss.clone().into_scalar::<f32>()));
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            (opt.step(config.lr, net, grads), value)
        };
    for step in 0..config.steps {
        let batch = data.train_batch(step, config.batch, config.seed);
        let (next_a, loss_a) = sgd(a, &mut opt_a, &batch);
        let (next_b, loss_b) = sgd(b, &mut opt_b, &batch);
        (a, b) = (next_a, next_b);
        out.loss_a.push(loss_a);
        out.loss_b.push(loss_b);
        out.distance.push(distance(&a, &b));
    }
    // Fit ln d = c + γ t over the steps while the distance is finite and below 1000·ε.
    let points: Vec<(f64, f64)> = out
        .distance
        .iter()
        .enumerate()
        .map_while(|(t, d)| {
            d.filter(|&d| d > 0.0 && d < 1e3 * measured_epsilon)
                .map(|d| (t as f64, d.ln()))
        })
        .collect();
    if points.len() >= 3 {
        let n = points.len() as f64;
        let (mx, my) = (
            points.iter().map(|p| p.0).sum::<f64>() / n,
            points.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let gamma = sxy / sxx;
        out.growth_rate = finite(gamma);
        out.doubling_steps = (gamma > 0.0).then(|| std::f64::consts::LN_2 / gamma);
    }
    Ok(out)
}
