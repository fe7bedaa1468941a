//! Reading gradient files and writing outputs atomically.

use std::path::Path;

use anyhow::{Context, Result};
use gradguard::safetensors_io::{
    FileMetadata, StoredDtype, holds_f64, read_f64_tensors, read_tensors_with_dtypes,
    write_f64_tensors_as, write_tensors_as,
};
use gradguard::{F64Gradients, Gradients, HostGradients};

use crate::exit::BadInput;

/// The tensors of a gradient file, in the precision that keeps them: f32 for f32, f16 and bf16
/// files (the fast kernels), f64 when the file holds any F64 tensor.
pub enum Tensors {
    /// Computed in f32.
    F32(HostGradients),
    /// Computed in f64.
    F64(F64Gradients),
}

/// A gradient file read: its tensors, the dtype each was stored in, its metadata.
pub struct GradientFile {
    /// The tensors.
    pub tensors: Tensors,
    /// Each tensor's stored dtype, in order.
    pub dtypes: Vec<StoredDtype>,
    /// The file's `__metadata__`.
    pub metadata: Option<FileMetadata>,
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| BadInput(format!("cannot read '{}': {e}", path.display())).into())
}

fn bad_file(path: &Path) -> impl Fn(gradguard::GuardError) -> anyhow::Error + '_ {
    move |e| BadInput(format!("'{}': {e}", path.display())).into()
}

/// Reads a safetensors gradient file, with AGC's parameter file when one is given: both in f64
/// when either holds an F64 tensor, else in f32. Every failure is bad input naming the file.
pub fn read_gradient_file(path: &Path, params: Option<&Path>) -> Result<GradientFile> {
    let bytes = read_bytes(path)?;
    let param_bytes = params.map(read_bytes).transpose()?;
    let wide = holds_f64(&bytes).map_err(bad_file(path))?
        || match (params, &param_bytes) {
            (Some(p), Some(b)) => holds_f64(b).map_err(bad_file(p))?,
            _ => false,
        };
    let attach = |e: gradguard::GuardError| -> anyhow::Error {
        let p = params.expect("parameters given");
        BadInput(format!("'{}': {e}", p.display())).into()
    };
    if wide {
        let (tensors, dtypes, metadata) = read_f64_tensors(&bytes).map_err(bad_file(path))?;
        let mut grads = F64Gradients::new(tensors).map_err(bad_file(path))?;
        if let (Some(p), Some(b)) = (params, &param_bytes) {
            let (params, _, _) = read_f64_tensors(b).map_err(bad_file(p))?;
            grads = grads.with_parameters(params).map_err(attach)?;
        }
        return Ok(GradientFile {
            tensors: Tensors::F64(grads),
            dtypes,
            metadata,
        });
    }
    let (tensors, dtypes, metadata) = read_tensors_with_dtypes(&bytes).map_err(bad_file(path))?;
    let mut grads = HostGradients::new(tensors).map_err(bad_file(path))?;
    if let (Some(p), Some(b)) = (params, &param_bytes) {
        let (params, _, _) = read_tensors_with_dtypes(b).map_err(bad_file(p))?;
        grads = grads.with_parameters(params).map_err(attach)?;
    }
    Ok(GradientFile {
        tensors: Tensors::F32(grads),
        dtypes,
        metadata,
    })
}

impl GradientFile {
    /// The tensors as gradguard sees them.
    pub fn grads(&self) -> &dyn Gradients {
        match &self.tensors {
            Tensors::F32(g) => g,
            Tensors::F64(g) => g,
        }
    }

    /// The tensors as gradguard sees them, mutably.
    pub fn grads_mut(&mut self) -> &mut dyn Gradients {
        match &mut self.tensors {
            Tensors::F32(g) => g,
            Tensors::F64(g) => g,
        }
    }

    /// Safetensors bytes of the tensors, each in the dtype it was read in (narrower dtypes
    /// rounded once to nearest even), with the file's metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let metadata = self.metadata.clone();
        Ok(match &self.tensors {
            Tensors::F32(g) => write_tensors_as(g.tensors(), &self.dtypes, metadata)?,
            Tensors::F64(g) => write_f64_tensors_as(g.tensors(), &self.dtypes, metadata)?,
        })
    }
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
