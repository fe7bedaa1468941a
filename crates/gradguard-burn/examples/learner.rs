//! burn-train's `Learner` with gradguard inside `TrainStep::optimize`.
//!
//! The same task as `plain_loop.rs` — a deep tanh MLP, every 40th item of the data set corrupt
//! (a NaN input) — trained by `SupervisedTraining`. The model carries a [`LearnerGuard`]: its
//! `step` records the loss, its `optimize` lets the guard decide. Batches holding a corrupt item
//! are skipped; the weights stay finite; every step's report goes to `metrics.jsonl`.
//!
//! Run: `cargo run --release -p gradguard-burn --features learner --example learner`

use std::path::Path;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::metric::LossMetric;
use burn::train::{
    InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep,
};
use gradguard::rules::{Chain, ClipByGlobalNorm, Rule};
use gradguard::{Guard, GuardConfig};
use gradguard_burn::LearnerGuard;
use gradguard_report::{JsonlSink, MetricsRecord, Sink};

/// One sample of `y = sin(x₀ + … + x₇)`.
#[derive(Clone, Debug)]
pub struct Item {
    x: [f32; 8],
    y: f32,
}

/// A batch on the training device.
#[derive(Clone, Debug)]
pub struct Batch {
    x: Tensor<2>,
    y: Tensor<2>,
}

#[derive(Clone, Debug)]
struct ItemBatcher;

impl Batcher<Item, Batch> for ItemBatcher {
    fn batch(&self, items: Vec<Item>, device: &Device) -> Batch {
        let n = items.len();
        let x: Vec<f32> = items.iter().flat_map(|i| i.x).collect();
        let y: Vec<f32> = items.iter().map(|i| i.y).collect();
        Batch {
            x: Tensor::from_data(TensorData::new(x, [n, 8]), device),
            y: Tensor::from_data(TensorData::new(y, [n, 1]), device),
        }
    }
}

/// A deep tanh MLP that carries its guard.
#[derive(Module, Debug)]
pub struct Model {
    layers: Vec<Linear>,
    head: Linear,
    #[module(skip)]
    guard: LearnerGuard<Model>,
}

impl Model {
    fn new(device: &Device, guard: LearnerGuard<Model>) -> Self {
        Model {
            layers: (0..12)
                .map(|i| LinearConfig::new(if i == 0 { 8 } else { 64 }, 64).init(device))
                .collect(),
            head: LinearConfig::new(64, 1).init(device),
            guard,
        }
    }

    fn regression(&self, batch: Batch) -> RegressionOutput {
        let mut h = batch.x;
        for layer in &self.layers {
            h = layer.forward(h).tanh();
        }
        let output = self.head.forward(h);
        let loss = (output.clone() - batch.y.clone()).square().mean();
        RegressionOutput::new(loss, output, batch.y)
    }

    /// Whether every weight is finite.
    pub fn is_finite(&self) -> bool {
        self.layers.iter().chain([&self.head]).all(|l| {
            let w: Vec<f32> = l
                .weight
                .val()
                .into_data()
                .try_to_vec()
                .expect("f32 weights");
            w.iter().all(|v| v.is_finite())
        })
    }
}

impl TrainStep for Model {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> TrainOutput<RegressionOutput> {
        let out = self.regression(batch);
        self.guard.record_loss(out.loss.clone());
        TrainOutput::new(self, out.loss.backward(), out)
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        self.guard.clone().optimize(self, optim, lr, grads)
    }
}

impl InferenceStep for Model {
    type Input = Batch;
    type Output = RegressionOutput;

    fn step(&self, batch: Batch) -> RegressionOutput {
        self.regression(batch)
    }
}

/// `n` items, every 40th with a NaN input.
pub fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| {
            let mut x = [0f32; 8];
            for (k, v) in x.iter_mut().enumerate() {
                *v = (((i * 8 + k) * 7919 % 2000) as f32 / 1000.0) - 1.0;
            }
            let y = x.iter().sum::<f32>().sin();
            if i % 40 == 39 {
                x[0] = f32::NAN;
            }
            Item { x, y }
        })
        .collect()
}

/// Trains for `epochs` epochs on `n` items in batches of 16; returns the guard and the model.
pub fn run(n: usize, epochs: usize, dir: &Path) -> (LearnerGuard<Model>, Model) {
    let device = Device::flex().autodiff();
    let rules: Vec<Box<dyn Rule>> = vec![Box::new(ClipByGlobalNorm::new(1.0).expect("valid"))];
    let config = GuardConfig {
        loss_spike: None,
        ..GuardConfig::default()
    };
    let guard = LearnerGuard::new(
        Guard::new(config, Chain::new(rules).expect("consistent")).expect("valid"),
    );
    std::fs::create_dir_all(dir).expect("output folder");
    let mut sink = JsonlSink::create(dir.join("metrics.jsonl")).expect("metrics file");
    guard.on_report(move |report| {
        sink.write(&MetricsRecord::from_report(report, 1e-3))
            .and_then(|()| sink.flush())
            .expect("telemetry");
    });
    let loader = |items: Vec<Item>| {
        DataLoaderBuilder::new(ItemBatcher)
            .batch_size(16)
            .set_device(device.clone())
            .build(InMemDataset::new(items))
    };
    let model = Model::new(&device, guard.clone());
    let learner = Learner::new(model, AdamConfig::new().init(), 1e-3);
    // The Learner keeps its logs and checkpoints in a folder of its own; ours sits beside it.
    let result = SupervisedTraining::new(dir.join("learner"), loader(items(n)), loader(items(64)))
        .metric_train_numeric(LossMetric::new())
        .num_epochs(epochs)
        .launch(learner);
    (guard, result.model)
}

#[allow(dead_code)]
fn main() {
    let dir = Path::new("target/learner_example");
    let (guard, model) = run(640, 2, dir);
    let c = guard.counters();
    println!(
        "{} steps: {} applied, {} skipped; weights finite: {}",
        c.step,
        c.applied,
        c.skipped,
        model.is_finite()
    );
}
