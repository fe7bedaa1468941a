//! The fused optimizer's state in Burn's optimizer record format (burnpack bytes), as Burn's
//! `ModuleOptimizer::into_bytes` writes it for its SGD, Adam or AdamW: per parameter id `{id}`,
//! the scalar `{id}.__rank`, the metadata `{id}` (its module path), and for Adam and AdamW the
//! scalar `{id}.momentum.time` and the tensors `{id}.momentum.moment_1` and
//! `{id}.momentum.moment_2` in the parameter's shape. So a checkpoint of the fused optimizer
//! loads into Burn's optimizer of the same rule, and back.

use std::collections::HashMap;

use burn::module::ParamId;
use burn::store::RecordError;
use burn::tensor::{Bytes, DType, TensorData};
use burn_pack::{Reader, Scalar, Writer};

use super::{FusedOptimizer, Moments};

const RANK: &str = "__rank";
const TIME: &str = "momentum.time";
const MOMENT_1: &str = "momentum.moment_1";
const MOMENT_2: &str = "momentum.moment_2";
const MAX_MOMENT_2: &str = "momentum.max_moment_2";

impl FusedOptimizer {
    /// The state as Burn's optimizer record (see the module documentation): what
    /// `ModuleOptimizer::into_bytes` writes for Burn's optimizer of the same rule and state.
    pub fn into_bytes(&self) -> Result<Bytes, RecordError> {
        let moments = self.rule.has_moments();
        let mut tensors = Vec::new();
        let mut scalars = Vec::new();
        let mut paths = Vec::new();
        // In parameter-id order, so that two saves of one state are the same bytes (the states
        // are kept in a hash map).
        let states = self.host_states();
        let mut states: Vec<_> = states.iter().collect();
        states.sort_by_key(|(id, _)| id.val());
        for (id, state) in states {
            let key = id.val().to_string();
            scalars.push((format!("{key}.{RANK}"), Scalar::from(state.dims.len())));
            paths.push((key.clone(), state.path.clone()));
            if !moments {
                continue;
            }
            scalars.push((format!("{key}.{TIME}"), Scalar::from(state.time)));
            for (leaf, values) in [(MOMENT_1, &state.m), (MOMENT_2, &state.v)] {
                let data = TensorData::new(values.clone(), state.dims.clone());
                let (bytes, shape, dtype) = data.into_parts();
                let name = format!("{key}.{leaf}");
                tensors.push(burn_pack::Tensor::new(
                    name,
                    dtype,
                    shape,
                    Some(id.val()),
                    bytes,
                ));
            }
        }
        let mut writer = Writer::new(tensors);
        for (key, value) in &scalars {
            writer = writer.with_scalar(key, *value);
        }
        for (key, path) in &paths {
            writer = writer.with_metadata(key, path);
        }
        Ok(writer.into_bytes()?)
    }

    /// This optimizer with the state read from `bytes` — written by
    /// [`FusedOptimizer::into_bytes`] or by Burn's optimizer of the same rule. An AMSGrad state
    /// (which the fused rules do not keep) or a missing moment is an error.
    pub fn from_bytes(mut self, bytes: Bytes) -> Result<Self, RecordError> {
        let reader = Reader::from_bytes(bytes)?;
        let scalars = reader.scalars().clone();
        let paths = reader.metadata().clone();
        let mut tensors: HashMap<String, TensorData> = HashMap::new();
        for tensor in reader.into_tensors()? {
            let (name, dtype, shape, _, bytes) = tensor.into_parts()?;
            tensors.insert(name, TensorData::from_bytes(bytes, shape, dtype));
        }
        let invalid = |what: String| RecordError::Validation(format!("fused optimizer: {what}"));
        let mut states = HashMap::new();
        for (name, rank) in &scalars {
            let Some(key) = name.strip_suffix(&format!(".{RANK}")) else {
                continue;
            };
            let id: u64 = key
                .parse()
                .map_err(|_| invalid(format!("'{name}' does not name a parameter id")))?;
            let rank =
                usize::try_from(*rank).map_err(|_| invalid(format!("'{name}' is not a rank")))?;
            let path = paths.get(key).cloned().unwrap_or_default();
            if tensors.contains_key(&format!("{key}.{MAX_MOMENT_2}")) {
                return Err(invalid(format!(
                    "parameter {id} ('{path}') has an AMSGrad moment, which the fused rules do \
                     not keep"
                )));
            }
            let state = if self.rule.has_moments() {
                let time = scalars
                    .get(&format!("{key}.{TIME}"))
                    .and_then(|t| usize::try_from(*t).ok())
                    .ok_or_else(|| {
                        invalid(format!("parameter {id} ('{path}') has no step count"))
                    })?;
                let mut moment = |leaf: &str| {
                    let data = tensors.remove(&format!("{key}.{leaf}")).ok_or_else(|| {
                        invalid(format!("parameter {id} ('{path}') has no {leaf}"))
                    })?;
                    let dims = data.shape().to_vec();
                    let values = data
                        .convert_dtype(DType::F32)
                        .try_into_vec::<f32>()
                        .map_err(|e| invalid(format!("{leaf} of parameter {id}: {e:?}")))?;
                    Ok::<_, RecordError>((dims, values))
                };
                let (dims, m) = moment(MOMENT_1)?;
                let (dims_2, v) = moment(MOMENT_2)?;
                if dims != dims_2 || dims.len() != rank {
                    return Err(invalid(format!(
                        "parameter {id} ('{path}'): moments of shapes {dims:?} and {dims_2:?}, \
                         rank {rank}"
                    )));
                }
                Moments {
                    time,
                    m,
                    v,
                    dims,
                    path,
                }
            } else {
                // SGD keeps no moments; the shape is learned at the parameter's next step.
                Moments {
                    time: 0,
                    m: Vec::new(),
                    v: Vec::new(),
                    dims: vec![0; rank],
                    path,
                }
            };
            states.insert(ParamId::from(id), state);
        }
        self.states = states;
        self.device.clear();
        Ok(self)
    }
}
