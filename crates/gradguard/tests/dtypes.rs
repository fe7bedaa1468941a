//! Gradient files in f64, f16 and bf16 against PyTorch computing in those dtypes
//! (`scripts/reference/make_dtype_fixture.py` writes `fixtures/dtypes.json`): read, clipped by
//! the global norm (p = 2, 1, ∞) and by value, written back in kind.
//!
//! f64 keeps f64 precision end to end (values, totals, the coefficient): it matches PyTorch to
//! f64 rounding. f16 and bf16 are widened exactly, clipped with the coefficient of the exact
//! total and rounded once; PyTorch rounds the total and the coefficient to the half dtype first,
//! so the two agree to two units in the last place of that dtype.

mod common;

use gradguard::rules::{ClipByGlobalNorm, ClipByValue, Rule};
use gradguard::safetensors_io::{
    StoredDtype, holds_f64, read_f64_tensors, read_tensors_with_dtypes, write_f64_tensors_as,
    write_tensors_as,
};
use gradguard::{F64Gradients, Gradients, HostGradients, NormType};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/dtypes.json");

fn dtype_of(name: &str) -> (Dtype, usize) {
    match name {
        "F64" => (Dtype::F64, 8),
        "F16" => (Dtype::F16, 2),
        "BF16" => (Dtype::BF16, 2),
        other => panic!("unknown dtype {other}"),
    }
}

/// Little-endian bytes of hex bit patterns of `width` bytes each.
fn bytes_of(bits: &Value, width: usize) -> Vec<u8> {
    bits.as_array()
        .unwrap()
        .iter()
        .flat_map(|b| {
            let v = u64::from_str_radix(b.as_str().unwrap(), 16).unwrap();
            v.to_le_bytes()[..width].to_vec()
        })
        .collect()
}

/// The value of each bit pattern, widened to f64.
fn values_of(name: &str, bits: &Value) -> Vec<f64> {
    bits.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let v = u64::from_str_radix(b.as_str().unwrap(), 16).unwrap();
            match name {
                "F64" => f64::from_bits(v),
                "F16" => f64::from(half::f16::from_bits(v as u16)),
                _ => f64::from(half::bf16::from_bits(v as u16)),
            }
        })
        .collect()
}

/// The case's tensors as a safetensors file in their dtype.
fn file(case: &Value) -> Vec<u8> {
    let name = case["dtype"].as_str().unwrap();
    let (dtype, width) = dtype_of(name);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = case["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                common::shape(t),
                bytes_of(&t["bits"], width),
            )
        })
        .collect();
    let views = data
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()));
    safetensors::serialize(views, None).unwrap()
}

/// Reads `bytes` as the CLI does, applies `rule`, writes back in kind, and returns the total
/// the rule measured and the written tensors' values widened to f64.
fn clip(bytes: &[u8], mut rule: Box<dyn Rule>) -> (Option<f64>, Vec<Vec<f64>>) {
    let (out, total) = if holds_f64(bytes).unwrap() {
        let (tensors, dtypes, _) = read_f64_tensors(bytes).unwrap();
        assert!(dtypes.iter().all(|d| *d == StoredDtype::F64));
        let mut g = F64Gradients::new(tensors).unwrap();
        let mut stats = g.stats();
        let total = rule.apply(&mut g, &mut stats).unwrap().norm;
        (
            write_f64_tensors_as(g.tensors(), &dtypes, None).unwrap(),
            total,
        )
    } else {
        let (tensors, dtypes, _) = read_tensors_with_dtypes(bytes).unwrap();
        let mut g = HostGradients::new(tensors).unwrap();
        let mut stats = g.stats();
        let total = rule.apply(&mut g, &mut stats).unwrap().norm;
        (write_tensors_as(g.tensors(), &dtypes, None).unwrap(), total)
    };
    let (back, _, _) = read_f64_tensors(&out).unwrap();
    (total, back.into_iter().map(|t| t.values).collect())
}

/// Units in the last place allowed between us and PyTorch: f64 to rounding, half dtypes two.
fn tolerance(name: &str, x: f64) -> f64 {
    let ulp = match name {
        "F64" => return 4.0 * f64::EPSILON * x.abs(),
        "F16" => 2f64.powi(-10),
        _ => 2f64.powi(-7),
    };
    2.0 * ulp * x.abs().max(2f64.powi(-14))
}

#[test]
fn files_in_f64_f16_and_bf16_clip_as_pytorch_does_in_their_dtype() {
    let doc: Value = serde_json::from_str(FIXTURE).unwrap();
    let mut checked = 0;
    for case in doc["cases"].as_array().unwrap() {
        let name = case["dtype"].as_str().unwrap();
        let bytes = file(case);
        assert_eq!(holds_f64(&bytes).unwrap(), name == "F64");
        for entry in case["clip_grad_norm"].as_array().unwrap() {
            let norm: NormType = entry["norm_type"].as_str().unwrap().parse().unwrap();
            let max_norm = entry["max_norm"].as_f64().unwrap();
            let rule = ClipByGlobalNorm::with_norm(max_norm, norm).unwrap();
            let (total, clipped) = clip(&bytes, Box::new(rule));
            let (ours, theirs) = (total.unwrap(), entry["total"].as_f64().unwrap());
            assert!(
                (ours - theirs).abs() <= tolerance(name, theirs),
                "{name} p={norm:?}: total {ours} vs PyTorch {theirs}"
            );
            for (got, want) in clipped.iter().zip(entry["clipped"].as_array().unwrap()) {
                for (g, w) in got.iter().zip(values_of(name, want)) {
                    assert!(
                        (g - w).abs() <= tolerance(name, w),
                        "{name} p={norm:?} max {max_norm}: {g} vs PyTorch {w}"
                    );
                    checked += 1;
                }
            }
        }
        for entry in case["clip_grad_value"].as_array().unwrap() {
            let rule = ClipByValue::new(entry["clip"].as_f64().unwrap()).unwrap();
            let (_, clipped) = clip(&bytes, Box::new(rule));
            for (got, want) in clipped.iter().zip(entry["clipped"].as_array().unwrap()) {
                assert_eq!(got, &values_of(name, want), "{name}: clip by value");
            }
        }
    }
    assert!(checked > 200, "{checked} values compared");
}
