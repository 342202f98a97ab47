//! 2-D convolution as `torch.nn.functional.conv2d` computes it (a cross-correlation
//! with zero padding, no dilation, one group), and its three gradients.
//!
//! Shapes: x is [N, C, H, W], weight is [K, C, R, S], bias is [K], and y is
//! [N, K, Ho, Wo] with Ho = (H + 2P - R) / stride + 1 and Wo = (W + 2P - S) / stride + 1
//! (P is the padding, the same on all four sides):
//!
//!   y[n, k, oy, ox] = bias[k] + sum_{c, r, s} weight[k, c, r, s] * x[n, c, oy*stride + r - P, ox*stride + s - P]
//!
//! where x reads as 0 outside the image. [`conv2d_reference`] is that formula as a loop.
//!
//! The fast path is im2col + GEMM. For one sample, copy every receptive field into a
//! column: cols is [C*R*S, Ho*Wo] with cols[(c, r, s), (oy, ox)] = x[c, oy*stride + r - P, ox*stride + s - P].
//! The convolution of that sample is then one matrix product,
//!
//!   y_n [K, Ho*Wo] = weight [K, C*R*S] cols [C*R*S, Ho*Wo]   (plus bias[k] on row k),
//!
//! and the gradients are the other two products of the same three matrices:
//!
//!   d_cols [C*R*S, Ho*Wo] = weight^T d_out_n, which col2im adds back onto d_input_n
//!                           (a pixel sits in up to R*S receptive fields, so its gradients add up);
//!   d_weight [K, C*R*S]  += d_out_n cols^T, summed over the batch;
//!   d_bias [K]            = d_out summed over n, oy and ox.
//!
//! A 1x1 convolution with stride 1 and no padding needs no im2col: its cols would be
//! x_n viewed as [C, H*W], so the GEMMs read the tensors directly.
//!
//! On CPUs with AVX-512, the U-Net's stride-1 "same" convolutions (3x3, and the
//! forward pass and input gradient of 1x1) skip im2col and the GEMM altogether:
//! see `direct.rs`, whose micro-kernels read the input where it lies.
//! The im2col path (`gemm.rs`) serves every other shape and CPU.
//!
//! [`Tensor::conv2d_add`] also adds a per-sample shift [N, K] and a residual of
//! y's shape while y is written (the U-Net adds its time embedding after one
//! convolution and its skip connection after another): every path above
//! starts from, or finishes with, a pass over y that can take them on.
//!
//! Parallelism: the batch is split into a few contiguous runs of samples, one rayon
//! task each. A task allocates its cols buffer once and calls the single-threaded
//! GEMM once per sample, or, where a sample's plane is small, once per group of
//! samples laid side by side (`plan.rs`); the weight gradient is summed per task,
//! then across tasks.
//!
//! # Where each part lives
//!
//! - `mod.rs` (this file): [`Conv2dParams`], the addends, and the forward pass's
//!   entry points [`Tensor::conv2d`] and [`Tensor::conv2d_add`], which check the
//!   operands and pick a path: the backend's kernel for tensors on a device, else
//!   the direct kernels where they apply, else im2col + GEMM.
//! - `backward.rs`: the gradients' entry points, which pick a path the same way:
//!   [`conv2d_backward_input`] (for stride 1 it is itself a convolution, with the
//!   weight flipped, and runs on the forward pass's paths), [`conv2d_backward_weight`]
//!   (direct for 3x3 kernels over whole vectors of channels, else im2col + GEMM),
//!   and the sums [`conv2d_backward_bias`] and [`conv2d_backward_shift`].
//! - `geometry.rs`: `Geometry`, every extent of one convolution, checked once, and
//!   the index arithmetic the paths share (which input pixel a tap reads, which
//!   outputs read inside the image).
//! - `plan.rs`: how the fast paths split the batch into runs of samples, one rayon
//!   task each, lay a group of small samples side by side, and add up the runs'
//!   partial weight gradients.
//! - `gemm.rs`: im2col + GEMM for the forward pass, the input gradient and the
//!   weight gradient (im2col, its adjoint col2im, and the three products above).
//! - `direct.rs` (x86-64 only): the direct AVX-512 kernels, for the forward pass
//!   and the 3x3 weight gradient. Elsewhere `no_direct.rs` stands in for it with a
//!   `Direct` that is never made.
//! - `reference.rs`: [`conv2d_reference`], [`conv2d_backward_input_reference`] and
//!   [`conv2d_backward_weight_reference`], the defining sum as plain loops over
//!   ndarray arrays in f64, indexed as the formula is: the specification the
//!   fast paths are held to.
//! - `tests.rs`: the forward pass and its gradients (input, weight, bias) on the
//!   CPU against the references on random data (many small shapes, the U-Net's
//!   shapes, shapes that exercise the direct kernels' tiles, and proptest's small
//!   convolutions), with a check that the direct kernels are taken wherever this
//!   CPU can take them; and hand-computed values, the gradients as adjoints of the
//!   forward pass, the fused adds, a NaN's reach and the error messages. With
//!   `DDPM_CONV=gemm` the same tests hold im2col + GEMM to the references on the
//!   direct kernels' shapes too.

use std::ops::Range;

use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

mod backward;
#[cfg(target_arch = "x86_64")]
mod direct;
mod gemm;
mod geometry;
#[cfg(not(target_arch = "x86_64"))]
mod no_direct;
mod plan;
mod reference;
#[cfg(test)]
mod tests;

pub use backward::{conv2d_backward_bias, conv2d_backward_input, conv2d_backward_shift, conv2d_backward_weight};
#[cfg(not(target_arch = "x86_64"))]
use no_direct as direct;
pub use reference::{conv2d_backward_input_reference, conv2d_backward_weight_reference, conv2d_reference};

use geometry::Geometry;

/// Stride and zero padding of a 2-D convolution (the same on both axes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
}

fn check_bias(op: &'static str, bias: &Tensor, k: usize) -> Result<()> {
    if bias.dims() == [k] {
        Ok(())
    } else {
        Err(TensorError::invalid(
            op,
            format!("bias must have shape [{k}] (one per output channel), got {}", bias.shape()),
        ))
    }
}

/// What a convolution adds to its output besides the bias, in the pass that
/// writes it (the U-Net's "+ time embedding" after a ResBlock's first
/// convolution and "+ skip" after its second):
///
///   y[n, k, q] = conv(x, w)[n, k, q] + bias[k] + shift[n, k] + residual[n, k, q].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Addends<'a> {
    /// [N, K]: one value per sample and output channel.
    pub(crate) shift: Option<&'a [f32]>,
    /// [N, K, Ho, Wo], the output's own shape.
    pub(crate) residual: Option<&'a [f32]>,
}

impl<'a> Addends<'a> {
    /// The addends of samples `samples` (each slice starts at the first of them).
    fn of(&self, g: &Geometry, samples: Range<usize>) -> Addends<'a> {
        Addends {
            shift: self.shift.map(|s| &s[samples.start * g.k..samples.end * g.k]),
            residual: self.residual.map(|r| &r[samples.start * g.output_len()..samples.end * g.output_len()]),
        }
    }

    /// bias[k] + shift[n, k] for one sample (the slice's first): the per-channel
    /// value a kernel adds to every output of that sample.
    fn sample_bias(&self, bias: Option<&[f32]>, k: usize) -> Option<Vec<f32>> {
        match (bias, self.shift) {
            (None, None) => None,
            (b, s) => Some((0..k).map(|i| b.map_or(0.0, |b| b[i]) + s.map_or(0.0, |s| s[i])).collect()),
        }
    }
}

impl Tensor {
    /// 2-D convolution: x `[N, C, H, W]`, weight `[K, C, R, S]`, bias `[K]` -> y `[N, K, Ho, Wo]`,
    /// Ho = (H + 2P - R) / stride + 1. Same numbers as `torch.nn.functional.conv2d`.
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
        self.conv2d_add(weight, bias, None, None, p)
    }

    /// conv2d(x, weight) + bias, plus `shift` `[N, K]` (one value per sample and
    /// output channel, broadcast over the positions) and `residual` (y's own
    /// shape), added as the output is written rather than in passes of their own.
    pub fn conv2d_add(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        shift: Option<&Tensor>,
        residual: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        let g = Geometry::new("conv2d", self.shape(), weight.shape(), p)?;
        if let Some(b) = bias {
            check_bias("conv2d", b, g.k)?;
        }
        if let Some(s) = shift {
            s.expect_shape("conv2d shift", &Shape::new([g.n, g.k]))?;
        }
        if let Some(r) = residual {
            r.expect_shape("conv2d residual", &g.output_shape())?;
        }
        let operands: Vec<&Tensor> = [Some(self), Some(weight), bias, shift, residual].into_iter().flatten().collect();
        if let Placement::Device(backend) = placement("conv2d", &operands)? {
            let mut y = backend.alloc(g.n * g.output_len())?;
            let [bias, shift, residual] = [bias, shift, residual].map(|t| t.map(Tensor::buffer));
            backend.conv2d(self.buffer(), weight.buffer(), bias, shift, residual, &mut *y, &g.device_shape())?;
            return Ok(Tensor::from_device(&backend, y, g.output_shape()));
        }
        let (x, w, bias) = (self.as_slice(), weight.as_slice(), bias.map(Tensor::as_slice));
        let add = Addends { shift: shift.map(Tensor::as_slice), residual: residual.map(Tensor::as_slice) };
        if let Some(direct) = direct::Direct::new(&g) {
            return Ok(Tensor::from_parts(direct.forward(&g, x, w, bias, add), g.output_shape()));
        }
        Ok(Tensor::from_parts(gemm::forward(&g, x, w, bias, add), g.output_shape()))
    }
}
