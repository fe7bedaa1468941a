//! The classic remedies for exploding gradients, each a named option: `NAME` or `NAME=VALUE`.
//!
//! A run's remedies are part of what it is: the lab trains by them, its summary
//! ([`crate::RunSummary::remedy`]) records them as a [`RemedyList`], and the report, the demo
//! and the sweep's ranking decide by their variants, never by their text.

use gradguard::rules::{RuleSpec, rule_names};
use serde::{Deserialize, Serialize};

use crate::schemes::{Cell, Init, Norm};

/// The family a remedy belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// No remedy.
    None,
    /// Clip the gradients.
    Clip,
    /// Regularize the weights.
    Regularize,
    /// Initialize differently.
    Init,
    /// Normalize activations.
    Normalize,
    /// Use a simpler or better-conditioned architecture.
    Architecture,
    /// Change the step size.
    StepSize,
    /// Keep reduced-precision arithmetic in range.
    Precision,
    /// The full guard.
    Guard,
}

impl Family {
    /// The family's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Family::None => "none",
            Family::Clip => "clip",
            Family::Regularize => "regularize",
            Family::Init => "init",
            Family::Normalize => "normalize",
            Family::Architecture => "architecture",
            Family::StepSize => "step size",
            Family::Precision => "precision",
            Family::Guard => "guard",
        }
    }
}

/// One remedy and its setting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "name", content = "value")]
pub enum Remedy {
    /// Add `λ/2 · Σ‖W‖²` to the loss (coupled L2 regularization: the penalty is clipped too).
    L2(f64),
    /// After each step `W ← W · (1 − η λ)` on weight matrices (decoupled, Loshchilov & Hutter 2019).
    WeightDecay(f64),
    /// After each step, cap each unit's incoming weight vector at L2 norm `c` (Srebro et al. 2005;
    /// Srivastava et al. 2014).
    MaxNorm(f64),
    /// Initialize with this scheme at gain 1.
    Init(Init),
    /// Initialize with this gain (the scheme unchanged).
    Gain(f64),
    /// Normalize before each nonlinearity (MLP).
    Norm(Norm),
    /// Use at most this many hidden layers (MLP).
    Shallow(usize),
    /// Skip connections around hidden layers (MLP; He et al. 2016).
    Residual,
    /// Use this gated cell instead of a vanilla RNN.
    Cell(Cell),
    /// Layer norm on the queries and keys of every attention (lm; qk-layernorm, Dehghani et al.
    /// 2023, shown by Wortsman et al. 2023 to stop attention logits from growing at high rates).
    QkNorm,
    /// Add `C · mean(log² Z)` to the loss, `Z = Σ exp(logit)` the output softmax's normalizer
    /// (lm; the auxiliary z-loss of PaLM, Chowdhery et al. 2022; default C = 1e-4, the value
    /// Wortsman et al. 2023 use against output-logit divergence).
    ZLoss(f64),
    /// Multiply the learning rate by this factor.
    SmallLr(f64),
    /// Ramp the learning rate linearly from 0 over this many steps (Goyal et al. 2017).
    Warmup(u64),
    /// Detect spikes of the gradient norm or loss and back off the learning rate on them.
    Backoff,
    /// Adam instead of SGD, at its own rate (default 1e-3, the rate Kingma & Ba 2015 recommend
    /// and PyTorch and Optax default to): a per-parameter adaptive step. The task's rate is an
    /// SGD rate, about a hundred times too large for Adam, so it is not used.
    Adam(f64),
    /// Run a learning-rate range test first (Smith 2017) and train at a tenth of the largest
    /// stable rate, never above the requested one.
    LrFind,
    /// Dynamic loss scaling with this initial scale (PyTorch's `GradScaler` semantics, default
    /// 2¹⁶): the loss is multiplied by the scale before the backward pass, so half-precision
    /// gradients neither underflow nor (after the scale backs off) overflow; the guard divides
    /// the gradients by it, skips a step whose scaled gradients overflowed and halves the scale,
    /// and doubles it after 2,000 good steps (Micikevicius et al. 2018).
    LossScale(f64),
    /// The default guard, with no rule or threshold to choose ([`gradguard::GuardConfig`]'s
    /// defaults): bound each update relative to the weights from step 0, skip non-finite steps,
    /// roll back on loss spikes, back off the learning rate (and the bound), give up after 20 bad
    /// steps in a row.
    Guard,
    /// A clipping rule from the core's registry (`gradguard::rules::RULES`): `clip-value`,
    /// `clip-norm`, `clip-global`, `agc`, `autoclip`, `zclip`, `adagc`. Serialized as the other
    /// remedies are, `{"name": "clip-global", "value": 1.0}`.
    #[serde(untagged)]
    Clip(RuleSpec),
}

/// The remedies that are not clipping rules, with their settings, for help texts.
const OTHER_NAMES: &str = "l2[=λ], weight-decay[=λ], max-norm[=C], xavier, he, orthogonal, lsuv, \
    gain=G, batch-norm, layer-norm, rms-norm, shallow[=N], residual, lstm, gru, qk-norm, z-loss[=C], \
    small-lr[=F], warmup[=N], backoff, adam[=LR], lr-find, loss-scale[=S], guard";

/// Adam's own learning rate when `adam` is given without one.
pub const ADAM_LR: f64 = 1e-3;

fn positive(name: &str, v: f64) -> Result<f64, String> {
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(format!("remedy '{name}' needs a positive number, got {v}"))
    }
}

impl Remedy {
    /// The names `FromStr` accepts, with their settings, for help texts.
    pub fn names() -> String {
        format!("none, {}, {OTHER_NAMES}", rule_names())
    }

    /// The remedy's name without its setting: what `FromStr` takes before `=` or `:`
    /// (`clip-global` for `clip-global=1`, `he` for the He initialization).
    pub fn name(&self) -> String {
        let text = self.to_string();
        match text.find(['=', ':']) {
            Some(end) => text[..end].to_string(),
            None => text,
        }
    }

    /// The remedy's family.
    pub fn family(&self) -> Family {
        match self {
            Remedy::Clip(_) => Family::Clip,
            Remedy::L2(_) | Remedy::WeightDecay(_) | Remedy::MaxNorm(_) | Remedy::ZLoss(_) => {
                Family::Regularize
            }
            Remedy::Init(_) | Remedy::Gain(_) => Family::Init,
            Remedy::Norm(_) | Remedy::QkNorm => Family::Normalize,
            Remedy::Shallow(_) | Remedy::Residual | Remedy::Cell(_) => Family::Architecture,
            Remedy::SmallLr(_)
            | Remedy::Warmup(_)
            | Remedy::Backoff
            | Remedy::Adam(_)
            | Remedy::LrFind => Family::StepSize,
            Remedy::LossScale(_) => Family::Precision,
            Remedy::Guard => Family::Guard,
        }
    }

    /// Parses a comma-separated list; `none` (alone) is the empty list.
    pub fn parse_list(spec: &str) -> Result<Vec<Remedy>, String> {
        let spec = spec.trim();
        if spec == "none" || spec.is_empty() {
            return Ok(Vec::new());
        }
        let remedies = spec
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<Vec<Remedy>, String>>()?;
        Ok(remedies)
    }

    /// The canonical text of a list (`none` when empty).
    pub fn list_name(remedies: &[Remedy]) -> String {
        if remedies.is_empty() {
            return "none".into();
        }
        remedies
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl std::str::FromStr for Remedy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (s.trim(), None),
        };
        if let Some(rule) = RuleSpec::parse(name, value) {
            return rule.map(Remedy::Clip);
        }
        let number = |default: f64| -> Result<f64, String> {
            match value {
                None => Ok(default),
                Some(v) => v
                    .parse::<f64>()
                    .map_err(|_| format!("remedy '{name}': '{v}' is not a number"))
                    .and_then(|v| positive(name, v)),
            }
        };
        let count = |default: u64| -> Result<u64, String> {
            match value {
                None => Ok(default),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!(
                        "remedy '{name}' needs a whole number ≥ 1, got '{v}'"
                    )),
                },
            }
        };
        let flag = |r: Remedy| match value {
            None => Ok(r),
            Some(v) => Err(format!("remedy '{name}' takes no value, got '{v}'")),
        };
        match name {
            "l2" => Ok(Remedy::L2(number(1e-4)?)),
            "weight-decay" => Ok(Remedy::WeightDecay(number(0.01)?)),
            "max-norm" => Ok(Remedy::MaxNorm(number(3.0)?)),
            "xavier" => flag(Remedy::Init(Init::Xavier)),
            "he" => flag(Remedy::Init(Init::He)),
            "orthogonal" => flag(Remedy::Init(Init::Orthogonal)),
            "lsuv" => flag(Remedy::Init(Init::Lsuv)),
            "gain" => match value {
                Some(_) => Ok(Remedy::Gain(number(1.0)?)),
                None => Err("remedy 'gain' needs a value: gain=G".into()),
            },
            "batch-norm" => flag(Remedy::Norm(Norm::Batch)),
            "layer-norm" => flag(Remedy::Norm(Norm::Layer)),
            "rms-norm" => flag(Remedy::Norm(Norm::Rms)),
            "shallow" => Ok(Remedy::Shallow(count(4)? as usize)),
            "residual" => flag(Remedy::Residual),
            "lstm" => flag(Remedy::Cell(Cell::Lstm)),
            "gru" => flag(Remedy::Cell(Cell::Gru)),
            "qk-norm" => flag(Remedy::QkNorm),
            "z-loss" => Ok(Remedy::ZLoss(number(1e-4)?)),
            "small-lr" => {
                let f = number(0.1)?;
                if f >= 1.0 {
                    return Err(format!("remedy 'small-lr': factor {f} must be below 1"));
                }
                Ok(Remedy::SmallLr(f))
            }
            "warmup" => Ok(Remedy::Warmup(count(100)?)),
            "backoff" => flag(Remedy::Backoff),
            "adam" => Ok(Remedy::Adam(number(ADAM_LR)?)),
            "lr-find" => flag(Remedy::LrFind),
            "loss-scale" => Ok(Remedy::LossScale(number(65_536.0)?)),
            "guard" => flag(Remedy::Guard),
            "none" => Err("'none' cannot be combined with other remedies".into()),
            other => Err(format!(
                "unknown remedy '{other}' (expected one of: {})",
                Remedy::names()
            )),
        }
    }
}

impl std::fmt::Display for Remedy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remedy::Clip(rule) => rule.fmt(f),
            Remedy::L2(l) => write!(f, "l2={l}"),
            Remedy::WeightDecay(l) => write!(f, "weight-decay={l}"),
            Remedy::MaxNorm(c) => write!(f, "max-norm={c}"),
            Remedy::Init(i) => f.write_str(i.name()),
            Remedy::Gain(g) => write!(f, "gain={g}"),
            Remedy::Norm(n) => f.write_str(match n {
                Norm::None => "no-norm",
                Norm::Batch => "batch-norm",
                Norm::Layer => "layer-norm",
                Norm::Rms => "rms-norm",
            }),
            Remedy::Shallow(n) => write!(f, "shallow={n}"),
            Remedy::Residual => f.write_str("residual"),
            Remedy::Cell(c) => f.write_str(c.name()),
            Remedy::QkNorm => f.write_str("qk-norm"),
            Remedy::ZLoss(c) => write!(f, "z-loss={c}"),
            Remedy::SmallLr(x) => write!(f, "small-lr={x}"),
            Remedy::Warmup(n) => write!(f, "warmup={n}"),
            Remedy::Backoff => f.write_str("backoff"),
            Remedy::Adam(lr) => write!(f, "adam={lr}"),
            Remedy::LrFind => f.write_str("lr-find"),
            Remedy::LossScale(s) => write!(f, "loss-scale={s}"),
            Remedy::Guard => f.write_str("guard"),
        }
    }
}

/// A run's remedies, in the order they were given; empty for `none`.
///
/// Written as its canonical text (`guard,clip-global=1`, `none`) in summaries and on the command
/// line, and parsed back from it ([`Remedy::parse_list`]), so a `summary.json` reads the same as
/// before the remedies were typed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemedyList(pub Vec<Remedy>);

impl RemedyList {
    /// Whether the list is `none`: the run every remedy is measured against.
    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the default guard is one of the remedies (alone or with others).
    pub fn guarded(&self) -> bool {
        self.0.contains(&Remedy::Guard)
    }

    /// Whether the list holds dynamic loss scaling.
    pub fn loss_scaled(&self) -> bool {
        self.0.iter().any(|r| matches!(r, Remedy::LossScale(_)))
    }

    /// The family of the first remedy ([`Family::None`] for `none`).
    pub fn family(&self) -> Family {
        self.0.first().map_or(Family::None, Remedy::family)
    }

    /// Whether two lists name the same remedies in the same order, whatever their settings.
    pub fn same_remedies(&self, other: &RemedyList) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.name() == b.name())
    }
}

impl std::ops::Deref for RemedyList {
    type Target = [Remedy];

    fn deref(&self) -> &[Remedy] {
        &self.0
    }
}

impl From<Vec<Remedy>> for RemedyList {
    fn from(remedies: Vec<Remedy>) -> Self {
        RemedyList(remedies)
    }
}

impl std::fmt::Display for RemedyList {
    /// The canonical text, padded to the formatter's width (`{:<20}` aligns a table column).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&Remedy::list_name(&self.0))
    }
}

impl std::str::FromStr for RemedyList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Remedy::parse_list(s).map(RemedyList)
    }
}

impl Serialize for RemedyList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RemedyList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_and_prints_back() {
        let list = "clip-value,clip-norm=2,clip-global,agc,autoclip=50,zclip,adagc,l2,weight-decay,\
                    max-norm,xavier,he,orthogonal,lsuv,gain=1.5,batch-norm,layer-norm,rms-norm,\
                    shallow,residual,lstm,gru,small-lr,warmup=10,backoff,adam,lr-find,loss-scale,guard,\
                    qk-norm,z-loss,z-loss=0.001";
        let remedies = Remedy::parse_list(list).unwrap();
        assert_eq!(remedies.len(), 32);
        assert_eq!(remedies[25], Remedy::Adam(ADAM_LR));
        assert_eq!(remedies[29], Remedy::QkNorm);
        assert_eq!(remedies[30], Remedy::ZLoss(1e-4));
        assert_eq!(remedies[31].to_string(), "z-loss=0.001");
        assert_eq!(remedies[30].family(), Family::Regularize);
        assert_eq!(
            Remedy::parse_list("adam=0.003").unwrap(),
            [Remedy::Adam(0.003)]
        );
        assert_eq!(remedies[27], Remedy::LossScale(65_536.0));
        assert_eq!(remedies[27].family(), Family::Precision);
        let printed = Remedy::list_name(&remedies);
        assert_eq!(Remedy::parse_list(&printed).unwrap(), remedies);
        assert_eq!(remedies[1].to_string(), "clip-norm=2");
        assert_eq!(remedies[4].to_string(), "autoclip=50");
        assert_eq!(remedies[0].family(), Family::Clip);
        // The serialized form of a clipping rule is the other remedies' form.
        let json = serde_json::to_string(&remedies[..3]).unwrap();
        assert_eq!(
            json,
            r#"[{"name":"clip-value","value":1.0},{"name":"clip-norm","value":2.0},{"name":"clip-global","value":1.0}]"#
        );
        let back: Vec<Remedy> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, remedies[..3]);
        let l2: Remedy = serde_json::from_str(r#"{"name":"l2","value":0.5}"#).unwrap();
        assert_eq!(l2, Remedy::L2(0.5));
        assert!(Remedy::parse_list("none").unwrap().is_empty());
        // A rule's other settings ride after colons, inside one item of the comma list.
        let keyed = Remedy::parse_list("zclip:z-thresh=3:alpha=0.9,guard").unwrap();
        assert_eq!(keyed.len(), 2);
        assert_eq!(keyed[0].to_string(), "zclip:alpha=0.9:z-thresh=3");
        assert_eq!(
            Remedy::parse_list(&Remedy::list_name(&keyed)).unwrap(),
            keyed
        );
        let json = serde_json::to_string(&keyed).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Remedy>>(&json).unwrap(), keyed);
        assert!(Remedy::parse_list("zclip:alpha=3").is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        for (spec, needle) in [
            ("clip-global=-1", "positive"),
            ("autoclip=120", "above 100"),
            ("warmup=0", "whole number"),
            ("zclip=3", "takes no value"),
            ("clip", "unknown remedy 'clip'"),
            ("gain", "needs a value"),
            ("none,guard", "cannot be combined"),
            ("small-lr=2", "below 1"),
            ("loss-scale=0", "positive"),
            ("loss-scale=inf", "positive"),
            ("adam=0", "positive"),
            ("qk-norm=1", "takes no value"),
            ("z-loss=-1", "positive"),
        ] {
            let err = Remedy::parse_list(spec).unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }
}
