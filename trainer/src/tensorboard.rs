//! TensorBoard event files, written directly: the TFRecord framing (length, masked CRC-32C of the length,
//! payload, masked CRC-32C of the payload) around hand-encoded protobuf `Event` messages, of which only the
//! few fields TensorBoard reads for scalars and images are needed (`tensorflow/core/util/event.proto`,
//! `summary.proto`). No protobuf compiler or TensorFlow crate: the encoding below is the whole of it.
//!
//! A run keeps its events in `<run>/tb/`, one `events.out.tfevents.<secs>.<host>.<pid>` file per start of
//! training. A resumed run starts its file with a `SessionLog START` at the first step it will redo (the
//! checkpoint's step + 1): TensorBoard's reader then drops the older files' events from that step on (those
//! the checkpoint did not keep, written before a crash), as it does after a TensorFlow restart.

use crate::error::{io_err, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The run subdirectory holding the event files.
pub const TB_DIR: &str = "tb";

/// Appends events to one file; every record is flushed at [`EventWriter::flush`] (each logged step).
pub struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl EventWriter {
    /// Creates a new event file in `dir` (made if missing) and writes the file-version event. With
    /// `resume_step` (the checkpoint's step), also a `SessionLog START` at the step after it (module doc).
    pub fn create(dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let base = format!("events.out.tfevents.{secs}.{}.{}", hostname(), std::process::id());
        // Two starts within one second of the same process (tests) must not share a file.
        let mut path = dir.join(&base);
        let mut k = 1;
        while path.exists() {
            path = dir.join(format!("{base}.{k}"));
            k += 1;
        }
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(io_err(&path))?;
        let mut w = Self { path, file: std::io::BufWriter::new(file) };
        let mut ev = event_header(0);
        put_bytes(&mut ev, 3, b"brain.Event:2");
        w.record(&ev)?;
        if let Some(step) = resume_step {
            // The reader purges every event with step >= this one.
            let mut ev = event_header(step + 1);
            let mut log = Vec::new();
            put_varint_field(&mut log, 1, 1); // SessionLog.status = START
            put_bytes(&mut ev, 6, &log);
            w.record(&ev)?;
        }
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event holding a scalar per `(tag, value)`, all at `step` (non-finite values are written as they
    /// are: TensorBoard shows NaN, which is what happened).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut val = Vec::new();
            put_bytes(&mut val, 1, tag.as_bytes());
            put_key(&mut val, 2, 5); // simple_value: float, fixed32
            val.extend_from_slice(&(*v as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &val);
        }
        let mut ev = event_header(step);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)
    }

    /// An image summary: `png` is the encoded picture, `w`×`h` its size, RGB.
    pub fn image(&mut self, tag: &str, step: u64, png: &[u8], w: u32, h: u32) -> Result<()> {
        let mut img = Vec::new();
        put_varint_field(&mut img, 1, h as u64);
        put_varint_field(&mut img, 2, w as u64);
        put_varint_field(&mut img, 3, 3);
        put_bytes(&mut img, 4, png);
        let mut val = Vec::new();
        put_bytes(&mut val, 1, tag.as_bytes());
        put_bytes(&mut val, 4, &img);
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &val);
        let mut ev = event_header(step);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(io_err(&self.path))
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.file.write_all(&rec).map_err(io_err(&self.path))
    }
}

fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").or_else(|_| std::fs::read_to_string("/etc/hostname")).unwrap_or_default();
    let h: String = h.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

/// `Event.wall_time` (1, double) and `Event.step` (2, int64).
fn event_header(step: u64) -> Vec<u8> {
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut ev = Vec::new();
    put_key(&mut ev, 1, 1); // fixed64
    ev.extend_from_slice(&wall.to_le_bytes());
    put_varint_field(&mut ev, 2, step);
    ev
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, ((field as u64) << 3) | wire as u64);
}

fn put_varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_key(buf, field, 0);
    put_varint(buf, v);
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_key(buf, field, 2);
    put_varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bytewise table.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC: rotate right by 15 and add a constant, so a CRC stored inside CRC'd data does
/// not weaken the outer check.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn varints_encode_as_protobuf() {
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xAC, 0x02]);
        let mut b = Vec::new();
        put_bytes(&mut b, 1, b"hi");
        assert_eq!(b, [0x0A, 2, b'h', b'i']);
    }

    #[test]
    fn records_are_framed_and_checksummed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), Some(7)).unwrap();
        w.scalars(8, &[("loss/total".into(), 0.5)]).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let mut at = 0;
        let mut n = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc32c(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc32c(data));
            at += 16 + len;
            n += 1;
        }
        assert_eq!((at, n), (bytes.len(), 3), "version, session start, one scalar event");
        assert!(w.path().file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
    }
}
