//! The model probe on a Candle model: it judges the rate by the model's own loss, brackets
//! the safe rate, and leaves every var as it was.

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Linear, Module, ParamsAdamW, SGD, VarBuilder, VarMap};
use gradguard::probe::{Health, ProbeSettings};
use gradguard_candle::named_vars;
use gradguard_candle::probe::{probe_varmap, probe_varmap_along};

struct Mlp {
    hidden: Vec<Linear>,
    head: Linear,
}

impl Mlp {
    fn new(varmap: &VarMap, depth: usize, width: usize) -> Mlp {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        let hidden = (0..depth)
            .map(|i| {
                let inputs = if i == 0 { 8 } else { width };
                candle_nn::linear(inputs, width, vb.pp(format!("layers.{i}"))).unwrap()
            })
            .collect();
        let head = candle_nn::linear(width, 1, vb.pp("head")).unwrap();
        Mlp { hidden, head }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.hidden {
            h = layer.forward(&h)?.tanh()?;
        }
        self.head.forward(&h)
    }
}

/// Batches of a regression target, one per index, fixed.
fn batches(n: usize) -> Vec<(Tensor, Tensor)> {
    (0..n)
        .map(|b| {
            let x: Vec<f32> = (0..32 * 8)
                .map(|i| ((i * 7 + b * 13) as f32 * 0.37).sin())
                .collect();
            let x = Tensor::from_vec(x, (32, 8), &Device::Cpu).unwrap();
            let y = (x.sum_keepdim(1).unwrap() * 0.3).unwrap().tanh().unwrap();
            (x, y)
        })
        .collect()
}

fn values(varmap: &VarMap) -> Vec<Vec<f32>> {
    named_vars(varmap)
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

/// The mean squared error of `model` on batch `i` of `data`.
fn mse(model: &Mlp, data: &[(Tensor, Tensor)], i: usize) -> candle_core::Result<Tensor> {
    let (x, y) = &data[i];
    (model.forward(x)? - y)?.sqr()?.mean_all()
}

#[test]
fn a_small_rate_is_healthy_a_large_one_explodes_and_the_model_is_unchanged() {
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap, 3, 32);
    let data = batches(10);
    let loss = |i: usize| mse(&model, &data, i);
    let weights = values(&varmap);

    let calm = probe_varmap::<SGD>(&varmap, 1e-3, &ProbeSettings::at_rate(1e-3), loss).unwrap();
    assert_eq!(
        calm.verdict.health,
        Health::Healthy,
        "{}",
        calm.verdict.reason
    );
    let safe = calm.safe_rate.rate.expect("some rate is safe");
    let bad = calm.safe_rate.first_diverging.expect("some rate diverges");
    assert!(
        safe > 1e-3 && bad / safe <= 2f64.sqrt() + 1e-9,
        "{safe} {bad}"
    );
    assert_eq!(
        calm.profile.profile.layers.len(),
        4,
        "three hidden layers and the head"
    );
    assert_eq!(calm.first_step.len(), 8, "a weight and a bias per layer");
    let after = calm.after_trial.as_ref().expect("measured after the trial");
    assert_eq!(after.profile.layers.len(), 4);
    assert!(after.input_to_output().is_some_and(|r| r >= 0.01));
    assert!(calm.butterfly.exponent().is_some());
    assert_eq!(values(&varmap), weights, "the vars moved");

    let hot = probe_varmap::<SGD>(&varmap, 1e-3, &ProbeSettings::at_rate(bad * 4.0), loss).unwrap();
    assert_eq!(
        hot.verdict.health,
        Health::Explodes,
        "{}",
        hot.verdict.reason
    );
    assert_eq!(values(&varmap), weights, "the vars moved");

    let adamw = probe_varmap::<AdamW>(
        &varmap,
        ParamsAdamW::default(),
        &ProbeSettings::at_rate(1e-3),
        loss,
    )
    .unwrap();
    assert!(adamw.safe_rate.rate.is_some(), "{}", adamw.verdict.reason);
    assert_eq!(values(&varmap), weights, "the vars moved");
}

#[test]
fn bad_settings_and_failing_losses_are_errors_and_the_model_is_unchanged() {
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap, 1, 4);
    let data = batches(10);
    let weights = values(&varmap);
    let loss = |i: usize| mse(&model, &data, i);
    let err = probe_varmap::<SGD>(&varmap, 0.1, &ProbeSettings::at_rate(-1.0), loss).unwrap_err();
    assert!(err.to_string().contains("rate must be positive"), "{err}");
    // A loss that fails on the fifth call: the probe returns Candle's error, vars restored.
    let mut calls = 0;
    let failing = |i: usize| {
        calls += 1;
        if calls > 5 {
            candle_core::bail!("batch {i} could not be read");
        }
        loss(i)
    };
    let err = probe_varmap::<SGD>(&varmap, 0.1, &ProbeSettings::at_rate(0.1), failing).unwrap_err();
    assert!(err.to_string().contains("could not be read"), "{err}");
    assert_eq!(values(&varmap), weights, "the vars moved");
}

#[test]
fn a_path_the_user_names_is_read_at_initialization_and_after_the_trial() {
    // A path whose start gets 1e-4 of its end's gradient (a recurrent net's first time step):
    // read on the profile's batches, then on the vars trained at the rate (the reference
    // batch's loss is lower there), and the model is called vanishing; the vars end as given.
    let varmap = VarMap::new();
    let model = Mlp::new(&varmap, 3, 32);
    let data = batches(10);
    let loss = |i: usize| mse(&model, &data, i);
    let weights = values(&varmap);
    let mut seen = Vec::new();
    let path = |i: usize| {
        seen.push((i, loss(0)?.to_scalar::<f32>()?));
        Ok(Some(vec![1e-4, 0.5, 1.0]))
    };
    let settings = ProbeSettings::at_rate(1e-2);
    let p = probe_varmap_along::<SGD>(&varmap, 1e-2, &settings, loss, "time step", path).unwrap();
    let reading = p.path.expect("a path was given");
    assert_eq!(
        (reading.at_init, reading.after_trial),
        (Some(1e-4), Some(1e-4))
    );
    assert_eq!(p.verdict.health, Health::Vanishes, "{}", p.verdict.reason);
    let batches: Vec<usize> = seen.iter().map(|(i, _)| *i).collect();
    assert_eq!(batches, [0, 1, 2, 3, 0]);
    assert!(seen[..4].iter().all(|(_, l)| *l == seen[0].1));
    assert!(seen[4].1 < seen[0].1, "{seen:?}");
    assert_eq!(values(&varmap), weights);
    // Without a path, the same model is healthy at that rate.
    let plain = probe_varmap::<SGD>(&varmap, 1e-2, &settings, loss).unwrap();
    assert_eq!(plain.path, None);
    assert_eq!(
        plain.verdict.health,
        Health::Healthy,
        "{}",
        plain.verdict.reason
    );
}
