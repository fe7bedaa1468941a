//! TensorBoard event files, written by hand: a TFRecord stream of `Event` protocol buffers.
//!
//! Format (TensorFlow's `tensorflow/core/util/event.proto` and TFRecord): each record is
//! `u64 length | u32 masked CRC-32C of length | data | u32 masked CRC-32C of data`, little-endian,
//! with `mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`. The first event carries
//! `file_version = "brain.Event:2"`; each later one carries `wall_time`, `step` and a `Summary`
//! of `simple_value` scalars. `scripts/check_tensorboard.py` reads the files back with
//! TensorBoard's own `EventAccumulator`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{SinkError, create_file};
use crate::record::MetricsRecord;
use crate::sink::Sink;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn length_delimited(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn event_header(wall_time: f64, step: u64, out: &mut Vec<u8>) {
    out.push(1 << 3 | 1); // wall_time: double
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(2 << 3); // step: int64 varint
    varint(step, out);
}

/// One `Event` holding scalar summaries `(tag, value)` at `step`.
pub fn encode_scalar_event(wall_time: f64, step: u64, scalars: &[(&str, f32)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in scalars {
        let mut v = Vec::new();
        length_delimited(1, tag.as_bytes(), &mut v); // Summary.Value.tag
        v.push(2 << 3 | 5); // simple_value: float
        v.extend_from_slice(&value.to_le_bytes());
        length_delimited(1, &v, &mut summary); // Summary.value
    }
    let mut event = Vec::new();
    event_header(wall_time, step, &mut event);
    length_delimited(5, &summary, &mut event); // Event.summary
    event
}

fn file_version_event(wall_time: f64) -> Vec<u8> {
    let mut event = Vec::new();
    event_header(wall_time, 0, &mut event);
    length_delimited(3, b"brain.Event:2", &mut event);
    event
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes scalars TensorBoard shows: `loss`, `grad_norm/before`, `grad_norm/after`, `lr`,
/// `lr_multiplier`, `skipped` (1 when the optimizer did not step), `loss_scale` (with a loss
/// scaler) and `tensor_norm/<name>` for every tensor. Non-finite values are left out of the file.
#[derive(Debug)]
pub struct TensorBoardSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl TensorBoardSink {
    /// Creates `dir/events.out.tfevents.<seconds>.gradguard` and writes the file-version event.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self, SinkError> {
        let wall = now();
        let path = dir
            .as_ref()
            .join(format!("events.out.tfevents.{}.gradguard", wall as u64));
        let file = create_file(&path)?;
        let mut sink = TensorBoardSink {
            path,
            out: BufWriter::new(file),
        };
        sink.record(&file_version_event(wall))?;
        Ok(sink)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<(), SinkError> {
        let len = (data.len() as u64).to_le_bytes();
        let mut write = || -> std::io::Result<()> {
            self.out.write_all(&len)?;
            self.out.write_all(&masked_crc(&len).to_le_bytes())?;
            self.out.write_all(data)?;
            self.out.write_all(&masked_crc(data).to_le_bytes())
        };
        write().map_err(|e| SinkError::io(&self.path, e))
    }
}

impl Sink for TensorBoardSink {
    fn write(&mut self, r: &MetricsRecord) -> Result<(), SinkError> {
        let mut scalars: Vec<(String, f64)> = vec![
            ("lr".into(), r.lr),
            ("lr_multiplier".into(), r.lr_multiplier),
            ("skipped".into(), if r.skipped() { 1.0 } else { 0.0 }),
        ];
        let optional = [
            ("loss", r.loss),
            ("grad_norm/before", r.grad_norm),
            ("grad_norm/after", r.grad_norm_clipped),
            ("loss_scale", r.loss_scale),
            ("log_z/mean", r.log_z_mean),
            ("log_z/max", r.log_z_max),
        ];
        scalars.extend(
            optional
                .iter()
                .filter_map(|(t, v)| v.map(|v| (t.to_string(), v))),
        );
        scalars.extend(
            r.tensor_norms
                .iter()
                .filter_map(|(name, v)| v.map(|v| (format!("tensor_norm/{name}"), v))),
        );
        scalars.extend(
            r.attention_logit_max
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (format!("attention_logit_max/layer{i}"), v))),
        );
        let pairs: Vec<(&str, f32)> = scalars
            .iter()
            .map(|(t, v)| (t.as_str(), *v as f32))
            .collect();
        let event = encode_scalar_event(now(), r.step, &pairs);
        self.record(&event)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| SinkError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_castagnoli() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn varints_encode_as_protobuf_does() {
        let mut v = Vec::new();
        varint(300, &mut v);
        assert_eq!(v, vec![0xac, 0x02]);
    }
}
