//! The fused optimizer's step as one kernel over many parameters: SGD, Adam or AdamW with the
//! arithmetic of [`crate::FusedRule::step_into`] (Burn 0.22's `Sgd`, `Adam`, `AdamW`, the same f32
//! operations in the same order), each parameter's new weights and moments written into its
//! group's output buffers — the weights and moments read stay as they were, so a step the guard
//! reverts is dropped and one it scales is measured against the weights it kept.
//!
//! Per value, with w the weight, g the gradient, m and v the moments before the step (zeros on a
//! parameter's first step: `β·0 + x = x`), λ the weight decay:
//! - SGD: `w' = w − (g + λw)·η`;
//! - Adam: `g ← λw + g`, `m' = β₁m + (1−β₁)g`, `v' = β₂v + (1−β₂)g²`,
//!   `w' = w − ((m'·c)/(√v' + e))·η` with `c = √(1−β₂ᵗ)/(1−β₁ᵗ)`, `e = ε√(1−β₂ᵗ)`;
//! - AdamW: the moments as Adam's (no λ in g), `w' = w·(1−ηλ) − ((m'/c₁)/(√(v'/c₂) + ε))·η` with
//!   `c₁ = 1−β₁ᵗ`, `c₂ = 1−β₂ᵗ`.
//!
//! t is each parameter's own step count, so its two corrections come per tensor, computed on the
//! host in f32 as Burn computes them (`powi`), from `corrections[2i]` and `corrections[2i + 1]`.
//!
//! In the same pass the kernel takes the update bound's measurements: the block statistics of the
//! weights before the step and of the update `w' − w`, in the layout and with the numerics of the
//! statistics kernel's pair form ([`super::kernel`]: per block max |x|, Σ r², Σ r relative to it,
//! the non-finite count; a block whose largest magnitude lies outside [2⁻⁴⁰, 2⁴⁰] is summed again,
//! scaled, from the weights and the new weights the unit itself wrote). A cube of `units` units
//! (one plane, as the statistics kernel's) steps one block of [`BLOCK`] values of one tensor,
//! unit k the vectors k, k + units, … of `vector` values each (4, 2 or 1: the widest that divides
//! every tensor of the launch, so neighbouring units read and write neighbouring bytes); a whole
//! block runs a loop whose trip count is known when the kernel is compiled.

use cubecl::prelude::*;

use super::kernel::{BLOCK, block_end, close_block, take, take_rescan, write_block};

/// [`fused_step`]'s rule: SGD.
pub const SGD: u32 = 0;
/// [`fused_step`]'s rule: Adam (weight decay coupled).
pub const ADAM: u32 = 1;
/// [`fused_step`]'s rule: AdamW (weight decay decoupled).
pub const ADAMW: u32 = 2;

/// Input i's blocks are `starts[i] .. starts[i + 1]`; its results go to `out_w`, `out_m`, `out_v`
/// at vector `offsets[i]`, its blocks' statistics to `stats` from block `first_block + starts[i]`
/// on. `m` and `v` (and the moment outputs) are read and written only by Adam and AdamW (SGD's may
/// be empty). `decay`: λ (`penalty`) is applied (SGD, Adam) or `keep` = 1 − ηλ, computed in f64
/// as Burn does, is (AdamW). `one_minus_beta_*` are 1 − β as Burn computes them in f32. Input
/// i's corrections are `corrections[2·classes[i]]` and `[2·classes[i] + 1]`.
///
/// With `decided` the step's decision comes from the device, `control = [factor, accept]`: each
/// gradient is multiplied by `factor` first, and where `accept` is 0 the outputs are the inputs
/// (the weights and moments as they were: a NaN gradient of a skipped step reaches nothing).
/// Without `measure` no statistics are taken (`stats` is not written).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, unused_assignments)]
pub fn fused_step<N: Size>(
    w: &Sequence<OwnedTensor<Vector<f32, N>>>,
    g: &Sequence<OwnedTensor<Vector<f32, N>>>,
    m: &Sequence<OwnedTensor<Vector<f32, N>>>,
    v: &Sequence<OwnedTensor<Vector<f32, N>>>,
    corrections: &Tensor<f32>,
    control: &Tensor<f32>,
    out_w: &mut Tensor<Vector<f32, N>>,
    out_m: &mut Tensor<Vector<f32, N>>,
    out_v: &mut Tensor<Vector<f32, N>>,
    stats: &mut Tensor<f32>,
    starts: &Sequence<u32>,
    offsets: &Sequence<u32>,
    classes: &Sequence<u32>,
    first_block: u32,
    lr: f32,
    beta_1: f32,
    beta_2: f32,
    one_minus_beta_1: f32,
    one_minus_beta_2: f32,
    penalty: f32,
    keep: f32,
    epsilon: f32,
    #[comptime] rule: u32,
    #[comptime] decay: bool,
    #[comptime] decided: bool,
    #[comptime] measure: bool,
    #[comptime] units: usize,
    #[comptime] vector: usize,
) {
    let n = comptime![w.len()];
    let block = CUBE_POS as u32;
    if block >= *starts.index(n) {
        terminate!();
    }
    let unit = UNIT_POS_X as usize;
    let mut inv = Array::<f32>::new(2usize);
    let mut largest = Array::<f32>::new(2usize);
    let mut sums = Array::<f32>::new(6usize);
    #[unroll]
    for q in 0..2usize {
        inv[q] = 0.0;
        largest[q] = 0.0;
    }
    #[unroll]
    for k in 0..6usize {
        sums[k] = 0.0;
    }
    // [lr, β₁, β₂, 1 − β₁, 1 − β₂, λ, 1 − ηλ, ε, the factor, the two corrections]
    let mut scalars = Array::<f32>::new(11usize);
    scalars[0] = lr;
    scalars[1] = beta_1;
    scalars[2] = beta_2;
    scalars[3] = one_minus_beta_1;
    scalars[4] = one_minus_beta_2;
    scalars[5] = penalty;
    scalars[6] = keep;
    scalars[7] = epsilon;
    scalars[8] = 1.0;
    scalars[9] = 0.0;
    scalars[10] = 0.0;
    let mut skip = false;
    if decided {
        scalars[8] = control[0];
        skip = control[1] == 0.0;
    }
    let per_block = comptime![BLOCK / vector];
    #[unroll]
    for i in 0..n {
        let start = *starts.index(i);
        let end = *starts.index(comptime![i + 1]);
        if block >= start && block < end {
            let tw = w.index(i).as_slice();
            let tg = g.index(i).as_slice();
            let (tm, tv) = if comptime![rule == SGD] {
                (tw, tw)
            } else {
                (m.index(i).as_slice(), v.index(i).as_slice())
            };
            let base = (block - start) as usize * per_block;
            let stop = block_end(base, per_block, tw.len());
            let offset = *offsets.index(i) as usize;
            if comptime![rule != SGD] {
                let class = *classes.index(i) as usize;
                scalars[9] = corrections[2 * class];
                scalars[10] = corrections[2 * class + 1];
            }
            if stop - base == per_block {
                // A whole block: a trip count known when the kernel is compiled.
                for j in 0..comptime![BLOCK / vector / units] {
                    step_at::<N>(
                        tw,
                        tg,
                        tm,
                        tv,
                        out_w,
                        out_m,
                        out_v,
                        offset,
                        base + j * units + unit,
                        &scalars,
                        skip,
                        &mut largest,
                        &mut sums,
                        rule,
                        decay,
                        decided,
                        measure,
                    );
                }
            } else {
                let mut at = base + unit;
                while at < stop {
                    step_at::<N>(
                        tw,
                        tg,
                        tm,
                        tv,
                        out_w,
                        out_m,
                        out_v,
                        offset,
                        at,
                        &scalars,
                        skip,
                        &mut largest,
                        &mut sums,
                        rule,
                        decay,
                        decided,
                        measure,
                    );
                    at += units;
                }
            }
        }
    }
    if !measure {
        terminate!();
    }
    let mut top = Array::<f32>::new(2usize);
    if close_block(&largest, &mut sums, &mut top, &mut inv, 2usize, units) {
        // Summed again relative to each block's largest magnitude, from the weights and the new
        // weights this unit wrote (its own writes: no barrier needed to read them).
        let mut scaled = Array::<f32>::new(6usize);
        #[unroll]
        for k in 0..6usize {
            scaled[k] = 0.0;
        }
        #[unroll]
        for i in 0..n {
            let start = *starts.index(i);
            let end = *starts.index(comptime![i + 1]);
            if block >= start && block < end {
                let tw = w.index(i).as_slice();
                let base = (block - start) as usize * per_block;
                let stop = block_end(base, per_block, tw.len());
                let offset = *offsets.index(i) as usize;
                let mut at = base + unit;
                while at < stop {
                    let x = tw[at];
                    let next = out_w[offset + at];
                    #[unroll]
                    for l in 0..N::value() {
                        let xl = x.extract(l);
                        take(xl, inv[0], &mut largest, &mut scaled, 0usize, true);
                        take(
                            next.extract(l) - xl,
                            inv[1],
                            &mut largest,
                            &mut scaled,
                            1usize,
                            true,
                        );
                    }
                    at += units;
                }
            }
        }
        take_rescan(&mut scaled, &mut sums, 2usize, units);
    }
    write_block(stats, first_block + block, &top, &sums, 2usize);
}

/// Steps the vector at `at` of one parameter (weights `tw`, gradient `tg`, moments `tm`, `tv`),
/// writing its results at `offset + at`; with `measure`, folds the weights and the update into
/// this unit's partials. `scalars` as [`fused_step`] lays them out.
#[cube]
#[allow(clippy::too_many_arguments, unused_assignments)]
fn step_at<N: Size>(
    tw: &[Vector<f32, N>],
    tg: &[Vector<f32, N>],
    tm: &[Vector<f32, N>],
    tv: &[Vector<f32, N>],
    out_w: &mut Tensor<Vector<f32, N>>,
    out_m: &mut Tensor<Vector<f32, N>>,
    out_v: &mut Tensor<Vector<f32, N>>,
    offset: usize,
    at: usize,
    scalars: &Array<f32>,
    skip: bool,
    largest: &mut Array<f32>,
    sums: &mut Array<f32>,
    #[comptime] rule: u32,
    #[comptime] decay: bool,
    #[comptime] decided: bool,
    #[comptime] measure: bool,
) {
    let x = tw[at];
    let mut grad = tg[at];
    if decided {
        grad *= Vector::new(scalars[8]);
    }
    let lr = Vector::new(scalars[0]);
    let mut next = x;
    if comptime![rule == SGD] {
        if decay {
            grad += x * Vector::new(scalars[5]);
        }
        next = x - grad * lr;
    } else {
        if comptime![rule == ADAM] && decay {
            grad += x * Vector::new(scalars[5]);
        }
        let m0 = tm[at];
        let v0 = tv[at];
        let m1 = m0 * Vector::new(scalars[1]) + grad * Vector::new(scalars[3]);
        let v1 = v0 * Vector::new(scalars[2]) + (grad * grad) * Vector::new(scalars[4]);
        if skip {
            out_m[offset + at] = m0;
            out_v[offset + at] = v0;
        } else {
            out_m[offset + at] = m1;
            out_v[offset + at] = v1;
        }
        let first = Vector::new(scalars[9]);
        let second = Vector::new(scalars[10]);
        if comptime![rule == ADAM] {
            // first = √(1−β₂ᵗ)/(1−β₁ᵗ), second = ε√(1−β₂ᵗ).
            next = x - ((m1 * first) / (Vector::sqrt(v1) + second)) * lr;
        } else {
            // first = 1−β₁ᵗ, second = 1−β₂ᵗ.
            let mut kept = x;
            if decay {
                kept = x * Vector::new(scalars[6]);
            }
            next =
                kept - ((m1 / first) / (Vector::sqrt(v1 / second) + Vector::new(scalars[7]))) * lr;
        }
    }
    if skip {
        next = x;
    }
    out_w[offset + at] = next;
    if measure {
        #[unroll]
        for l in 0..N::value() {
            let xl = x.extract(l);
            take(xl, 0.0, largest, sums, 0usize, false);
            take(next.extract(l) - xl, 0.0, largest, sums, 1usize, false);
        }
    }
}
