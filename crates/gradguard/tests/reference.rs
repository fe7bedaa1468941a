//! gradguard's rules against reference values from PyTorch and Optax.
//!
//! The fixture is produced by `scripts/reference/make_fixtures.py` (PyTorch `clip_grad_norm_`,
//! `clip_grad_value_`; Optax `clip_by_global_norm`, `clip`, `adaptive_grad_clip`), plus the exact
//! float64 norm from NumPy. Where the reference overflows in f32 (finite gradients of 1e19 and
//! more), gradguard is deliberately better: those cases are checked against exact math instead.

mod common;

use std::sync::OnceLock;

use common::{apply, close, decode, decode_f32s, tensors};
use gradguard::rules::{
    AdaptiveGradClip, ClipByGlobalNorm, ClipByValue, NORM_EPS, Rule, RuleAction,
};
use gradguard::{Gradients, HostGradients, NormType, UnitLayout};
use serde_json::Value;

fn fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let text = include_str!("fixtures/reference.json");
        serde_json::from_str(text).expect("fixture parses")
    })
}

fn cases() -> impl Iterator<Item = (&'static str, &'static Value, HostGradients)> {
    fixture()["cases"].as_array().unwrap().iter().map(|c| {
        let g = HostGradients::new(tensors(&c["tensors"])).unwrap();
        (c["name"].as_str().unwrap(), c, g)
    })
}

fn values(g: &HostGradients) -> Vec<Vec<f32>> {
    g.tensors().iter().map(|t| t.values.clone()).collect()
}

fn bits(g: &HostGradients) -> Vec<Vec<u32>> {
    g.tensors()
        .iter()
        .map(|t| t.values.iter().map(|v| v.to_bits()).collect())
        .collect()
}

fn assert_tensors_close(
    case: &str,
    what: &str,
    ours: &HostGradients,
    expected: &[Vec<f32>],
    rel: f64,
) {
    for (t, (mine, theirs)) in values(ours).iter().zip(expected).enumerate() {
        assert_eq!(mine.len(), theirs.len(), "{case}/{what}: tensor {t} length");
        for (i, (&a, &b)) in mine.iter().zip(theirs).enumerate() {
            assert!(
                close(f64::from(a), f64::from(b), rel, 1e-37),
                "{case}/{what}: tensor {t}[{i}] is {a}, reference {b}"
            );
        }
    }
}

fn expected_arrays(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(decode_f32s).collect()
}

#[test]
fn global_norm_matches_pytorch_clip_grad_norm() {
    let mut checked = 0;
    let mut imprecise_in_reference = 0;
    for (name, case, grads) in cases() {
        for e in case["torch_clip_grad_norm"].as_array().unwrap() {
            let p: NormType = e["norm_type"].as_str().unwrap().parse().unwrap();
            let max_norm = decode(&e["max_norm"]);
            let exact = decode(&e["exact_total"]);
            let what = format!("p={p} max_norm={max_norm}");
            let mut rule = ClipByGlobalNorm::with_norm(max_norm, p).unwrap();
            let (outcome, clipped) = apply(&mut rule, &grads);
            let total = outcome.norm.unwrap();
            // Our f64 total always matches exact math.
            assert!(
                close(total, exact, 1e-6, 0.0),
                "{name}/{what}: total {total}, exact {exact}"
            );
            if !exact.is_finite() {
                // NaN/inf gradients: PyTorch multiplies them by a NaN or zero coefficient; we
                // leave them for the non-finite policy and change nothing.
                assert_eq!(outcome.action, RuleAction::NonFinite, "{name}/{what}");
                assert_eq!(bits(&clipped), bits(&grads), "{name}/{what}");
                continue;
            }
            let Some(torch_total) = e.get("total").map(decode) else {
                // PyTorch raised (the inf-norm of an empty tensor); we return the exact answer.
                continue;
            };
            // PyTorch's coefficient is an f32: below ~1.2e-38 it is subnormal and loses digits.
            let coef = (max_norm / (exact + NORM_EPS)).min(1.0);
            if close(torch_total, exact, 1e-5, 0.0) && coef >= f64::from(f32::MIN_POSITIVE) {
                assert_tensors_close(name, &what, &clipped, &expected_arrays(&e["clipped"]), 1e-5);
                checked += 1;
            } else {
                // PyTorch's f32 total overflowed (1e19 and up: it then zeroes the gradients),
                // underflowed (|g|^p of 1e-20s) or its coefficient went subnormal; ours is
                // exact, so check against exact math.
                eprintln!("{name}/{what}: PyTorch total {torch_total:e}, exact {exact:e}");
                assert!(
                    !(1e-18..=1e18).contains(&exact),
                    "{name}/{what}: unexpected disagreement"
                );
                imprecise_in_reference += 1;
                let expected: Vec<Vec<f32>> = values(&grads)
                    .iter()
                    .map(|t| t.iter().map(|&x| (f64::from(x) * coef) as f32).collect())
                    .collect();
                assert_tensors_close(name, &what, &clipped, &expected, 1e-6);
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} settings compared with PyTorch"
    );
    assert!(
        imprecise_in_reference > 0,
        "the huge cases must exercise the overflow path"
    );
}

#[test]
fn value_clip_matches_pytorch_and_optax_exactly() {
    for (name, case, grads) in cases() {
        for key in ["torch_clip_grad_value", "optax_clip"] {
            for e in case[key].as_array().unwrap() {
                let Some(expected) = e.get("clipped") else {
                    continue;
                };
                let limit = e
                    .get("clip")
                    .or(e.get("max_delta"))
                    .unwrap()
                    .as_f64()
                    .unwrap();
                let (_, clipped) = apply(&mut ClipByValue::new(limit).unwrap(), &grads);
                for (mine, theirs) in values(&clipped).iter().zip(expected_arrays(expected)) {
                    for (&a, &b) in mine.iter().zip(&theirs) {
                        assert!(
                            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                            "{name}/{key} clip {limit}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

/// Optax's `clip_by_global_norm` scales by `max_norm / total` (no ε) and overflows in f32 past
/// a total of ~1.8e19; both differences are accounted for here.
#[test]
fn global_norm_agrees_with_optax_where_optax_is_finite() {
    let mut checked = 0;
    for (name, case, grads) in cases() {
        let exact = common::exact_l2(&grads);
        if !exact.is_finite() || exact > 1.8e19 {
            continue;
        }
        for e in case["optax_clip_by_global_norm"].as_array().unwrap() {
            let max_norm = e["max_norm"].as_f64().unwrap();
            let (_, clipped) = apply(&mut ClipByGlobalNorm::new(max_norm).unwrap(), &grads);
            let rel = 1e-5 + NORM_EPS / exact.max(1e-30);
            assert_tensors_close(
                name,
                "optax global norm",
                &clipped,
                &expected_arrays(&e["clipped"]),
                rel,
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} settings compared with Optax");
}

#[test]
fn agc_matches_optax_adaptive_grad_clip() {
    let mut checked = 0;
    for (name, case, grads) in cases() {
        let Some(params) = case.get("params") else {
            continue;
        };
        let grads = grads.with_parameters(tensors(params)).unwrap();
        for e in case["optax_adaptive_grad_clip"].as_array().unwrap() {
            let mut rule = AdaptiveGradClip {
                clipping: e["clipping"].as_f64().unwrap(),
                eps: e["eps"].as_f64().unwrap(),
                layout: UnitLayout::InputFirst,
            };
            let (outcome, clipped) = apply(&mut rule, &grads);
            let expected = expected_arrays(&e["clipped"]);
            assert_tensors_close(name, "agc", &clipped, &expected, 1e-5);
            if expected != values(&grads) {
                assert_eq!(outcome.action, RuleAction::Scaled, "{name}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 12,
        "only {checked} AGC settings compared with Optax"
    );
}

/// AGC on ranks 1–5 in both layouts — input-first against Optax 0.2.8 (`unitwise_norm` reduces
/// axes 0–3 of a rank-5 kernel), output-first against timm (every axis but the first) — and a NaN
/// weight, which Optax propagates into its unit and gradguard names as an error
/// (`scripts/reference/make_agc_layouts_fixture.py`).
#[test]
fn agc_matches_optax_and_timm_at_every_rank_and_names_a_nan_weight() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/agc_layouts.json")).expect("fixture parses");
    let mut checked = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let layout = match case["layout"].as_str().unwrap() {
            "input-first" => UnitLayout::InputFirst,
            _ => UnitLayout::OutputFirst,
        };
        let grads = HostGradients::new(tensors(&case["grads"]))
            .unwrap()
            .with_parameters(tensors(&case["params"]))
            .unwrap();
        let mut rule = AdaptiveGradClip {
            clipping: case["clipping"].as_f64().unwrap(),
            eps: case["eps"].as_f64().unwrap(),
            layout,
        };
        let expected: Vec<Vec<f32>> = tensors(&case["clipped"])
            .into_iter()
            .map(|t| t.values)
            .collect();
        if let Some(unit) = case.get("nan_unit").and_then(Value::as_u64) {
            // Optax: NaN in exactly that unit's gradient (the last axis is the unit axis).
            let units = 5;
            for (i, v) in expected[0].iter().enumerate() {
                assert_eq!(
                    v.is_nan(),
                    i % units == unit as usize,
                    "{name}: [{i}] = {v}"
                );
            }
            let mut g = grads.clone();
            let mut stats = g.stats();
            match rule.apply(&mut g, &mut stats) {
                Err(gradguard::GuardError::NonFiniteParameter {
                    tensor, unit: u, ..
                }) => {
                    assert_eq!((tensor.as_str(), u), ("conv3d.kernel", unit as usize));
                }
                other => panic!("{name}: expected NonFiniteParameter, got {other:?}"),
            }
            checked += 1;
            continue;
        }
        let (_, clipped) = apply(&mut rule, &grads);
        assert_tensors_close(name, "agc", &clipped, &expected, 1e-5);
        checked += 1;
    }
    assert_eq!(checked, 7);
}
