//! Long-sequence tasks generated from a seed: the adding problem and the temporal-order problem
//! (Hochreiter & Schmidhuber 1997, experiments 4 and 6a). The target depends on inputs far apart
//! in time, so the gradient must travel back through up to `T` recurrent steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{HostBatch, Targets};

/// A generator for batch `index` of stream `stream` under `seed`: every batch is a pure function
/// of the three, so a resumed run sees the same data without saving a generator state.
pub(crate) fn rng(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// The adding problem: each step carries a value `u ~ U(0, 1)` and a marker; exactly two steps
/// are marked, one in each half of the sequence, and the target is the sum of their values.
/// Predicting the mean (1) scores a mean squared error of 1/6 ≈ 0.167; solving it scores ~0.
pub fn adding(seq_len: usize, batch: usize, rng: &mut impl Rng) -> HostBatch {
    let mut inputs = vec![0.0f32; batch * seq_len * 2];
    let mut targets = Vec::with_capacity(batch);
    let half = (seq_len / 2).max(1);
    for b in 0..batch {
        let row = &mut inputs[b * seq_len * 2..(b + 1) * seq_len * 2];
        for t in 0..seq_len {
            row[2 * t] = rng.random::<f32>();
        }
        let first = rng.random_range(0..half);
        let second = if seq_len > half {
            rng.random_range(half..seq_len)
        } else {
            first
        };
        row[2 * first + 1] = 1.0;
        row[2 * second + 1] = 1.0;
        let sum = if first == second {
            row[2 * first]
        } else {
            row[2 * first] + row[2 * second]
        };
        targets.push(sum);
    }
    HostBatch {
        inputs,
        shape: vec![batch, seq_len, 2],
        targets: Targets::Values(targets),
    }
}

/// Symbols of the temporal-order problem: four distractors, then the two that matter.
pub const ORDER_SYMBOLS: usize = 6;
/// Classes of the temporal-order problem: XX, XY, YX, YY.
pub const ORDER_CLASSES: usize = 4;

/// The temporal-order problem: a sequence of random distractors `a, b, c, d` (one-hot) holds
/// `X` or `Y` at one step in [10%, 20%) of its length and at one in [50%, 60%); the class is the
/// ordered pair (XX, XY, YX, YY). Chance is 25%.
pub fn temporal_order(seq_len: usize, batch: usize, rng: &mut impl Rng) -> HostBatch {
    let mut inputs = vec![0.0f32; batch * seq_len * ORDER_SYMBOLS];
    let mut labels = Vec::with_capacity(batch);
    let window = |from: f64, to: f64| {
        let lo = ((seq_len as f64 * from) as usize).min(seq_len - 1);
        let hi = ((seq_len as f64 * to) as usize).clamp(lo + 1, seq_len);
        lo..hi
    };
    for b in 0..batch {
        let row = &mut inputs[b * seq_len * ORDER_SYMBOLS..(b + 1) * seq_len * ORDER_SYMBOLS];
        for t in 0..seq_len {
            row[t * ORDER_SYMBOLS + rng.random_range(0..4)] = 1.0;
        }
        let t1 = rng.random_range(window(0.1, 0.2));
        let mut t2 = rng.random_range(window(0.5, 0.6));
        if t2 == t1 {
            t2 = (t1 + 1) % seq_len;
        }
        let (s1, s2) = (rng.random_range(0..2usize), rng.random_range(0..2usize));
        for (t, s) in [(t1, s1), (t2, s2)] {
            row[t * ORDER_SYMBOLS..(t + 1) * ORDER_SYMBOLS].fill(0.0);
            row[t * ORDER_SYMBOLS + 4 + s] = 1.0;
        }
        labels.push((2 * s1 + s2) as i64);
    }
    HostBatch {
        inputs,
        shape: vec![batch, seq_len, ORDER_SYMBOLS],
        targets: Targets::Classes(labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_marks_two_steps_one_per_half_and_sums_them() {
        let b = adding(50, 8, &mut rng(1, 0, 0));
        let Targets::Values(targets) = &b.targets else {
            panic!("values")
        };
        for (i, target) in targets.iter().enumerate() {
            let row = &b.inputs[i * 100..(i + 1) * 100];
            let marked: Vec<usize> = (0..50).filter(|&t| row[2 * t + 1] == 1.0).collect();
            assert_eq!(marked.len(), 2);
            assert!(marked[0] < 25 && marked[1] >= 25);
            assert_eq!(*target, row[2 * marked[0]] + row[2 * marked[1]]);
        }
        assert_eq!(b, adding(50, 8, &mut rng(1, 0, 0)));
        assert_ne!(b, adding(50, 8, &mut rng(1, 0, 1)));
    }

    #[test]
    fn temporal_order_labels_follow_the_two_symbols() {
        let b = temporal_order(40, 16, &mut rng(2, 0, 0));
        let Targets::Classes(labels) = &b.targets else {
            panic!("classes")
        };
        for (i, &label) in labels.iter().enumerate() {
            let row = &b.inputs[i * 40 * ORDER_SYMBOLS..(i + 1) * 40 * ORDER_SYMBOLS];
            let key: Vec<usize> = (0..40)
                .filter_map(|t| {
                    (4..6)
                        .find(|&s| row[t * ORDER_SYMBOLS + s] == 1.0)
                        .map(|s| s - 4)
                })
                .collect();
            assert_eq!(key.len(), 2);
            assert_eq!(label as usize, 2 * key[0] + key[1]);
            for t in 0..40 {
                let hot = &row[t * ORDER_SYMBOLS..(t + 1) * ORDER_SYMBOLS];
                assert_eq!(hot.iter().sum::<f32>(), 1.0);
            }
        }
    }
}
