//! The edge of chaos located: the gain at which the measured λ crosses 0, and the verdict over a
//! grid of gains and depths.

use serde::{Deserialize, Serialize};

use super::meanfield::{self, MIN_VARIANCE};
use super::{ProbeConfig, Verdict, probe};
use crate::error::LabError;

/// A phase diagram: the probe's verdict at every (gain, depth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseDiagram {
    /// Initialization gains (rows).
    pub gains: Vec<f64>,
    /// Depths (columns).
    pub depths: Vec<usize>,
    /// `lyapunov[gain][depth]`.
    pub lyapunov: Vec<Vec<f64>>,
    /// `verdict[gain][depth]`.
    pub verdict: Vec<Vec<Verdict>>,
}

/// Probes `config` at every gain × depth (MLP or recurrent: depth is then the sequence length).
pub fn phase_diagram(
    config: &ProbeConfig,
    gains: &[f64],
    depths: &[usize],
) -> Result<PhaseDiagram, LabError> {
    let mut lyapunov = Vec::new();
    let mut verdict = Vec::new();
    for &gain in gains {
        let (mut l_row, mut v_row) = (Vec::new(), Vec::new());
        for &depth in depths {
            let r = probe(&ProbeConfig {
                init_gain: gain,
                depth,
                seq_len: depth,
                ..config.clone()
            })?;
            l_row.push(r.lyapunov);
            v_row.push(r.verdict);
        }
        lyapunov.push(l_row);
        verdict.push(v_row);
    }
    Ok(PhaseDiagram {
        gains: gains.to_vec(),
        depths: depths.to_vec(),
        lyapunov,
        verdict,
    })
}

/// The initialization gain at which the measured λ crosses 0, searched by bisection between
/// `lo` and `hi`; `None` when λ has the same sign at both ends. Every probe uses the same seed
/// and, unless `input_var` is set, inputs at the fixed point q* of the theory's critical gain —
/// the steady state the theory describes — so λ(gain) is one smooth curve. (Drawing each gain's
/// own q* instead moves the crossing: for tanh without bias q* jumps from 0 to ~0.1 just above
/// gain 1, where the measured λ is flat and the finite-width bias of −1/(2N) per layer decides.)
pub fn calibrate(config: &ProbeConfig, lo: f64, hi: f64) -> Result<Option<f64>, LabError> {
    let input_q = match (config.input_var, config.input_q) {
        (None, None) if config.cell.is_none() => {
            let critical = meanfield::critical_gain(config.activation, config.bias_var);
            meanfield::fixed_point(config.activation, critical, config.bias_var)
                .map(|q| q.max(MIN_VARIANCE))
        }
        (_, q) => q,
    };
    let at = |gain: f64| -> Result<f64, LabError> {
        Ok(probe(&ProbeConfig {
            init_gain: gain,
            input_q,
            ..config.clone()
        })?
        .lyapunov)
    };
    let (mut lo, mut hi) = (lo, hi);
    let (f_lo, f_hi) = (at(lo)?, at(hi)?);
    if f_lo.signum() == f_hi.signum() {
        return Ok(None);
    }
    let rising = f_hi > f_lo;
    for _ in 0..20 {
        let mid = 0.5 * (lo + hi);
        if (at(mid)? < 0.0) == rising {
            lo = mid;
        } else {
            hi = mid;
        }
        // 0.1% is finer than the finite-width and sampling spread of the crossing itself.
        if hi - lo < 1e-3 * lo {
            break;
        }
    }
    Ok(Some(0.5 * (lo + hi)))
}
