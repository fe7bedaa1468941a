//! A [`Collective`] over Burn's device all-reduce, for guarding sharded gradients on several
//! devices.

use burn::tensor::distributed::{ReduceOperation, all_reduce};
use burn::tensor::{DType, Device, Tensor, TensorData};
use gradguard::shard::Collective;
use gradguard::{GuardError, Result, all_reduce_max_by_sum};

/// One device's end of an all-reduce among `devices`, through
/// `burn::tensor::distributed::all_reduce` (NCCL on Burn's `cuda` backend; Burn 0.22.1 has
/// collectives on CUDA and its remote backend only).
///
/// Each device's training thread holds one, with its own `rank`, and wraps its shard of the
/// gradients in a [`gradguard::shard::ShardedGradients`] over it: partial sums of |g|^p, the
/// counts and the per-unit sums are summed across devices *before* any root is taken, so every
/// device's guard sees the global norm and decides alike. The statistics travel in f64 (a few
/// scalars per tensor; NCCL sums f64), so element counts and sums of squares keep their digits.
/// NCCL has no maximum: maxima (max|g|, the first non-finite index) are gathered through one sum,
/// each device writing its values into its own slot of a zeroed buffer
/// ([`all_reduce_max_by_sum`]), which is exact.
///
/// With Burn's data-parallel gradient sync the devices hold *replicas*, and the optimizer steps
/// on their sum (Burn's `DistributedConfig` sums by default, it does not average): guard after
/// that sync, on each device's synced gradients, with no collective at all — the norm is the
/// norm of the gradient the optimizer sees. A norm of the local, pre-sync gradients cannot be
/// combined into it (‖Σ g_r‖ is not a function of the ‖g_r‖).
#[derive(Debug, Clone)]
pub struct DeviceCollective {
    devices: Vec<Device>,
    rank: usize,
}

impl DeviceCollective {
    /// The end of `devices[rank]`. Refused, naming the device, rather than left to panic inside
    /// Burn: a rank out of range, a device other than CUDA (Burn's `flex` has no collective
    /// operations, and cubecl's other runtimes none yet), a build without this crate's `cube`
    /// feature (which tells the runtimes apart), or a device without f64. Every participant must
    /// be built from the same `devices`, in the same order.
    pub fn new(devices: Vec<Device>, rank: usize) -> Result<Self> {
        if rank >= devices.len() {
            return Err(GuardError::InvalidConfig(format!(
                "collective rank {rank} is not below the number of devices ({})",
                devices.len()
            )));
        }
        for (i, device) in devices.iter().enumerate() {
            if let Err(why) = all_reduces(device) {
                return Err(GuardError::InvalidConfig(format!(
                    "device {i} ({device:?}) cannot join a collective: {why}"
                )));
            }
            if !device.supports_dtype(DType::F64) {
                return Err(GuardError::InvalidConfig(format!(
                    "device {i} ({device:?}) has no f64, which the collective's statistics \
                     travel in"
                )));
            }
        }
        Ok(DeviceCollective { devices, rank })
    }

    /// This end's position among the devices.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The participating devices, in rank order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }
}

/// Whether Burn 0.22.1 can all-reduce on `device`: on CUDA, through NCCL.
#[cfg(feature = "cube")]
fn all_reduces(device: &Device) -> std::result::Result<(), String> {
    use cubecl::device::RuntimeId;
    match crate::cube::runtime(device) {
        Some(RuntimeId::Cuda) => Ok(()),
        Some(other) => Err(format!(
            "Burn 0.22.1 all-reduces on CUDA only, and this is a {other:?} device"
        )),
        None => Err(
            "it is not a CubeCL device; the CPU backend has no collective operations \
             (threads of one process: gradguard::ThreadCollective)"
                .into(),
        ),
    }
}

/// Without the `cube` feature no device can be told to be CUDA.
#[cfg(not(feature = "cube"))]
fn all_reduces(_device: &Device) -> std::result::Result<(), String> {
    Err(
        "a collective needs gradguard-burn's `cube` feature (and Burn's `cuda`), which tells a \
         CUDA device from the others"
            .into(),
    )
}

impl Collective for DeviceCollective {
    fn all_reduce_sum(&self, values: &mut [f64]) {
        if values.is_empty() {
            return;
        }
        let device = &self.devices[self.rank];
        let local = Tensor::<1>::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            (device, DType::F64),
        );
        let reduced = all_reduce(local, ReduceOperation::Sum, self.devices.clone()).resolve();
        let summed = reduced
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .expect("converted to f64");
        values.copy_from_slice(&summed);
    }

    fn all_reduce_max(&self, values: &mut [f64]) {
        let world = self.devices.len();
        all_reduce_max_by_sum(values, self.rank, world, |slots| self.all_reduce_sum(slots));
    }
}
