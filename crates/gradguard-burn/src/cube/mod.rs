//! The guard's statistics on Burn's CubeCL backends (wgpu: Vulkan, Metal, DirectX, WebGPU; CUDA;
//! ROCm) by one fused kernel ([`kernel`]) that reads every gradient where it lies — no copy into
//! a buffer first — in one launch per group of tensors, and one host read of the result.
//!
//! Burn keeps tensors behind its fusion layer on these backends. The statistics are queued on
//! its stream as one operation over every gradient ([`queued`]), which finds their CubeCL
//! buffers when the stream runs it (one trip to the stream's server, not one per tensor); its
//! output is read straight back, together with the loss, in one read.
//!
//! A launch takes as many tensors (of one dtype, consecutive in module order) as the device lets
//! one kernel bind, at most [`MAX_GROUP`] (the kernel is unrolled over its inputs, so a group's
//! size is also a compile-time cost): on CUDA a model of up to 64 tensors costs one launch, 200
//! tensors four; on llvmpipe (32 storage bindings) 29 tensors a launch. A gradient that is not
//! contiguous is made so first (one copy, by Burn's own kernel).
//!
//! Unit norms (AGC's, and the update bound's per neuron) have a kernel of their own
//! ([`units`]), queued and read back the same way, at most 4 tensors a launch.

pub(crate) mod decide;
mod decide_kernel;
pub(crate) mod kernel;
pub(crate) mod queued;
pub(crate) mod rewrite;
mod rewrite_kernel;
pub(crate) mod step;
mod step_kernel;
mod unit_kernel;
pub(crate) mod units;

use burn::tensor::{DType, Tensor};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{Cube, CubeBackend};
use burn_fusion::FusionTensor;
use cubecl::prelude::*;

use crate::padded::Padded;
use kernel::{BLOCK, STATS};

// The kernel writes the layout the tensor-op path writes and the host combines.
const _: () = assert!(BLOCK == crate::padded::BLOCK && STATS == crate::padded::PER_BLOCK);

/// The most tensors one launch reads (each sequence, in the pair form).
pub(crate) const MAX_GROUP: usize = 64;

/// The CubeCL buffer behind a Burn tensor, or `None` when the tensor lives on another backend
/// (the CPU backend, LibTorch): the caller then uses Burn's own tensor ops.
pub(crate) fn resolve(t: &Tensor<1>) -> Option<CubeTensor> {
    let fused: FusionTensor<FusionCubeRuntime> = t.clone().try_into_primitive::<Cube>().ok()?;
    let client = fused.client.clone();
    let cube = client.resolve_tensor_float::<CubeBackend>(fused);
    Some(burn_cubecl::kernel::into_contiguous(cube))
}

/// How many tensors of each of `sequences` sequences one launch reads on `client`'s device: all
/// its bindings but the output's and the runtime's metadata buffer's, at most [`MAX_GROUP`].
fn group_size(client: &cubecl::client::Client, sequences: usize) -> usize {
    let bindings = client.properties().hardware.max_bindings as usize;
    (bindings.saturating_sub(2) / sequences).clamp(1, MAX_GROUP)
}

/// How many gradient tensors one launch of the statistics kernel reads on `device` (one launch
/// per this many tensors of one dtype), or `None` when `device` is not a CubeCL device.
pub fn tensors_per_launch(device: &burn::tensor::Device) -> Option<usize> {
    Some(group_size(&probe(device)?.client, 1))
}

/// How many tensors one launch of the unit-norms kernel (AGC's and the update bound's per-unit
/// norms) reads on `device`, or `None` when `device` is not a CubeCL device: at most 4, the
/// fastest on llvmpipe (docs/measurements/2026-12-07-statistics-kernel.md).
pub fn unit_tensors_per_launch(device: &burn::tensor::Device) -> Option<usize> {
    Some(units::unit_group_size(&probe(device)?.client, 1))
}

/// How many parameters one launch of the fused optimizer's step kernel (`GuardedOptimizer::fused`
/// and `NonBlockingOptimizer` on a CubeCL device) steps on `device` under `rule`, or `None` when
/// `device` is not a CubeCL device.
pub fn step_tensors_per_launch(
    device: &burn::tensor::Device,
    rule: crate::FusedRule,
) -> Option<usize> {
    Some(step::step_group_size(
        &probe(device)?.client,
        rule.has_moments(),
    ))
}

/// A one-value CubeCL tensor on `device`, or `None` when it is not a CubeCL device.
fn probe(device: &burn::tensor::Device) -> Option<CubeTensor> {
    resolve(&Tensor::<1>::zeros([1], &device.clone().inner()))
}

/// The CubeCL runtime `device` runs on (CUDA, HIP, wgpu, …), or `None` when it is not a CubeCL
/// device.
pub(crate) fn runtime(device: &burn::tensor::Device) -> Option<cubecl::device::RuntimeId> {
    Some(probe(device)?.device.runtime())
}

/// Block statistics of `a` — and with `b` (tensors of the same lengths), of `b − a` — for every
/// block of every tensor, in the layout of [`crate::padded::Padded::statistics`]: per block
/// `STATS` values for `a`, then (pair form) `STATS` for `b − a`. Empty tensors have no blocks.
/// Returns `None` when there is nothing to measure.
pub(crate) fn block_statistics(a: &[CubeTensor], b: Option<&[CubeTensor]>) -> Option<CubeTensor> {
    let first = a.first()?;
    let lens: Vec<usize> = a.iter().map(|t| t.meta.num_elements()).collect();
    let firsts: Vec<usize> = Padded::segments_of(lens.iter().copied())
        .iter()
        .map(|s| s.first_block)
        .collect();
    let blocks: usize = lens.iter().map(|l| l.div_ceil(BLOCK)).sum();
    if blocks == 0 {
        return None;
    }
    let client = first.client.clone();
    let per_block = if b.is_some() { 2 * STATS } else { STATS };
    let out = burn_cubecl::ops::numeric::empty_device_dtype(
        client.clone(),
        first.device.clone(),
        [blocks * per_block].into(),
        DType::F32,
    );
    let group = group_size(&client, if b.is_some() { 2 } else { 1 });
    let block_counts: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK)).collect();
    for members in groups(a, &block_counts, group) {
        launch_group(&client, a, b, &members, &firsts, &lens, &out);
    }
    Some(out)
}

/// Groups of consecutive tensors of one dtype with work to do (`counts[i] > 0`), at most `size`
/// a group: one launch each.
fn groups(tensors: &[CubeTensor], counts: &[usize], size: usize) -> Vec<Vec<usize>> {
    let mut all = Vec::new();
    let mut i = 0;
    while i < tensors.len() {
        if counts[i] == 0 {
            i += 1;
            continue;
        }
        let dtype = tensors[i].dtype;
        let mut members = Vec::new();
        while i < tensors.len()
            && members.len() < size
            && (counts[i] == 0 || tensors[i].dtype == dtype)
        {
            if counts[i] > 0 {
                members.push(i);
            }
            i += 1;
        }
        all.push(members);
    }
    all
}

/// One launch over the tensors `members` (non-empty, one dtype).
fn launch_group(
    client: &cubecl::client::Client,
    a: &[CubeTensor],
    b: Option<&[CubeTensor]>,
    members: &[usize],
    firsts: &[usize],
    lens: &[usize],
    out: &CubeTensor,
) {
    let first_block = firsts[members[0]];
    // Blocks of this group, relative to its first; the members are consecutive in the set
    // (empty tensors between them have no blocks), so their blocks are too.
    let mut starts: Vec<u32> = members
        .iter()
        .map(|&t| (firsts[t] - first_block) as u32)
        .collect();
    let last = *members.last().expect("a group has a member");
    let blocks = firsts[last] + lens[last].div_ceil(BLOCK) - first_block;
    starts.push(blocks as u32);

    let a_args: SequenceArg<_> = members
        .iter()
        .map(|&t| a[t].clone().into_tensor_arg())
        .collect();
    let b_args: SequenceArg<_> = match b {
        Some(b) => members
            .iter()
            .map(|&t| b[t].clone().into_tensor_arg())
            .collect(),
        None => SequenceArg::new(),
    };
    let start_args: SequenceArg<_> = starts.into_iter().collect();
    let (x, y) = grid(blocks);
    let units = units_per_cube(client);
    let vector = vector_size(
        client,
        a[members[0]].dtype,
        members.iter().map(|&t| lens[t]),
    );
    // SAFETY: every index the kernel reads or writes is below its buffer's length.
    unsafe {
        kernel::block_statistics::launch_unchecked(
            client,
            CubeCount::Static(x, y, 1),
            CubeDim::new_1d(units as u32),
            vector,
            a_args,
            b_args,
            start_args,
            out.clone().into_tensor_arg(),
            first_block as u32,
            units,
            vector,
            b.is_some(),
            burn::backend::cubecl::dtype_to_storage_type(a[members[0]].dtype),
        )
    };
}

/// Units per cube of the statistics, step and decision kernels on `client`'s device: one plane (the SIMD width:
/// 8 on llvmpipe's AVX2, 32 on NVIDIA), at most [`MAX_UNITS`]; [`UNKNOWN_PLANE_UNITS`] where the
/// device does not know its plane size (WebGPU and OpenGL report a range up to 128). A cube of
/// one plane keeps its two barriers cheap; on llvmpipe it reads about five times as fast as a
/// 256-unit cube (docs/measurements/2026-12-07-statistics-kernel.md), and through OpenGL, where
/// the range is reported, 8 units read 3–8× as fast as 64
/// (docs/measurements/2026-12-07-vector-step-kernel.md).
fn units_per_cube(client: &cubecl::client::Client) -> usize {
    let hardware = &client.properties().hardware;
    cube_units(hardware.plane_size_min, hardware.plane_size_max)
}

/// [`units_per_cube`] for a device that reports plane sizes `min..=max`.
fn cube_units(min: u32, max: u32) -> usize {
    let plane = max as usize;
    let plane = if plane > MAX_UNITS && min != max {
        UNKNOWN_PLANE_UNITS
    } else {
        plane.clamp(1, MAX_UNITS)
    };
    // A power of two, so that a block is a whole number of rounds.
    1 << plane.ilog2()
}

/// The most units one cube of the statistics kernel has.
const MAX_UNITS: usize = 64;

/// Units per cube where the device reports a range of plane sizes reaching past [`MAX_UNITS`]
/// (it does not know its own): the narrowest SIMD width a GPU or llvmpipe runs a plane on.
const UNKNOWN_PLANE_UNITS: usize = 8;

/// The widest vector of at most [`MAX_VECTOR`] values that `client`'s device reads well for
/// `dtype` and that divides every one of `lens` (each tensor is read in whole vectors); 1 when
/// none does.
pub(super) fn vector_size(
    client: &cubecl::client::Client,
    dtype: DType,
    lens: impl Iterator<Item = usize> + Clone,
) -> usize {
    client
        .io_optimized_vector_sizes(dtype.size())
        .filter(|&v| v.is_power_of_two() && v <= MAX_VECTOR)
        .filter(|&v| lens.clone().all(|len| len % v == 0))
        .max()
        .unwrap_or(1)
}

/// The widest vector the statistics kernel reads (4 values: 16 bytes of f32; wider was not
/// measured).
const MAX_VECTOR: usize = 4;

/// A grid of at least `blocks` cubes within the 65,535 cubes per axis that every API allows.
fn grid(blocks: usize) -> (u32, u32) {
    const AXIS: usize = 65_535;
    let x = blocks.clamp(1, AXIS);
    (x as u32, blocks.div_ceil(x).max(1) as u32)
}

/// Reads every present part (f32 tensors on one device) in one host read: each part's values,
/// `None` for a part not given.
pub(crate) fn read_parts(parts: &[Option<&CubeTensor>]) -> Vec<Option<Vec<f32>>> {
    let present: Vec<&CubeTensor> = parts.iter().flatten().copied().collect();
    let Some(client) = present.first().map(|t| t.client.clone()) else {
        return vec![None; parts.len()];
    };
    let handles = present.iter().map(|t| t.handle.clone()).collect();
    let bytes = client
        .read(handles)
        .expect("the device reads back its own buffers");
    // A buffer may be read back longer than its tensor (allocation granularity).
    let floats = |b: &[u8], t: &CubeTensor| -> Vec<f32> {
        b.chunks_exact(4)
            .take(t.meta.num_elements())
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut read = bytes.iter();
    parts
        .iter()
        .map(|part| part.map(|t| floats(read.next().expect("one part per handle"), t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::cube_units;

    #[test]
    fn a_cube_is_one_plane_and_eight_units_where_the_plane_is_unknown() {
        // llvmpipe on Vulkan, NVIDIA, AMD's range, a device wider than a cube may be.
        assert_eq!(cube_units(8, 8), 8);
        assert_eq!(cube_units(32, 32), 32);
        assert_eq!(cube_units(32, 64), 64);
        assert_eq!(cube_units(128, 128), 64);
        // OpenGL and WebGPU, which do not know theirs.
        assert_eq!(cube_units(4, 128), 8);
        // A plane size that is not a power of two rounds down; none reported is one unit.
        assert_eq!(cube_units(24, 24), 16);
        assert_eq!(cube_units(0, 0), 1);
    }
}
