//! Weight initialization schemes, each scaled by a gain.

pub use gradguard_report::schemes::Init;

/// Generator stream of initial weights (the data streams are 0 and 1).
const INIT_STREAM: u64 = 2;

/// The generator a network of `seed` draws its initial weights from: the same seed gives the
/// same weights on every machine and in every thread (Burn's own generator is process-global
/// and shared by concurrent runs, so it is not used).
pub(crate) fn weight_rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    crate::tasks::rng(seed, INIT_STREAM, 0)
}

/// Draws a `fan_in × fan_out` weight (row-major, Burn's `[d_input, d_output]` layout) with
/// `init` at `gain`.
pub(crate) fn draw_weight(
    init: Init,
    gain: f64,
    fan_in: usize,
    fan_out: usize,
    rng: &mut impl rand::Rng,
) -> Vec<f32> {
    let mut gaussian = |std: f64| -> Vec<f64> {
        (0..fan_in * fan_out)
            .map(|_| std * rng.sample::<f64, _>(rand_distr::StandardNormal))
            .collect()
    };
    let values = match init {
        Init::Gaussian => gaussian(gain / (fan_in as f64).sqrt()),
        Init::Xavier => gaussian(gain * (2.0 / (fan_in + fan_out) as f64).sqrt()),
        Init::He => gaussian(gain * (2.0 / fan_in as f64).sqrt()),
        Init::Orthogonal | Init::Lsuv => {
            let mut m = gaussian(1.0);
            orthonormalize(&mut m, fan_in, fan_out);
            m.iter_mut().for_each(|v| *v *= gain);
            m
        }
    };
    values.into_iter().map(|v| v as f32).collect()
}

/// Makes the rows (`rows ≤ cols`) or the columns (`rows > cols`) of a row-major `rows × cols`
/// Gaussian matrix orthonormal by modified Gram–Schmidt: the Q of its QR decomposition with a
/// positive diagonal in R, which is Haar-distributed (Mezzadri 2007).
pub(crate) fn orthonormalize(m: &mut [f64], rows: usize, cols: usize) {
    let by_rows = rows <= cols;
    let (count, len) = if by_rows { (rows, cols) } else { (cols, rows) };
    let at = |v: usize, k: usize| if by_rows { v * cols + k } else { k * cols + v };
    for v in 0..count {
        for u in 0..v {
            let dot: f64 = (0..len).map(|k| m[at(u, k)] * m[at(v, k)]).sum();
            for k in 0..len {
                m[at(v, k)] -= dot * m[at(u, k)];
            }
        }
        let norm = (0..len).map(|k| m[at(v, k)].powi(2)).sum::<f64>().sqrt();
        for k in 0..len {
            m[at(v, k)] /= norm.max(f64::MIN_POSITIVE);
        }
    }
}

/// A linear layer with the given weight and bias values.
pub(crate) fn linear(
    fan_in: usize,
    fan_out: usize,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    device: &burn::tensor::Device,
) -> burn::nn::Linear {
    use burn::module::Param;
    use burn::tensor::TensorData;
    burn::nn::Linear {
        weight: Param::from_data(TensorData::new(weight, [fan_in, fan_out]), device),
        bias: bias.map(|b| Param::from_data(TensorData::new(b, [fan_out]), device)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_weights_have_orthonormal_columns_or_rows() {
        for (rows, cols) in [(8, 8), (12, 5), (5, 12)] {
            let w = draw_weight(Init::Orthogonal, 1.0, rows, cols, &mut weight_rng(3));
            let (count, len, by_rows) = if rows <= cols {
                (rows, cols, true)
            } else {
                (cols, rows, false)
            };
            let at = |v: usize, k: usize| {
                f64::from(if by_rows {
                    w[v * cols + k]
                } else {
                    w[k * cols + v]
                })
            };
            for a in 0..count {
                for b in 0..count {
                    let dot: f64 = (0..len).map(|k| at(a, k) * at(b, k)).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "{rows}x{cols} ({a},{b}): {dot}");
                }
            }
        }
    }

    #[test]
    fn gaussian_and_he_weights_have_the_stated_variance() {
        let (fan_in, fan_out) = (256, 256);
        for (init, gain, want) in [
            (Init::Gaussian, 2.0, 4.0 / 256.0),
            (Init::He, 1.0, 2.0 / 256.0),
            (Init::Xavier, 1.0, 2.0 / 512.0),
        ] {
            let w = draw_weight(init, gain, fan_in, fan_out, &mut weight_rng(1));
            let var = w.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / w.len() as f64;
            assert!((var / want - 1.0).abs() < 0.02, "{init}: {var} vs {want}");
        }
        assert_eq!(
            draw_weight(Init::He, 1.0, 4, 4, &mut weight_rng(9)),
            draw_weight(Init::He, 1.0, 4, 4, &mut weight_rng(9))
        );
    }
}
