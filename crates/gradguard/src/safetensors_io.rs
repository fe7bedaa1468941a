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
use crate::host::F64Tensor;
use crate::host::HostTensor;

/// A file's `__metadata__`: free-form string pairs.
pub type FileMetadata = HashMap<String, String>;

/// The float types a gradient file may store. The f32 readers ([`read_tensors`]) widen f16 and
/// bf16 to f32 exactly and narrow them back (round to nearest even) when writing; they refuse
/// F64, which f32 would not keep. A file holding F64 is read with [`read_f64_tensors`] (every
/// dtype widened to f64 exactly) and written back with [`write_f64_tensors_as`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StoredDtype {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl StoredDtype {
    fn of(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F16 => Some(StoredDtype::F16),
            Dtype::BF16 => Some(StoredDtype::BF16),
            Dtype::F32 => Some(StoredDtype::F32),
            Dtype::F64 => Some(StoredDtype::F64),
            _ => None,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            StoredDtype::F16 => Dtype::F16,
            StoredDtype::BF16 => Dtype::BF16,
            StoredDtype::F32 => Dtype::F32,
            StoredDtype::F64 => Dtype::F64,
        }
    }

    /// The values of `bytes` (little endian) as f64, exactly.
    fn widen_f64(self, bytes: &[u8]) -> Vec<f64> {
        match self {
            StoredDtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            other => other.widen(bytes).into_iter().map(f64::from).collect(),
        }
    }

    /// `values` in this dtype's little-endian bytes, rounded once to nearest even.
    fn narrow_f64(self, values: &[f64]) -> Vec<u8> {
        match self {
            StoredDtype::F64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoredDtype::F32 => values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
            StoredDtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
                .collect(),
            StoredDtype::BF16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
                .collect(),
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
            StoredDtype::F64 => unreachable!("the f32 readers refuse F64 before widening"),
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
            StoredDtype::F64 => values
                .iter()
                .flat_map(|&v| f64::from(v).to_le_bytes())
                .collect(),
        }
    }
}

/// The tensor views of `bytes` in natural name order, each with its dtype (an unsupported dtype
/// is an error naming the tensor), and the file's `__metadata__`.
type Parsed<'a> = (
    Vec<(String, TensorView<'a>, StoredDtype)>,
    Option<FileMetadata>,
);

fn parse(bytes: &[u8]) -> Result<Parsed<'_>> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| GuardError::BadFile(format!("not a valid safetensors file: {e}")))?;
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| GuardError::BadFile(format!("not a valid safetensors file: {e}")))?;
    let mut views: Vec<(String, TensorView<'_>)> = file.tensors();
    views.sort_by(|(a, _), (b, _)| natural_cmp(a, b));
    let views = views
        .into_iter()
        .map(|(name, view)| match StoredDtype::of(view.dtype()) {
            Some(dtype) => Ok((name, view, dtype)),
            None => Err(GuardError::BadFile(format!(
                "tensor '{name}' has dtype {:?}; supported: F32, F16, BF16, F64",
                view.dtype()
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((views, metadata.metadata().clone()))
}

/// Whether any tensor of the safetensors `bytes` is stored as F64 (read such a file with
/// [`read_f64_tensors`] to keep its precision).
pub fn holds_f64(bytes: &[u8]) -> Result<bool> {
    let (views, _) = parse(bytes)?;
    Ok(views.iter().any(|(_, _, d)| *d == StoredDtype::F64))
}

/// Parses safetensors bytes of f64, f32, f16 or bf16 tensors into f64 values (every dtype
/// widens exactly), in natural name order, with each tensor's stored dtype and the file's
/// `__metadata__`.
pub fn read_f64_tensors(
    bytes: &[u8],
) -> Result<(Vec<F64Tensor>, Vec<StoredDtype>, Option<FileMetadata>)> {
    let (views, metadata) = parse(bytes)?;
    let mut out = Vec::with_capacity(views.len());
    let mut dtypes = Vec::with_capacity(views.len());
    for (name, view, dtype) in views {
        let values = dtype.widen_f64(view.data());
        out.push(F64Tensor::new(name, view.shape().to_vec(), values)?);
        dtypes.push(dtype);
    }
    Ok((out, dtypes, metadata))
}

/// Serializes f64 tensors, each in its `dtypes` entry (narrower types rounded once to nearest
/// even), with optional `__metadata__`.
pub fn write_f64_tensors_as(
    tensors: &[F64Tensor],
    dtypes: &[StoredDtype],
    metadata: Option<FileMetadata>,
) -> Result<Vec<u8>> {
    let bytes = tensors
        .iter()
        .zip(dtypes)
        .map(|(t, d)| d.narrow_f64(&t.values))
        .collect::<Vec<_>>();
    let shapes = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()));
    serialize(shapes, dtypes, &bytes, metadata)
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
    let (views, metadata) = parse(bytes)?;
    let mut out = Vec::with_capacity(views.len());
    let mut dtypes = Vec::with_capacity(views.len());
    for (name, view, dtype) in views {
        if dtype == StoredDtype::F64 {
            return Err(GuardError::BadFile(format!(
                "tensor '{name}' is F64, which f32 would not keep: read this file with \
                 read_f64_tensors"
            )));
        }
        let values = dtype.widen(view.data());
        out.push(HostTensor::new(name, view.shape().to_vec(), values)?);
        dtypes.push(dtype);
    }
    Ok((out, dtypes, metadata))
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
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .zip(dtypes)
        .map(|(t, d)| d.narrow(&t.values))
        .collect();
    let shapes = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()));
    serialize(shapes, dtypes, &bytes, metadata)
}

/// Safetensors bytes of tensors given as (name, shape), dtype and little-endian bytes.
fn serialize<'a>(
    shapes: impl ExactSizeIterator<Item = (&'a str, &'a [usize])>,
    dtypes: &[StoredDtype],
    bytes: &[Vec<u8>],
    metadata: Option<FileMetadata>,
) -> Result<Vec<u8>> {
    if dtypes.len() != shapes.len() {
        return Err(GuardError::BadFile(format!(
            "{} dtypes for {} tensors",
            dtypes.len(),
            shapes.len()
        )));
    }
    let views = shapes
        .zip(dtypes)
        .zip(bytes)
        .map(|(((name, shape), d), b)| {
            TensorView::new(d.safetensors(), shape.to_vec(), b)
                .map(|v| (name.to_string(), v))
                .map_err(|e| GuardError::BadTensor {
                    tensor: name.to_string(),
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
