//! The device operations on Burn's CubeCL backends, by the fused kernels of [`crate::cube`]: the
//! tensors are read where they lie, in one launch per group of tensors.

use burn::tensor::Tensor;
use gradguard::UnitSpan;

use super::{BlockRead, DeviceOps, Rewrite, TensorOps};
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
    ) -> BlockRead {
        // The loss first: where it is not on a CubeCL device nothing is queued in vain.
        let cube_loss = match &loss {
            Some(l) => match cube::resolve(l) {
                Some(l) => Some(l),
                None => return TensorOps.block_statistics(tensors, after, loss),
            },
            None => None,
        };
        let stats = match cube::queued::block_statistics(tensors, after) {
            cube::queued::Queued::Elsewhere => {
                return TensorOps.block_statistics(tensors, after, loss);
            }
            cube::queued::Queued::Empty => None,
            cube::queued::Queued::Statistics(s) => Some(cube::queued::resolve(s)),
        };
        if stats.is_none() && cube_loss.is_none() {
            return BlockRead::default();
        }
        let (host, loss) = cube::read(stats.as_ref(), cube_loss.as_ref());
        let loss = loss.map(f64::from);
        if after.is_none() {
            return BlockRead {
                values: host,
                deltas: Vec::new(),
                loss,
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
                cube::read(Some(&cube::queued::resolve(s)), None).0
            }
        };
        let lens: Vec<usize> = tensors.iter().map(|t| t.shape().num_elements()).collect();
        cube::units::unit_sums_of(&host, spans, &lens, after.is_some())
            .into_iter()
            .map(|units| {
                units
                    .iter()
                    .map(|u| (u[0].norm(), u.get(1).map_or(0.0, |d| d.norm())))
                    .collect()
            })
            .collect()
    }

    fn rewrite(&self, values: &[Tensor<1>], how: Rewrite<'_>) -> Vec<Tensor<1>> {
        cube::rewrite::rewrite(values, how).unwrap_or_else(|| TensorOps.rewrite(values, how))
    }
}
