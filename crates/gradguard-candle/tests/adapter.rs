//! The Candle adapter keeps the guard's promises: the same gradients give the same statistics,
//! clip and decision through Candle, Burn and the host; NaN is named and skipped with nothing
//! changed; a rollback restores the snapshot's weights exactly.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Linear, Module as _, Optimizer as _, ParamsAdamW, SGD, VarBuilder, VarMap};
use gradguard::rules::{Chain, ClipByGlobalNorm, Rule};
use gradguard::{
    Decision, Gradients, Guard, GuardConfig, HostGradients, HostTensor, NonFinitePolicy,
    SpikeAction,
};
use gradguard_burn::{BurnGradients, Placement};
use gradguard_candle::{CandleGradients, GuardedOptimizer, named_vars};

/// A 3-layer tanh MLP built in `varmap` (`layers.0` … `layers.2`).
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn new(varmap: &VarMap, device: &Device) -> Mlp {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let layers = (0..3)
            .map(|i| {
                let (inp, out) = if i == 2 {
                    (16, 1)
                } else {
                    (if i == 0 { 8 } else { 16 }, 16)
                };
                candle_nn::linear(inp, out, vb.pp(format!("layers.{i}"))).unwrap()
            })
            .collect();
        Mlp { layers }
    }

    fn loss(&self, step: usize, device: &Device) -> Tensor {
        self.loss_on(step, |_| true, device)
    }

    /// [`Self::loss`] with the input features `live` rejects held at 0 in every example.
    fn loss_on(&self, step: usize, live: impl Fn(usize) -> bool, device: &Device) -> Tensor {
        let x: Vec<f32> = (0..32 * 8)
            .map(|i| {
                if live(i % 8) {
                    ((i + 7 * step) as f32 * 0.37).sin()
                } else {
                    0.0
                }
            })
            .collect();
        let y: Vec<f32> = (0..32).map(|i| ((i + step) as f32 * 0.11).cos()).collect();
        let mut h = Tensor::from_vec(x, (32, 8), device).unwrap();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h).unwrap();
            if i < 2 {
                h = h.tanh().unwrap();
            }
        }
        let y = Tensor::from_vec(y, (32, 1), device).unwrap();
        (h - y).unwrap().sqr().unwrap().mean_all().unwrap()
    }
}

fn weights(vars: &[(String, Var)]) -> Vec<Vec<f32>> {
    vars.iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn clip_guard() -> Guard {
    let rules: Vec<Box<dyn Rule>> = vec![Box::new(ClipByGlobalNorm::new(0.05).unwrap())];
    let config = GuardConfig {
        grad_spike: None,
        loss_spike: None,
        ..GuardConfig::default()
    };
    Guard::new(config, Chain::new(rules).unwrap()).unwrap()
}

/// Burn parameters holding given values, in the order of `names` (Burn names them by field).
#[derive(Module, Debug)]
struct Flat {
    params: Vec<Param<burn::tensor::Tensor<1>>>,
}

#[test]
fn the_same_gradients_give_the_same_statistics_clip_and_decision_everywhere() {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap, &device);
    let vars = named_vars(&varmap);
    let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "layers.0.bias",
            "layers.0.weight",
            "layers.1.bias",
            "layers.1.weight",
            "layers.2.bias",
            "layers.2.weight"
        ]
    );
    let mut store = model.loss(0, &device).backward().unwrap();

    // Candle.
    let mut candle = CandleGradients::collect(&store, &vars, false).unwrap();
    // The host, from the same values.
    let values: Vec<Vec<f32>> = vars
        .iter()
        .map(|(_, v)| {
            let g = store.get(v).unwrap();
            g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        })
        .collect();
    let mut host = HostGradients::new(
        vars.iter()
            .zip(&values)
            .map(|((n, v), x)| HostTensor::new(n.clone(), v.dims().to_vec(), x.clone()).unwrap())
            .collect(),
    )
    .unwrap();
    // Burn, from the same values, on both placements.
    let burn_device = burn::tensor::Device::flex().autodiff();
    let flat = Flat {
        params: values
            .iter()
            .map(|x| Param::from_tensor(burn::tensor::Tensor::<1>::zeros([x.len()], &burn_device)))
            .collect(),
    };
    let burn_view = |placement: Placement| {
        let mut grads = GradientsParams::new();
        for (p, x) in flat.params.iter().zip(&values) {
            let g =
                burn::tensor::Tensor::<1>::from_floats(x.as_slice(), &burn_device.clone().inner());
            grads.register(p.id, g);
        }
        BurnGradients::collect_with(&flat, &mut grads, None, false, placement)
    };
    let (mut burn_host, mut burn_device_view) =
        (burn_view(Placement::Host), burn_view(Placement::Device));

    // A step no rule changes reads Candle's buffers in place and copies nothing.
    let mut untouched = CandleGradients::collect(&store, &vars, false).unwrap();
    let report = Guard::default().step(&mut untouched, Some(1.0)).unwrap();
    assert_eq!(report.decision, Decision::Apply);
    assert!(untouched.borrowed() && !untouched.changed());

    let reference = host.stats();
    assert!(
        candle.borrowed(),
        "on the CPU the statistics read Candle's buffers in place"
    );
    assert_eq!(candle.stats(), reference, "Candle = host, bit for bit");
    assert_eq!(burn_host.stats(), reference, "Burn (host kernels) = host");
    for (d, h) in burn_device_view.stats().iter().zip(&reference) {
        assert!(
            (d.l2() - h.l2()).abs() <= 1e-6 * h.l2(),
            "Burn on the device path"
        );
    }

    let views: [&mut dyn Gradients; 4] = [
        &mut host,
        &mut candle,
        &mut burn_host,
        &mut burn_device_view,
    ];
    let mut reports = Vec::new();
    for view in views {
        reports.push(clip_guard().step(view, Some(1.0)).unwrap());
    }
    for r in &reports {
        assert_eq!(r.decision, Decision::Apply);
        assert!((r.norm_before - reports[0].norm_before).abs() <= 1e-6 * reports[0].norm_before);
        assert!(
            (r.norm_after - 0.05).abs() < 1e-6,
            "clipped to 0.05: {}",
            r.norm_after
        );
        assert_eq!(r.rules[0].action, reports[0].rules[0].action);
    }
    assert!(!candle.borrowed(), "a clip works on copies");
    // The clipped gradients go back into Candle's store, equal to the host's.
    candle.write_back(&mut store).unwrap();
    for ((_, v), h) in vars.iter().zip(host.tensors()) {
        let g = store
            .get(v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(g, h.values);
    }
}

/// A loss term of value 0 whose gradient is NaN in every value of `name`:
/// √(b − b) = 0, and its derivative ∞ − ∞.
fn nan_gradient(varmap: &VarMap, name: &str) -> Tensor {
    let b = varmap.data().lock().unwrap()[name].as_tensor().clone();
    let same = b.clone();
    (&b - &same).unwrap().sqrt().unwrap().sum_all().unwrap()
}

/// Two MLPs with equal weights in two variable maps: a run and its unguarded twin.
fn twin_mlps(device: &Device) -> ((VarMap, Mlp), (VarMap, Mlp)) {
    let (varmap, twin_map) = (VarMap::new(), VarMap::new());
    let (model, twin) = (Mlp::new(&varmap, device), Mlp::new(&twin_map, device));
    for ((_, a), (_, b)) in named_vars(&twin_map).iter().zip(&named_vars(&varmap)) {
        a.set(&b.as_tensor().copy().unwrap()).unwrap();
    }
    ((varmap, model), (twin_map, twin))
}

#[test]
fn a_nan_gradient_is_named_and_the_step_skipped_with_nothing_changed() {
    let device = Device::Cpu;
    let ((varmap, model), (twin_map, twin)) = twin_mlps(&device);
    // No rate back-off and no update bound: the twin comparison below isolates the optimizer.
    let guard = || {
        let config = GuardConfig {
            lr: gradguard::LrBackoff {
                backoff: 1.0,
                ..Default::default()
            },
            update_bound: None,
            ..GuardConfig::default()
        };
        Guard::new(config, Chain::default()).unwrap()
    };
    let adamw = |map: &VarMap| {
        GuardedOptimizer::<AdamW>::new(map, ParamsAdamW::default(), guard()).unwrap()
    };
    let (mut optim, mut untouched) = (adamw(&varmap), adamw(&twin_map));
    optim.step(&model.loss(0, &device)).unwrap();
    untouched.step(&twin.loss(0, &device)).unwrap();
    let before = weights(optim.vars());

    let nan_term = nan_gradient(&varmap, "layers.1.bias");
    let report = optim
        .step(&(model.loss(1, &device) + nan_term).unwrap())
        .unwrap();
    assert_eq!(report.decision, Decision::Skip);
    assert!(
        report.reasons[0].contains("'layers.1.bias' at index 0"),
        "{:?}",
        report.reasons
    );
    assert_eq!(weights(optim.vars()), before, "weights unchanged");

    // AdamW's moments and step count are untouched too: the next step is the twin's, which
    // never saw the bad batch, bit for bit.
    optim.step(&model.loss(2, &device)).unwrap();
    untouched.step(&twin.loss(2, &device)).unwrap();
    assert_eq!(weights(optim.vars()), weights(untouched.vars()));
}

#[test]
fn a_nan_gradient_under_the_error_policy_stops_with_the_tensor_named() {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap, &device);
    let guard = Guard::new(
        GuardConfig {
            non_finite: NonFinitePolicy::Error,
            ..GuardConfig::default()
        },
        Chain::default(),
    )
    .unwrap();
    let mut optim = GuardedOptimizer::<SGD>::new(&varmap, 0.1, guard).unwrap();
    let before = weights(optim.vars());
    let poisoned = (model.loss(1, &device) + nan_gradient(&varmap, "layers.0.bias")).unwrap();
    let err = optim.step(&poisoned).unwrap_err().to_string();
    assert!(err.contains("layers.0.bias"), "{err}");
    assert_eq!(weights(optim.vars()), before);
}

#[test]
fn a_loss_spike_rolls_back_to_the_snapshot_exactly() {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap, &device);
    let config = GuardConfig {
        snapshot_every: 5,
        on_spike: SpikeAction::Rollback { skip_batches: 2 },
        ..GuardConfig::default()
    };
    let guard = Guard::new(config, Chain::default()).unwrap();
    let mut optim = GuardedOptimizer::<SGD>::new(&varmap, 0.01, guard).unwrap();
    let mut at_snapshot = None;
    for s in 0..30 {
        let report = optim.step(&model.loss(s, &device)).unwrap();
        assert_eq!(
            report.decision,
            Decision::Apply,
            "step {s}: {:?}",
            report.reasons
        );
        if report.take_snapshot {
            at_snapshot = Some(weights(optim.vars()));
        }
    }
    let spiked = model.loss(30, &device).affine(1e6, 0.0).unwrap();
    let report = optim.step(&spiked).unwrap();
    assert!(
        matches!(report.decision, Decision::Rollback { .. }),
        "{:?}",
        report.reasons
    );
    assert_eq!(
        Some(weights(optim.vars())),
        at_snapshot,
        "restored bit for bit"
    );
    assert!(optim.skip_batch() && optim.skip_batch() && !optim.skip_batch());
    assert!(optim.snapshot_seconds() > 0.0);
}

/// The default guard bounds each output neuron's update on Candle too: after an oversized SGD
/// step every row of every `[out, in]` weight moved by at most τ_u = 0.5% of its norm (or of a
/// typical unit's, the floor).
#[test]
fn the_default_guard_bounds_every_output_neurons_update() {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let mlp = Mlp::new(&varmap, &device);
    let vars = named_vars(&varmap);
    let before = weights(&vars);
    let mut optim = GuardedOptimizer::<SGD>::new(&varmap, 5.0, Guard::default()).unwrap();
    let report = optim.step(&mlp.loss(0, &device)).unwrap();
    let check = report.update.expect("the default guard bounds updates");
    assert!(
        check.bounded_units > 0,
        "rate 5 moves units by far more: {check:?}"
    );
    assert_eq!(check.family, gradguard::UpdateFamily::Proportional);
    let after = weights(&vars);
    let total: f64 = before.iter().flatten().map(|&x| f64::from(x).powi(2)).sum();
    let count: usize = before.iter().map(Vec::len).sum();
    let rms = (total / count as f64).sqrt();
    for ((name, var), (b, a)) in vars.iter().zip(before.iter().zip(&after)) {
        let dims = var.as_tensor().dims().to_vec();
        let span = gradguard::UnitLayout::OutputFirst
            .span(name, &dims)
            .unwrap();
        let n_u = (b.len() / span.units()) as f64;
        for (w, d) in gradguard::kernel::unit_update_norms(b, a, span) {
            let ratio = d / w.max(rms * n_u.sqrt());
            assert!(
                ratio <= 0.005 * (1.0 + 1e-4),
                "{name}: a unit moved by {ratio}"
            );
        }
    }
}

/// AdamW is recognized by its first step (every coordinate moves by the rate) and judged by the
/// normalizing family's limits: at its default rate nothing fires, and the step is AdamW's own.
#[test]
fn adamw_is_recognized_and_its_healthy_step_is_untouched() {
    let device = Device::Cpu;
    let ((varmap, model), (twin_map, twin)) = twin_mlps(&device);
    let mut guarded =
        GuardedOptimizer::<AdamW>::new(&varmap, ParamsAdamW::default(), Guard::default()).unwrap();
    let report = guarded.step(&model.loss(0, &device)).unwrap();
    let check = report.update.expect("the default guard bounds updates");
    assert_eq!(
        check.family,
        gradguard::UpdateFamily::Normalized,
        "{check:?}"
    );
    assert!(!check.changes_anything(), "{check:?}");
    let mut plain = AdamW::new(twin_map.all_vars(), ParamsAdamW::default()).unwrap();
    plain.backward_step(&twin.loss(0, &device)).unwrap();
    assert_eq!(weights(guarded.vars()), weights(&named_vars(&twin_map)));
}

/// Where always-blank inputs leave part of every first-layer unit still, no unit moves by the
/// rate per value; AdamW is still recognized, by the largest change of one weight.
#[test]
fn adamw_is_recognized_where_dead_inputs_leave_part_of_every_unit_still() {
    let device = Device::Cpu;
    let ((varmap, model), _) = twin_mlps(&device);
    let mut guarded =
        GuardedOptimizer::<AdamW>::new(&varmap, ParamsAdamW::default(), Guard::default()).unwrap();
    let report = guarded
        .step(&model.loss_on(0, |feature| feature < 3, &device))
        .unwrap();
    let check = report.update.expect("the default guard bounds updates");
    assert_eq!(
        check.family,
        gradguard::UpdateFamily::Normalized,
        "{check:?}"
    );
}
