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

/// The gradients of named [`Var`]s in a [`GradStore`], as the guard's host kernels read them.
///
/// On the CPU, contiguous f32 gradients are **not copied**: the statistics (the guard's one read
/// per step) run on Candle's own buffers, borrowed in place; a copy is made only when a rule
/// changes the gradients (clips them) or needs unit norms. Other dtypes are widened to f32
/// (exactly, for f16 and bf16). On CUDA or Metal the gradients are flattened and concatenated on
/// the device and read in **one** transfer. [`CandleGradients::write_back`] puts the gradients a
/// rule changed back into the store, in their own dtype and on their own device.
///
/// Vars without a gradient are left out (Candle's fused `LayerNorm` and `RmsNorm` give their
/// weights none, silently).
#[derive(Debug)]
pub struct CandleGradients {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    /// The flattened f32 gradients, borrowed for reading until `host` is made.
    borrowed: Vec<Tensor>,
    /// Host copies, made on the first change (or at once off the CPU, or for AGC).
    host: Option<HostGradients>,
    entries: Vec<Entry>,
    changed: bool,
}

/// `f` applied to the f32 values of the flat tensor `t`: borrowed in place when it lives in CPU
/// memory as contiguous f32, else copied.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> R {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
            && let Ok(all) = cpu.as_slice::<f32>()
        {
            return f(&all[start..end]);
        }
    }
    // Borrowed tensors are CPU f32 vectors (see `collect`): reading them back cannot fail, and
    // empty values would be a silent substitute for the gradient.
    let copy = t
        .to_vec1::<f32>()
        .expect("a flattened f32 CPU tensor reads back");
    f(&copy)
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
        let mut names = Vec::with_capacity(flat.len());
        let mut shapes = Vec::with_capacity(flat.len());
        let mut entries = Vec::with_capacity(flat.len());
        for (i, _) in &flat {
            let (name, var) = &vars[*i];
            let grad = grads.get(var).expect("collected above");
            names.push(name.clone());
            shapes.push(grad.dims().to_vec());
            entries.push(Entry {
                var: var.clone(),
                dtype: grad.dtype(),
            });
        }
        let tensors: Vec<Tensor> = flat.into_iter().map(|(_, t)| t).collect();
        let mut view = CandleGradients {
            names,
            shapes,
            borrowed: Vec::new(),
            host: None,
            entries,
            changed: false,
        };
        if device.is_cpu() && !with_parameters {
            view.borrowed = tensors;
            return Ok(view);
        }
        let values = read_all(&tensors, &device)?;
        let mut host = view.host_tensors(values)?;
        if with_parameters {
            let weights: Vec<Tensor> = view
                .entries
                .iter()
                .map(|e| e.var.as_tensor().flatten_all()?.to_dtype(DType::F32))
                .collect::<candle_core::Result<_>>()?;
            let values = read_all(&weights, &device)?;
            host = host.with_parameters(view.host_tensors(values)?.into_tensors())?;
        }
        view.host = Some(host);
        Ok(view)
    }

    fn host_tensors(&self, values: Vec<Vec<f32>>) -> gradguard::Result<HostGradients> {
        let tensors = self
            .names
            .iter()
            .zip(&self.shapes)
            .zip(values)
            .map(|((n, s), v)| HostTensor::new(n.clone(), s.clone(), v))
            .collect::<gradguard::Result<Vec<_>>>()?;
        HostGradients::new(tensors)
    }

    /// The host copies, made now if they are not yet.
    fn host_mut(&mut self) -> &mut HostGradients {
        if self.host.is_none() {
            let values = self
                .borrowed
                .iter()
                .map(|t| with_values(t, <[f32]>::to_vec))
                .collect();
            let host = self
                .host_tensors(values)
                .expect("names and shapes were read from the tensors");
            self.host = Some(host);
            self.borrowed.clear();
        }
        self.host.as_mut().expect("made above")
    }

    /// Whether a rule (or the non-finite policy) changed any gradient.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Whether the gradients are still read in place (no copy made).
    pub fn borrowed(&self) -> bool {
        self.host.is_none()
    }

    /// Replaces, in `grads`, every gradient by its host copy (as changed by the rules) in its
    /// own dtype and device. Does nothing when nothing changed.
    pub fn write_back(&self, grads: &mut GradStore) -> Result<(), CandleGuardError> {
        let Some(host) = self.host.as_ref().filter(|_| self.changed) else {
            return Ok(());
        };
        for (t, e) in host.tensors().iter().zip(&self.entries) {
            let device = e.var.device();
            let g = Tensor::from_slice(&t.values, t.shape.as_slice(), device)?.to_dtype(e.dtype)?;
            grads.insert(e.var.as_tensor(), g);
        }
        Ok(())
    }
}

impl Gradients for CandleGradients {
    fn tensor_count(&self) -> usize {
        self.names.len()
    }

    fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    fn shape(&self, index: usize) -> &[usize] {
        &self.shapes[index]
    }

    fn stats(&self) -> Vec<TensorStats> {
        match &self.host {
            Some(host) => host.stats(),
            None => self
                .borrowed
                .iter()
                .map(|t| with_values(t, gradguard::kernel::slice_stats))
                .collect(),
        }
    }

    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        match &self.host {
            Some(host) => host.power_sums(p, scales),
            None => self
                .borrowed
                .iter()
                .zip(scales)
                .map(|(t, &scale)| {
                    if scale > 0.0 && scale.is_finite() {
                        with_values(t, |xs| gradguard::kernel::scaled_power_sum(xs, p, scale))
                    } else {
                        0.0
                    }
                })
                .collect(),
        }
    }

    fn scale(&mut self, factors: &[f64]) {
        // Factors that round to 1 change nothing: no copy for them.
        if factors.iter().all(|&f| self.applied(f) == 1.0) {
            return;
        }
        self.host_mut().scale(factors);
        self.changed = true;
    }

    fn clamp(&mut self, limit: f64) -> Vec<TensorStats> {
        self.changed = true;
        self.host_mut().clamp(limit)
    }

    fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        self.changed = true;
        self.host_mut().zero_non_finite()
    }

    fn unit_norms(&self, source: Source, layout: UnitLayout) -> gradguard::Result<Vec<Vec<f64>>> {
        match &self.host {
            Some(host) => host.unit_norms(source, layout),
            // Parameters are read at collection (with_parameters); gradients alone, copied.
            None => {
                let values = self
                    .borrowed
                    .iter()
                    .map(|t| with_values(t, <[f32]>::to_vec))
                    .collect();
                self.host_tensors(values)?.unit_norms(source, layout)
            }
        }
    }

    fn scale_units(
        &mut self,
        layout: UnitLayout,
        factors: &[Option<Vec<f64>>],
    ) -> gradguard::Result<Vec<Option<TensorStats>>> {
        self.changed = true;
        self.host_mut().scale_units(layout, factors)
    }
}
