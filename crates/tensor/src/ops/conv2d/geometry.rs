//! [`Geometry`]: the extents of one convolution, checked once where a caller
//! hands us shapes, and the index arithmetic that the reference loops, im2col
//! and the direct kernels share.

use std::ops::Range;

use super::Conv2dParams;
use crate::backend::ConvShape;
use crate::{Result, Shape, Tensor, TensorError};

/// Every extent of one convolution, checked once where a caller hands us shapes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) k: usize,
    pub(super) r: usize,
    pub(super) s: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
}

impl Geometry {
    /// Checks an input shape [N, C, H, W] against a weight shape [K, C, R, S].
    pub(super) fn new(op: &'static str, input: &Shape, weight: &Shape, p: Conv2dParams) -> Result<Geometry> {
        if p.stride == 0 {
            return Err(TensorError::invalid(op, "stride must be at least 1"));
        }
        let &[n, c, h, w] = input.dims() else {
            return Err(TensorError::invalid(op, format!("input must have rank 4 [N, C, H, W], got shape {input}")));
        };
        let &[k, wc, r, s] = weight.dims() else {
            return Err(TensorError::invalid(op, format!("weight must have rank 4 [K, C, R, S], got shape {weight}")));
        };
        if c != wc {
            return Err(TensorError::invalid(
                op,
                format!("input {input} has {c} channels but weight {weight} expects {wc}"),
            ));
        }
        if r == 0 || s == 0 {
            return Err(TensorError::invalid(op, format!("kernel {r}x{s} is empty")));
        }
        let (pad, stride) = (p.padding, p.stride);
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        if r > hp || s > wp {
            return Err(TensorError::invalid(
                op,
                format!("kernel {r}x{s} is larger than the padded input {hp}x{wp} (input {h}x{w}, padding {pad})"),
            ));
        }
        Ok(Geometry { n, c, h, w, k, r, s, ho: (hp - r) / stride + 1, wo: (wp - s) / stride + 1, stride, pad })
    }

    pub(super) fn output_shape(&self) -> Shape {
        Shape::new([self.n, self.k, self.ho, self.wo])
    }

    /// The extents a device kernel takes.
    pub(super) fn device_shape(&self) -> ConvShape {
        let Geometry { n, c, h, w, k, r, s, stride, pad, .. } = *self;
        ConvShape { n, c, h, w, k, r, s, stride, pad }
    }

    /// Values in one sample of the input, C*H*W.
    pub(super) fn input_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Values in one sample of the output, K*Ho*Wo.
    pub(super) fn output_len(&self) -> usize {
        self.k * self.ho * self.wo
    }

    /// Length of one receptive field, C*R*S: the rows of cols and the GEMM's reduction.
    pub(super) fn patch(&self) -> usize {
        self.c * self.r * self.s
    }

    /// Output positions per channel, Ho*Wo: the columns of cols.
    pub(super) fn positions(&self) -> usize {
        self.ho * self.wo
    }

    /// Stride 1 and an output as wide as the input (a "same" convolution, S = 2P + 1):
    /// a row of cols is then the input plane shifted, see `shifted_copy` in `gemm.rs`.
    pub(super) fn is_same_width(&self) -> bool {
        self.stride == 1 && self.wo == self.w
    }

    /// A 1x1 stride-1 convolution without padding: cols is the input itself.
    pub(super) fn is_pointwise(&self) -> bool {
        self.r == 1 && self.s == 1 && self.stride == 1 && self.pad == 0
    }

    /// Multiply-adds of the whole batch, counted twice (the usual flop count).
    pub(super) fn flops(&self) -> usize {
        2 * self.n * self.k * self.patch() * self.positions()
    }

    /// The input index that output `o` reads through kernel tap `tap` along one
    /// axis of extent `len`, or None where it lands in the padding.
    pub(super) fn source(&self, o: usize, tap: usize, len: usize) -> Option<usize> {
        (o * self.stride + tap).checked_sub(self.pad).filter(|&i| i < len)
    }

    /// The outputs `o` in 0..out_len whose source through tap `tap` lies inside
    /// 0..len (a contiguous range; the outputs outside it read padding).
    pub(super) fn inside(&self, tap: usize, len: usize, out_len: usize) -> Range<usize> {
        // o*stride + tap - P >= 0  <=>  o >= ceil((P - tap) / stride)
        let lo = self.pad.saturating_sub(tap).div_ceil(self.stride);
        // o*stride + tap - P < len  <=>  o < ceil((len + P - tap) / stride)
        let hi = (len + self.pad).saturating_sub(tap).div_ceil(self.stride).min(out_len);
        lo.min(hi)..hi
    }

    /// Errors unless d_out has the shape this convolution outputs.
    pub(super) fn check_d_out(&self, op: &'static str, d_out: &Tensor) -> Result<()> {
        let expected = self.output_shape();
        if d_out.shape() == &expected {
            Ok(())
        } else {
            Err(TensorError::invalid(
                op,
                format!("d_out has shape {} but the convolution outputs {expected}", d_out.shape()),
            ))
        }
    }
}

/// The flat offset from an output position to the pixel it reads through tap (r, s),
/// when stride is 1 and Wo = W: (r - P) * W + (s - P).
pub(super) fn flat_shift(g: &Geometry, r: usize, s: usize) -> isize {
    (r as isize - g.pad as isize) * g.w as isize + (s as isize - g.pad as isize)
}
