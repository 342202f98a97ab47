//! What the data and training tests share: scratch folders and IDX files
//! written by hand, independently of the reader under test.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::{write::GzEncoder, Compression};

/// A fresh directory per test (tests run in parallel, and so may other runs),
/// removed when the test ends, whether it passes or fails.
pub fn temp_dir(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("ddpm-{test}-")).tempdir().unwrap()
}

/// An IDX image file: magic 0x00000803, count, rows, cols (big-endian), then the pixels.
pub fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    for x in [0x0803, count, rows, cols] {
        v.extend(x.to_be_bytes());
    }
    v.extend(pixels);
    v
}

/// An IDX label file: magic 0x00000801, count, then one byte per label.
pub fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    for x in [0x0801, labels.len() as u32] {
        v.extend(x.to_be_bytes());
    }
    v.extend(labels);
    v
}

/// `bytes` as one gzip member.
pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(vec![], Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}
