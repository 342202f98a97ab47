//! Loading the PyTorch fixtures of `tests/fixtures/` and comparing against them.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::HashMap;
use std::path::PathBuf;

use ddpm_autograd::Tensor;
use ddpm_nn::checkpoint::{load_tensors, Tensors};

/// The workspace's `tests/fixtures/` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// One fixture file: its tensors and its metadata.
pub struct Fixture {
    name: String,
    tensors: Tensors,
    meta: HashMap<String, String>,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = fixtures_dir().join(format!("{name}.safetensors"));
        let (tensors, meta) = load_tensors(&path).unwrap_or_else(|e| panic!("{e}"));
        Fixture { name: name.to_string(), tensors, meta }
    }

    pub fn get(&self, key: &str) -> Tensor {
        self.tensors.get(key).unwrap_or_else(|| panic!("fixture {} has no tensor {key:?}", self.name)).clone()
    }

    pub fn meta(&self, key: &str) -> String {
        self.meta.get(key).unwrap_or_else(|| panic!("fixture {} has no metadata {key:?}", self.name)).clone()
    }

    pub fn meta_usize(&self, key: &str) -> usize {
        self.meta(key).parse().unwrap_or_else(|_| panic!("fixture {}: metadata {key:?} is not a count", self.name))
    }
}

/// Asserts max|got - want| <= rtol * max|want|: an error relative to the
/// tensor's scale, since single elements near zero have no useful relative error.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rtol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    let scale = want.as_slice().iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    let err = got.max_abs_diff(want).unwrap();
    assert!(err <= rtol * scale, "{what}: max error {err:.3e} exceeds {rtol:.0e} of the scale {scale:.3e}");
}
