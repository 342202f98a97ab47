//! Elsewhere than x86-64 every convolution takes the im2col + GEMM path: this
//! `Direct` has the interface of `direct.rs`'s and no kernel behind it. It has
//! no values, so `Direct::new` returns None and the rest cannot be called.

use super::geometry::Geometry;
use super::Addends;

pub(super) enum Direct {}

impl Direct {
    pub(super) fn new(_: &Geometry) -> Option<Direct> {
        None
    }

    pub(super) fn has_weight_grad(_: &Geometry) -> bool {
        false
    }

    pub(super) fn forward(&self, _: &Geometry, _: &[f32], _: &[f32], _: Option<&[f32]>, _: Addends) -> Vec<f32> {
        match *self {}
    }

    pub(super) fn weight_grad(&self, _: &Geometry, _: &[f32], _: &[f32]) -> Vec<f32> {
        match *self {}
    }
}
