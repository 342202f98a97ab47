//! What the command-line tests share: running the binary, reading its
//! verdict, scratch folders and hand-written .npy inputs.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub const SHARED_MNIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/mnist");
/// A PyTorch-written `tiny` checkpoint with 10 classes.
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/checkpoint_tiny_c10.safetensors");

/// Runs `cargo xtask <args>` (the binary under test), without $DDPM_DATA.
pub fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env_remove("DDPM_DATA")
        .output()
        .expect("the xtask binary runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command failed with exit code 1 and one `error:` line containing `needle`.
#[track_caller]
pub fn assert_fails_with(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected a failure, got {:?}: {err}", out.status);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    assert!(lines[0].contains(needle), "the error should mention {needle:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[track_caller]
pub fn assert_succeeds(out: &Output) {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
}

/// A fresh, empty folder for one test (`tag` tells the tests of one binary
/// apart), removed when the test ends, whether it passes or fails.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("ddpm-cli-{tag}-")).tempdir().unwrap()
}

/// A float32 .npy file, written by hand (NumPy's format 1.0), independently
/// of the binary's own writer.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy_bytes(path, "<f4", shape, &bytes);
}

/// A .npy file of dtype `descr` (`<f4`, `<i8`) holding `data` as given.
pub fn write_npy_bytes(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// The float32 values of a .npy file the binary wrote (format 1.0,
/// little-endian, C order), read by hand: the header's length, then the data.
pub fn read_npy_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}: a format 1.0 .npy file", path.display());
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    bytes[10 + header_len..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}
