//! `reproduce`: each paper's quick grid gives its verdict by its rule, with a figure whose every
//! line comes from the runs.

use gradguard_lab::reproduce::{Budget, Finding, Paper, page, reproduce};

fn quick(paper: Paper) -> Finding {
    reproduce(paper, Budget::Quick, 0).expect("the quick grid trains")
}

fn assert_complete(f: &Finding, paper: Paper) {
    assert_eq!(f.name, paper.name());
    assert!(f.runs > 0 && f.wall_time_s > 0.0, "{f:?}");
    assert!(!f.claim.is_empty() && !f.rule.is_empty());
    assert!(
        f.measured.chars().any(|c| c.is_ascii_digit()),
        "{}",
        f.measured
    );
    assert!(!f.figures.is_empty());
    for figure in &f.figures {
        let measured = figure.curves.iter().filter(|c| !c.reference).count();
        assert!(measured >= 1, "{figure:?}");
        for curve in &figure.curves {
            assert!(!curve.points.is_empty(), "{curve:?}");
        }
    }
}

#[test]
fn clipping_keeps_a_vanilla_rnn_stable_at_a_tenfold_rate_and_it_learns() {
    let f = quick(Paper::Pascanu2013);
    assert_complete(&f, Paper::Pascanu2013);
    assert!(f.holds, "{}", f.measured);
    assert!(
        f.measured
            .contains("largest stable rate 0.03 without clipping, 0.3 with it"),
        "{}",
        f.measured
    );
}

#[test]
fn a_thirty_layer_relu_net_trains_from_he_init_and_stalls_from_xavier() {
    let f = quick(Paper::He2015);
    assert_complete(&f, Paper::He2015);
    assert!(f.holds, "{}", f.measured);
}

#[test]
fn orthogonal_deep_linear_nets_learn_as_fast_deep_as_shallow() {
    let f = quick(Paper::Saxe2014);
    assert_complete(&f, Paper::Saxe2014);
    assert!(f.holds, "{}", f.measured);
    // Both lines of the figure are steps to the target: the orthogonal one reaches it at every
    // depth.
    let orthogonal = &f.figures[0].curves[0];
    assert!(
        orthogonal.points.iter().all(|(_, y)| y.is_some()),
        "{orthogonal:?}"
    );
}

#[test]
fn no_tanh_net_beyond_six_correlation_depths_trains() {
    let f = quick(Paper::Schoenholz2017);
    assert_complete(&f, Paper::Schoenholz2017);
    assert!(f.holds, "{}", f.measured);
    let html = page::html(std::slice::from_ref(&f));
    assert!(html.contains("<svg") && html.contains("schoenholz2017") && html.contains("yes"));
}

/// The points of the curve labelled `label` in `figure`, by rate.
fn curve<'a>(f: &'a Finding, figure: usize, label: &str) -> &'a [(f64, Option<f64>)] {
    let curve = f.figures[figure]
        .curves
        .iter()
        .find(|c| c.label == label)
        .unwrap_or_else(|| panic!("no curve {label:?} in {:?}", f.figures[figure]));
    &curve.points
}

#[test]
fn attention_logits_grow_with_the_rate_and_qk_norm_bounds_them() {
    let f = quick(Paper::Wortsman2023);
    assert_complete(&f, Paper::Wortsman2023);
    assert_eq!(f.figures.len(), 3);
    let names: Vec<&str> = f.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["attention-logit growth", "output-logit divergence"],
        "{f:?}"
    );
    // The verdict is the conjunction of its parts.
    assert_eq!(f.holds, f.parts.iter().all(|p| p.holds));
    // The robust effects at this scale, read from the figure's lines: without qk-norm the largest
    // attention logit grows tenfold from the lowest rate to the highest; qk-norm and the default
    // guard keep it an order of magnitude lower at the highest rate.
    let peak = |label| -> Vec<f64> {
        curve(&f, 0, label)
            .iter()
            .map(|(_, y)| y.expect("every lm run records its attention logits"))
            .collect()
    };
    let (plain, qk_norm, guard) = (peak("AdamW"), peak("qk-norm"), peak("default guard"));
    let top = plain.len() - 1;
    assert!(plain[top] >= 10.0 * plain[0], "{plain:?}");
    assert!(qk_norm[top] <= plain[top] / 10.0, "{qk_norm:?} {plain:?}");
    assert!(guard[top] <= plain[top] / 10.0, "{guard:?} {plain:?}");
    // qk-norm's logits are bounded by √d_k times the layer norm's gains, whatever the rate.
    assert!(qk_norm.iter().all(|&q| q < 20.0), "{qk_norm:?}");
    // log Z is measured for every run of the output-logit part.
    for label in ["AdamW, no weight decay", "z-loss 1e-4, no weight decay"] {
        assert!(
            curve(&f, 2, label).iter().all(|(_, y)| y.is_some()),
            "{label}"
        );
    }
    let html = page::html(std::slice::from_ref(&f));
    assert!(html.contains("attention-logit growth") && html.contains("<svg"));
}
