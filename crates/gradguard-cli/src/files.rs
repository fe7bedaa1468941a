//! Reading gradient files and writing outputs atomically.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use gradguard::HostTensor;
use gradguard::safetensors_io::{FileMetadata, read_tensors};

use crate::exit::BadInput;

/// Reads an f32 safetensors file; every failure is bad input naming the file.
pub fn read_gradient_file(path: &Path) -> Result<(Vec<HostTensor>, Option<FileMetadata>)> {
    let bytes = std::fs::read(path)
        .map_err(|e| BadInput(format!("cannot read '{}': {e}", path.display())))?;
    read_tensors(&bytes).map_err(|e| BadInput(format!("'{}': {e}", path.display())).into())
}

/// Writes `bytes` to `path` through a temporary file in the same folder, fsync, then rename, so
/// `path` is either absent, its old self, or complete — never half-written.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let bad = |what: String| BadInput(format!("cannot write '{}': {what}", path.display()));
    if path.is_dir() {
        return Err(bad("it is a directory".into()).into());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".gradguard-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| bad(e.to_string()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| bad(e.to_string()))?;
    tmp.persist(path).map_err(|e| bad(e.error.to_string()))?;
    Ok(())
}

/// Serializes a value as pretty JSON to stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    println!("{text}");
    Ok(())
}
