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
