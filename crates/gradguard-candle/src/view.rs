//! The gradients of a Candle backward pass as gradguard sees them.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use gradguard::{Gradients, HostGradients, HostTensor, Source, TensorStats, UnitLayout};

use crate::error::CandleGuardError;

/// One parameter's gradient: where it came from, so a clipped copy can go back.
#[derive(Debug)]
struct Entry {
    var: Var,
    dtype: DType,
}

/// The gradients of named [`Var`]s in a [`GradStore`], copied to the host as f32 (exactly, for
/// f32, f16 and bf16 gradients): on the CPU one copy per tensor; on CUDA or Metal the gradients
/// are flattened and concatenated on the device and read in **one** transfer. The guard's
/// statistics and rules run on the host kernels; [`CandleGradients::write_back`] puts the
/// gradients a rule changed back into the store, in their own dtype and on their own device.
///
/// Vars without a gradient are left out (Candle's fused `LayerNorm` and `RmsNorm` give their
/// weights none, silently).
#[derive(Debug)]
pub struct CandleGradients {
    host: HostGradients,
    entries: Vec<Entry>,
    changed: bool,
}

/// Every gradient of `vars` in `grads`, flattened, as f32.
fn flat_f32(
    grads: &GradStore,
    vars: &[(String, Var)],
) -> candle_core::Result<Vec<(usize, Tensor)>> {
    vars.iter()
        .enumerate()
        .filter_map(|(i, (_, var))| grads.get(var).map(|g| (i, g)))
        .map(|(i, g)| Ok((i, g.flatten_all()?.to_dtype(DType::F32)?)))
        .collect()
}

/// The values of `tensors`, read to the host: one read per tensor on the CPU (a copy), one read
/// of their concatenation elsewhere.
fn read_all(tensors: &[Tensor], device: &Device) -> candle_core::Result<Vec<Vec<f32>>> {
    if device.is_cpu() || tensors.len() < 2 {
        return tensors.iter().map(Tensor::to_vec1::<f32>).collect();
    }
    let all = Tensor::cat(tensors, 0)?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(tensors.len());
    let mut offset = 0;
    for t in tensors {
        let n = t.elem_count();
        out.push(all[offset..offset + n].to_vec());
        offset += n;
    }
    Ok(out)
}

impl CandleGradients {
    /// The gradients of `vars` (name, var) in `grads`, in the order of `vars`; with
    /// `with_parameters`, the vars' values too (for AGC).
    pub fn collect(
        grads: &GradStore,
        vars: &[(String, Var)],
        with_parameters: bool,
    ) -> Result<Self, CandleGuardError> {
        let flat = flat_f32(grads, vars)?;
        let device = flat
            .first()
            .map_or(Device::Cpu, |(_, t)| t.device().clone());
        let tensors: Vec<Tensor> = flat.iter().map(|(_, t)| t.clone()).collect();
        let values = read_all(&tensors, &device)?;
        let mut host = Vec::with_capacity(values.len());
        let mut entries = Vec::with_capacity(values.len());
        for ((i, _), values) in flat.iter().zip(values) {
            let (name, var) = &vars[*i];
            let grad = grads.get(var).expect("collected above");
            host.push(HostTensor::new(name.clone(), grad.dims().to_vec(), values)?);
            entries.push(Entry {
                var: var.clone(),
                dtype: grad.dtype(),
            });
        }
        let mut host = HostGradients::new(host)?;
        if with_parameters {
            let weights: Vec<Tensor> = entries
                .iter()
                .map(|e| e.var.as_tensor().flatten_all()?.to_dtype(DType::F32))
                .collect::<candle_core::Result<_>>()?;
            let values = read_all(&weights, &device)?;
            let params = host
                .tensors()
                .iter()
                .zip(values)
                .map(|(g, v)| HostTensor::new(g.name.clone(), g.shape.clone(), v))
                .collect::<gradguard::Result<Vec<_>>>()?;
            host = host.with_parameters(params)?;
        }
        Ok(CandleGradients {
            host,
            entries,
            changed: false,
        })
    }

    /// Whether a rule (or the non-finite policy) changed any gradient.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// The host copies.
    pub fn host(&self) -> &HostGradients {
        &self.host
    }

    /// Replaces, in `grads`, every gradient by its host copy (as changed by the rules) in its
    /// own dtype and device. Does nothing when nothing changed.
    pub fn write_back(&self, grads: &mut GradStore) -> Result<(), CandleGuardError> {
        if !self.changed {
            return Ok(());
        }
        for (t, e) in self.host.tensors().iter().zip(&self.entries) {
            let device = e.var.device();
            let g = Tensor::from_slice(&t.values, t.shape.as_slice(), device)?.to_dtype(e.dtype)?;
            grads.insert(e.var.as_tensor(), g);
        }
        Ok(())
    }
}

impl Gradients for CandleGradients {
    fn tensor_count(&self) -> usize {
        self.host.tensor_count()
    }

    fn name(&self, index: usize) -> &str {
        self.host.name(index)
    }

    fn shape(&self, index: usize) -> &[usize] {
        self.host.shape(index)
    }

    fn stats(&self) -> Vec<TensorStats> {
        self.host.stats()
    }

    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        self.host.power_sums(p, scales)
    }

    fn scale(&mut self, factors: &[f64]) {
        self.changed |= factors.iter().any(|&f| self.host.applied(f) != 1.0);
        self.host.scale(factors);
    }

    fn clamp(&mut self, limit: f64) -> Vec<TensorStats> {
        self.changed = true;
        self.host.clamp(limit)
    }

    fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        self.changed = true;
        self.host.zero_non_finite()
    }

    fn unit_norms(&self, source: Source, layout: UnitLayout) -> gradguard::Result<Vec<Vec<f64>>> {
        self.host.unit_norms(source, layout)
    }

    fn scale_units(
        &mut self,
        layout: UnitLayout,
        factors: &[Option<Vec<f64>>],
    ) -> gradguard::Result<Vec<Option<TensorStats>>> {
        self.changed = true;
        self.host.scale_units(layout, factors)
    }
}
