//! The model probe ([`gradguard_burn::probe`]) on a lab task: the task's network, its training
//! batches and its optimizer, exactly as `gradguard train` would start them.

use std::time::Instant;

use burn::tensor::Device;
use gradguard_burn::probe::{ModelProbe, ProbeSettings, probe_model_along};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::error::LabError;
use crate::models::Net;
use crate::objective::data_loss;
use crate::plan::{Plan, build_net};
use crate::tasks::TaskData;
use crate::through_time::hidden_gradient_norms;

/// A probe of one task's model at its run's rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProbe {
    /// The task's name.
    pub task: String,
    /// The optimizer, in words (e.g. "AdamW (β 0.9/0.95, ε 1e-8, weight decay 0.1)").
    pub optimizer: String,
    /// What the probe measured and decided.
    pub probe: ModelProbe,
    /// Wall-clock seconds the probe took.
    pub seconds: f64,
}

/// Probes the network `config` would train, at the rate it would train with (the plan's base
/// rate; a warm-up is left out: the trials run at a constant rate), on its own training
/// batches, with its optimizer. `settings.rate` is replaced by that rate.
pub fn probe_task(config: &RunConfig, settings: ProbeSettings) -> Result<TaskProbe, LabError> {
    let started = Instant::now();
    let data = TaskData::for_run(config)?;
    let plan = Plan::new(config, &data)?;
    let device = Device::flex().autodiff();
    let net = build_net(&plan, &data, config.seed, &device)?;
    let settings = ProbeSettings {
        rate: plan.lr,
        ..settings
    };
    let batches: Vec<_> = (0..settings.batches())
        .map(|i| data.train_batch(i as u64, config.batch, config.seed))
        .collect();
    let loss = |net: &Net, i: usize| data_loss(net, &batches[i], &device, plan.precision);
    // A recurrent net's gradient through time (‖∂L/∂h_t‖, t = 1 … T), which its parameters'
    // profile cannot show; none for the other nets.
    let through_time = |net: &Net, i: usize| {
        let norms = hidden_gradient_norms(net, &batches[i], &device, plan.precision)?;
        Some(norms.into_iter().map(|n| n.unwrap_or(f64::NAN)).collect())
    };
    let optimizer = plan.optimizer();
    let probe = probe_model_along(&net, &optimizer, &settings, loss, "time step", through_time)?;
    Ok(TaskProbe {
        task: config.task.name().to_string(),
        optimizer: plan.optimizer.describe(),
        probe,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A rate with its bracket, e.g. "3.16e-2 (diverging from 4.47e-2)".
fn safe_rate_text(probe: &ModelProbe) -> String {
    let s = &probe.safe_rate;
    match (s.rate, s.first_diverging) {
        (Some(r), Some(d)) => format!("{r:.3e} (the first diverging rate tried: {d:.3e})"),
        (Some(r), None) => format!("at least {r:.3e} (the largest rate tried)"),
        (None, Some(d)) => format!("none: even {d:.3e} diverged"),
        (None, None) => "not measured".into(),
    }
}

impl TaskProbe {
    /// The report `gradguard probe --task` prints.
    pub fn text(&self) -> String {
        let p = &self.probe;
        let mut out = format!(
            "probe of the {} task's model, {} at rate {:e} ({:.1} s)\n\n",
            self.task, self.optimizer, p.settings.rate, self.seconds
        );
        out += &format!("verdict: {} — {}\n", p.verdict.health, p.verdict.reason);
        out += &format!("largest safe rate: {}\n", safe_rate_text(p));
        out += &format!(
            "  ({} trials of {} steps; a trial diverges when the loss of batch 0 ends non-finite or \
             more than 10% above its start)\n\n",
            p.safe_rate.trials.len(),
            p.settings.trial_steps
        );
        let profile = &p.profile;
        out += &format!(
            "gradient depth profile at initialization ({} batches, layers input → output):\n",
            profile.batches
        );
        let width = p.first_step.iter().map(|t| t.name.chars().count()).max();
        let width = width.unwrap_or(0).max(20);
        for layer in &profile.profile.layers {
            out += &format!("  {:<width$} {:>11.4e}\n", layer.layer, layer.norm);
        }
        if let Some(g) = profile.profile.growth_factor {
            out += &format!("  growth per layer going back: ×{g:.3}");
            if let Some((lo, hi)) = profile.growth_range {
                out += &format!(" (×{lo:.3} … ×{hi:.3} over the batches)");
            }
            out += "\n";
        }
        if let Some(r) = profile.input_to_output() {
            out += &format!("  input-side over output-side layer: {r:.3e}\n");
        }
        if let Some(layer) = profile.growth_onset_layer() {
            out += &format!("  growth toward the input starts at '{layer}'\n");
        }
        out += &format!(
            "\nfirst step at {:e}, ‖Δw‖/‖w‖ per tensor:\n",
            p.settings.rate
        );
        for t in &p.first_step {
            let ratio = t.ratio().map_or("—".into(), |r| format!("{r:.3e}"));
            out += &format!("  {:<width$} {ratio:>11}\n", t.name);
        }
        out += "\nsteps at that rate (loss, ‖Δθ‖/‖θ‖):";
        for s in &p.at_rate.steps {
            let loss = s.loss.map_or("NaN".into(), |l| format!("{l:.3}"));
            let ratio = s.update_ratio.map_or("—".into(), |r| format!("{r:.1e}"));
            out += &format!(" {loss}/{ratio}");
        }
        out += "\n";
        if let Some(r) = p.after_trial.as_ref().and_then(|a| a.input_to_output()) {
            out += &format!("  after them, input-side over output-side layer: {r:.3e}");
            if let Some(m) = gradguard::probe::input_to_output_update(&p.last_step) {
                out +=
                    &format!(" (its last step moved it {m:.3e} as much, relative to its weights)");
            }
            out += "\n";
        }
        if let Some(path) = &p.path {
            let text = |r: Option<f64>| r.map_or("no reading".into(), |r| format!("{r:.3e}"));
            out += &format!(
                "gradient through time, first step over last (‖∂L/∂h_1‖ / ‖∂L/∂h_T‖): {} at \
                 initialization, {} after the steps\n",
                text(path.at_init),
                text(path.after_trial)
            );
        }
        match p.butterfly.exponent() {
            Some(e) => {
                out += &format!(
                    "butterfly: two copies ε = {:e} apart separate by ×{:.3} per step (exponent {e:+.3})\n",
                    p.butterfly.epsilon,
                    e.exp()
                )
            }
            None => out += "butterfly: the separation did not stay finite\n",
        }
        out
    }
}
