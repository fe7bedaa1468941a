//! A character-level language-model corpus: a text's bytes mapped onto its own alphabet, split
//! 90/10 into a training stream and a held-out stream, served as windows of `context + 1` bytes
//! (the inputs and, shifted by one, the next-byte targets).
//!
//! The lab ships the Jargon File 4.4.7 (public domain, `data/jargon/README.md`); any other text
//! file can be given instead (`--text PATH`). The alphabet is the sorted set of distinct bytes of
//! the whole text, so a UTF-8 file works unchanged (a multi-byte character is several symbols).

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use rand::Rng;

use super::{HostBatch, Targets};
use crate::error::LabError;

const FILE: &str = "crates/gradguard-lab/data/jargon/jargon.txt.gz";
const GZ: &[u8] = include_bytes!("../../data/jargon/jargon.txt.gz");

/// Windows in the held-out batch (at most; evenly spaced over the held-out stream).
const TEST_WINDOWS: usize = 64;
/// The share of the text held out, from its end.
const HELD_OUT: f64 = 0.1;

/// A text ready for next-byte prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Corpus {
    /// The distinct bytes of the text, sorted: symbol `i` is byte `alphabet[i]`.
    pub alphabet: Vec<u8>,
    /// The training stream, as symbol indices.
    pub train: Vec<u16>,
    /// The held-out stream (the text's last 10%), as symbol indices.
    pub test: Vec<u16>,
    /// Bytes per training example (the model's context length).
    pub context: usize,
}

impl Corpus {
    /// The lab's own text (no download, no file access).
    pub fn embedded(context: usize) -> Result<Self, LabError> {
        let mut bytes = Vec::new();
        GzDecoder::new(GZ)
            .read_to_end(&mut bytes)
            .map_err(|e| LabError::Data {
                file: FILE,
                line: 0,
                reason: format!("cannot decompress: {e}"),
            })?;
        Self::from_bytes(&bytes, context).map_err(|reason| LabError::Data {
            file: FILE,
            line: 0,
            reason,
        })
    }

    /// A text file of the user's (plain or gzip-compressed, by its `.gz` extension).
    pub fn from_file(path: &Path, context: usize) -> Result<Self, LabError> {
        let bad = |reason: String| LabError::Io {
            path: path.display().to_string(),
            reason,
        };
        let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let bytes = if path.extension().is_some_and(|e| e == "gz") {
            let mut out = Vec::new();
            GzDecoder::new(raw.as_slice())
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("cannot decompress: {e}")))?;
            out
        } else {
            raw
        };
        Self::from_bytes(&bytes, context).map_err(bad)
    }

    /// Splits `bytes` (its last 10% held out) into windows of `context` bytes.
    pub fn from_bytes(bytes: &[u8], context: usize) -> Result<Self, String> {
        if context < 2 {
            return Err(format!(
                "the context must be at least 2 bytes, got {context}"
            ));
        }
        let test_len = ((bytes.len() as f64) * HELD_OUT) as usize;
        let train_len = bytes.len() - test_len;
        // Both parts must hold at least one window of context + 1 bytes.
        if test_len < context + 1 || train_len < context + 1 {
            return Err(format!(
                "{} bytes of text are too few for a context of {context}: each of the 90% \
                 training and 10% held-out parts needs at least {} bytes",
                bytes.len(),
                context + 1
            ));
        }
        let mut seen = [false; 256];
        for &b in bytes {
            seen[usize::from(b)] = true;
        }
        let alphabet: Vec<u8> = (0..=255u8).filter(|&b| seen[usize::from(b)]).collect();
        if alphabet.len() < 2 {
            return Err("the text has fewer than two distinct bytes".into());
        }
        let mut index = [0u16; 256];
        for (i, &b) in alphabet.iter().enumerate() {
            index[usize::from(b)] = i as u16;
        }
        let symbols: Vec<u16> = bytes.iter().map(|&b| index[usize::from(b)]).collect();
        let (train, test) = symbols.split_at(train_len);
        Ok(Corpus {
            alphabet,
            train: train.to_vec(),
            test: test.to_vec(),
            context,
        })
    }

    /// Symbols in the alphabet (the model's vocabulary).
    pub fn vocab(&self) -> usize {
        self.alphabet.len()
    }

    /// A training batch of `size` windows at offsets drawn uniformly from the training stream.
    pub fn train_batch(&self, size: usize, rng: &mut impl Rng) -> HostBatch {
        let last = self.train.len() - self.context - 1;
        let starts: Vec<usize> = (0..size).map(|_| rng.random_range(0..=last)).collect();
        self.windows(&self.train, &starts)
    }

    /// The held-out batch: up to 64 windows spread evenly over the held-out stream.
    pub fn test_batch(&self) -> HostBatch {
        let last = self.test.len() - self.context - 1;
        let n = TEST_WINDOWS.min(last + 1);
        let starts: Vec<usize> = (0..n)
            .map(|i| if n > 1 { i * last / (n - 1) } else { 0 })
            .collect();
        self.windows(&self.test, &starts)
    }

    /// The entropy, in nats, of the training stream's byte frequencies: the loss of the best
    /// model that ignores the context (the unigram baseline), measured on `batch`'s targets.
    pub fn unigram_loss(&self, batch: &HostBatch) -> f64 {
        let mut counts = vec![1.0f64; self.vocab()]; // add-one: no symbol has probability 0
        for &s in &self.train {
            counts[usize::from(s)] += 1.0;
        }
        let total: f64 = counts.iter().sum();
        let Targets::Classes(targets) = &batch.targets else {
            return f64::NAN;
        };
        let n = targets.len().max(1) as f64;
        targets
            .iter()
            .map(|&t| -(counts[t as usize] / total).ln())
            .sum::<f64>()
            / n
    }

    /// Windows of `stream` at `starts`: inputs are symbols `s..s+T` (as f32, exact below 2²⁴),
    /// targets `s+1..s+T+1`, row-major `[n, T]`.
    fn windows(&self, stream: &[u16], starts: &[usize]) -> HostBatch {
        let t = self.context;
        let mut inputs = Vec::with_capacity(starts.len() * t);
        let mut targets = Vec::with_capacity(starts.len() * t);
        for &s in starts {
            inputs.extend(stream[s..s + t].iter().map(|&v| f32::from(v)));
            targets.extend(stream[s + 1..s + t + 1].iter().map(|&v| i64::from(v)));
        }
        HostBatch {
            inputs,
            shape: vec![starts.len(), t],
            targets: Targets::Classes(targets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_shift_targets_by_one() {
        let c = Corpus::from_bytes(&b"abcdefghij".repeat(10), 4).unwrap();
        assert_eq!(c.vocab(), 10);
        let b = c.test_batch();
        let Targets::Classes(t) = &b.targets else {
            panic!()
        };
        assert_eq!(b.shape[1], 4);
        for (row, targets) in b.inputs.chunks(4).zip(t.chunks(4)) {
            for k in 0..3 {
                assert_eq!(row[k + 1] as i64, targets[k]);
            }
            assert_eq!((row[3] as i64 + 1) % 10, targets[3]);
        }
    }

    #[test]
    fn the_embedded_text_is_large_and_ascii() {
        let c = Corpus::embedded(64).unwrap();
        assert!(c.train.len() + c.test.len() >= 100_000);
        assert!(
            c.alphabet
                .iter()
                .all(|&b| b == b'\n' || (32..127).contains(&b))
        );
        let test = c.test_batch();
        let unigram = c.unigram_loss(&test);
        assert!(
            unigram > 2.0 && unigram < (c.vocab() as f64).ln(),
            "{unigram}"
        );
    }

    #[test]
    fn too_short_a_text_is_refused() {
        assert!(Corpus::from_bytes(b"short text", 64).is_err());
        assert!(Corpus::from_bytes(&[7u8; 1000], 8).is_err());
    }
}
