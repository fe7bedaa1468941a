//! Every clipping rule by name — one entry each — and [`RuleSpec`], a rule and its settings as
//! text (`clip-global=1`, `agc=0.01:eps=1e-4`, `zclip:z-thresh=3`): parsed, printed and built
//! here, for the lab's remedies and the command line alike.
//!
//! A spec is `NAME[=VALUE][:KEY=VALUE]…`: the rule's main setting after `=`, then any of its other
//! settings ([`RuleEntry::keys`]) after colons — a colon, not a comma, so that a list of remedies
//! (`clip-global=1,guard`) stays one list. Every setting of every rule is reachable this way.
//!
//! Adding a rule to the library, the lab and the CLI is its type (one file in `rules/`), its test,
//! and one entry in [`RULES`].

use serde::{Deserialize, Serialize};

use super::{
    AdaGc, AdaGcConfig, AdaptiveGradClip, AutoClip, ClipByGlobalNorm, ClipByValue,
    ClipPerTensorNorm, Rule, ZClip, ZClipConfig,
};
use crate::error::{GuardError, Result};
use crate::gradients::UnitLayout;
use crate::norm::NormType;

/// The values a rule's main setting may take.
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

/// One of a rule's other settings, written `:KEY=VALUE` after its name.
#[derive(Debug, PartialEq)]
pub struct RuleKey {
    /// The key.
    pub name: &'static str,
    /// The words it takes; empty: it takes a number (the rule checks its range when built).
    pub words: &'static [&'static str],
    /// What it sets, with its default.
    pub summary: &'static str,
}

/// A key's value: a number, or one of the key's words.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyValue {
    /// A number.
    Number(f64),
    /// One of [`RuleKey::words`].
    Word(&'static str),
}

impl std::fmt::Display for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Number(v) => write!(f, "{v}"),
            KeyValue::Word(w) => f.write_str(w),
        }
    }
}

/// The most keys one rule has.
pub const MAX_KEYS: usize = 6;

/// One registered rule: its name, its settings, what it does, and how it is built.
#[derive(Debug)]
pub struct RuleEntry {
    /// The name in remedy lists, on the command line and in reports.
    pub name: &'static str,
    /// Its main setting.
    pub setting: Setting,
    /// Its other settings, at most [`MAX_KEYS`].
    pub keys: &'static [RuleKey],
    /// One line on what it does, with its source.
    pub summary: &'static str,
    /// Builds the rule from its settings.
    pub build: BuildRule,
}

/// How a registered rule is built: from its main setting's value (`None` for a flag) and its
/// other settings.
pub type BuildRule = fn(Option<f64>, &Settings) -> Result<Box<dyn Rule>>;

/// Settings some rules share, for callers that set them for every rule at once (the CLI's
/// `--norm-type`, `--eps`, `--layout`): the p of `clip-norm`'s and `clip-global`'s norms, and
/// AGC's ε and unit layout. A rule ignores the options it does not have, and a key in a spec
/// (`clip-global=1:p=1`) wins over them. The defaults are each rule's own: p = 2, ε = 1e-3,
/// input-first.
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

/// What a rule is built from besides its main value: the shared options and the spec's keys.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    options: &'a RuleOptions,
    entry: &'static RuleEntry,
    keys: &'a [Option<KeyValue>; MAX_KEYS],
}

impl Settings<'_> {
    fn get(&self, key: &str) -> Option<KeyValue> {
        let i = self.entry.keys.iter().position(|k| k.name == key)?;
        self.keys[i]
    }

    /// The number set for `key`, or `default`.
    pub fn number(&self, key: &str, default: f64) -> f64 {
        match self.get(key) {
            Some(KeyValue::Number(v)) => v,
            _ => default,
        }
    }

    /// The whole number set for `key`, or `default`; an error when it is not whole or negative.
    pub fn count(&self, key: &str, default: usize) -> Result<usize> {
        let v = self.number(key, default as f64);
        if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
            Ok(v as usize)
        } else {
            Err(GuardError::InvalidConfig(format!(
                "{} {key} must be a whole number, got {v}",
                self.entry.name
            )))
        }
    }

    /// The word set for `key`, or `default`.
    pub fn word(&self, key: &str, default: &'static str) -> &'static str {
        match self.get(key) {
            Some(KeyValue::Word(w)) => w,
            _ => default,
        }
    }

    /// The norm's p: key `p`, else the shared option.
    pub fn norm_type(&self) -> Result<NormType> {
        match self.get("p") {
            Some(KeyValue::Number(p)) => NormType::from_p(p),
            _ => Ok(self.options.norm_type),
        }
    }

    /// AGC's ε: key `eps`, else the shared option.
    pub fn agc_eps(&self) -> f64 {
        self.number("eps", self.options.agc_eps)
    }

    /// The unit layout: key `layout`, else the shared option.
    pub fn layout(&self) -> UnitLayout {
        match self.get("layout") {
            Some(KeyValue::Word("output-first")) => UnitLayout::OutputFirst,
            Some(KeyValue::Word(_)) => UnitLayout::InputFirst,
            _ => self.options.layout,
        }
    }
}

/// The window AutoClip keeps its norm history over, in steps, unless its `window` key says.
pub const AUTOCLIP_WINDOW: usize = 1000;

const fn positive(default: f64, letter: &'static str) -> Setting {
    Setting::Positive { default, letter }
}

const fn number(name: &'static str, summary: &'static str) -> RuleKey {
    RuleKey {
        name,
        words: &[],
        summary,
    }
}

fn value(v: Option<f64>) -> f64 {
    v.expect("a rule with a value is built with one")
}

const P: RuleKey = number("p", "the norm's p: a number ≥ 1 or inf (default 2)");

/// Every rule that clips gradients, in the order help texts list them.
pub static RULES: &[RuleEntry] = &[
    RuleEntry {
        name: "clip-value",
        setting: positive(1.0, "C"),
        keys: &[],
        summary: "clamp every gradient value to [-C, C]",
        build: |c, _| Ok(Box::new(ClipByValue::new(value(c))?)),
    },
    RuleEntry {
        name: "clip-norm",
        setting: positive(1.0, "C"),
        keys: &[P],
        summary: "scale each tensor whose p-norm (L2 by default) exceeds C down to C",
        build: |c, s| Ok(Box::new(ClipPerTensorNorm::new(value(c), s.norm_type()?)?)),
    },
    RuleEntry {
        name: "clip-global",
        setting: positive(1.0, "C"),
        keys: &[P],
        summary: "scale all gradients by min(1, C/‖g‖_p), p = 2 by default (Pascanu et al. 2013)",
        build: |c, s| {
            Ok(Box::new(ClipByGlobalNorm::with_norm(
                value(c),
                s.norm_type()?,
            )?))
        },
    },
    RuleEntry {
        name: "agc",
        setting: positive(0.01, "λ"),
        keys: &[
            number("eps", "the floor on weight norms (default 1e-3)"),
            RuleKey {
                name: "layout",
                words: &["input-first", "output-first"],
                summary: "which axis of a weight holds its units (default input-first)",
            },
        ],
        summary: "adaptive gradient clipping, unit-wise ratio λ (Brock et al. 2021)",
        build: |l, s| {
            let agc = AdaptiveGradClip {
                clipping: value(l),
                eps: s.agc_eps(),
                layout: s.layout(),
            };
            Ok(Box::new(agc.validated()?))
        },
    },
    RuleEntry {
        name: "autoclip",
        setting: Setting::Percentile { default: 10.0 },
        keys: &[number("window", "the norms kept, in steps (default 1000)")],
        summary: "clip to the P-th percentile of the norms seen (Seetharaman et al. 2020)",
        build: |p, s| {
            let window = s.count("window", AUTOCLIP_WINDOW)?;
            Ok(Box::new(AutoClip::new(value(p), window)?))
        },
    },
    RuleEntry {
        name: "zclip",
        setting: Setting::Flag,
        keys: &[
            number(
                "alpha",
                "the EMA's smoothing factor in (0, 1) (default 0.97)",
            ),
            number(
                "z-thresh",
                "the z-score above which a norm is a spike (default 2.5)",
            ),
            number("eps", "added to σ (default 1e-6)"),
            number(
                "warmup-steps",
                "steps that only initialise the EMA (default 25)",
            ),
            number(
                "clip-factor",
                "multiplies the adaptive threshold (default 1)",
            ),
            number(
                "max-norm",
                "a fixed cap on the norm, always in force (default none)",
            ),
        ],
        summary: "clip norms whose z-score over an EMA is too high (Kumar et al. 2025)",
        build: |_, s| {
            let d = ZClipConfig::default();
            let config = ZClipConfig {
                alpha: s.number("alpha", d.alpha),
                z_thresh: s.number("z-thresh", d.z_thresh),
                eps: s.number("eps", d.eps),
                warmup_steps: s.count("warmup-steps", d.warmup_steps)?,
                clip_factor: s.number("clip-factor", d.clip_factor),
                max_norm: match s.get("max-norm") {
                    Some(KeyValue::Number(m)) => Some(m),
                    _ => d.max_norm,
                },
            };
            Ok(Box::new(ZClip::new(config)?))
        },
    },
    RuleEntry {
        name: "adagc",
        setting: Setting::Flag,
        keys: &[
            number(
                "lambda-abs",
                "the global-norm threshold of the warm-up (default 1)",
            ),
            number(
                "lambda-rel",
                "how far a tensor may exceed its EMA (default 1.05)",
            ),
            number(
                "beta",
                "the EMA's smoothing factor in [0, 1) (default 0.98)",
            ),
            number(
                "warmup-steps",
                "warm-up steps, counted from 1 (default 100)",
            ),
            number("eps", "added to the global norm in warm-up (default 1e-8)"),
        ],
        summary: "clip each tensor to 1.05× an EMA of its own norm (Wang et al. 2025)",
        build: |_, s| {
            let d = AdaGcConfig::default();
            let config = AdaGcConfig {
                lambda_abs: s.number("lambda-abs", d.lambda_abs),
                lambda_rel: s.number("lambda-rel", d.lambda_rel),
                beta: s.number("beta", d.beta),
                warmup_steps: s.count("warmup-steps", d.warmup_steps as usize)? as u64,
                eps: s.number("eps", d.eps),
            };
            Ok(Box::new(AdaGc::new(config)?))
        },
    },
];

/// The entry named `name`.
pub fn entry(name: &str) -> Option<&'static RuleEntry> {
    RULES.iter().find(|e| e.name == name)
}

/// The rules' names with their main settings, for help texts: `clip-value[=C], …, zclip, adagc`.
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

/// Every rule's other settings, for help texts: one line per rule that has any,
/// `zclip: alpha, z-thresh, …` (each key with what it sets and its default).
pub fn rule_keys() -> String {
    RULES
        .iter()
        .filter(|e| !e.keys.is_empty())
        .map(|e| {
            let keys: Vec<String> = e
                .keys
                .iter()
                .map(|k| format!("{}: {}", k.name, k.summary))
                .collect();
            format!("{} — {}", e.name, keys.join("; "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A registered rule and its settings: `clip-global=1`, `agc=0.01:layout=output-first`, `zclip`.
///
/// Parsed from text (`NAME[=VALUE][:KEY=VALUE]…`; a left-out value takes the rule's default, a
/// left-out key the rule's own default or the shared [`RuleOptions`]), printed back canonically
/// (keys in the rule's order), serialized as `{"name": "clip-global", "value": 1.0}` with a
/// `settings` map when keys are set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleSpec {
    entry: &'static RuleEntry,
    value: Option<f64>,
    /// By the position of the key in `entry.keys`.
    keys: [Option<KeyValue>; MAX_KEYS],
}

impl RuleSpec {
    /// The rule `name` with `value` (text, as after `=`, possibly followed by `:KEY=VALUE`
    /// settings), checked against the rule's settings. `None` when no rule has that name;
    /// `Some(Err(why))` when a setting does not fit.
    pub fn parse(name: &str, value: Option<&str>) -> Option<std::result::Result<Self, String>> {
        // `NAME:k=v` (a flag or a default value with keys) arrives as the name.
        let (name, name_keys) = match name.split_once(':') {
            Some((n, k)) => (n.trim(), Some(k)),
            None => (name.trim(), None),
        };
        let entry = entry(name)?;
        let (value, keys) = match (name_keys, value) {
            // `NAME:KEY=V…`: the text after the first `=` belongs to the first key.
            (Some(k), Some(v)) => (None, Some(format!("{k}={v}"))),
            (Some(k), None) => (None, Some(k.to_string())),
            (None, Some(v)) => match v.split_once(':') {
                Some((v, k)) => (Some(v), Some(k.to_string())),
                None => (Some(v), None),
            },
            (None, None) => (None, None),
        };
        Some(Self::assemble(entry, value, keys.as_deref()))
    }

    fn assemble(
        entry: &'static RuleEntry,
        value: Option<&str>,
        keys: Option<&str>,
    ) -> std::result::Result<Self, String> {
        let value = value.map(parse_number(entry.name)).transpose()?;
        let mut spec = Self::checked(entry, value)?;
        for pair in keys.into_iter().flat_map(|k| k.split(':')) {
            let (key, v) = pair.split_once('=').ok_or_else(|| {
                format!(
                    "rule '{}': setting '{pair}' needs a value: KEY=VALUE",
                    entry.name
                )
            })?;
            spec = spec.with_key(key.trim(), v.trim())?;
        }
        Ok(spec)
    }

    /// The rule `name` with a numeric value, checked; an error names the problem.
    pub fn new(name: &str, value: Option<f64>) -> std::result::Result<Self, String> {
        let entry = entry(name).ok_or_else(|| unknown(name))?;
        Self::checked(entry, value)
    }

    /// This spec with its key `key` set to `value` (text), checked: the key must be one of the
    /// rule's, a word one of the key's words, and the rule must build with it.
    pub fn with_key(mut self, key: &str, value: &str) -> std::result::Result<Self, String> {
        let name = self.entry.name;
        let Some(i) = self.entry.keys.iter().position(|k| k.name == key) else {
            let known: Vec<&str> = self.entry.keys.iter().map(|k| k.name).collect();
            return Err(if known.is_empty() {
                format!("rule '{name}' has no settings besides its value, got '{key}'")
            } else {
                format!(
                    "rule '{name}' has no setting '{key}' (its settings: {})",
                    known.join(", ")
                )
            });
        };
        let def = &self.entry.keys[i];
        let parsed = if def.words.is_empty() {
            let v = value
                .parse::<f64>()
                .map_err(|_| format!("rule '{name}': {key} '{value}' is not a number"))?;
            KeyValue::Number(v)
        } else {
            let word = def.words.iter().find(|w| **w == value).ok_or_else(|| {
                format!(
                    "rule '{name}': {key} '{value}' is not one of {}",
                    def.words.join(", ")
                )
            })?;
            KeyValue::Word(word)
        };
        self.keys[i] = Some(parsed);
        self.build()
            .map_err(|e| format!("rule '{name}': {key}={value}: {e}"))?;
        Ok(self)
    }

    fn checked(entry: &'static RuleEntry, value: Option<f64>) -> std::result::Result<Self, String> {
        let name = entry.name;
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
        Ok(RuleSpec {
            entry,
            value,
            keys: [None; MAX_KEYS],
        })
    }

    /// The rule's name.
    pub fn name(&self) -> &'static str {
        self.entry.name
    }

    /// The main setting's value (`None` for a flag).
    pub fn value(&self) -> Option<f64> {
        self.value
    }

    /// The keys set, in the rule's order.
    pub fn keys(&self) -> impl Iterator<Item = (&'static str, KeyValue)> + '_ {
        self.entry
            .keys
            .iter()
            .zip(&self.keys)
            .filter_map(|(k, v)| v.map(|v| (k.name, v)))
    }

    /// A fresh rule (its state, for stateful rules, empty), with the default options.
    pub fn build(&self) -> Result<Box<dyn Rule>> {
        self.build_with(&RuleOptions::default())
    }

    /// A fresh rule with `options` (those the rule does not take are ignored; the spec's keys
    /// win over them).
    pub fn build_with(&self, options: &RuleOptions) -> Result<Box<dyn Rule>> {
        let settings = Settings {
            options,
            entry: self.entry,
            keys: &self.keys,
        };
        (self.entry.build)(self.value, &settings)
    }
}

fn unknown(name: &str) -> String {
    format!(
        "unknown clipping rule '{name}' (expected one of: {})",
        rule_names()
    )
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
            let bare = name.split(':').next().unwrap_or(name).trim();
            Err(unknown(bare))
        })
    }
}

impl std::fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.entry.name)?;
        if let Some(v) = self.value {
            write!(f, "={v}")?;
        }
        for (key, value) in self.keys() {
            write!(f, ":{key}={value}")?;
        }
        Ok(())
    }
}

/// A key's value as serialized: a number or a word.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WireValue {
    Number(f64),
    Word(String),
}

/// The serialized form: the name, for rules with a value its value, and the keys set.
#[derive(Serialize, Deserialize)]
struct Wire {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    settings: std::collections::BTreeMap<String, WireValue>,
}

impl Serialize for RuleSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Wire {
            name: self.entry.name.to_string(),
            value: self.value,
            settings: self
                .keys()
                .map(|(k, v)| {
                    let v = match v {
                        KeyValue::Number(n) => WireValue::Number(n),
                        KeyValue::Word(w) => WireValue::Word(w.to_string()),
                    };
                    (k.to_string(), v)
                })
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RuleSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        let mut spec = RuleSpec::new(&wire.name, wire.value).map_err(serde::de::Error::custom)?;
        for (key, value) in &wire.settings {
            let text = match value {
                WireValue::Number(n) => n.to_string(),
                WireValue::Word(w) => w.clone(),
            };
            spec = spec
                .with_key(key, &text)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(spec)
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

    /// A value each key accepts: a word of its own, or the first candidate number the rule builds
    /// with.
    fn accepted(spec: RuleSpec, key: &RuleKey) -> RuleSpec {
        if let Some(word) = key.words.last() {
            return spec.with_key(key.name, word).unwrap();
        }
        ["0.5", "2", "10"]
            .iter()
            .find_map(|v| spec.with_key(key.name, v).ok())
            .unwrap_or_else(|| panic!("{} takes none of the candidates", key.name))
    }

    #[test]
    fn every_key_of_every_rule_is_reachable_and_round_trips() {
        for e in RULES {
            assert!(e.keys.len() <= MAX_KEYS, "{}", e.name);
            for key in e.keys {
                let spec = accepted(e.name.parse().unwrap(), key);
                assert_eq!(spec.keys().count(), 1);
                assert_eq!(spec.keys().next().unwrap().0, key.name);
                let printed = spec.to_string();
                assert!(printed.contains(&format!(":{}=", key.name)), "{printed}");
                assert_eq!(printed.parse::<RuleSpec>().unwrap(), spec, "{printed}");
                let json = serde_json::to_string(&spec).unwrap();
                assert_eq!(
                    serde_json::from_str::<RuleSpec>(&json).unwrap(),
                    spec,
                    "{json}"
                );
                assert_eq!(spec.build().unwrap().name(), e.name);
            }
        }
    }

    #[test]
    fn keys_change_the_rule_and_win_over_shared_options() {
        let g = || {
            HostGradients::new(vec![
                HostTensor::new("w", vec![2], vec![3.0f32, -4.0]).unwrap(),
            ])
            .unwrap()
        };
        let clipped = |spec: &str, options: &RuleOptions| -> Vec<f32> {
            let mut grads = g();
            let mut stats = grads.stats();
            let spec: RuleSpec = spec.parse().unwrap();
            spec.build_with(options)
                .unwrap()
                .apply(&mut grads, &mut stats)
                .unwrap();
            grads.into_tensors()[0].values.clone()
        };
        let defaults = RuleOptions::default();
        // ‖(3, −4)‖₁ = 7: clipped to 1 it is (3/7, −4/7); in L2 (norm 5) it is (0.6, −0.8).
        let l1 = clipped("clip-global=1:p=1", &defaults);
        assert!((l1[0] - 3.0 / 7.0).abs() < 1e-6, "{l1:?}");
        let l2 = clipped("clip-global=1", &defaults);
        assert!((l2[0] - 0.6).abs() < 1e-6, "{l2:?}");
        let inf_option = RuleOptions {
            norm_type: NormType::Inf,
            ..defaults
        };
        // The key wins over the shared option; without a key the option applies (‖g‖∞ = 4).
        assert_eq!(clipped("clip-global=1:p=1", &inf_option), l1);
        let linf = clipped("clip-global=1", &inf_option);
        assert!((linf[0] - 0.75).abs() < 1e-6, "{linf:?}");
        // Both spellings of a key-only spec parse alike.
        assert_eq!(
            "zclip:z-thresh=3:alpha=0.9".parse::<RuleSpec>().unwrap(),
            RuleSpec::parse("zclip", None)
                .unwrap()
                .unwrap()
                .with_key("alpha", "0.9")
                .unwrap()
                .with_key("z-thresh", "3")
                .unwrap()
        );
        assert_eq!(
            "zclip:alpha=0.9:z-thresh=3"
                .parse::<RuleSpec>()
                .unwrap()
                .to_string(),
            "zclip:alpha=0.9:z-thresh=3"
        );
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        for (bad, says) in [
            ("zclip:alpha=2", "alpha"),
            ("zclip:nope=1", "its settings: alpha"),
            ("clip-value=1:p=1", "no settings"),
            ("agc=0.01:layout=sideways", "input-first, output-first"),
            ("zclip:alpha", "KEY=VALUE"),
            ("autoclip:window=2.5", "whole number"),
            ("clip-norm=1:p=x", "not a number"),
            ("clip-global=1:p=0.5", "p=0.5"),
        ] {
            let err = bad.parse::<RuleSpec>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let json = r#"{"name":"zclip","settings":{"alpha":7}}"#;
        assert!(serde_json::from_str::<RuleSpec>(json).is_err());
    }
}
