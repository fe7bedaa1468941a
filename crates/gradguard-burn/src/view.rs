//! `BurnGradients`: gradguard's `Gradients` view over Burn's `GradientsParams`.

use std::collections::HashMap;

use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_dispatch::DispatchDevice;
use gradguard::{
    Gradients, HostGradients, HostTensor, Result, Source, TensorStats, UnitLayout, UnitSpan, Values,
};

use crate::collect::{Collector, Entry, Restorer};
use crate::device_ops::Engine;
use crate::on_device::DeviceGradients;

/// Where the statistics and rules run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Host memory when the device *is* host memory (the CPU backends), the device otherwise.
    #[default]
    Auto,
    /// Take ownership of the gradient buffers and run gradguard's fused host kernels on them
    /// (multi-threaded, SIMD, one read). On a CPU backend this moves no data: Burn hands over a
    /// uniquely owned buffer without copying and takes it back the same way. On an accelerator
    /// it would copy every gradient to the host: use `Device` there.
    Host,
    /// The gradients stay on their device, measured and changed by its device operations —
    /// the fused kernels on a CubeCL device, Burn's tensor ops elsewhere (chosen once, here) —
    /// with f32 block sums scaled by each block's largest magnitude (no f64 on the device) and
    /// one small host read per step.
    Device,
}

impl Placement {
    fn on_host(self, device: Option<&Device>) -> bool {
        match self {
            Placement::Host => true,
            Placement::Device => false,
            Placement::Auto => device.is_some_and(is_host_memory),
        }
    }
}

/// Whether a device's memory is host memory: Burn's `flex` CPU backend, directly or under
/// autodiff.
pub(crate) fn is_host_memory(device: &Device) -> bool {
    fn flex(d: &DispatchDevice) -> bool {
        match d {
            DispatchDevice::Flex(_) => true,
            DispatchDevice::Autodiff(a) => flex(&a.clone().inner()),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
    flex(device.as_dispatch())
}

/// Each parameter's flat gradient by id (handles), where every gradient is f32.
fn flat_f32_by_id(entries: &[Entry], grads: &[Tensor<1>]) -> Option<HashMap<ParamId, Tensor<1>>> {
    if entries.iter().any(|e| e.dtype != DType::F32) {
        return None;
    }
    Some(
        entries
            .iter()
            .zip(grads)
            .map(|(e, g)| (e.id, g.clone()))
            .collect(),
    )
}

/// A gradient's own buffer, lent to the host kernels as `[f32]` without a copy.
#[derive(Debug, Clone)]
struct Buffer(TensorData);

impl Values for Buffer {
    type Float = f32;

    fn floats(&self) -> &[f32] {
        self.0.as_slice().expect("f32 gradients")
    }

    fn floats_mut(&mut self) -> &mut [f32] {
        self.0.as_mut_slice().expect("f32 gradients")
    }
}

#[derive(Debug)]
enum Storage {
    Host {
        grads: HostGradients<Buffer>,
        device: Option<Device>,
    },
    Device(Box<DeviceGradients>),
}

/// The gradients of one step, named by module path (`encoder.layers.3.weight`), as gradguard's
/// [`Gradients`].
///
/// Build it with [`BurnGradients::collect`], run a [`gradguard::Guard`] or rules on it, then hand
/// the gradients back with [`BurnGradients::into_gradients_params`]. Only parameters that have a
/// gradient appear. The statistics and the loss are read when it is built: on an accelerator in
/// one host read of a small stacked tensor; on a CPU backend with no copy at all.
#[derive(Debug)]
pub struct BurnGradients {
    entries: Vec<Entry>,
    storage: Storage,
    loss: Option<f64>,
}

impl BurnGradients {
    /// Takes the gradients of `module`'s parameters out of `grads`, with the loss (a tensor of one
    /// element, autodiff or not). With `with_values`, parameter values are kept too (for AGC).
    pub fn collect<M: Module>(
        module: &M,
        grads: &mut GradientsParams,
        loss: Option<Tensor<1>>,
        with_values: bool,
    ) -> Self {
        Self::collect_with(module, grads, loss, with_values, Placement::Auto)
    }

    /// [`BurnGradients::collect`] with an explicit [`Placement`].
    pub fn collect_with<M: Module>(
        module: &M,
        grads: &mut GradientsParams,
        loss: Option<Tensor<1>>,
        with_values: bool,
        placement: Placement,
    ) -> Self {
        Self::collect_ahead(module, grads, loss, with_values, placement, |_, _| None).0
    }

    /// [`BurnGradients::collect_with`], calling `ahead` on the device path before the statistics
    /// are read, with each parameter's flat gradient by id (only where every gradient is f32) and
    /// the device operations chosen for them (the [`Engine`] of this step's measurements):
    /// what it queues runs before the read, and the f32 tensor it returns is read back with the
    /// statistics and the loss, in the same host read — its values are returned (`None` where
    /// `ahead` was not called or returned nothing).
    pub(crate) fn collect_ahead<M: Module>(
        module: &M,
        grads: &mut GradientsParams,
        loss: Option<Tensor<1>>,
        with_values: bool,
        placement: Placement,
        ahead: impl FnOnce(&HashMap<ParamId, Tensor<1>>, Engine) -> Option<Tensor<1>>,
    ) -> (Self, Option<Vec<f32>>) {
        let mut c = Collector::new(grads, with_values);
        module.visit(&mut c);
        let device = c.flat_grads.first().map(Tensor::device);
        if placement.on_host(device.as_ref()) {
            let loss = loss.map(|l| f64::from(l.inner().into_scalar::<f32>()));
            // On a CPU backend a uniquely owned buffer leaves the tensor without a copy.
            let to_host = |e: &Entry, t: Tensor<1>| {
                let data = t.into_data().convert::<f32>();
                HostTensor::new(e.name.clone(), e.shape.clone(), Buffer(data))
                    .expect("the shape was read from the tensor")
            };
            let tensors: Vec<HostTensor<Buffer>> = c
                .entries
                .iter()
                .zip(c.flat_grads)
                .map(|(e, t)| to_host(e, t))
                .collect();
            let mut host = HostGradients::new(tensors).expect("module paths are unique");
            if with_values {
                let values = c
                    .entries
                    .iter()
                    .zip(c.flat_values)
                    .map(|(e, t)| to_host(e, t))
                    .collect();
                host = host.with_parameters(values).expect("same names and shapes");
            }
            let view = BurnGradients {
                entries: c.entries,
                storage: Storage::Host {
                    grads: host,
                    device,
                },
                loss,
            };
            (view, None)
        } else {
            let mut d = DeviceGradients::new(c.flat_grads, c.flat_values);
            let engine = Engine::Device(d.ops());
            let extra = flat_f32_by_id(&c.entries, d.grads()).and_then(|g| ahead(&g, engine));
            let queued_ahead = extra.is_some();
            let (stats, loss, read) = d.read_stats_with(loss, extra);
            d.cached = Some(stats);
            let view = BurnGradients {
                entries: c.entries,
                storage: Storage::Device(Box::new(d)),
                loss,
            };
            (view, queued_ahead.then_some(read))
        }
    }

    /// The loss read with the statistics.
    pub fn loss(&self) -> Option<f64> {
        self.loss
    }

    /// Whether the rules run on the host (see [`Placement`]).
    pub fn on_host(&self) -> bool {
        matches!(self.storage, Storage::Host { .. })
    }

    /// Where this step's measurements run: the choice made when the gradients were collected.
    pub(crate) fn engine(&self) -> Engine {
        match &self.storage {
            Storage::Host { .. } => Engine::Host,
            Storage::Device(d) => Engine::Device(d.ops()),
        }
    }

    /// Device-to-host reads of statistics so far (on an accelerator: one per clean step, the
    /// statistics and the loss together; on the host path: zero, nothing crosses).
    pub fn host_reads(&self) -> u32 {
        match &self.storage {
            Storage::Host { .. } => 0,
            Storage::Device(d) => d.host_reads.get(),
        }
    }

    /// On the host path, when every gradient is f32: each parameter's (possibly clipped)
    /// gradient values by id, in their own buffers, to read and overwrite (the fused optimizer
    /// writes the new weights there).
    pub(crate) fn host_values_mut(&mut self) -> Option<HashMap<ParamId, &mut [f32]>> {
        let Storage::Host { grads, .. } = &mut self.storage else {
            return None;
        };
        if self.entries.iter().any(|e| e.dtype != DType::F32) {
            return None;
        }
        Some(
            self.entries
                .iter()
                .zip(grads.tensors_mut())
                .map(|(e, t)| (e.id, t.values.floats_mut()))
                .collect(),
        )
    }

    /// On the device path, when every gradient is f32: each parameter's (possibly clipped)
    /// gradient by id, flat (handles; the view keeps its own).
    pub(crate) fn device_grads(&self) -> Option<HashMap<ParamId, Tensor<1>>> {
        let Storage::Device(d) = &self.storage else {
            return None;
        };
        flat_f32_by_id(&self.entries, d.grads())
    }

    /// On the device path: whether a rule rewrote the gradients since they were collected.
    pub(crate) fn rewritten(&self) -> bool {
        matches!(&self.storage, Storage::Device(d) if d.rewritten())
    }

    /// Takes the host buffers out by parameter id (empty on the device path); the view holds no
    /// gradients afterwards.
    pub(crate) fn take_host_buffers(&mut self) -> HashMap<ParamId, TensorData> {
        let Storage::Host { grads, .. } = &mut self.storage else {
            return HashMap::new();
        };
        let tensors = std::mem::take(grads).into_tensors();
        self.entries
            .iter()
            .zip(tensors)
            .map(|(e, t)| (e.id, t.values.0))
            .collect()
    }

    /// Puts the (possibly clipped) gradients back for the optimizer.
    pub fn into_gradients_params<M: Module>(self, module: &M) -> GradientsParams {
        let flat: Vec<Tensor<1>> = match self.storage {
            Storage::Device(d) => d.into_grads(),
            Storage::Host { grads, device } => {
                let device = device.unwrap_or_default();
                grads
                    .into_tensors()
                    .into_iter()
                    .zip(&self.entries)
                    .map(|(t, e)| {
                        let g = Tensor::<1>::from_data(t.values.0, &device);
                        if g.dtype() == e.dtype {
                            g
                        } else {
                            g.cast(e.dtype)
                        }
                    })
                    .collect()
            }
        };
        let mut r = Restorer::new(&self.entries, flat);
        module.visit(&mut r);
        r.out
    }

    fn spans(&self, layout: UnitLayout) -> Result<Vec<UnitSpan>> {
        self.entries
            .iter()
            .map(|e| layout.span(&e.name, &e.shape))
            .collect()
    }
}

impl Gradients for BurnGradients {
    fn tensor_count(&self) -> usize {
        self.entries.len()
    }

    fn name(&self, index: usize) -> &str {
        &self.entries[index].name
    }

    fn shape(&self, index: usize) -> &[usize] {
        &self.entries[index].shape
    }

    fn stats(&self) -> Vec<TensorStats> {
        match &self.storage {
            Storage::Host { grads, .. } => grads.stats(),
            Storage::Device(d) => d.stats(),
        }
    }

    fn power_sums(&self, p: f64, scales: &[f64]) -> Vec<f64> {
        match &self.storage {
            Storage::Host { grads, .. } => grads.power_sums(p, scales),
            Storage::Device(d) => d.power_sums(p, scales),
        }
    }

    fn scale(&mut self, factors: &[f64]) {
        match &mut self.storage {
            Storage::Host { grads, .. } => grads.scale(factors),
            Storage::Device(d) => {
                d.scale(&factors.iter().map(|&f| f as f32).collect::<Vec<_>>());
            }
        }
    }

    fn clamp(&mut self, limit: f64) -> Vec<TensorStats> {
        match &mut self.storage {
            Storage::Host { grads, .. } => grads.clamp(limit),
            Storage::Device(d) => d.clamp(limit as f32),
        }
    }

    fn zero_non_finite(&mut self) -> Vec<TensorStats> {
        match &mut self.storage {
            Storage::Host { grads, .. } => grads.zero_non_finite(),
            Storage::Device(d) => d.zero_non_finite(),
        }
    }

    fn unit_norms(&self, source: Source, layout: UnitLayout) -> Result<Vec<Vec<f64>>> {
        match &self.storage {
            Storage::Host { grads, .. } => grads.unit_norms(source, layout),
            Storage::Device(d) => d.unit_norms(source, &self.spans(layout)?),
        }
    }

    fn scale_units(
        &mut self,
        layout: UnitLayout,
        factors: &[Option<Vec<f64>>],
    ) -> Result<Vec<Option<TensorStats>>> {
        let spans = match &self.storage {
            Storage::Host { .. } => Vec::new(),
            Storage::Device(_) => self.spans(layout)?,
        };
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        match &mut self.storage {
            Storage::Host { grads, .. } => grads.scale_units(layout, factors),
            Storage::Device(d) => {
                let narrow: Vec<Option<Vec<f32>>> = factors
                    .iter()
                    .map(|f| f.as_ref().map(|f| f.iter().map(|&x| x as f32).collect()))
                    .collect();
                d.scale_units(&spans, &names, &narrow)
            }
        }
    }
}
