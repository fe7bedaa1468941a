//! The device operations on Burn's CubeCL backends, by the fused kernels of [`crate::cube`]: the
//! tensors are read where they lie, in one launch per group of tensors.

use burn::tensor::Tensor;
use gradguard::UnitSpan;

use super::{BlockRead, DeviceOps, QueuedUnitNorms, Rewrite, TensorOps, UnitNorms};
use crate::cube;
use crate::padded::PER_BLOCK;

/// [`DeviceOps`] by the fused CubeCL kernels. A tensor that is not on a CubeCL device (never,
/// when [`super::choose`] picked this for the step's device) is left to [`TensorOps`].
#[derive(Debug)]
pub(crate) struct CubeOps;

impl DeviceOps for CubeOps {
    fn block_statistics(
        &self,
        tensors: &[Tensor<1>],
        after: Option<&[Tensor<1>]>,
        loss: Option<Tensor<1>>,
        extra: Option<Tensor<1>>,
    ) -> BlockRead {
        // The loss and the extra tensor first: where one is not on a CubeCL device nothing is
        // queued in vain.
        let on_cube = |t: &Option<Tensor<1>>| t.as_ref().map(cube::resolve);
        let (cube_loss, cube_extra) = (on_cube(&loss), on_cube(&extra));
        if matches!(cube_loss, Some(None)) || matches!(cube_extra, Some(None)) {
            return TensorOps.block_statistics(tensors, after, loss, extra);
        }
        let (cube_loss, cube_extra) = (cube_loss.flatten(), cube_extra.flatten());
        let stats = match cube::queued::block_statistics(tensors, after) {
            cube::queued::Queued::Elsewhere => {
                return TensorOps.block_statistics(tensors, after, loss, extra);
            }
            cube::queued::Queued::Empty => None,
            cube::queued::Queued::Statistics(s) => Some(cube::queued::resolve(s)),
        };
        let mut read = cube::read_parts(&[stats.as_ref(), cube_loss.as_ref(), cube_extra.as_ref()])
            .into_iter();
        let host = read.next().flatten().unwrap_or_default();
        let loss = read
            .next()
            .flatten()
            .and_then(|l| l.first().map(|&l| f64::from(l)));
        let extra = read.next().flatten().unwrap_or_default();
        if after.is_none() {
            return BlockRead {
                values: host,
                deltas: Vec::new(),
                loss,
                extra,
            };
        }
        // Pair form: per block the statistics of the tensors, then those of the update.
        let (mut values, mut deltas) = (Vec::new(), Vec::new());
        for block in host.chunks_exact(2 * PER_BLOCK) {
            values.extend_from_slice(&block[..PER_BLOCK]);
            deltas.extend_from_slice(&block[PER_BLOCK..]);
        }
        BlockRead {
            values,
            deltas,
            loss,
            extra,
        }
    }

    fn queued_statistics(&self, tensors: &[Tensor<1>]) -> Option<Tensor<1>> {
        match cube::queued::block_statistics(tensors, None) {
            cube::queued::Queued::Elsewhere => TensorOps.queued_statistics(tensors),
            cube::queued::Queued::Empty => None,
            cube::queued::Queued::Statistics(s) => Some(cube::queued::into_tensor(s)),
        }
    }

    fn unit_norms(
        &self,
        tensors: &[Tensor<1>],
        after: Option<&[Tensor<1>]>,
        spans: &[UnitSpan],
    ) -> Vec<Vec<(f64, f64)>> {
        let host = match cube::queued::unit_statistics(tensors, after, spans) {
            cube::queued::Queued::Elsewhere => return TensorOps.unit_norms(tensors, after, spans),
            cube::queued::Queued::Empty => Vec::new(),
            cube::queued::Queued::Statistics(s) => {
                let stats = cube::queued::resolve(s);
                cube::read_parts(&[Some(&stats)])
                    .remove(0)
                    .unwrap_or_default()
            }
        };
        unit_norms_of(tensors, after.is_some(), spans)(&host)
    }

    fn queued_unit_norms(
        &self,
        tensors: &[Tensor<1>],
        after: Option<&[Tensor<1>]>,
        spans: &[UnitSpan],
    ) -> QueuedUnitNorms {
        let tensor = match cube::queued::unit_statistics(tensors, after, spans) {
            cube::queued::Queued::Elsewhere => {
                return TensorOps.queued_unit_norms(tensors, after, spans);
            }
            cube::queued::Queued::Empty => None,
            cube::queued::Queued::Statistics(s) => Some(cube::queued::into_tensor(s)),
        };
        QueuedUnitNorms::new(tensor, unit_norms_of(tensors, after.is_some(), spans))
    }

    fn rewrite(&self, values: &[Tensor<1>], how: Rewrite<'_>) -> Vec<Tensor<1>> {
        cube::rewrite::rewrite(values, how).unwrap_or_else(|| TensorOps.rewrite(values, how))
    }
}

/// What turns the unit kernel's output, read back, into every unit's (‖x_u‖, ‖after_u − x_u‖)
/// of `tensors` split by `spans` (`pair`: with `after`).
fn unit_norms_of(
    tensors: &[Tensor<1>],
    pair: bool,
    spans: &[UnitSpan],
) -> impl FnOnce(&[f32]) -> UnitNorms + Send + 'static {
    let lens: Vec<usize> = tensors.iter().map(|t| t.shape().num_elements()).collect();
    let spans = spans.to_vec();
    move |host| {
        cube::units::unit_sums_of(host, &spans, &lens, pair)
            .into_iter()
            .map(|units| {
                units
                    .iter()
                    .map(|u| (u[0].norm(), u.get(1).map_or(0.0, |d| d.norm())))
                    .collect()
            })
            .collect()
    }
}
