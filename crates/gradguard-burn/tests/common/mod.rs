//! The Burn adapter's promises, on any device: statistics and clips equal the host's, NaN is
//! named and skipped with nothing changed, rollback is exact, huge gradients stay finite.
//! `adapter.rs` runs them on flex (both placements), `wgpu.rs` on a wgpu device.

// Each test binary uses part of the suite.
#![allow(dead_code)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{Linear, LinearConfig, Lstm, LstmConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use gradguard::detect::SpikeConfig;
use gradguard::rules::{
    AdaptiveGradClip, Chain, ClipByGlobalNorm, ClipByValue, Rule, RuleAction, ZeroNonFinite,
};
use gradguard::{
    Decision, Gradients, Guard, GuardConfig, GuardError, HostGradients, HostTensor,
    NonFinitePolicy, Source, SpikeAction, UnitLayout,
};
use gradguard_burn::{BurnGradients, GuardedOptimizer, Placement, parameter_names};

/// A tanh MLP from 8 inputs to 1 output.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    head: Linear,
}

impl Mlp {
    pub fn new(depth: usize, width: usize, device: &Device) -> Self {
        Mlp {
            layers: (0..depth)
                .map(|i| LinearConfig::new(if i == 0 { 8 } else { width }, width).init(device))
                .collect(),
            head: LinearConfig::new(width, 1).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for l in &self.layers {
            h = l.forward(h).tanh();
        }
        self.head.forward(h)
    }

    pub fn loss(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
        (self.forward(x) - y).square().mean()
    }
}

#[derive(Module, Debug)]
struct Recurrent {
    lstm: Lstm,
    head: Linear,
}

fn batch(device: &Device, seed: f32) -> (Tensor<2>, Tensor<2>) {
    let x: Vec<f32> = (0..32 * 8)
        .map(|i| (i as f32 * 0.37 + seed).sin())
        .collect();
    let y: Vec<f32> = (0..32).map(|i| (i as f32 * 0.11 + seed).cos()).collect();
    (
        Tensor::from_data(TensorData::new(x, [32, 8]), device),
        Tensor::from_data(TensorData::new(y, [32, 1]), device),
    )
}

/// The gradients as host tensors, named by module path, for the host reference.
fn host_copy<M: Module>(module: &M, grads: &GradientsParams) -> HostGradients {
    struct Copy<'a> {
        path: Vec<String>,
        grads: &'a GradientsParams,
        out: Vec<HostTensor>,
    }
    impl ModuleVisitor for Copy<'_> {
        fn enter_module(&mut self, n: &str, _: &str) {
            self.path.push(n.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(p.id) {
                let shape = g.dims().to_vec();
                let values = g.into_data().try_to_vec::<f32>().unwrap();
                self.out
                    .push(HostTensor::new(self.path.join("."), shape, values).unwrap());
            }
        }
    }
    let mut c = Copy {
        path: vec![],
        grads,
        out: vec![],
    };
    module.visit(&mut c);
    HostGradients::new(c.out).unwrap()
}

/// Every float parameter, copied to the host under its module path.
pub fn params_copy<M: Module>(module: &M) -> Vec<HostTensor> {
    struct Copy {
        path: Vec<String>,
        out: Vec<HostTensor>,
    }
    impl ModuleVisitor for Copy {
        fn enter_module(&mut self, n: &str, _: &str) {
            self.path.push(n.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let t = p.val();
            let shape = t.dims().to_vec();
            let values = t.into_data().try_to_vec::<f32>().unwrap();
            self.out
                .push(HostTensor::new(self.path.join("."), shape, values).unwrap());
        }
    }
    let mut c = Copy {
        path: vec![],
        out: vec![],
    };
    module.visit(&mut c);
    c.out
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

pub fn weights<M: Module>(m: &M) -> Vec<Vec<f32>> {
    params_copy(m).into_iter().map(|t| t.values).collect()
}

fn optimizer_bytes(o: &ModuleOptimizer) -> Vec<u8> {
    o.into_bytes().unwrap().to_vec()
}

fn guard(config: GuardConfig, rules: Vec<Box<dyn Rule>>) -> Guard {
    Guard::new(config, Chain::new(rules).unwrap()).unwrap()
}

fn quiet() -> GuardConfig {
    GuardConfig {
        grad_spike: None,
        loss_spike: None,
        ..Default::default()
    }
}

pub fn names_are_module_paths(dev: &Device) {
    let m = Mlp::new(2, 4, dev);
    assert_eq!(
        parameter_names(&m),
        vec![
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.1.bias",
            "head.weight",
            "head.bias"
        ]
    );
}

type MakeRule = Box<dyn Fn() -> Box<dyn Rule>>;

/// Statistics equal the host's to 1e-6 relative, in one read, for an MLP and an LSTM.
pub fn statistics_match(dev: &Device, placement: Placement) {
    let dev = dev.clone();
    let mlp = Mlp::new(6, 64, &dev);
    let (x, y) = batch(&dev, 0.0);
    let loss = mlp.loss(x, y);
    let loss_value = f64::from(loss.clone().into_scalar::<f32>());
    let mut grads = GradientsParams::from_grads(loss.backward(), &mlp);
    let host = host_copy(&mlp, &grads);
    let view = BurnGradients::collect_with(
        &mlp,
        &mut grads,
        Some(loss_detached(loss_value, &dev)),
        false,
        placement,
    );
    if placement != Placement::Auto {
        assert_eq!(view.on_host(), placement == Placement::Host);
    }
    // On the device: one read of the stacked statistics and loss. On the host: none.
    assert_eq!(view.host_reads(), if view.on_host() { 0 } else { 1 });
    assert!((view.loss().unwrap() - loss_value).abs() < 1e-6);
    let (ours, theirs) = (view.stats(), host.stats());
    for i in 0..ours.len() {
        assert_eq!(view.name(i), host.name(i));
        assert!(
            rel(ours[i].sum_squares, theirs[i].sum_squares) < 1e-6,
            "{}: {} vs {}",
            view.name(i),
            ours[i].sum_squares,
            theirs[i].sum_squares
        );
        assert!(rel(ours[i].sum_abs, theirs[i].sum_abs) < 1e-6);
        assert_eq!(ours[i].max_abs, theirs[i].max_abs);
    }
    let global = |s: &[gradguard::TensorStats]| gradguard::combined(s).l2();
    assert!(rel(global(&ours), global(&theirs)) < 1e-6);

    let rnn = Recurrent {
        lstm: LstmConfig::new(3, 16, true).init(&dev),
        head: LinearConfig::new(16, 1).init(&dev),
    };
    let seq = Tensor::<3>::random([4, 20, 3], Distribution::Default, &dev);
    let (out, _) = rnn.lstm.forward(seq, None);
    let last: Tensor<2> = out.narrow(1, 19, 1).reshape([4, 16]);
    let loss = rnn.head.forward(last).square().mean();
    let mut grads = GradientsParams::from_grads(loss.backward(), &rnn);
    let host = host_copy(&rnn, &grads);
    let view = BurnGradients::collect_with(&rnn, &mut grads, None, false, placement);
    assert!(
        view.tensor_count() >= 10,
        "an LSTM has gates with weights and biases"
    );
    assert!(view.name(0).starts_with("lstm."));
    assert!(rel(global(&view.stats()), global(&host.stats())) < 1e-6);
}

fn loss_detached(v: f64, dev: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(vec![v as f32], [1]), dev)
}

/// Global-norm, value and AGC clips give the host rules' gradients.
pub fn clipping_matches(dev: &Device, placement: Placement) {
    let dev = dev.clone();
    let mlp = Mlp::new(4, 32, &dev);
    let (x, y) = batch(&dev, 1.0);
    let grads = GradientsParams::from_grads(mlp.loss(x, y).backward(), &mlp);
    let host = host_copy(&mlp, &grads);
    let host_with_params = host.clone().with_parameters(params_copy(&mlp)).unwrap();
    let rules: Vec<(MakeRule, bool)> = vec![
        (
            Box::new(|| Box::new(ClipByGlobalNorm::new(1e-3).unwrap())),
            false,
        ),
        (
            Box::new(|| Box::new(ClipByValue::new(1e-4).unwrap())),
            false,
        ),
        (
            Box::new(|| {
                Box::new(AdaptiveGradClip {
                    clipping: 1e-3,
                    eps: 1e-3,
                    layout: UnitLayout::InputFirst,
                })
            }),
            true,
        ),
    ];
    for (make, needs_params) in rules {
        let mut grads = GradientsParams::from_grads(
            mlp.loss(batch(&dev, 1.0).0, batch(&dev, 1.0).1).backward(),
            &mlp,
        );
        let mut view = BurnGradients::collect_with(&mlp, &mut grads, None, needs_params, placement);
        let mut stats = view.stats();
        let ours = make().apply(&mut view, &mut stats).unwrap();
        let mut reference = if needs_params {
            host_with_params.clone()
        } else {
            host.clone()
        };
        let mut hstats = reference.stats();
        let theirs = make().apply(&mut reference, &mut hstats).unwrap();
        assert_eq!(ours.action, theirs.action, "{}", ours.rule);
        let clipped = host_copy(&mlp, &view.into_gradients_params(&mlp));
        for (a, b) in clipped.tensors().iter().zip(reference.tensors()) {
            for (x, y) in a.values.iter().zip(&b.values) {
                assert!(
                    (x - y).abs() <= 1e-6 * y.abs().max(1e-12) + 1e-12,
                    "{} {}: {x} vs {y}",
                    ours.rule,
                    a.name
                );
            }
        }
    }
}

fn poison(grads: &mut GradientsParams, id: burn::module::ParamId, index: usize) {
    let g = grads.remove::<2>(id).unwrap();
    let dims = g.dims();
    let dev = g.device();
    let mut v = g.into_data().try_to_vec::<f32>().unwrap();
    v[index] = f32::NAN;
    grads.register::<2>(id, Tensor::from_data(TensorData::new(v, dims), &dev));
}

/// An injected NaN is named (tensor, index); under skip weights and optimizer state are
/// byte-for-byte unchanged; under error the step stops naming it.
pub fn injected_nan(dev: &Device, placement: Placement) {
    let dev = dev.clone();
    let mut model = Mlp::new(3, 16, &dev);
    let mut optim = GuardedOptimizer::new(AdamConfig::new().init(), guard(quiet(), vec![]))
        .with_placement(placement);
    // Two good steps so Adam has state.
    for s in 0..2 {
        let (x, y) = batch(&dev, s as f32);
        let loss = model.loss(x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads, None).unwrap().module;
    }
    let before_w = weights(&model);
    let before_o = optimizer_bytes(optim.optimizer());
    let (x, y) = batch(&dev, 9.0);
    let mut grads = GradientsParams::from_grads(model.loss(x, y).backward(), &model);
    poison(&mut grads, model.layers[1].weight.id, 5);
    let step = optim.step(1e-2, model, grads, None).unwrap();
    assert_eq!(step.report.decision, Decision::Skip);
    assert!(
        step.report.reasons[0].contains("'layers.1.weight' at index 5"),
        "{:?}",
        step.report.reasons
    );
    assert_eq!(weights(&step.module), before_w);
    assert_eq!(optimizer_bytes(optim.optimizer()), before_o);

    let mut strict = GuardedOptimizer::new(
        SgdConfig::new().init(),
        guard(
            GuardConfig {
                non_finite: NonFinitePolicy::Error,
                ..quiet()
            },
            vec![],
        ),
    )
    .with_placement(placement);
    let model = step.module;
    let (x, y) = batch(&dev, 3.0);
    let mut grads = GradientsParams::from_grads(model.loss(x, y).backward(), &model);
    poison(&mut grads, model.head.weight.id, 0);
    let stopped = strict.step(1e-2, model, grads, None).unwrap_err();
    match &stopped.error {
        GuardError::NonFiniteGradient { tensor, index, .. } => {
            assert_eq!((tensor.as_str(), *index), ("head.weight", 0))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(weights(&stopped.module), before_w);
}

/// A forced spike rolls weights and optimizer state back to the snapshot exactly.
pub fn rollback_is_exact(dev: &Device, placement: Placement) {
    let dev = dev.clone();
    let mut model = Mlp::new(3, 16, &dev);
    let config = GuardConfig {
        grad_spike: Some(SpikeConfig {
            window: 20,
            k: 4.0,
            min_history: 4,
            min_relative_std: 0.05,
        }),
        loss_spike: None,
        on_spike: SpikeAction::Rollback { skip_batches: 3 },
        snapshot_every: 4,
        ..Default::default()
    };
    let mut optim = GuardedOptimizer::new(AdamConfig::new().init(), guard(config, vec![]))
        .with_placement(placement);
    let mut snapshot = None;
    for s in 0..6 {
        let (x, y) = batch(&dev, 0.1 * s as f32);
        let grads = GradientsParams::from_grads(model.loss(x, y).backward(), &model);
        let step = optim.step(1e-3, model, grads, None).unwrap();
        model = step.module;
        if step.report.take_snapshot {
            snapshot = Some((
                step.report.step,
                weights(&model),
                optimizer_bytes(optim.optimizer()),
            ));
        }
    }
    let (snap_step, snap_w, snap_o) = snapshot.unwrap();
    assert_eq!(snap_step, 4);
    // A batch whose targets are enormous makes a gradient spike.
    let (x, y) = batch(&dev, 0.0);
    let grads = GradientsParams::from_grads(model.loss(x, y.mul_scalar(1e4)).backward(), &model);
    let step = optim.step(1e-3, model, grads, None).unwrap();
    assert_eq!(
        step.report.decision,
        Decision::Rollback {
            to_step: 4,
            skip_batches: 3
        }
    );
    assert_eq!(weights(&step.module), snap_w);
    assert_eq!(optimizer_bytes(optim.optimizer()), snap_o);
    assert!((0..3).all(|_| optim.skip_batch()));
    assert!(!optim.skip_batch());
}

/// SGD without momentum: the update is exactly lr · g, so halving the multiplier halves it.
pub fn lr_multiplier_reaches_the_optimizer(dev: &Device, placement: Placement) {
    let dev = dev.clone();
    let model = Mlp::new(1, 4, &dev);
    let (x, y) = batch(&dev, 0.5);
    let loss = model.loss(x.clone(), y.clone());
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let host = host_copy(&model, &grads);
    let before = weights(&model);
    // The exact SGD update, unbounded (the update bound has tests of its own).
    let config = GuardConfig {
        update_bound: None,
        ..quiet()
    };
    let mut optim = GuardedOptimizer::new(SgdConfig::new().init(), guard(config, vec![]))
        .with_placement(placement);
    let step = optim.step(0.1, model, grads, None).unwrap();
    assert_eq!(step.report.lr_multiplier, 1.0);
    let after = weights(&step.module);
    for ((b, a), g) in before.iter().zip(&after).zip(host.tensors()) {
        for ((bw, aw), gv) in b.iter().zip(a).zip(&g.values) {
            assert!((bw - 0.1 * gv - aw).abs() < 1e-6);
        }
    }
}

/// Gradients near 1e30 (their squares overflow f32) give the host's finite norm, and a global
/// clip brings them to the threshold.
pub fn huge_gradients_stay_finite(dev: &Device, placement: Placement) {
    let mlp = Mlp::new(4, 32, dev);
    let (x, y) = batch(dev, 2.0);
    let mut grads = GradientsParams::from_grads(mlp.loss(x, y).mul_scalar(1e30).backward(), &mlp);
    let host = host_copy(&mlp, &grads);
    let largest = host.stats().iter().map(|s| s.max_abs).fold(0.0, f64::max);
    assert!(
        largest > 1e28 && largest.is_finite(),
        "largest |g| = {largest}"
    );
    let mut view = BurnGradients::collect_with(&mlp, &mut grads, None, false, placement);
    let global = |s: &[gradguard::TensorStats]| gradguard::combined(s).l2();
    let (ours, theirs) = (view.stats(), host.stats());
    assert!(global(&ours).is_finite() && global(&ours) > 1e28);
    assert!(rel(global(&ours), global(&theirs)) < 1e-6);
    let mut stats = ours;
    let outcome = ClipByGlobalNorm::new(1.0)
        .unwrap()
        .apply(&mut view, &mut stats)
        .unwrap();
    assert_eq!(outcome.action, RuleAction::Scaled, "{outcome:?}");
    let clipped = host_copy(&mlp, &view.into_gradients_params(&mlp));
    let norm = global(&clipped.stats());
    assert!((norm - 1.0).abs() < 1e-5, "clipped norm {norm}");
}

/// Whether `placement` on `dev` runs the statistics on the host.
pub fn runs_on_host(dev: &Device, placement: Placement) -> bool {
    let mlp = Mlp::new(1, 4, dev);
    let (x, y) = batch(dev, 0.0);
    let mut grads = GradientsParams::from_grads(mlp.loss(x, y).backward(), &mlp);
    BurnGradients::collect_with(&mlp, &mut grads, None, false, placement).on_host()
}

/// Kernel launches and host reads of collecting one MLP's gradients with their statistics.
#[derive(Debug)]
pub struct Launches {
    /// Gradient tensors.
    pub tensors: usize,
    /// Kernel launches while collecting.
    pub launches: u64,
    /// Host reads while collecting.
    pub reads: u32,
}

/// Counts, with `count`, the launches of `BurnGradients::collect` on a `depth`-layer MLP: the
/// fewest of three collections, as autotune may add trial launches (also from its background
/// tuning) to the first ones for new shapes.
pub fn statistics_launches(
    dev: &Device,
    depth: usize,
    count: fn(&mut dyn FnMut()) -> u64,
) -> Launches {
    let mlp = Mlp::new(depth, 16, dev);
    let mut measured: Option<Launches> = None;
    for _ in 0..3 {
        let (x, y) = batch(dev, 0.0);
        let loss = mlp.loss(x, y);
        let mut grads = GradientsParams::from_grads(loss.backward(), &mlp);
        dev.sync().unwrap();
        let (mut reads, mut tensors) = (0, 0);
        let launches = count(&mut || {
            let view = BurnGradients::collect(&mlp, &mut grads, Some(loss.clone()), false);
            reads = view.host_reads();
            tensors = view.tensor_count();
        });
        if measured.as_ref().is_none_or(|m| launches < m.launches) {
            measured = Some(Launches {
                tensors,
                launches,
                reads,
            });
        }
    }
    measured.expect("measured twice")
}

/// The non-blocking optimizer's state (flat moments from the step kernel on a device) saves in
/// Burn's record format: loaded into a fresh optimizer it continues as the original does,
/// within 1e-6·max(1, |w|) (bit for bit on the host).
pub fn non_blocking_state_round_trips(dev: &Device, exact: bool) {
    use gradguard::NonFinitePolicy;
    use gradguard_burn::{FusedRule, NonBlockingOptimizer};
    let rule = FusedRule::adamw(0.1);
    let guard = || device_guard(1.0, NonFinitePolicy::Skip);
    let step = |optim: &mut NonBlockingOptimizer, model: Mlp, s: usize| {
        let (x, y) = run_batch(dev, s % 2);
        let loss = model.loss(x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(1e-2, model, grads, Some(loss)).unwrap().module
    };
    let mut optim = NonBlockingOptimizer::new(rule, guard()).unwrap();
    let mut model = Mlp::new(2, 8, dev);
    for s in 0..3 {
        model = step(&mut optim, model, s);
    }
    optim.finish().unwrap();
    let bytes = optim.optimizer_bytes().unwrap();
    let mut loaded = NonBlockingOptimizer::new(rule, guard()).unwrap();
    loaded.load_optimizer_bytes(bytes).unwrap();
    let (mut a, mut b) = (model.clone(), model);
    for s in 3..5 {
        a = step(&mut optim, a, s);
        b = step(&mut loaded, b, s);
        assert_close(&weights(&a), &weights(&b), exact, &format!("step {s}"));
    }
}

/// A batch of 16 deterministic rows (sines and cosines of the step `s`); with `poison`, one
/// target is infinite.
pub fn sine_batch(dev: &Device, s: usize, poison: bool) -> (Tensor<2>, Tensor<2>) {
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

/// The L1 and max-norm clips and a skip rule decide on the device as the host decides: the same
/// weights as the blocking fused step and the same decisions, step for step.
pub fn non_blocking_norms_decide_as_the_host(dev: &Device) {
    use gradguard::NonFinitePolicy;
    use gradguard::NormType;
    use gradguard::rules::{ClipByGlobalNorm, Rule, SkipIfNormAbove};
    use gradguard_burn::{FusedRule, NonBlockingOptimizer};
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
        let (mut a, mut b) = (Mlp::new(1, 8, dev), Mlp::new(1, 8, dev));
        b = b.load_record(a.clone().into_record());
        let (mut decisions, mut late) = (Vec::new(), Vec::new());
        for s in 0..8 {
            let (x, y) = sine_batch(dev, s, false);
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

/// Kernel launches of the fewest of four non-blocking AdamW steps (from the step to the device
/// sync) of an MLP of `depth` layers, and its parameter count: (parameters, launches).
pub fn non_blocking_step_launches(
    dev: &Device,
    depth: usize,
    count: fn(&mut dyn FnMut()) -> u64,
) -> (usize, u64) {
    use gradguard::NonFinitePolicy;
    use gradguard_burn::{FusedRule, NonBlockingOptimizer};
    let mut model = Mlp::new(depth, 16, dev);
    let params = 2 * depth + 2;
    let mut optim = NonBlockingOptimizer::new(
        FusedRule::adamw(0.1),
        device_guard(0.5, NonFinitePolicy::Skip),
    )
    .unwrap();
    let mut fewest = u64::MAX;
    for s in 0..4 {
        let (x, y) = run_batch(dev, s % 2);
        let loss = model.loss(x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        dev.sync().unwrap();
        let mut slot = Some((model, grads, loss));
        let mut next = None;
        let launched = count(&mut || {
            let (m, g, l) = slot.take().expect("one step");
            next = Some(optim.step(1e-3, m, g, Some(l)).unwrap().module);
            dev.sync().unwrap();
        });
        model = next.expect("stepped");
        if s > 0 {
            fewest = fewest.min(launched);
        }
    }
    (params, fewest)
}

/// Gradients below f32's smallest normal number give the host's statistics, not inf or NaN.
pub fn tiny_gradients_keep_their_statistics(dev: &Device, placement: Placement) {
    let mlp = Mlp::new(2, 8, dev);
    let (x, y) = batch(dev, 3.0);
    let mut grads = GradientsParams::from_grads(mlp.loss(x, y).mul_scalar(1e-38).backward(), &mlp);
    let host = host_copy(&mlp, &grads);
    let view = BurnGradients::collect_with(&mlp, &mut grads, None, false, placement);
    let (ours, theirs) = (view.stats(), host.stats());
    assert!(
        theirs
            .iter()
            .any(|s| s.max_abs > 0.0 && s.max_abs < 1.17e-38),
        "the test needs subnormal gradients: {theirs:?}"
    );
    for (a, b) in ours.iter().zip(&theirs) {
        assert!(a.sum_squares.is_finite() && a.sum_abs.is_finite(), "{a:?}");
        assert!(rel(a.sum_squares, b.sum_squares) < 1e-5, "{a:?} vs {b:?}");
        assert!(rel(a.sum_abs, b.sum_abs) < 1e-5, "{a:?} vs {b:?}");
        assert_eq!(a.max_abs, b.max_abs);
    }
}

/// A layer whose gradients' lengths are all multiples of four, of two but not four, or odd (the
/// statistics kernel reads a group of tensors four, two or one value at a time), at ordinary,
/// huge (their squares overflow f32) and subnormal magnitudes: the statistics are the host's.
pub fn statistics_match_at_every_read_width(dev: &Device, placement: Placement) {
    for (fan_in, width) in [(8, 16), (6, 10), (3, 5)] {
        for scale in [1.0f32, 1e30, 1e-38] {
            let layer: Linear = LinearConfig::new(fan_in, width).init(dev);
            let x: Vec<f32> = (0..16 * fan_in).map(|i| (i as f32 * 0.71).sin()).collect();
            let x = Tensor::<2>::from_data(TensorData::new(x, [16, fan_in]), dev);
            let loss = layer.forward(x).square().mean().mul_scalar(scale);
            let mut grads = GradientsParams::from_grads(loss.backward(), &layer);
            let host = host_copy(&layer, &grads);
            let view = BurnGradients::collect_with(&layer, &mut grads, None, false, placement);
            let (ours, theirs) = (view.stats(), host.stats());
            assert_eq!(ours.len(), 2);
            for (a, b) in ours.iter().zip(&theirs) {
                let what = format!("{fan_in}x{width} at {scale}: {a:?} vs {b:?}");
                assert!(b.max_abs > 0.0 && b.max_abs.is_finite(), "{what}");
                assert!(rel(a.sum_squares, b.sum_squares) < 1e-5, "{what}");
                assert!(rel(a.sum_abs, b.sum_abs) < 1e-5, "{what}");
                assert_eq!(a.max_abs, b.max_abs, "{what}");
            }
        }
    }
}

/// `model` with its parameters cast to `dtype`: they stay in it through autodiff and the
/// optimizer (a model trained in f16 or bf16 throughout).
fn cast<M: Module>(model: M, dtype: burn::tensor::DType) -> M {
    struct Cast(burn::tensor::DType);
    impl burn::module::ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| {
                let require_grad = t.is_require_grad();
                t.inner()
                    .cast(dtype)
                    .autodiff()
                    .set_require_grad(require_grad)
            })
        }
    }
    model.map(&mut Cast(dtype))
}

/// f16 and bf16 models step through a guard with a loss scaler: in f16, 2¹⁶ times a loss near
/// 1 overflows, so the first steps skip and halve the scale until the scaled gradients fit
/// (never counted as bad steps); then the steps apply, and the parameters stay in their dtype.
/// Returns the dtypes tested: those the device computes in (`Device::supports_dtype`; Vulkan
/// devices without bf16 arithmetic, llvmpipe's among them, are said and skipped).
pub fn half_precision_models_step(dev: &Device, placement: Placement) -> Vec<burn::tensor::DType> {
    use burn::tensor::DType;
    use gradguard::LossScaler;
    let mut tested = Vec::new();
    for dtype in [DType::F16, DType::BF16] {
        if !dev.supports_dtype(dtype) {
            eprintln!("{dtype:?}: this device does not compute in it, not tested");
            continue;
        }
        tested.push(dtype);
        let mut model = cast(Mlp::new(3, 8, dev), dtype);
        let config = GuardConfig {
            update_bound: None,
            ..quiet()
        };
        let guard = guard(config, vec![]).with_loss_scaler(LossScaler::default());
        let mut optim =
            GuardedOptimizer::new(SgdConfig::new().init(), guard).with_placement(placement);
        let first = model.layers[0].weight.val().into_data().convert::<f32>();
        let mut applied = 0;
        for s in 0..12 {
            let (x, y) = batch(dev, s as f32);
            let loss = optim.scale_loss(model.loss(x.cast(dtype), y.cast(dtype)));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let step = optim.step(0.1, model, grads, Some(loss)).unwrap();
            let scale = step.report.loss_scale.unwrap();
            match step.report.decision {
                Decision::Apply => applied += 1,
                Decision::Skip => assert!(scale.skip, "{:?}", step.report.reasons),
                other => panic!("{dtype:?} {placement:?}: {other:?}"),
            }
            assert_eq!(step.report.consecutive_bad, 0);
            model = step.module;
        }
        assert!(
            applied >= 6,
            "{dtype:?} {placement:?}: {applied} steps applied"
        );
        assert_eq!(model.layers[0].weight.val().dtype(), dtype);
        let last = model.layers[0].weight.val().into_data().convert::<f32>();
        assert_ne!(first, last, "{dtype:?} {placement:?}: the weights moved");
    }
    tested
}

/// The update bound measured on `dev` (its device path: per-unit sums by tensor ops, each
/// tensor scaled by its largest magnitude, one read) equals the host path's on a copy of the same
/// network on the CPU backend: the same ratios and the same bounded tensors.
pub fn update_bound_matches_the_host(dev: &Device, placement: Placement) {
    let mlp = Mlp::new(3, 32, dev);
    let host_device = Device::flex().autodiff();
    let host_mlp = mlp.clone().fork(&host_device);
    let step = |mlp: Mlp, d: &Device, placement: Placement| {
        let mut optim = GuardedOptimizer::new(SgdConfig::new().init(), Guard::default())
            .with_placement(placement);
        let (x, y) = batch(d, 1.0);
        // A large loss: the first SGD step at rate 1 moves the weights by far more than 1%.
        let loss = mlp.loss(x, y).mul_scalar(1e3);
        let grads = GradientsParams::from_grads(loss.backward(), &mlp);
        let s = optim
            .step(1.0, mlp, grads, Some(loss))
            .expect("not stopped");
        (
            weights(&s.module),
            s.report.update.expect("the default guard bounds updates"),
        )
    };
    let (ours_w, ours) = step(mlp, dev, placement);
    let (host_w, host) = step(host_mlp, &host_device, Placement::Host);
    assert!(
        host.bounded > 0 && host.bounded_units > 0,
        "the step is bounded: {host:?}"
    );
    assert!(
        rel(ours.global_ratio, host.global_ratio) < 1e-5,
        "{ours:?} {host:?}"
    );
    assert_eq!(ours.bounded, host.bounded);
    assert_eq!(ours.bounded_units, host.bounded_units);
    for (a, b) in ours_w.iter().flatten().zip(host_w.iter().flatten()) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1e-2), "{a} {b}");
    }
}

/// A layer whose units are longer than one piece of the unit kernel (4096 values), then a deep
/// stack: AGC's unit norms over many tensors, some of them split.
#[derive(Module, Debug)]
struct WideThenDeep {
    wide: Linear,
    deep: Mlp,
}

/// Unit norms of gradients and of parameters (AGC's, `UnitLayout::InputFirst`) on `dev` equal
/// the host's to 1e-6, for gradients near 1e25 too; returns (tensors, launches of one
/// measurement) for a `depth`-layer stack, counted by `count` — the fewest of three.
pub fn unit_norms_match_the_host(
    dev: &Device,
    placement: Placement,
    depth: usize,
    count: fn(&mut dyn FnMut()) -> u64,
) -> (usize, u64) {
    let model = WideThenDeep {
        wide: LinearConfig::new(5000, 8).init(dev),
        deep: Mlp::new(depth, 16, dev),
    };
    let x = Tensor::<2>::random([4, 5000], Distribution::Default, dev);
    let (_, y) = batch(dev, 2.0);
    // The deep stack takes 8 inputs: the wide layer's outputs.
    let mut hidden = model.wide.forward(x).tanh();
    for l in &model.deep.layers {
        hidden = l.forward(hidden).tanh();
    }
    let loss = (model.deep.head.forward(hidden) - y.narrow(0, 0, 4))
        .square()
        .mean()
        .mul_scalar(1e25);
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let host = host_copy(&model, &grads)
        .with_parameters(params_copy(&model))
        .unwrap();
    let view = BurnGradients::collect_with(&model, &mut grads, None, true, placement);
    let layout = UnitLayout::InputFirst;
    for source in [Source::Gradient, Source::Parameter] {
        let ours = view.unit_norms(source, layout).unwrap();
        let theirs = host.unit_norms(source, layout).unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (t, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.len(), b.len(), "tensor {t}");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    y.is_finite() && rel(*x, *y) < 1e-6,
                    "{source:?} {}: {x} vs {y}",
                    view.name(t)
                );
            }
        }
        if source == Source::Gradient {
            let top = theirs.iter().flatten().fold(0.0f64, |m, &n| m.max(n));
            assert!(
                top > 1e20,
                "gradients near 1e25: the largest unit norm is {top:e}"
            );
        }
    }
    let fewest = (0..3)
        .map(|_| {
            count(&mut || {
                view.unit_norms(Source::Parameter, layout).unwrap();
            })
        })
        .min()
        .expect("three counts");
    (view.tensor_count(), fewest)
}

/// Which values of a test's gradients are made non-finite.
#[derive(Clone, Copy, PartialEq)]
enum Poison {
    Nothing,
    /// ±inf in two tensors.
    Inf,
    /// NaN in one tensor, inf in another.
    NanAndInf,
}

/// Value clipping, zeroing non-finite values and AGC on a `depth`-layer MLP, with NaN and inf in
/// the gradients (AGC: finite gradients), equal the host's rules value for value (NaN where the
/// host has NaN). Returns (rule, tensors, launches of applying the rule — the fewest of two),
/// counted by `count`, for gradients that the rule leaves finite (a NaN left in place costs a
/// few more launches to locate; its clamp is checked but not counted).
pub fn clips_match_the_host(
    dev: &Device,
    placement: Placement,
    depth: usize,
    count: fn(&mut dyn FnMut()) -> u64,
) -> Vec<(String, usize, u64)> {
    let mlp = Mlp::new(depth, 16, dev);
    let value: MakeRule = Box::new(|| Box::new(ClipByValue::new(1e-4).unwrap()));
    let agc: MakeRule = Box::new(|| {
        Box::new(AdaptiveGradClip {
            clipping: 1e-3,
            eps: 1e-3,
            layout: UnitLayout::InputFirst,
        })
    });
    let zero: MakeRule = Box::new(|| Box::new(ZeroNonFinite));
    let cases: Vec<(&MakeRule, Poison, bool)> = vec![
        (&value, Poison::NanAndInf, false),
        (&value, Poison::Inf, true),
        (&zero, Poison::NanAndInf, true),
        (&agc, Poison::Nothing, true),
    ];
    let gradients = |poison: Poison| {
        let (x, y) = batch(dev, 1.0);
        let mut grads = GradientsParams::from_grads(mlp.loss(x, y).backward(), &mlp);
        let targets = [(mlp.layers[1].weight.id, 5), (mlp.head.weight.id, 0)];
        let bad = match poison {
            Poison::Nothing => return grads,
            Poison::Inf => [f32::NEG_INFINITY, f32::INFINITY],
            Poison::NanAndInf => [f32::NAN, f32::INFINITY],
        };
        for ((id, index), value) in targets.into_iter().zip(bad) {
            let g = grads.remove::<2>(id).unwrap();
            let dims = g.dims();
            let mut values = g.into_data().try_to_vec::<f32>().unwrap();
            values[index] = value;
            grads.register::<2>(id, Tensor::from_data(TensorData::new(values, dims), dev));
        }
        grads
    };
    let mut measured = Vec::new();
    for (make, poison, counted) in cases {
        let (mut fewest, mut tensors) = (u64::MAX, 0);
        for _ in 0..2 {
            let mut grads = gradients(poison);
            let mut reference = host_copy(&mlp, &grads)
                .with_parameters(params_copy(&mlp))
                .unwrap();
            let bad = reference.stats().iter().filter(|s| !s.is_finite()).count();
            assert_eq!(bad == 2, poison != Poison::Nothing, "poisoned tensors");
            let mut view = BurnGradients::collect_with(&mlp, &mut grads, None, true, placement);
            let mut stats = view.stats();
            let mut outcome = None;
            fewest = fewest.min(count(&mut || {
                outcome = Some(make().apply(&mut view, &mut stats).unwrap());
            }));
            let ours = outcome.expect("applied");
            tensors = view.tensor_count();
            let mut hstats = reference.stats();
            let theirs = make().apply(&mut reference, &mut hstats).unwrap();
            assert_eq!(ours.action, theirs.action, "{}", ours.rule);
            for (a, b) in stats.iter().zip(&hstats) {
                assert_eq!(a.nan_count, b.nan_count, "{}", ours.rule);
                assert_eq!(a.inf_count, b.inf_count, "{}", ours.rule);
                assert_eq!(a.first_non_finite, b.first_non_finite, "{}", ours.rule);
            }
            let clipped = host_copy(&mlp, &view.into_gradients_params(&mlp));
            for (a, b) in clipped.tensors().iter().zip(reference.tensors()) {
                for (x, y) in a.values.iter().zip(&b.values) {
                    assert!(
                        (x.is_nan() && y.is_nan())
                            || (x - y).abs() <= 1e-6 * y.abs().max(1e-12) + 1e-12,
                        "{} {}: {x} vs {y}",
                        ours.rule,
                        a.name
                    );
                }
            }
        }
        if counted {
            measured.push((make().name().to_string(), tensors, fewest));
        }
    }
    measured
}

/// Which step `GuardedOptimizer::fused` takes in [`fused_matches_the_wrapped_optimizer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FusedPath {
    /// The host step (flex, host placement): bit for bit Burn's.
    Host,
    /// The fused kernel on a CubeCL device: within 1e-6 relative to max(1, |w|) (the device's
    /// division and square root need not round as Burn's kernels do).
    Kernel,
    /// Burn's optimizer behind it (flex with the device placement): bit for bit, and the fused
    /// optimizer keeps no state.
    Wrapped,
}

/// `GuardedOptimizer::fused` gives the weights `GuardedOptimizer::new` over Burn's optimizer of
/// the same rule gives, step for step, with the default guard — healthy steps and one whose
/// update the bound scales — taking the step `path` says.
pub fn fused_matches_the_wrapped_optimizer(dev: &Device, placement: Placement, path: FusedPath) {
    use gradguard_burn::{AdamMoments, FusedRule};
    let rules = [
        FusedRule::Sgd {
            weight_decay: Some(0.01),
        },
        FusedRule::Adam {
            moments: AdamMoments::default(),
            weight_decay: None,
        },
        FusedRule::AdamW {
            moments: AdamMoments {
                beta_2: 0.95,
                ..AdamMoments::default()
            },
            weight_decay: 0.1,
        },
    ];
    for rule in rules {
        // 72 × 72 weights: one whole block of the kernel and part of another, read four values
        // at a time; the head's one bias one at a time.
        let start = Mlp::new(3, 72, dev);
        let mut runs = Vec::new();
        for mut optim in [
            GuardedOptimizer::new(rule.to_burn(), Guard::default()),
            GuardedOptimizer::fused(rule, Guard::default()),
        ] {
            optim = optim.with_placement(placement);
            let mut model = start.clone();
            let mut run = Vec::new();
            for s in 0..6 {
                let (x, y) = batch(dev, 0.1 * s as f32);
                // Step 3's targets are large and its rate is 30×: the bound scales that update.
                let (y, lr) = if s == 3 {
                    (y.mul_scalar(1e3), 3e-2)
                } else {
                    (y, 1e-3)
                };
                let loss = model.loss(x, y);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let step = optim.step(lr, model, grads, Some(loss)).unwrap();
                model = step.module;
                let update = step.report.update.as_ref();
                let bounded = update.map_or(0, |u| u.bounded);
                let ratio = update.map_or(0.0, |u| u.largest_ratio);
                run.push((weights(&model), bounded, ratio));
            }
            if let Some(fused) = optim.fused_optimizer() {
                let stepped = path != FusedPath::Wrapped;
                assert_eq!(fused.has_state(), stepped, "{rule:?}: which step ran");
            }
            runs.push(run);
        }
        assert!(
            runs[0].iter().any(|(_, bounded, _)| *bounded > 0),
            "{rule:?}: nothing bounded"
        );
        for (k, ((a, bounded_a, ratio_a), (b, bounded_b, ratio_b))) in
            runs[0].iter().zip(&runs[1]).enumerate()
        {
            assert_eq!(bounded_a, bounded_b, "{rule:?} on {placement:?}: step {k}");
            // The bound's reading of the step: the kernel measures it as it steps.
            assert!(
                (ratio_a - ratio_b).abs() <= 1e-5 * ratio_b.abs(),
                "{rule:?} on {placement:?}: step {k}: largest ratio {ratio_a} vs {ratio_b}"
            );
            if path != FusedPath::Kernel {
                assert_eq!(a, b, "{rule:?} on {placement:?}: step {k}");
                continue;
            }
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                assert!(
                    (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                    "{rule:?} on {placement:?}: step {k}: {x} vs {y}"
                );
            }
        }
    }
}

/// On a CubeCL device the fused step is queued before the gradients' statistics are read,
/// where the guard would step with the gradients as they are: from the step after the one that
/// recognizes the optimizer, an applied AdamW step under the default guard reads the device once
/// (the statistics, the loss and the update's measurement together; two reads before), and so
/// does an SGD step, whose bound measures every unit (the unit norms queued ahead too). A step
/// whose gradients a rule rewrote — a NaN zeroed under `NonFinitePolicy::Zero` — steps on the
/// rewritten gradients (the step queued ahead is dropped), and a NaN step skipped under `Skip`
/// leaves the weights as they were: both as Burn's own optimizer under the same guard, within
/// 1e-6.
pub fn fused_device_step_reads_once(dev: &Device) {
    use gradguard::NonFinitePolicy;
    use gradguard_burn::FusedRule;
    let guard = |non_finite| {
        let config = GuardConfig {
            non_finite,
            ..GuardConfig::default()
        };
        Guard::new(config, Chain::default()).unwrap()
    };
    // AdamW's bound measures whole tensors, SGD's units too.
    let cases = [
        (FusedRule::adamw(0.1), NonFinitePolicy::Skip),
        (FusedRule::adamw(0.1), NonFinitePolicy::Zero),
        (FusedRule::sgd(), NonFinitePolicy::Skip),
        (FusedRule::sgd(), NonFinitePolicy::Zero),
    ];
    for (rule, policy) in cases {
        let start = Mlp::new(3, 72, dev);
        let mut runs = Vec::new();
        for mut optim in [
            GuardedOptimizer::new(rule.to_burn(), guard(policy)),
            GuardedOptimizer::fused(rule, guard(policy)),
        ] {
            let mut model = start.clone();
            let mut run = Vec::new();
            for s in 0..5 {
                let (x, y) = batch(dev, 0.1 * s as f32);
                let loss = model.loss(x, y);
                let mut grads = GradientsParams::from_grads(loss.backward(), &model);
                if s == 3 {
                    poison(&mut grads, model.layers[1].weight.id, 5);
                }
                let step = optim.step(1e-3, model, grads, Some(loss)).unwrap();
                model = step.module;
                run.push((weights(&model), step.report.decision, step.host_reads));
            }
            runs.push(run);
        }
        let (wrapped, fused) = (&runs[0], &runs[1]);
        for (k, ((a, decision_a, _), (b, decision_b, reads))) in
            wrapped.iter().zip(fused).enumerate()
        {
            assert_eq!(decision_a, decision_b, "{policy:?}: step {k}");
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                assert!(
                    (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                    "{policy:?}: step {k}: {x} vs {y}"
                );
            }
            // Step 0 recognizes the optimizer (unit norms, read apart); step 3 holds the NaN.
            if k == 1 || k == 2 || k == 4 {
                assert_eq!(*reads, 1, "{rule:?}, {policy:?}: step {k}: host reads");
            }
        }
        let expected = match policy {
            NonFinitePolicy::Skip => Decision::Skip,
            _ => Decision::Apply,
        };
        assert_eq!(fused[3].1, expected, "{policy:?}: the NaN step");
        if policy == NonFinitePolicy::Skip {
            assert_eq!(
                fused[3].0, fused[2].0,
                "the skipped step changed the weights"
            );
        }
    }
}

/// The fused step (the host kernels, or the CubeCL kernel) measures steps of weights far outside
/// [2⁻⁴⁰, 2⁴⁰] (where the device's statistics are summed again, scaled) as the bound measures
/// Burn's Adam step: the same largest ratio within
/// 1e-5 and the same weights within 1e-6·max(1, |w|), over three steps at each scale.
pub fn fused_measures_weights_of_any_magnitude(dev: &Device) {
    use burn::module::ModuleMapper;
    use gradguard_burn::FusedRule;
    struct Times(f32);
    impl ModuleMapper for Times {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let s = self.0;
            param.map(|t| t.mul_scalar(s).detach().require_grad())
        }
    }
    for (scale, lr) in [(1e-15f32, 1e-17), (1e15, 1e10)] {
        let start = Mlp::new(2, 72, dev).map(&mut Times(scale));
        let mut runs = Vec::new();
        for mut optim in [
            GuardedOptimizer::new(FusedRule::adam().to_burn(), Guard::default()),
            GuardedOptimizer::fused(FusedRule::adam(), Guard::default()),
        ] {
            let mut model = start.clone();
            let mut run = Vec::new();
            for s in 0..3 {
                let (x, y) = batch(dev, 0.1 * s as f32);
                let loss = model.loss(x, y);
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let step = optim.step(lr, model, grads, Some(loss)).unwrap();
                model = step.module;
                let ratio = step.report.update.as_ref().map(|u| u.largest_ratio);
                run.push((weights(&model), ratio));
            }
            if let Some(fused) = optim.fused_optimizer() {
                assert!(fused.has_state(), "scale {scale}: the kernel stepped");
            }
            runs.push(run);
        }
        for (k, ((a, ratio_a), (b, ratio_b))) in runs[0].iter().zip(&runs[1]).enumerate() {
            let (ra, rb) = (ratio_a.unwrap(), ratio_b.unwrap());
            assert!(
                ra > 0.0 && (ra - rb).abs() <= 1e-5 * rb,
                "scale {scale}, step {k}: largest ratio {ra} vs {rb}"
            );
            assert_close(a, b, false, &format!("scale {scale}, step {k}"));
        }
    }
}

/// Weights of two runs agree: bit for bit (`exact`) or within 1e-6 relative to max(1, |w|).
fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], exact: bool, what: &str) {
    if exact {
        assert_eq!(a, b, "{what}");
        return;
    }
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert!(
            (x - y).abs() <= 1e-6 * y.abs().max(1.0),
            "{what}: {x} vs {y}"
        );
    }
}

/// A guarded run's weights and decision after each step.
type Trace = Vec<(Vec<Vec<f32>>, Decision)>;

/// A run of `optim` from `start` over batches of target scales `scales` at rate `lr`: the
/// weights and decision after each step (batches a rollback skips are skipped).
fn scaled_run(
    mut optim: GuardedOptimizer<Mlp>,
    start: &Mlp,
    dev: &Device,
    scales: &[f32],
) -> (GuardedOptimizer<Mlp>, Mlp, Trace) {
    let mut model = start.clone();
    let mut run = Vec::new();
    for (s, &scale) in scales.iter().enumerate() {
        if optim.skip_batch() {
            continue;
        }
        let (x, y) = batch(dev, 0.1 * s as f32);
        let loss = model.loss(x, y.mul_scalar(scale));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let step = optim.step(1e-3, model, grads, Some(loss)).unwrap();
        model = step.module;
        run.push((weights(&model), step.report.decision));
    }
    (optim, model, run)
}

/// `GuardedOptimizer::fused` keeps the guard's contract as `GuardedOptimizer::new` over Burn's
/// optimizer of the same rule does, on any device (`exact`: bit for bit, else within 1e-6): an
/// update that is not finite (NaN gradients let through) is dropped with the moments it would
/// have made; a rollback restores the fused state of the snapshot; and the fused state's record
/// continues in Burn's optimizer as the fused optimizer continues.
pub fn fused_keeps_the_guards_contract(dev: &Device, exact: bool) {
    use gradguard_burn::{AdamMoments, FusedOptimizer, FusedRule};
    let rules = [
        FusedRule::Sgd {
            weight_decay: Some(0.01),
        },
        FusedRule::adam(),
        FusedRule::AdamW {
            moments: AdamMoments {
                beta_2: 0.95,
                ..AdamMoments::default()
            },
            weight_decay: 0.1,
        },
    ];
    let let_nan_through = GuardConfig {
        non_finite: NonFinitePolicy::Apply,
        ..GuardConfig::default()
    };
    let snapshots = GuardConfig {
        snapshot_every: 4,
        ..GuardConfig::default()
    };
    let mut spiked = vec![1.0f32; 40];
    spiked[30] = 1e4;
    let cases = [
        (
            "NaN let through",
            let_nan_through,
            vec![1.0, 1.0, f32::NAN, 1.0, 1.0],
        ),
        ("rollback", snapshots, spiked),
    ];
    for rule in rules {
        let start = Mlp::new(2, 16, dev);
        for (case, config, scales) in &cases {
            let plain = GuardedOptimizer::new(rule.to_burn(), guard(config.clone(), Vec::new()));
            let plain = scaled_run(plain, &start, dev, scales).2;
            let fused = GuardedOptimizer::fused(rule, guard(config.clone(), Vec::new()));
            let fused = scaled_run(fused, &start, dev, scales).2;
            let what = format!("{rule:?}, {case}");
            assert_eq!(plain.len(), fused.len(), "{what}");
            for (k, ((a, da), (b, db))) in plain.iter().zip(&fused).enumerate() {
                assert_eq!(da, db, "{what}: step {k}");
                assert_close(b, a, exact, &format!("{what}: step {k}"));
            }
            let acted = plain
                .iter()
                .any(|(_, d)| matches!(d, Decision::Skip | Decision::Rollback { .. }));
            assert!(acted, "{what}: the guard never acted");
        }
        // Three fused steps; then Burn's optimizer from the fused record against fused on.
        let quiet = || {
            guard(
                GuardConfig {
                    update_bound: None,
                    ..GuardConfig::default()
                },
                Vec::new(),
            )
        };
        let (fused, model, _) = scaled_run(
            GuardedOptimizer::fused(rule, quiet()),
            &start,
            dev,
            &[1.0; 3],
        );
        let bytes = fused.fused_optimizer().unwrap().into_bytes().unwrap();
        let loaded = FusedOptimizer::new(rule).from_bytes(bytes.clone()).unwrap();
        let mut burn = GuardedOptimizer::new(rule.to_burn(), quiet());
        burn.load_optimizer_bytes(bytes).unwrap();
        let mut again = GuardedOptimizer::fused(rule, quiet());
        again.set_fused_optimizer(loaded);
        let by_burn = scaled_run(burn, &model, dev, &[1.0; 3]).1;
        let by_fused = scaled_run(fused, &model, dev, &[1.0; 3]).1;
        let by_loaded = scaled_run(again, &model, dev, &[1.0; 3]).1;
        let what = format!("{rule:?}, record");
        assert_close(&weights(&by_fused), &weights(&by_burn), exact, &what);
        assert_eq!(weights(&by_loaded), weights(&by_fused), "{what}: loaded");
    }
}

/// A guard the device can follow: a global-norm clip at `max_norm`, non-finite steps skipped
/// under `policy`, no back-off of the rate (so that a skip changes nothing a step late).
pub fn device_guard(max_norm: f64, policy: gradguard::NonFinitePolicy) -> Guard {
    use gradguard::rules::ClipByGlobalNorm;
    device_guard_of(
        vec![Box::new(ClipByGlobalNorm::new(max_norm).unwrap())],
        policy,
    )
}

/// A guard of `rules` with non-finite steps under `policy`, no update bound, spike detector or
/// back-off of the rate.
pub fn device_guard_of(
    rules: Vec<Box<dyn gradguard::rules::Rule>>,
    policy: gradguard::NonFinitePolicy,
) -> Guard {
    use gradguard::rules::Chain;
    use gradguard::{GuardConfig, LrBackoff};
    let config = GuardConfig {
        non_finite: policy,
        update_bound: None,
        loss_spike: None,
        grad_spike: None,
        lr: LrBackoff {
            backoff: 1.0,
            recover: 1.0,
            ..LrBackoff::default()
        },
        ..GuardConfig::default()
    };
    Guard::new(config, Chain::new(rules).unwrap()).unwrap()
}

/// Batch `s` of a six-step run whose step 2 has a NaN target (its gradients and loss are NaN)
/// and whose step 4 has large targets (the clip scales it).
fn run_batch(dev: &Device, s: usize) -> (Tensor<2>, Tensor<2>) {
    let (x, y) = batch(dev, 0.1 * s as f32);
    match s {
        2 => {
            let mut values = y.to_data().try_to_vec::<f32>().unwrap();
            values[3] = f32::NAN;
            let y = Tensor::from_data(TensorData::new(values, [32, 1]), dev);
            (x, y)
        }
        4 => (x, y.mul_scalar(50.0)),
        _ => (x, y),
    }
}

/// The non-blocking optimizer gives the weights of `GuardedOptimizer::fused` under the same
/// guard, step for step (SGD with weight decay, Adam, AdamW), through a skipped NaN step and a
/// clipped one, and its reports — one step late — take the same decisions; nothing is read
/// before a step's optimizer is queued.
pub fn non_blocking_matches_the_blocking_step(dev: &Device, placement: Placement) {
    use gradguard::{Decision, NonFinitePolicy};
    use gradguard_burn::{AdamMoments, FusedRule, NonBlockingOptimizer};
    let rules = [
        FusedRule::Sgd {
            weight_decay: Some(0.01),
        },
        FusedRule::adam(),
        FusedRule::AdamW {
            moments: AdamMoments {
                beta_2: 0.95,
                ..AdamMoments::default()
            },
            weight_decay: 0.1,
        },
    ];
    let close = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| {
            let tolerance = 2e-6 * (1.0 + x.abs());
            (x - y).abs() <= tolerance
        })
    };
    for rule in rules {
        let guard = || device_guard(0.5, NonFinitePolicy::Skip);
        let start = Mlp::new(2, 16, dev);
        let lr = if matches!(rule, FusedRule::Sgd { .. }) {
            0.05
        } else {
            1e-2
        };
        let mut blocking = GuardedOptimizer::fused(rule, guard()).with_placement(placement);
        let mut non_blocking = NonBlockingOptimizer::new(rule, guard()).unwrap();
        let (mut a, mut b) = (start.clone(), start);
        let mut reports = Vec::new();
        let mut late = Vec::new();
        for s in 0..6 {
            let (x, y) = run_batch(dev, s);
            // Step 1 leaves the head's weight without a gradient: from then on its step count
            // lags the others' (Adam's corrections of two step counts in one step).
            let without_head = |mut grads: GradientsParams, m: &Mlp| {
                if s == 1 {
                    grads.remove::<2>(m.head.weight.id);
                }
                grads
            };
            // The NaN step (2) goes without its loss: its gradients alone must skip it.
            let given = |loss: Tensor<1>| (s != 2).then_some(loss);
            let loss = a.loss(x.clone(), y.clone());
            let grads = without_head(GradientsParams::from_grads(loss.backward(), &a), &a);
            let step = blocking.step(lr, a, grads, given(loss)).unwrap();
            a = step.module;
            reports.push(step.report);
            let loss = b.loss(x, y);
            let grads = without_head(GradientsParams::from_grads(loss.backward(), &b), &b);
            let step = non_blocking.step(lr, b, grads, given(loss)).unwrap();
            assert_eq!(step.reads_before_optimizer, 0);
            assert_eq!(
                step.report.is_some(),
                s > 0,
                "{rule:?}: a report a step late"
            );
            assert!(s == 0 || step.host_reads >= 1);
            b = step.module;
            late.extend(step.report);
            assert!(
                close(&weights(&a), &weights(&b)),
                "{rule:?} on {placement:?}: weights differ after step {s}"
            );
        }
        late.extend(non_blocking.finish().unwrap());
        assert!(non_blocking.finish().unwrap().is_none());
        assert_eq!(late.len(), reports.len());
        for (r, l) in reports.iter().zip(&late) {
            assert_eq!((r.step, r.decision), (l.step, l.decision), "{rule:?}");
            let scale = |r: &gradguard::StepReport| r.rules.first().and_then(|o| o.scale);
            let (x, y) = (scale(r).unwrap_or(1.0), scale(l).unwrap_or(1.0));
            assert!(
                (x - y).abs() <= 1e-5 * x,
                "{rule:?} step {}: {x} {y}",
                r.step
            );
        }
        assert_eq!(late[2].decision, Decision::Skip, "{rule:?}: the NaN step");
        assert!(
            late[4].rules[0].scale.is_some_and(|s| s < 1.0),
            "{rule:?}: the large step is clipped"
        );
        assert_eq!(non_blocking.guard().counters().skipped, 1);
    }
}
