//! Helpers shared by the integration tests.
#![allow(dead_code)]

use gradguard::rules::{Rule, RuleOutcome};
use gradguard::{Gradients, HostGradients, HostTensor};
use serde_json::Value;

/// One value of a fixture: a number, or "nan" / "inf" / "-inf".
pub fn decode(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => match s.as_str() {
            "nan" => f64::NAN,
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            other => panic!("unexpected fixture value {other}"),
        },
        other => panic!("unexpected fixture value {other}"),
    }
}

/// An array of f32 values of a fixture.
pub fn decode_f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| decode(x) as f32)
        .collect()
}

/// A fixture tensor's `shape`.
pub fn shape(t: &Value) -> Vec<usize> {
    t["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect()
}

/// The tensors of a fixture case (`tensors` or `params`).
pub fn tensors(v: &Value) -> Vec<HostTensor> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            HostTensor::new(
                t["name"].as_str().unwrap(),
                shape(t),
                decode_f32s(&t["values"]),
            )
            .unwrap()
        })
        .collect()
}

/// Applies one rule to a copy of `grads`, returning the outcome and the new values.
pub fn apply(rule: &mut dyn Rule, grads: &HostGradients) -> (RuleOutcome, HostGradients) {
    let mut g = grads.clone();
    let mut stats = g.stats();
    let outcome = rule.apply(&mut g, &mut stats).unwrap();
    (outcome, g)
}

/// Host gradients from (name, shape, values) triples.
pub fn grads(spec: &[(&str, &[usize], Vec<f32>)]) -> HostGradients {
    HostGradients::new(
        spec.iter()
            .map(|(n, s, v)| HostTensor::new(*n, s.to_vec(), v.clone()).unwrap())
            .collect(),
    )
    .unwrap()
}

/// Euclidean norm of all values, exactly in f64 (the test's own reference).
pub fn exact_l2(g: &HostGradients) -> f64 {
    g.tensors()
        .iter()
        .flat_map(|t| t.values.iter())
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
}

/// |a − b| ≤ rel·|b| + abs, with NaN equal to NaN and infinities equal to themselves.
pub fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= rel * b.abs() + abs
}

/// A two-tensor batch (a 2×2 weight and its bias) whose values scale with `scale`.
pub fn batch(scale: f32) -> HostGradients {
    grads(&[
        (
            "layers.0.weight",
            &[2, 2],
            vec![scale, -scale, 0.5 * scale, 0.25 * scale],
        ),
        ("layers.0.bias", &[2], vec![0.1 * scale, -0.1 * scale]),
    ])
}
