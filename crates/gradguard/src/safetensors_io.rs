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

/// Parses safetensors bytes holding only f32 tensors. Also returns the file's `__metadata__`.
///
/// Fails with [`GuardError::BadFile`] on a truncated or malformed buffer, and on any tensor whose
/// dtype is not F32 (naming it).
pub fn read_tensors(bytes: &[u8]) -> Result<(Vec<HostTensor>, Option<FileMetadata>)> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| GuardError::BadFile(format!("not a valid safetensors file: {e}")))?;
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| GuardError::BadFile(format!("not a valid safetensors file: {e}")))?;
    let mut views: Vec<(String, TensorView<'_>)> = file.tensors();
    views.sort_by(|(a, _), (b, _)| natural_cmp(a, b));
    let mut out = Vec::with_capacity(views.len());
    for (name, view) in views {
        if view.dtype() != Dtype::F32 {
            return Err(GuardError::BadFile(format!(
                "tensor '{name}' has dtype {:?}; only F32 is supported",
                view.dtype()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.push(HostTensor::new(name, view.shape().to_vec(), values)?);
    }
    Ok((out, metadata.metadata().clone()))
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
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
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
    use super::natural_cmp;

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
