//! The lab reproduces exploding gradients, and remedies measurably change the outcome.

mod common;

use common::{run, with};
use gradguard_lab::tasks::Task;
use gradguard_lab::{Remedy, RunConfig, TrainOptions, train};
use gradguard_report::RunSummary;

/// Non-finite, or the held-out loss not below its start.
fn exploded(s: &RunSummary) -> bool {
    s.final_loss.is_none() || s.final_loss >= s.initial_loss
}

fn learning(s: &RunSummary) -> bool {
    s.final_loss.is_some() && s.final_loss < s.initial_loss && s.stopped.is_none()
}

#[test]
fn the_deep_relu_net_with_an_oversized_gain_explodes_and_clipping_rescues_it() {
    let none = run(&with(Task::Mlp, 60, "none"));
    assert!(exploded(&none), "{none:?}");
    assert!(none.diverged);
    assert!(none.diverged_at.is_some_and(|s| s < 10), "{none:?}");

    for remedy in ["clip-global", "guard,clip-global"] {
        let clipped = run(&with(Task::Mlp, 60, remedy));
        assert!(learning(&clipped), "{remedy}: {clipped:?}");
        assert!(!clipped.diverged);
        assert_eq!(clipped.steps, 60);
    }
}

#[test]
fn the_vanilla_rnn_at_a_high_learning_rate_explodes_and_clipping_rescues_it() {
    // The default guard alone is tested in `default_guard.rs`; here a clip in its chain.
    let short = |remedy| RunConfig {
        seq_len: 50,
        ..with(Task::Adding, 80, remedy)
    };
    let none = run(&short("none"));
    assert!(exploded(&none), "{none:?}");
    for remedy in ["clip-global", "guard,clip-global"] {
        let s = run(&short(remedy));
        assert!(learning(&s), "{remedy}: {s:?}");
    }
}

#[test]
fn every_remedy_runs_on_its_task_and_reports_what_happened() {
    let mlp = "clip-value,clip-norm,clip-global,agc,autoclip,zclip,adagc,l2,weight-decay,max-norm,\
               xavier,he,orthogonal,lsuv,gain=1.4,batch-norm,layer-norm,rms-norm,shallow,\
               residual,small-lr,warmup=5,backoff,adam,lr-find,guard";
    for remedy in mlp.split(',') {
        let s = run(&RunConfig {
            depth: 6,
            ..with(Task::Mlp, 8, remedy)
        });
        assert_eq!(s.remedy[..], Remedy::parse_list(remedy).unwrap()[..]);
        assert!(s.steps <= 8 && s.initial_loss.is_some(), "{remedy}: {s:?}");
    }
    for remedy in ["lstm", "gru", "orthogonal", "clip-global"] {
        for task in [Task::Adding, Task::Order] {
            let s = run(&RunConfig {
                seq_len: 12,
                ..with(task, 4, remedy)
            });
            assert_eq!(s.steps, 4, "{task} {remedy}");
            assert_eq!(s.accuracy.is_some(), task == Task::Order);
        }
    }
}

#[test]
fn remedies_that_do_not_fit_the_task_are_refused_before_training() {
    for (task, remedy, needle) in [
        (Task::Adding, "batch-norm", "mlp task only"),
        (Task::Adding, "lsuv", "mlp task only"),
        (Task::Mlp, "lstm", "recurrent tasks only"),
    ] {
        let err = train(&with(task, 5, remedy), &TrainOptions::default()).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn better_initialization_and_normalization_train_the_deep_net_that_explodes() {
    // Measured, not assumed: He init (gain √2 for ReLU), LSUV and layer norm all learn here.
    for remedy in ["he", "lsuv", "layer-norm", "shallow"] {
        let s = run(&with(Task::Mlp, 60, remedy));
        assert!(learning(&s), "{remedy}: {s:?}");
    }
}

#[test]
fn the_range_test_reports_a_finite_largest_stable_rate() {
    let config = RunConfig {
        init_gain: 1.4,
        depth: 6,
        ..with(Task::Mlp, 10, "lr-find")
    };
    let s = run(&config);
    let largest = s.largest_stable_lr.expect("lr-find reports a rate");
    assert!(largest > 1e-5 && largest < 10.0, "{largest}");
    assert!((s.lr - (largest / 10.0).min(config.lr)).abs() < 1e-12);
}

#[test]
fn runs_are_deterministic_per_seed() {
    let a = run(&with(Task::Mlp, 15, "clip-global"));
    let b = run(&with(Task::Mlp, 15, "clip-global"));
    assert_eq!(a.final_loss, b.final_loss);
    let c = run(&RunConfig {
        seed: 1,
        ..with(Task::Mlp, 15, "clip-global")
    });
    assert_ne!(a.final_loss, c.final_loss);
}
