//! The model probe on a user-built Burn module: it judges the rate by the model's own loss,
//! finds a safe rate that brackets the measured limit, and leaves the model and the optimizer
//! it was given as they were.

mod common;

use burn::module::{ModuleMapper, Param};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{DType, Device, Distribution, Tensor};
use common::{Mlp, params_copy};
use gradguard::probe::Health;
use gradguard_burn::probe::{ProbeSettings, probe_model, probe_model_along};

/// The shared test MLP (tanh, 8 inputs), its weights drawn from a fixed seed.
fn mlp(depth: usize, width: usize, device: &Device) -> Mlp {
    device.seed(7);
    Mlp::new(depth, width, device)
}

/// Batches of a regression target, one per index, drawn once.
fn batches(n: usize, device: &Device) -> Vec<(Tensor<2>, Tensor<2>)> {
    device.seed(11);
    (0..n)
        .map(|_| {
            let x = Tensor::<2>::random([32, 8], Distribution::Normal(0.0, 1.0), device);
            let y = x.clone().sum_dim(1).mul_scalar(0.3).tanh();
            (x, y)
        })
        .collect()
}

/// The mean squared error of `m` on batch `i` of `data`.
fn mse(m: &Mlp, data: &[(Tensor<2>, Tensor<2>)], i: usize) -> Tensor<1> {
    let (x, y) = &data[i];
    (m.forward(x.clone()) - y.clone()).square().mean()
}

#[test]
fn a_small_rate_is_healthy_a_large_one_explodes_and_the_safe_rate_lies_between() {
    let device = Device::flex().autodiff();
    let model = mlp(3, 32, &device);
    let data = batches(10, &device);
    let loss = |m: &Mlp, i: usize| mse(m, &data, i);
    let sgd = SgdConfig::new().init();
    let calm = probe_model(&model, &sgd, &ProbeSettings::at_rate(1e-3), loss).unwrap();
    assert_eq!(
        calm.verdict.health,
        Health::Healthy,
        "{}",
        calm.verdict.reason
    );
    let safe = calm.safe_rate.rate.expect("some rate is safe");
    let diverging = calm.safe_rate.first_diverging.expect("some rate diverges");
    assert!(safe >= 1e-3 && diverging > safe && diverging / safe <= 1.5);
    // Every trial below the safe rate survived, every one at or above the diverging rate blew up.
    for t in &calm.safe_rate.trials {
        assert_eq!(t.diverged(), t.rate >= diverging, "trial at {}", t.rate);
    }
    assert_eq!(calm.profile.profile.layers.len(), 4);
    let after = calm.after_trial.as_ref().expect("measured after the trial");
    assert_eq!(after.profile.layers.len(), 4);
    assert!(after.input_to_output().is_some_and(|r| r >= 0.01));
    assert_eq!(calm.first_step.len(), 8);
    assert!(calm.first_step.iter().all(|t| t.ratio().is_some()));
    assert_eq!(calm.butterfly.separation.len(), 11);

    let hot = probe_model(&model, &sgd, &ProbeSettings::at_rate(diverging * 4.0), loss).unwrap();
    assert_eq!(
        hot.verdict.health,
        Health::Explodes,
        "{}",
        hot.verdict.reason
    );
    assert!(
        hot.verdict.reason.contains("the largest safe rate is"),
        "{}",
        hot.verdict.reason
    );
}

#[test]
fn a_path_the_user_names_is_read_at_initialization_and_after_the_trial() {
    // A path whose start gets 1e-4 of its end's gradient (a recurrent net's first time step):
    // the probe reads it on the profile's batches, then on the copy trained at the rate, and
    // calls the model vanishing although its layers' profile is calm.
    let device = Device::flex().autodiff();
    let model = mlp(3, 32, &device);
    let data = batches(10, &device);
    let loss = |m: &Mlp, i: usize| mse(m, &data, i);
    let mut seen = Vec::new();
    let path = |m: &Mlp, i: usize| {
        seen.push((i, f64::from(loss(m, 0).into_scalar::<f32>())));
        Some(vec![1e-4, 0.5, 1.0])
    };
    let sgd = SgdConfig::new().init();
    let settings = ProbeSettings::at_rate(1e-2);
    let p = probe_model_along(&model, &sgd, &settings, loss, "time step", path).unwrap();
    let reading = p.path.expect("a path was given");
    assert_eq!(reading.at_init, Some(1e-4));
    assert_eq!(reading.after_trial, Some(1e-4));
    assert_eq!(p.verdict.health, Health::Vanishes, "{}", p.verdict.reason);
    // Batches 0-3 on the model as given, then batch 0 on the trained copy.
    let batches: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
    assert_eq!(batches, [0, 1, 2, 3, 0]);
    assert!(seen[..4].iter().all(|(_, l)| *l == seen[0].1));
    assert!(seen[4].1 < seen[0].1, "{seen:?}");
    // Without a path, the same model is healthy at that rate.
    let plain = probe_model(&model, &sgd, &settings, loss).unwrap();
    assert_eq!(plain.path, None);
    assert_eq!(
        plain.verdict.health,
        Health::Healthy,
        "{}",
        plain.verdict.reason
    );
}

#[test]
fn the_model_and_the_optimizer_given_are_unchanged() {
    let device = Device::flex().autodiff();
    let mut model = mlp(2, 16, &device);
    let data = batches(10, &device);
    let loss = |m: &Mlp, i: usize| mse(m, &data, i);
    // An optimizer with state: Adam after one step.
    let mut adam: ModuleOptimizer = AdamConfig::new().init();
    let grads = GradientsParams::from_grads(loss(&model, 0).backward(), &model);
    model = adam.step(1e-3, model, grads);
    let (weights, twin) = (params_copy(&model), adam.clone());

    probe_model(&model, &adam, &ProbeSettings::at_rate(1e-2), loss).unwrap();
    assert_eq!(params_copy(&model), weights, "the model moved");
    // The optimizer's state is unchanged: its next step equals an untouched copy's.
    let step = |mut opt: ModuleOptimizer| {
        let m = model.clone();
        let grads = GradientsParams::from_grads(loss(&m, 1).backward(), &m);
        params_copy(&opt.step(1e-3, m, grads))
    };
    assert_eq!(step(adam), step(twin));
}

#[test]
fn bad_settings_are_refused_by_name() {
    let device = Device::flex().autodiff();
    let model = mlp(1, 4, &device);
    let data = batches(1, &device);
    let loss = |m: &Mlp, _: usize| mse(m, &data, 0);
    let settings = ProbeSettings {
        trial_steps: 0,
        ..ProbeSettings::at_rate(0.1)
    };
    let err = probe_model(&model, &SgdConfig::new().init(), &settings, loss).unwrap_err();
    assert!(err.to_string().contains("at least one batch"), "{err}");
    let err = probe_model(
        &model,
        &SgdConfig::new().init(),
        &ProbeSettings::at_rate(-1.0),
        loss,
    )
    .unwrap_err();
    assert!(err.to_string().contains("rate must be positive"), "{err}");
}

/// `module` with every float parameter stored in `dtype`, still a trainable leaf.
fn stored_in<M: burn::module::Module>(module: M, dtype: DType) -> M {
    struct Cast(DType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            p.map(|t| t.inner().cast(dtype).autodiff().require_grad())
        }
    }
    module.map(&mut Cast(dtype))
}

#[test]
fn half_precision_weights_are_probed_with_norms_in_f32() {
    let device = Device::flex().autodiff();
    for dtype in [DType::F16, DType::BF16] {
        let model = stored_in(mlp(2, 16, &device), dtype);
        let data = batches(10, &device);
        let loss = |m: &Mlp, i: usize| {
            let (x, y) = &data[i];
            let out = m.forward(x.clone().cast(dtype)).cast(DType::F32);
            (out - y.clone()).square().mean()
        };
        let probe = probe_model(
            &model,
            &SgdConfig::new().init(),
            &ProbeSettings::at_rate(1e-2),
            loss,
        )
        .unwrap();
        assert!(
            probe.safe_rate.rate.is_some(),
            "{dtype:?}: {}",
            probe.verdict.reason
        );
        let weights = probe
            .first_step
            .iter()
            .filter(|t| t.name.ends_with("weight"));
        for t in weights {
            assert!(
                t.ratio().is_some_and(|r| r > 0.0),
                "{dtype:?} {}: {t:?}",
                t.name
            );
        }
        assert!(probe.butterfly.exponent().is_some(), "{dtype:?}");
    }
}
