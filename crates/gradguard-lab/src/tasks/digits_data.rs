//! The UCI optical handwritten digits (8×8, 1,797 samples), embedded from this crate's `data/digits`.

use std::io::Read;

use flate2::read::GzDecoder;

use crate::error::LabError;

const FILE: &str = "crates/gradguard-lab/data/digits/digits.csv.gz";
const GZ: &[u8] = include_bytes!("../../data/digits/digits.csv.gz");

/// Pixels per image.
pub const FEATURES: usize = 64;
/// Digit classes.
pub const CLASSES: usize = 10;

/// Images (pixel counts 0..16 scaled to 0..1) and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// `len × 64` values in [0, 1], row-major.
    pub features: Vec<f32>,
    /// One label 0–9 per image.
    pub labels: Vec<u8>,
}

/// A train/test split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The training part.
    pub train: Digits,
    /// The held-out part.
    pub test: Digits,
}

impl Digits {
    /// Parses the embedded file (no download, no file access).
    pub fn load() -> Result<Self, LabError> {
        let mut text = String::new();
        GzDecoder::new(GZ)
            .read_to_string(&mut text)
            .map_err(|e| LabError::Data {
                file: FILE,
                line: 0,
                reason: format!("cannot decompress: {e}"),
            })?;
        Self::parse(&text)
    }

    /// Parses CSV lines of 64 pixel counts (0..16) and a label (0..9).
    pub fn parse(text: &str) -> Result<Self, LabError> {
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let bad = |reason: String| LabError::Data {
                file: FILE,
                line: i + 1,
                reason,
            };
            let values: Vec<u8> = line
                .split(',')
                .map(|v| v.trim().parse::<u8>())
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("not a small integer: {e}")))?;
            if values.len() != FEATURES + 1 {
                return Err(bad(format!(
                    "{} values, expected {}",
                    values.len(),
                    FEATURES + 1
                )));
            }
            if let Some(p) = values[..FEATURES].iter().find(|&&p| p > 16) {
                return Err(bad(format!("pixel {p} outside 0..16")));
            }
            let label = values[FEATURES];
            if usize::from(label) >= CLASSES {
                return Err(bad(format!("label {label} outside 0..9")));
            }
            features.extend(values[..FEATURES].iter().map(|&p| f32::from(p) / 16.0));
            labels.push(label);
        }
        Ok(Digits { features, labels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn subset(&self, indices: &[usize]) -> Digits {
        Digits {
            features: indices
                .iter()
                .flat_map(|&i| {
                    self.features[i * FEATURES..(i + 1) * FEATURES]
                        .iter()
                        .copied()
                })
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// A deterministic shuffled split: `test_fraction` of the images (rounded) are held out.
    pub fn split(&self, test_fraction: f64, seed: u64) -> Result<Split, LabError> {
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(LabError::Config(format!(
                "test fraction must be in [0, 1), got {test_fraction}"
            )));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        // Fisher–Yates with xorshift64*: the same seed gives the same split everywhere.
        let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
        for i in (1..order.len()).rev() {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            order.swap(i, (r % (i as u64 + 1)) as usize);
        }
        let n_test = (self.len() as f64 * test_fraction).round() as usize;
        Ok(Split {
            test: self.subset(&order[..n_test]),
            train: self.subset(&order[n_test..]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_set_has_1797_images_of_every_digit() {
        let d = Digits::load().unwrap();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.features.len(), 1797 * FEATURES);
        for digit in 0..10u8 {
            let n = d.labels.iter().filter(|&&l| l == digit).count();
            assert!((170..=190).contains(&n), "digit {digit}: {n}");
        }
        assert!(d.features.iter().all(|&p| (0.0..=1.0).contains(&p)));
    }

    #[test]
    fn the_split_is_deterministic_and_disjoint_in_size() {
        let d = Digits::load().unwrap();
        let a = d.split(0.2, 7).unwrap();
        assert_eq!(a, d.split(0.2, 7).unwrap());
        assert_ne!(a.test.labels, d.split(0.2, 8).unwrap().test.labels);
        assert_eq!(a.test.len(), 359);
        assert_eq!(a.train.len() + a.test.len(), 1797);
    }

    #[test]
    fn a_malformed_line_is_named() {
        let err = Digits::parse("1,2,3\n").unwrap_err().to_string();
        assert!(err.contains("line 1: 3 values, expected 65"), "{err}");
        let row = format!("{},3", vec!["17"; 64].join(","));
        assert!(
            Digits::parse(&row)
                .unwrap_err()
                .to_string()
                .contains("pixel 17")
        );
    }
}
