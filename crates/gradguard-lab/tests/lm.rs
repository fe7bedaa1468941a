//! The transformer language-model task: it learns, it is causal, its settings are checked, and
//! runs are functions of their configuration.

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{run, with};
use gradguard_lab::models::TransformerConfig;
use gradguard_lab::optimizer::{OptimizerKind, OptimizerSettings, Schedule};
use gradguard_lab::tasks::{Corpus, Task};
use gradguard_lab::{Remedy, RunConfig, check};

fn lm(steps: u64) -> RunConfig {
    RunConfig {
        warmup: steps / 10,
        ..with(Task::Lm, steps, "none")
    }
}

#[test]
fn the_lm_task_learns_below_the_unigram_baseline() {
    let s = run(&lm(120));
    let (final_loss, unigram) = (s.final_loss.unwrap(), s.trivial_loss.unwrap());
    // The unigram entropy of English text is ~3.3 nats per byte; a model that learned nothing
    // but the byte frequencies would sit there.
    assert!(
        final_loss < unigram - 0.2,
        "{final_loss} vs unigram {unigram}"
    );
    assert!(s.initial_loss.unwrap() > unigram, "{s:?}");
    assert!(s.rate_choice.unwrap().starts_with("AdamW (β 0.9/0.95"));
}

#[test]
fn the_defaults_are_adamw_with_warmup_and_cosine() {
    let c = RunConfig::for_task(Task::Lm);
    assert_eq!(c.optimizer, OptimizerSettings::adamw());
    assert_eq!(c.optimizer.kind, OptimizerKind::Adamw);
    assert_eq!(c.schedule, Schedule::WarmupCosine);
    assert!(check(&c).is_ok());
}

#[test]
fn the_default_guard_leaves_a_healthy_adamw_run_bit_for_bit() {
    // AdamW at the task's own rate and its 30 warm-up steps (those of its 300-step default): the
    // guard recognizes a normalizing optimizer by its first step, no bound fires, and the run is
    // the unguarded one exactly. (Without a warm-up, Adam's first steps move every weight by the
    // full rate, 4% of this model per step at 3e-3: the bound then scales them, as a warm-up
    // would.)
    let healthy = RunConfig {
        warmup: 30,
        ..lm(40)
    };
    let plain = run(&healthy);
    let guarded = run(&RunConfig {
        remedies: Remedy::parse_list("guard").unwrap(),
        ..healthy.clone()
    });
    assert_eq!(guarded.bounded_steps, 0, "{guarded:?}");
    assert_eq!(guarded.update_family.as_deref(), Some("normalized"));
    assert_eq!(plain.update_family, None);
    assert_eq!(guarded.skipped_steps + guarded.rollbacks, 0);
    assert_eq!(plain.final_loss, guarded.final_loss);
    assert_eq!(plain.final_train_loss, guarded.final_train_loss);
    // A rate thirty times larger is bounded.
    let fast = run(&RunConfig {
        lr: 0.1,
        remedies: Remedy::parse_list("guard").unwrap(),
        ..healthy
    });
    assert!(fast.bounded_steps > 0, "{fast:?}");
}

#[test]
fn two_runs_of_one_configuration_end_with_equal_losses() {
    let a = run(&lm(6));
    let b = run(&lm(6));
    assert_eq!(a.final_loss, b.final_loss);
    assert_eq!(a.initial_loss, b.initial_loss);
}

#[test]
fn position_t_sees_only_symbols_up_to_t() {
    let device = Device::flex();
    for qk_norm in [false, true] {
        device.seed(3);
        let model = TransformerConfig {
            vocab: 11,
            layers: 2,
            width: 16,
            heads: 2,
            context: 8,
            pre_norm: true,
            embed_std: 0.02,
            qk_norm,
        }
        .init(&device)
        .unwrap();
        let ids = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [1, 8]), &device);
        let a: Vec<f32> = model
            .forward(ids(vec![1, 2, 3, 4, 5, 6, 7, 8]))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // Change the last symbol only: the first seven positions' outputs must not move.
        let b: Vec<f32> = model
            .forward(ids(vec![1, 2, 3, 4, 5, 6, 7, 0]))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(a[..7 * 11], b[..7 * 11], "qk-norm {qk_norm}");
        assert_ne!(a[7 * 11..], b[7 * 11..], "qk-norm {qk_norm}");
    }
}

#[test]
fn bad_lm_settings_are_refused_before_training() {
    let heads = RunConfig {
        lm: gradguard_lab::LmSettings {
            heads: 5,
            ..Default::default()
        },
        ..lm(5)
    };
    assert!(check(&heads).unwrap_err().to_string().contains("multiple"));
    let remedy = RunConfig {
        remedies: Remedy::parse_list("batch-norm").unwrap(),
        ..lm(5)
    };
    assert!(check(&remedy).is_err());
    let text = RunConfig {
        lm: gradguard_lab::LmSettings {
            text: Some("/nonexistent/text.txt".into()),
            ..Default::default()
        },
        ..lm(5)
    };
    assert!(
        check(&text)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/text.txt")
    );
    assert!(Corpus::from_bytes(b"tiny", 64).is_err());
}

#[test]
fn a_users_text_file_trains() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.txt");
    let text = "It was the best of times, it was the worst of times, it was the age of wisdom. "
        .repeat(40);
    std::fs::write(&path, text).unwrap();
    let s = run(&RunConfig {
        lm: gradguard_lab::LmSettings {
            text: Some(path.display().to_string()),
            ..Default::default()
        },
        seq_len: 32,
        ..lm(30)
    });
    assert!(s.final_loss.unwrap() < s.initial_loss.unwrap());
}

#[test]
fn qk_norm_and_z_loss_train_and_every_step_records_the_logits() {
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig {
        remedies: Remedy::parse_list("qk-norm,z-loss").unwrap(),
        ..lm(12)
    };
    let options = gradguard_lab::TrainOptions {
        out: Some(dir.path().join("run")),
        ..Default::default()
    };
    let summary = match gradguard_lab::train(&config, &options).unwrap() {
        gradguard_lab::TrainOutcome::Finished(s) => *s,
        other => panic!("{other:?}"),
    };
    assert!(summary.final_loss.unwrap() < summary.initial_loss.unwrap());
    let logits = summary.logits.expect("an lm run summarizes its logits");
    // Normalized unit-RMS queries and keys of d_k = 16 bound a logit by √16 = 4 until the
    // layer norms' scales grow, which a dozen small steps cannot do much.
    let peak = logits.attention_logit_peak.unwrap();
    assert!(peak > 0.0 && peak < 4.5, "{peak}");
    assert!(logits.log_z_final.unwrap().is_finite());
    let file = std::fs::File::open(dir.path().join("run/metrics.jsonl")).unwrap();
    let metrics = gradguard_report::read_metrics(std::io::BufReader::new(file)).unwrap();
    assert_eq!(metrics.len(), 12);
    for m in &metrics {
        assert_eq!(m.attention_logit_max.len(), config.depth, "{m:?}");
        assert!(m.log_z_mean.unwrap() <= m.log_z_max.unwrap());
    }
    // Other tasks record none.
    assert!(run(&with(Task::Adding, 3, "none")).logits.is_none());
}

#[test]
fn transformer_remedies_are_refused_on_other_tasks() {
    for remedy in ["qk-norm", "z-loss"] {
        let config = with(Task::Mlp, 3, remedy);
        let err = check(&config).unwrap_err().to_string();
        assert!(err.contains("lm task"), "{err}");
    }
}
