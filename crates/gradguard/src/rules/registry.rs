//! Every clipping rule by name — one line each — and [`RuleSpec`], a rule and its setting as text
//! (`clip-global=1`, `agc=0.01`, `zclip`): parsed, printed and built here, for the lab's remedies
//! and the command line alike.
//!
//! Adding a rule to the library, the lab and the CLI is its type (one file in `rules/`), its test,
//! and one line in [`RULES`].

use serde::{Deserialize, Serialize};

use super::{
    AdaGc, AdaGcConfig, AdaptiveGradClip, AutoClip, ClipByGlobalNorm, ClipByValue,
    ClipPerTensorNorm, Rule, ZClip, ZClipConfig,
};
use crate::error::Result;
use crate::gradients::UnitLayout;
use crate::norm::NormType;

/// The values a rule's setting may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// The rule takes no value (`zclip`).
    Flag,
    /// A positive finite number, with its default and its letter in help texts (`clip-global=C`).
    Positive {
        /// Used when the value is left out.
        default: f64,
        /// The value's letter in help texts.
        letter: &'static str,
    },
    /// A percentile in (0, 100] (`autoclip=P`).
    Percentile {
        /// Used when the value is left out.
        default: f64,
    },
}

/// One registered rule: its name, its setting, what it does, and how it is built.
#[derive(Debug)]
pub struct RuleEntry {
    /// The name in remedy lists and on the command line.
    pub name: &'static str,
    /// The setting it takes.
    pub setting: Setting,
    /// One line on what it does, with its source.
    pub summary: &'static str,
    /// Builds the rule from the setting's value (`None` for a flag) and the options it takes.
    pub build: BuildRule,
}

/// How a registered rule is built: from its setting's value and the options it takes.
pub type BuildRule = fn(Option<f64>, &RuleOptions) -> Result<Box<dyn Rule>>;

/// Settings some rules take beyond their value, shared by every rule that has them: the p of
/// `clip-norm`'s and `clip-global`'s norms, and AGC's ε and unit layout. A rule ignores the
/// options it does not have. The defaults are each rule's own: p = 2, ε = 1e-3, input-first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleOptions {
    /// The p of the norms of `clip-norm` and `clip-global`.
    pub norm_type: NormType,
    /// AGC's floor ε on weight norms.
    pub agc_eps: f64,
    /// Which axis of a weight holds its units, for AGC.
    pub layout: UnitLayout,
}

impl Default for RuleOptions {
    fn default() -> Self {
        let agc = AdaptiveGradClip::default();
        RuleOptions {
            norm_type: NormType::default(),
            agc_eps: agc.eps,
            layout: agc.layout,
        }
    }
}

/// The window AutoClip keeps its norm history over, in steps.
pub const AUTOCLIP_WINDOW: usize = 1000;

const fn positive(default: f64, letter: &'static str) -> Setting {
    Setting::Positive { default, letter }
}

fn value(v: Option<f64>) -> f64 {
    v.expect("a rule with a value is built with one")
}

/// Every rule that clips gradients, in the order help texts list them.
pub static RULES: &[RuleEntry] = &[
    RuleEntry {
        name: "clip-value",
        setting: positive(1.0, "C"),
        summary: "clamp every gradient value to [-C, C]",
        build: |c, _| Ok(Box::new(ClipByValue::new(value(c))?)),
    },
    RuleEntry {
        name: "clip-norm",
        setting: positive(1.0, "C"),
        summary: "scale each tensor whose p-norm (L2 by default) exceeds C down to C",
        build: |c, o| Ok(Box::new(ClipPerTensorNorm::new(value(c), o.norm_type)?)),
    },
    RuleEntry {
        name: "clip-global",
        setting: positive(1.0, "C"),
        summary: "scale all gradients by min(1, C/‖g‖_p), p = 2 by default (Pascanu et al. 2013)",
        build: |c, o| {
            Ok(Box::new(ClipByGlobalNorm::with_norm(
                value(c),
                o.norm_type,
            )?))
        },
    },
    RuleEntry {
        name: "agc",
        setting: positive(0.01, "λ"),
        summary: "adaptive gradient clipping, unit-wise ratio λ (Brock et al. 2021)",
        build: |l, o| {
            let agc = AdaptiveGradClip {
                clipping: value(l),
                eps: o.agc_eps,
                layout: o.layout,
            };
            Ok(Box::new(agc.validated()?))
        },
    },
    RuleEntry {
        name: "autoclip",
        setting: Setting::Percentile { default: 10.0 },
        summary: "clip to the P-th percentile of the norms seen (Seetharaman et al. 2020)",
        build: |p, _| Ok(Box::new(AutoClip::new(value(p), AUTOCLIP_WINDOW)?)),
    },
    RuleEntry {
        name: "zclip",
        setting: Setting::Flag,
        summary: "clip norms whose z-score over an EMA is too high (Kumar et al. 2025)",
        build: |_, _| Ok(Box::new(ZClip::new(ZClipConfig::default())?)),
    },
    RuleEntry {
        name: "adagc",
        setting: Setting::Flag,
        summary: "clip each tensor to 1.05× an EMA of its own norm (Wang et al. 2025)",
        build: |_, _| Ok(Box::new(AdaGc::new(AdaGcConfig::default())?)),
    },
];

/// The entry named `name`.
pub fn entry(name: &str) -> Option<&'static RuleEntry> {
    RULES.iter().find(|e| e.name == name)
}

/// The rules' names with their settings, for help texts: `clip-value[=C], …, zclip, adagc`.
pub fn rule_names() -> String {
    RULES
        .iter()
        .map(|e| match e.setting {
            Setting::Flag => e.name.to_string(),
            Setting::Positive { letter, .. } => format!("{}[={letter}]", e.name),
            Setting::Percentile { .. } => format!("{}[=P]", e.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A registered rule and its setting's value: `clip-global=1`, `zclip`.
///
/// Parsed from text (`NAME` or `NAME=VALUE`; a left-out value takes the rule's default), printed
/// back canonically, serialized as `{"name": "clip-global", "value": 1.0}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleSpec {
    entry: &'static RuleEntry,
    value: Option<f64>,
}

impl RuleSpec {
    /// The rule `name` with `value` (text, as after `=`), checked against the rule's setting.
    /// `None` when no rule has that name; `Some(Err(why))` when the value does not fit.
    pub fn parse(name: &str, value: Option<&str>) -> Option<std::result::Result<Self, String>> {
        let entry = entry(name)?;
        Some(Self::checked(
            entry,
            value.map(parse_number(name)).transpose(),
        ))
    }

    /// The rule `name` with a numeric value, checked; an error names the problem.
    pub fn new(name: &str, value: Option<f64>) -> std::result::Result<Self, String> {
        let entry = entry(name).ok_or_else(|| {
            format!(
                "unknown clipping rule '{name}' (expected one of: {})",
                rule_names()
            )
        })?;
        Self::checked(entry, Ok(value))
    }

    fn checked(
        entry: &'static RuleEntry,
        value: std::result::Result<Option<f64>, String>,
    ) -> std::result::Result<Self, String> {
        let name = entry.name;
        let value = value?;
        let value = match (entry.setting, value) {
            (Setting::Flag, None) => None,
            (Setting::Flag, Some(v)) => {
                return Err(format!("rule '{name}' takes no value, got '{v}'"));
            }
            (Setting::Positive { default, .. }, v) => {
                let v = v.unwrap_or(default);
                if !(v > 0.0 && v.is_finite()) {
                    return Err(format!("rule '{name}' needs a positive number, got {v}"));
                }
                Some(v)
            }
            (Setting::Percentile { default }, v) => {
                let v = v.unwrap_or(default);
                if !(v > 0.0) {
                    return Err(format!("rule '{name}' needs a positive number, got {v}"));
                }
                if v > 100.0 {
                    return Err(format!("rule '{name}': percentile {v} is above 100"));
                }
                Some(v)
            }
        };
        Ok(RuleSpec { entry, value })
    }

    /// The rule's name.
    pub fn name(&self) -> &'static str {
        self.entry.name
    }

    /// The setting's value (`None` for a flag).
    pub fn value(&self) -> Option<f64> {
        self.value
    }

    /// A fresh rule (its state, for stateful rules, empty), with the default options.
    pub fn build(&self) -> Result<Box<dyn Rule>> {
        self.build_with(&RuleOptions::default())
    }

    /// A fresh rule with `options` (those the rule does not take are ignored).
    pub fn build_with(&self, options: &RuleOptions) -> Result<Box<dyn Rule>> {
        (self.entry.build)(self.value, options)
    }
}

fn parse_number(name: &str) -> impl Fn(&str) -> std::result::Result<f64, String> + '_ {
    move |v| {
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("rule '{name}': '{v}' is not a number"))
    }
}

impl PartialEq for RuleEntry {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl std::str::FromStr for RuleSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (s.trim(), None),
        };
        RuleSpec::parse(name, value).unwrap_or_else(|| {
            Err(format!(
                "unknown clipping rule '{name}' (expected one of: {})",
                rule_names()
            ))
        })
    }
}

impl std::fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value {
            Some(v) => write!(f, "{}={v}", self.entry.name),
            None => f.write_str(self.entry.name),
        }
    }
}

/// The serialized form: the name and, for rules with a setting, its value.
#[derive(Serialize, Deserialize)]
struct Wire {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
}

impl Serialize for RuleSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Wire {
            name: self.entry.name.to_string(),
            value: self.value,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RuleSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        RuleSpec::new(&wire.name, wire.value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Gradients, HostGradients, HostTensor};

    #[test]
    fn every_rule_parses_prints_back_and_builds_the_rule_it_names() {
        for e in RULES {
            let spec: RuleSpec = e.name.parse().unwrap();
            // One name everywhere: the rule reports itself by its registry name.
            assert_eq!(spec.build().unwrap().name(), e.name);
            let printed = spec.to_string();
            assert_eq!(printed.parse::<RuleSpec>().unwrap(), spec);
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<RuleSpec>(&json).unwrap(), spec);
            // The built rule acts on gradients (AGC needs the weights too).
            let g = HostTensor::new("w", vec![2, 2], vec![3.0f32, -4.0, 0.5, 100.0]).unwrap();
            let w = HostTensor::new("w", vec![2, 2], vec![1.0f32, 1.0, 1.0, 1.0]).unwrap();
            let mut grads = HostGradients::new(vec![g])
                .unwrap()
                .with_parameters(vec![w])
                .unwrap();
            let mut stats = grads.stats();
            let outcome = spec.build().unwrap().apply(&mut grads, &mut stats).unwrap();
            assert_eq!(outcome.rule, e.name);
        }
    }

    #[test]
    fn settings_are_checked_and_defaults_filled_in() {
        assert_eq!(
            "clip-global".parse::<RuleSpec>().unwrap().to_string(),
            "clip-global=1"
        );
        assert_eq!(
            "autoclip=50".parse::<RuleSpec>().unwrap().value(),
            Some(50.0)
        );
        assert_eq!(
            serde_json::to_string(&"zclip".parse::<RuleSpec>().unwrap()).unwrap(),
            r#"{"name":"zclip"}"#
        );
        for bad in [
            "clip-global=0",
            "clip-global=x",
            "zclip=3",
            "autoclip=101",
            "nope",
        ] {
            assert!(bad.parse::<RuleSpec>().is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<RuleSpec>(r#"{"name":"agc","value":-1}"#).is_err());
    }
}
