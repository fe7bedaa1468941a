//! Gradient sets as safetensors bytes (the format of PyTorch, Candle and Hugging Face).
//!
//! Parsing and serializing only: reading and writing files is the caller's business.
//!
//! A safetensors file does not keep the model's order (writers sort tensors by dtype and name), so
//! tensors are read back in *natural* name order — numeric parts compare as numbers, so
//! `layers.2.weight` comes before `layers.10.weight` — which for indexed layer names is model order.

use std::cmp::Ordering;
use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{GuardError, Result};
use crate::host::HostTensor;

/// A file's `__metadata__`: free-form string pairs.
pub type FileMetadata = HashMap<String, String>;

/// The float types a gradient file may store. gradguard computes in f32 (statistics in f64
/// blocks): f16 and bf16 widen to f32 exactly, and are narrowed back (round to nearest even) when
/// written. F64 is refused: narrowing it to f32 would lose what the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StoredDtype {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
}

impl StoredDtype {
    fn of(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F16 => Some(StoredDtype::F16),
            Dtype::BF16 => Some(StoredDtype::BF16),
            Dtype::F32 => Some(StoredDtype::F32),
            _ => None,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            StoredDtype::F16 => Dtype::F16,
            StoredDtype::BF16 => Dtype::BF16,
            StoredDtype::F32 => Dtype::F32,
        }
    }

    /// The values of `bytes` (little endian) as f32, exactly.
    fn widen(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            StoredDtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            StoredDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StoredDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    /// `values` in this dtype's little-endian bytes, rounded to nearest even.
    fn narrow(self, values: &[f32]) -> Vec<u8> {
        match self {
            StoredDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoredDtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            StoredDtype::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

/// Parses safetensors bytes of f32, f16 or bf16 tensors into f32 values (widened exactly), in
/// natural name order. Also returns the file's `__metadata__`.
///
/// Fails with [`GuardError::BadFile`] on a truncated or malformed buffer, and on any tensor of
/// another dtype (naming it).
pub fn read_tensors(bytes: &[u8]) -> Result<(Vec<HostTensor>, Option<FileMetadata>)> {
    let (tensors, _, metadata) = read_tensors_with_dtypes(bytes)?;
    Ok((tensors, metadata))
}

/// [`read_tensors`], with each tensor's stored dtype, for writing the result back in kind
/// ([`write_tensors_as`]).
pub fn read_tensors_with_dtypes(
    bytes: &[u8],
) -> Result<(Vec<HostTensor>, Vec<StoredDtype>, Option<FileMetadata>)> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| GuardError::BadFile(format!("not a valid safetensors file: {e}")))?;
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| GuardError::BadFile(format!("not a valid safetensors file: {e}")))?;
    let mut views: Vec<(String, TensorView<'_>)> = file.tensors();
    views.sort_by(|(a, _), (b, _)| natural_cmp(a, b));
    let mut out = Vec::with_capacity(views.len());
    let mut dtypes = Vec::with_capacity(views.len());
    for (name, view) in views {
        let Some(dtype) = StoredDtype::of(view.dtype()) else {
            return Err(GuardError::BadFile(format!(
                "tensor '{name}' has dtype {:?}; supported: F32, F16, BF16 (gradguard computes \
                 in f32, which would not keep an F64 file's precision)",
                view.dtype()
            )));
        };
        let values = dtype.widen(view.data());
        out.push(HostTensor::new(name, view.shape().to_vec(), values)?);
        dtypes.push(dtype);
    }
    Ok((out, dtypes, metadata.metadata().clone()))
}

/// Compares names with runs of digits taken as numbers: `l.2` < `l.10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<Result<u128, &str>> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let len = if digits > 0 {
                digits
            } else {
                rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len()
            };
            let (head, tail) = rest.split_at(len);
            out.push(if digits > 0 {
                head.parse::<u128>().map_err(|_| head)
            } else {
                Err(head)
            });
            rest = tail;
        }
        out
    }
    parts(a).cmp(&parts(b)).then_with(|| a.cmp(b))
}

/// Serializes f32 tensors (and optional `__metadata__`) to safetensors bytes.
pub fn write_tensors(tensors: &[HostTensor], metadata: Option<FileMetadata>) -> Result<Vec<u8>> {
    write_tensors_as(tensors, &vec![StoredDtype::F32; tensors.len()], metadata)
}

/// Serializes tensors, each in its `dtypes` entry (f16 and bf16 rounded to nearest even), with
/// optional `__metadata__`.
pub fn write_tensors_as(
    tensors: &[HostTensor],
    dtypes: &[StoredDtype],
    metadata: Option<FileMetadata>,
) -> Result<Vec<u8>> {
    if dtypes.len() != tensors.len() {
        return Err(GuardError::BadFile(format!(
            "{} dtypes for {} tensors",
            dtypes.len(),
            tensors.len()
        )));
    }
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .zip(dtypes)
        .map(|(t, d)| d.narrow(&t.values))
        .collect();
    let views = tensors
        .iter()
        .zip(dtypes)
        .zip(&bytes)
        .map(|((t, d), b)| {
            TensorView::new(d.safetensors(), t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| GuardError::BadTensor {
                    tensor: t.name.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata)
        .map_err(|e| GuardError::BadFile(format!("cannot serialize tensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_files_read_exactly_and_write_back_in_kind() {
        // Values f16 holds exactly, one subnormal, and bf16's range beyond f16's.
        let f16_values = vec![1.5f32, -2.0e-7, 65504.0, 0.0];
        let bf16_values = vec![3.0e38f32, -1.0e-30, 0.5, 7.0];
        let tensors = vec![
            HostTensor::new("a", vec![4], f16_values.clone()).unwrap(),
            HostTensor::new("b", vec![2, 2], bf16_values.clone()).unwrap(),
        ];
        let dtypes = [StoredDtype::F16, StoredDtype::BF16];
        let bytes = write_tensors_as(&tensors, &dtypes, None).unwrap();
        let (back, back_dtypes, _) = read_tensors_with_dtypes(&bytes).unwrap();
        assert_eq!(back_dtypes, dtypes);
        let rounded = |v: &[f32], d: StoredDtype| d.widen(&d.narrow(v));
        assert_eq!(back[0].values, rounded(&f16_values, StoredDtype::F16));
        assert_eq!(back[1].values, rounded(&bf16_values, StoredDtype::BF16));
        // What was read from a half file is written back bit for bit.
        assert_eq!(write_tensors_as(&back, &back_dtypes, None).unwrap(), bytes);
        assert_eq!(back[0].values[2], 65504.0);
        assert_eq!(half::f16::from_f32(-2.0e-7).to_f32(), back[0].values[1]);
    }

    #[test]
    fn natural_order_puts_layer_2_before_layer_10() {
        let mut names = vec!["l.10.weight", "l.2.weight", "l.2.bias", "emb", "l.1.weight"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            vec!["emb", "l.1.weight", "l.2.bias", "l.2.weight", "l.10.weight"]
        );
    }
}
