//! Reading gradient files and writing outputs atomically.

use std::path::Path;

use anyhow::{Context, Result};
use gradguard::HostTensor;
use gradguard::safetensors_io::{FileMetadata, StoredDtype, read_tensors_with_dtypes};

use crate::exit::BadInput;

/// A gradient file read: its tensors as f32, the dtype each was stored in, its metadata.
pub type GradientFile = (Vec<HostTensor>, Vec<StoredDtype>, Option<FileMetadata>);

/// Reads an f32, f16 or bf16 safetensors file; every failure is bad input naming the file.
pub fn read_gradient_file(path: &Path) -> Result<GradientFile> {
    let bytes = std::fs::read(path)
        .map_err(|e| BadInput(format!("cannot read '{}': {e}", path.display())))?;
    read_tensors_with_dtypes(&bytes)
        .map_err(|e| BadInput(format!("'{}': {e}", path.display())).into())
}

/// Writes `bytes` to `path` through [`gradguard_report::write_atomic`] (temporary file, fsync,
/// rename, directory sync), so `path` is either absent, its old self, or complete — never
/// half-written; a failure is bad input naming the path.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    gradguard_report::write_atomic(path, bytes)
        .map_err(|e| BadInput(format!("cannot write '{}': {e}", path.display())).into())
}

/// Serializes a value as pretty JSON to stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    println!("{text}");
    Ok(())
}
