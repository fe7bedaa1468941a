//! Many flat tensors in one padded f32 buffer, and their statistics by a fixed number of ops.
//!
//! Each tensor is copied once into one buffer, padded with zeros to a whole number of blocks of
//! [`BLOCK`] values, so that every block belongs to one tensor. Then, over all blocks at once and
//! whatever the number of tensors:
//!
//! - m_b = max |x| over the block's finite values, and with u_b = max(m_b, f32's smallest normal)
//!   and r = |x| / u_b ≤ 1, s2_b = Σ r² and s1_b = Σ r, each summed pairwise (64 values, then
//!   64 partial sums);
//! - the block's count of non-finite values (|x| < ∞ is false for NaN and ±inf alike; which of
//!   the two they are is counted only for the rare tensor that has any, when it is located).
//!
//! The host reads these four f32 per block in **one** read and combines them in f64:
//! Σx² = Σ_b u_b²·s2_b, Σ|x| = Σ_b u_b·s1_b. This is LAPACK `nrm2`'s idea (scale by the largest
//! magnitude before squaring) applied per block: a finite f32 tensor never overflows (1e30²
//! would), a tiny one never underflows, and no f64 is needed on the device — WGSL and Metal have
//! none. The relative error of a block's f32 pairwise sum is at most about 2·64·2⁻²⁴ ≈ 8e-6 and
//! ~1e-7 in practice; across blocks the sum is f64.
//!
//! Cost with Burn's tensor ops (counted with cubecl's launch observer): one copy per tensor, plus
//! 27 launches however many tensors there are — the zero fill, the statistics (11 of them passes
//! over the whole buffer) and the read's concatenation. On CubeCL backends the fused kernel of
//! [`crate::cube`] writes the same statistics from the tensors where they lie, with no buffer.

use burn::tensor::{DType, Device, Tensor, TensorData};
use gradguard::TensorStats;

/// Side of a block's two-level pairwise sum.
const BLOCK_SIDE: usize = 64;
/// Values per block: each tensor is padded to a multiple of this.
pub(crate) const BLOCK: usize = BLOCK_SIDE * BLOCK_SIDE;
/// Scalars per block in the statistics read: max |x|, Σr², Σr, non-finite count.
pub(crate) const PER_BLOCK: usize = 4;

/// Where one tensor lives in the buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub first_block: usize,
    pub len: usize,
}

impl Segment {
    pub fn blocks(self) -> usize {
        self.len.div_ceil(BLOCK)
    }

    pub fn start(self) -> usize {
        self.first_block * BLOCK
    }

    fn block_range(self) -> std::ops::Range<usize> {
        self.first_block..self.first_block + self.blocks()
    }
}

/// The tensor as f32 (a no-op for f32 tensors).
pub(crate) fn f32_of(t: Tensor<1>) -> Tensor<1> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(DType::F32)
    }
}

/// Reads a small tensor as f32 values.
pub(crate) fn read_f32(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("statistics convert to f32")
}

/// Σ over each row of a `[blocks, BLOCK]` tensor, pairwise: 64 values, then 64 partial sums.
pub(crate) fn pairwise_row_sums(x: Tensor<2>) -> Tensor<2> {
    let blocks = x.dims()[0];
    x.reshape([blocks, BLOCK_SIDE, BLOCK_SIDE])
        .sum_dim(2)
        .sum_dim(1)
        .reshape([blocks, 1])
}

/// Σ along `dim` of a 2-D tensor, pairwise: in groups of 64 values (the last padded with zeros),
/// then the groups' sums — so a long unit's f32 sum keeps its digits (one running sum over a
/// 5,000-value unit missed the exact norm by more than 1e-6). One value per row (`dim` 1) or per
/// column (`dim` 0).
pub(crate) fn pairwise_sums_along(x: Tensor<2>, dim: usize) -> Tensor<1> {
    let x = if dim == 0 { x.transpose() } else { x };
    let [units, len] = x.dims();
    let groups = len.div_ceil(BLOCK_SIDE).max(1);
    let pad = groups * BLOCK_SIDE - len;
    let x = if pad > 0 {
        let zeros = Tensor::<2>::zeros([units, pad], &x.device()).cast(x.dtype());
        Tensor::cat(vec![x, zeros], 1)
    } else {
        x
    };
    x.reshape([units, groups, BLOCK_SIDE])
        .sum_dim(2)
        .sum_dim(1)
        .reshape([units])
}

/// The unit a block's values were divided by, from its largest magnitude `m`: m itself, but at
/// least f32's smallest normal number (so that 1/u is finite for subnormal gradients), and 1 for
/// an all-zero block — as computed on the device.
fn block_unit(m: f32) -> f32 {
    if m == 0.0 {
        1.0
    } else {
        m.max(f32::MIN_POSITIVE)
    }
}

/// Flat tensors, each padded with zeros to whole blocks, in one f32 buffer on their device.
#[derive(Debug)]
pub(crate) struct Padded {
    /// `None` when every tensor is empty.
    pub buffer: Option<Tensor<1>>,
    pub segments: Vec<Segment>,
}

impl Padded {
    /// Copies `tensors` into one buffer: one zero fill and one copy per non-empty tensor. Empty
    /// tensors have no place in it and come back as they were (`Some` at their index).
    pub fn new(tensors: Vec<Tensor<1>>) -> (Self, Vec<Option<Tensor<1>>>) {
        let device = tensors.first().map(Tensor::device);
        let segments = Self::segments_of(tensors.iter().map(|t| t.shape().num_elements()));
        let next_block: usize = segments.iter().map(|s| s.blocks()).sum();
        let mut buffer = device
            .as_ref()
            .filter(|_| next_block > 0)
            .map(|device| Tensor::<1>::zeros([next_block * BLOCK], device));
        let mut empties = Vec::with_capacity(tensors.len());
        for (t, s) in tensors.into_iter().zip(&segments) {
            // Moved out and back, never cloned: a uniquely held buffer is written in place, a
            // shared one would be copied whole for every tensor.
            match buffer.take() {
                Some(b) if s.len > 0 => {
                    buffer = Some(b.slice_assign(s.start()..s.start() + s.len, f32_of(t)));
                    empties.push(None);
                }
                b => {
                    buffer = b;
                    empties.push(Some(t));
                }
            }
        }
        let padded = Padded { buffer, segments };
        (padded, empties)
    }

    /// Where tensors of lengths `lens` go: each from the block after the previous one's last.
    pub fn segments_of(lens: impl Iterator<Item = usize>) -> Vec<Segment> {
        let mut next_block = 0;
        lens.map(|len| {
            let s = Segment {
                first_block: next_block,
                len,
            };
            next_block += s.blocks();
            s
        })
        .collect()
    }

    /// `self − other`, for two buffers of tensors of the same lengths: one op.
    pub fn minus(self, other: &Padded) -> Padded {
        let buffer = match (self.buffer, &other.buffer) {
            (Some(a), Some(b)) => Some(a.sub(b.clone())),
            (a, _) => a,
        };
        Padded { buffer, ..self }
    }

    pub fn blocks(&self) -> usize {
        self.segments.iter().map(|s| s.blocks()).sum()
    }

    /// The buffer as `[blocks, BLOCK]` (a view).
    pub fn block_view(&self) -> Option<Tensor<2>> {
        let blocks = self.blocks();
        self.buffer.clone().map(|b| b.reshape([blocks, BLOCK]))
    }

    /// One f32 per block, uploaded as `[blocks, 1]`: each tensor's value over all its blocks.
    pub fn per_block(&self, per_tensor: impl Fn(usize) -> f32, device: &Device) -> Tensor<2> {
        let mut v = Vec::with_capacity(self.blocks());
        for (t, s) in self.segments.iter().enumerate() {
            v.extend(std::iter::repeat_n(per_tensor(t), s.blocks()));
        }
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n, 1]), device)
    }

    /// The four statistics of every block, flattened (`blocks × PER_BLOCK` values), to read.
    pub fn statistics(&self) -> Option<Tensor<1>> {
        let blocks = self.block_view()?;
        let n = blocks.dims()[0];
        let magnitude = blocks.abs();
        let finite = magnitude.clone().lower_elem(f32::INFINITY);
        let finite_count = finite.clone().float().sum_dim(1);
        let bad = finite_count.neg().add_scalar(BLOCK as f32);
        let magnitude = magnitude.mask_fill(finite.bool_not(), 0.0);
        let max = magnitude.clone().max_dim(1);
        // The block's unit u = max(m, smallest normal) (1 for an all-zero block): 1/u is finite
        // for subnormal gradients, and the host recomputes u from m ([`block_unit`]).
        let inverse = max
            .clone()
            .clamp_min(f32::MIN_POSITIVE)
            .mask_fill(max.clone().equal_elem(0.0), 1.0)
            .recip();
        let ratio = magnitude * inverse;
        let s2 = pairwise_row_sums(ratio.clone().square());
        let s1 = pairwise_row_sums(ratio);
        Some(Tensor::cat(vec![max, s2, s1, bad], 1).reshape([n * PER_BLOCK]))
    }

    /// Each statistic of the tensors laid out as `segments`, from the read of
    /// [`Padded::statistics`] (or of the fused kernel, which writes the same layout): sums over
    /// finite values in f64. Non-finite values are all counted as `inf_count` here; the caller
    /// that locates them splits NaN from inf and fills `first_non_finite`.
    pub fn combine_segments(segments: &[Segment], host: &[f32]) -> Vec<TensorStats> {
        segments
            .iter()
            .map(|&s| {
                let mut st = TensorStats {
                    len: s.len,
                    ..TensorStats::default()
                };
                let mut max = 0.0f32;
                for b in s.block_range() {
                    let v = &host[b * PER_BLOCK..(b + 1) * PER_BLOCK];
                    let u = f64::from(block_unit(v[0]));
                    max = max.max(v[0]);
                    st.sum_squares += u * u * f64::from(v[1]);
                    st.sum_abs += u * f64::from(v[2]);
                    st.inf_count += v[3] as u64;
                }
                st.max_abs = f64::from(max);
                st
            })
            .collect()
    }

    /// Each tensor's Euclidean norm, for tensors laid out as `segments`, from the read of
    /// [`Padded::statistics`]; NaN when it holds any non-finite value.
    pub fn norms_of(segments: &[Segment], host: &[f32]) -> Vec<f64> {
        Self::combine_segments(segments, host)
            .into_iter()
            .map(|s| {
                if s.is_finite() {
                    s.sum_squares.sqrt()
                } else {
                    f64::NAN
                }
            })
            .collect()
    }

    /// The first block of the tensor at `segment` that holds a non-finite value, by the read's
    /// counts.
    pub fn first_bad_block_of(segment: Segment, host: &[f32]) -> Option<usize> {
        segment
            .block_range()
            .find(|&b| host[b * PER_BLOCK + 3] > 0.0)
    }
}
