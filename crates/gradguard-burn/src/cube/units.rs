//! Every unit's norm of many tensors on a CubeCL device: one launch of [`super::unit_kernel`]
//! per group of tensors, one host read, and the pieces combined in f64 on the host.

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use gradguard::UnitSpan;

use super::unit_kernel::{self, PIECE, STATS, THREADS};
use super::{grid, group_size, groups};

/// One unit's values as measured: Σ x² (f64, from f32 partials scaled by their maximum), and how
/// many of them were NaN and ±inf.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct UnitSum {
    pub squares: f64,
    pub nan: u32,
    pub inf: u32,
}

impl UnitSum {
    /// The unit's 2-norm: NaN when a value was NaN, inf when one was infinite.
    pub fn norm(&self) -> f64 {
        if self.nan > 0 {
            f64::NAN
        } else if self.inf > 0 {
            f64::INFINITY
        } else {
            self.squares.sqrt()
        }
    }
}

/// Where each tensor's pieces are among the kernel's items.
struct Plan {
    /// Per tensor: its first item and its pieces per unit.
    first: Vec<usize>,
    pieces: Vec<usize>,
    items: usize,
}

impl Plan {
    fn new(spans: &[UnitSpan], lens: &[usize]) -> Self {
        let mut first = Vec::with_capacity(spans.len());
        let mut pieces = Vec::with_capacity(spans.len());
        let mut items = 0;
        for (span, &len) in spans.iter().zip(lens) {
            let units = span.units();
            let per_unit = if units == 0 || len == 0 {
                0
            } else {
                (len / units).div_ceil(PIECE)
            };
            first.push(items);
            pieces.push(per_unit);
            items += units * per_unit;
        }
        Plan {
            first,
            pieces,
            items,
        }
    }
}

/// The most tensors (of each sequence) one launch of the unit kernel reads: the group size that
/// took least time on llvmpipe, less than half what 14 took
/// (docs/measurements/2026-12-07-statistics-kernel.md).
pub const UNIT_GROUP: usize = 4;

/// Tensors per launch of the unit kernel on `client`'s device, for `sequences` sequences.
pub(crate) fn unit_group_size(client: &cubecl::client::Client, sequences: usize) -> usize {
    group_size(client, sequences).min(UNIT_GROUP)
}

/// Launches the unit kernel over every tensor of `a` split by `spans` — and with `b` (tensors of
/// the same shapes), over `b − a` — in one launch per group of tensors; `None` when there is no
/// unit piece to measure. Its output is decoded by [`unit_sums_of`].
pub(crate) fn unit_statistics(
    a: &[CubeTensor],
    b: Option<&[CubeTensor]>,
    spans: &[UnitSpan],
) -> Option<CubeTensor> {
    let lens: Vec<usize> = a.iter().map(|t| t.meta.num_elements()).collect();
    let plan = Plan::new(spans, &lens);
    let sequences = if b.is_some() { 2 } else { 1 };
    let head = a.first().filter(|_| plan.items > 0)?;
    let client = head.client.clone();
    let out = burn_cubecl::ops::numeric::empty_device_dtype(
        client.clone(),
        head.device.clone(),
        [plan.items * sequences * STATS].into(),
        DType::F32,
    );
    let counts: Vec<usize> = spans
        .iter()
        .zip(&plan.pieces)
        .map(|(s, p)| s.units() * p)
        .collect();
    for members in groups(a, &counts, unit_group_size(&client, sequences)) {
        launch(&client, a, b, spans, &plan, &members, &out);
    }
    Some(out)
}

/// The length of [`unit_statistics`]'s output for tensors of `lens` values split by `spans`.
pub(crate) fn unit_statistics_len(spans: &[UnitSpan], lens: &[usize], pair: bool) -> usize {
    Plan::new(spans, lens).items * if pair { 2 } else { 1 } * STATS
}

/// The per-unit sums from [`unit_statistics`]'s output `host` (empty when it had nothing to
/// measure): per tensor, per unit, `[sum of a]` or `[sum of a, sum of b − a]` with `pair`.
/// Tensors with no values or no units get no units' sums (an empty list for no units, zeros
/// for units of an empty tensor).
pub(crate) fn unit_sums_of(
    host: &[f32],
    spans: &[UnitSpan],
    lens: &[usize],
    pair: bool,
) -> Vec<Vec<Vec<UnitSum>>> {
    let plan = Plan::new(spans, lens);
    let sequences = if pair { 2 } else { 1 };
    let per_item = sequences * STATS;
    let mut sums: Vec<Vec<Vec<UnitSum>>> = spans
        .iter()
        .map(|s| vec![vec![UnitSum::default(); sequences]; s.units()])
        .collect();
    if plan.items == 0 {
        return sums;
    }
    for (t, span) in spans.iter().enumerate() {
        let units = span.units();
        for piece in 0..plan.pieces[t] {
            for (u, unit) in sums[t].iter_mut().enumerate().take(units) {
                let at = (plan.first[t] + piece * units + u) * per_item;
                for (s, sum) in unit.iter_mut().enumerate() {
                    let v = &host[at + s * STATS..at + (s + 1) * STATS];
                    let scale = f64::from(v[0]);
                    sum.squares += f64::from(v[1]) / (scale * scale);
                    sum.nan += v[2] as u32;
                    sum.inf += v[3] as u32;
                }
            }
        }
    }
    sums
}

/// One launch over the tensors `members` (consecutive, one dtype, each with pieces).
fn launch(
    client: &cubecl::client::Client,
    a: &[CubeTensor],
    b: Option<&[CubeTensor]>,
    spans: &[UnitSpan],
    plan: &Plan,
    members: &[usize],
    out: &CubeTensor,
) {
    let first_item = plan.first[members[0]];
    let mut starts: Vec<u32> = members
        .iter()
        .map(|&t| (plan.first[t] - first_item) as u32)
        .collect();
    let last = *members.last().expect("a group has a member");
    let items = plan.first[last] + spans[last].units() * plan.pieces[last] - first_item;
    starts.push(items as u32);
    let field = |f: fn(&UnitSpan) -> usize| -> SequenceArg<_> {
        members.iter().map(|&t| f(&spans[t]) as u32).collect()
    };
    // A unit is a column (values `cols` apart, units 1 apart) or a row (the other way round).
    let units = field(UnitSpan::units);
    let unit_stride = field(|s| if s.units_are_columns { 1 } else { s.cols });
    let value_stride = field(|s| if s.units_are_columns { s.cols } else { 1 });
    let unit_len = field(|s| if s.units_are_columns { s.rows } else { s.cols });
    let args = |ts: &[CubeTensor]| -> SequenceArg<_> {
        members
            .iter()
            .map(|&t| ts[t].clone().into_tensor_arg())
            .collect()
    };
    let a_args = args(a);
    let b_args = b.map_or_else(SequenceArg::new, args);
    let (x, y) = grid(items.div_ceil(THREADS));
    unit_kernel::unit_statistics::launch(
        client,
        CubeCount::Static(x, y, 1),
        CubeDim::new_1d(THREADS as u32),
        a_args,
        b_args,
        starts.into_iter().collect(),
        units,
        unit_stride,
        value_stride,
        unit_len,
        out.clone().into_tensor_arg(),
        first_item as u32,
        b.is_some(),
        burn::backend::cubecl::dtype_to_storage_type(a[members[0]].dtype),
    );
}
