//! Per-layer (or per-time-step) gains of a network's Jacobians, measured with Burn's autodiff.
//!
//! Backward: a random unit vector `v` per example is pulled back through one layer at a time,
//! `g = J_lᵀ v` (the vector–Jacobian product of that layer at that example), the gain is
//! `‖g‖/‖v‖`, and `v ← g/‖g‖` goes on to the layer below — the power iteration whose mean log
//! gain is the (top) Lyapunov exponent of the backward dynamics (Benettin et al. 1980; Oseledets
//! 1968). Forward: a perturbation `δ` of norm ε is pushed through each layer by differences,
//! `δ ← f(x + δ) − f(x)`, renormalized each time.

use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::models::{Cell, DeepMlp, RecurrentNet};

/// Log gains per layer and per example: `logs[layer][row]`.
pub type LogGains = Vec<Vec<f64>>;

/// Finite-difference step of the forward perturbation, relative to the activations' RMS (f32
/// keeps about four significant digits of the difference at this size).
const FORWARD_EPS: f32 = 1e-3;

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap_or_default()
}

/// Row norms of a row-major `[rows, cols]` buffer.
fn row_norms(values: &[f32], cols: usize) -> Vec<f64> {
    values
        .chunks(cols.max(1))
        .map(|r| r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt())
        .collect()
}

/// Unit rows `directions` scaled to ε times the RMS of the matching rows of `states`, so the
/// finite difference stays small against the activations and large against f32 rounding at any
/// activation scale (at least 1e-2: a zero state, as an RNN starts from, still gets a
/// perturbation f32 can see).
fn scaled_to(mut directions: Vec<f32>, states: &[f32], cols: usize) -> Vec<f32> {
    let scales: Vec<f64> = row_norms(states, cols)
        .into_iter()
        .map(|n| (n / (cols.max(1) as f64).sqrt()).max(1e-2))
        .collect();
    for (row, s) in directions.chunks_mut(cols.max(1)).zip(scales) {
        row.iter_mut()
            .for_each(|v| *v = (f64::from(*v) * s * f64::from(FORWARD_EPS)) as f32);
    }
    directions
}

/// Random unit rows `[rows, cols]`.
pub fn unit_rows(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let row: Vec<f64> = (0..cols)
            .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal))
            .collect();
        let norm = row
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        out.extend(row.iter().map(|v| (v / norm) as f32));
    }
    out
}

/// Scales each row of `values` to unit norm (zero rows stay zero); returns their old norms.
fn normalize_rows(values: &mut [f32], cols: usize) -> Vec<f64> {
    let norms = row_norms(values, cols);
    for (row, n) in values.chunks_mut(cols.max(1)).zip(&norms) {
        if *n > 0.0 {
            row.iter_mut().for_each(|v| *v = (f64::from(*v) / n) as f32);
        }
    }
    norms
}

/// `ln(max(x, 1e-300))`: a gain of exactly 0 (a dead ReLU row) counts as very negative, not −∞.
fn log_gain(x: f64) -> f64 {
    x.max(1e-300).ln()
}

/// One forward step of the perturbation: the log growth of each row from `delta` (`cols` wide)
/// to the difference `d` it caused (`width` wide), and `d` rescaled to the next perturbation
/// against the states it perturbs.
fn carry(
    delta: &[f32],
    cols: usize,
    mut d: Vec<f32>,
    next_states: &[f32],
    width: usize,
) -> (Vec<f64>, Vec<f32>) {
    let before = row_norms(delta, cols);
    let after = normalize_rows(&mut d, width);
    let gains = after
        .iter()
        .zip(&before)
        .map(|(a, b)| log_gain(a / b))
        .collect();
    (gains, scaled_to(d, next_states, width))
}

fn tensor(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// Backward and forward log gains of every hidden layer of `mlp` at inputs `x0` (`[rows, in]`),
/// input layer first.
pub fn mlp_gains(
    mlp: &DeepMlp,
    x0: Tensor<2>,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> (LogGains, LogGains) {
    let depth = mlp.depth();
    let mut states = vec![x0.detach()];
    for l in 0..depth {
        let next = mlp.hidden(l, states[l].clone()).detach();
        states.push(next);
    }
    let [rows, width] = states[depth].dims();
    let mut backward = vec![Vec::new(); depth];
    let mut v = unit_rows(rows, width, rng);
    for l in (0..depth).rev() {
        let x = states[l].clone().require_grad();
        let [_, cols] = x.dims();
        let y = mlp.hidden(l, x.clone());
        let grads = (y * tensor(v.clone(), rows, width.max(1), device))
            .sum()
            .backward();
        let mut g = x
            .grad(&grads)
            .map(host)
            .unwrap_or_else(|| vec![0.0; rows * cols]);
        let norms = normalize_rows(&mut g, cols);
        backward[l] = norms.into_iter().map(log_gain).collect();
        v = g;
    }
    let mut forward = vec![Vec::new(); depth];
    let [_, in_cols] = states[0].dims();
    let mut delta = scaled_to(
        unit_rows(rows, in_cols, rng),
        &host(states[0].clone()),
        in_cols,
    );
    for (l, layer_gains) in forward.iter_mut().enumerate() {
        let [_, cols] = states[l].dims();
        let moved = mlp.hidden(
            l,
            states[l].clone() + tensor(delta.clone(), rows, cols, device),
        );
        let d = host(moved - states[l + 1].clone());
        (*layer_gains, delta) = carry(&delta, cols, d, &host(states[l + 1].clone()), width);
    }
    (backward, forward)
}

/// Backward and forward log gains of each time step of `net` over the projected inputs
/// `projected` (`[rows, T, gates × hidden]`), first step first. The state is `h` (and the LSTM's
/// cell state `c` beside it).
pub fn recurrent_gains(
    net: &RecurrentNet,
    projected: Tensor<3>,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> (LogGains, LogGains) {
    let [rows, steps, k] = projected.dims();
    let hidden = net.hidden_size();
    let lstm = net.cell() == Cell::Lstm;
    let xs: Vec<Tensor<2>> = (0..steps)
        .map(|t| {
            projected
                .clone()
                .narrow(1, t, 1)
                .reshape([rows, k])
                .detach()
        })
        .collect();
    let zeros = Tensor::<2>::zeros([rows, hidden], device);
    let mut states = vec![(zeros.clone(), zeros)];
    for xt in &xs {
        let (h, c) = states.last().expect("a state").clone();
        let (h, c) = net.step(xt.clone(), h, c);
        states.push((h.detach(), c.detach()));
    }
    let width = if lstm { 2 * hidden } else { hidden };
    let split = |v: &[f32]| -> (Vec<f32>, Vec<f32>) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for row in v.chunks(width) {
            a.extend_from_slice(&row[..hidden]);
            b.extend_from_slice(&row[hidden..]);
        }
        (a, b)
    };
    let join = |a: &[f32], b: &[f32]| -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * width);
        for r in 0..rows {
            out.extend_from_slice(&a[r * hidden..(r + 1) * hidden]);
            if lstm {
                out.extend_from_slice(&b[r * hidden..(r + 1) * hidden]);
            }
        }
        out
    };
    let mut backward = vec![Vec::new(); steps];
    let mut v = unit_rows(rows, width, rng);
    for t in (0..steps).rev() {
        let (h0, c0) = states[t].clone();
        let (h, c) = (h0.require_grad(), c0.require_grad());
        let (h1, c1) = net.step(xs[t].clone(), h.clone(), c.clone());
        let (vh, vc) = split(&v);
        let mut s = (h1 * tensor(vh, rows, hidden, device)).sum();
        if lstm {
            s = s + (c1 * tensor(vc, rows, hidden, device)).sum();
        }
        let grads = s.backward();
        let gh = h
            .grad(&grads)
            .map(host)
            .unwrap_or_else(|| vec![0.0; rows * hidden]);
        let gc = if lstm {
            c.grad(&grads)
                .map(host)
                .unwrap_or_else(|| vec![0.0; rows * hidden])
        } else {
            Vec::new()
        };
        let mut g = join(&gh, &gc);
        backward[t] = normalize_rows(&mut g, width)
            .into_iter()
            .map(log_gain)
            .collect();
        v = g;
    }
    let mut forward = vec![Vec::new(); steps];
    let state_rows = |t: usize| {
        let (h, c) = states[t].clone();
        join(&host(h), &host(c))
    };
    let mut delta = scaled_to(unit_rows(rows, width, rng), &state_rows(0), width);
    for (t, step_gains) in forward.iter_mut().enumerate() {
        let (dh, dc) = split(&delta);
        let (h0, c0) = states[t].clone();
        let (h1, c1) = net.step(
            xs[t].clone(),
            h0 + tensor(dh, rows, hidden, device),
            c0 + tensor(
                if lstm { dc } else { vec![0.0; rows * hidden] },
                rows,
                hidden,
                device,
            ),
        );
        let (hn, cn) = states[t + 1].clone();
        let d = join(&host(h1 - hn), &host(c1 - cn));
        (*step_gains, delta) = carry(&delta, width, d, &state_rows(t + 1), width);
    }
    (backward, forward)
}
