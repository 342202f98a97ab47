//! The references: the defining sum of a convolution, written over ndarray
//! arrays in f64 with the formula's own indices, for the forward pass and both
//! gradients: the specification. `tests.rs` holds every CPU path to them, and
//! the device kernels' tests hold the devices to them.
//!
//! Shapes: x [N, C, H, W], w [K, C, R, S], y [N, K, Ho, Wo].

use ndarray::{Array1, Array4, Ix1, Ix4};

use super::{check_bias, Conv2dParams, Geometry};
use crate::interop::{from_f64, to_f64};
use crate::{Result, Shape, Tensor};

/// One term of the defining sum of a convolution,
///     y[n, k, oy, ox] = bias[k] + sum_{c, r, s} w[k, c, r, s] x[n, c, iy, ix],
///     iy = oy*stride + r - P,  ix = ox*stride + s - P:
/// the indices of the output, the tap, and the input pixel the tap reads.
struct Term {
    n: usize,
    k: usize,
    oy: usize,
    ox: usize,
    c: usize,
    r: usize,
    s: usize,
    iy: usize,
    ix: usize,
}

/// Every term of the sum, in plain nested loops. Taps that land in the
/// padding read 0 and add nothing, so they are skipped. The three references
/// below are this loop with a different accumulation.
fn for_each_term(g: &Geometry, mut term: impl FnMut(Term)) {
    for n in 0..g.n {
        for k in 0..g.k {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    for c in 0..g.c {
                        for r in 0..g.r {
                            for s in 0..g.s {
                                // iy = oy*stride + r - P and ix = ox*stride + s - P, inside the image.
                                let (Some(iy), Some(ix)) = (g.source(oy, r, g.h), g.source(ox, s, g.w)) else {
                                    continue;
                                };
                                term(Term { n, k, oy, ox, c, r, s, iy, ix });
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The specification of [`Tensor::conv2d`]: the defining sum, accumulated in f64.
pub fn conv2d_reference(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    let op = "conv2d_reference";
    let g = Geometry::new(op, x.shape(), weight.shape(), p)?;
    if let Some(b) = bias {
        check_bias(op, b, g.k)?;
    }
    let (x, w) = (to_f64::<Ix4>(op, x)?, to_f64::<Ix4>(op, weight)?);
    let b = match bias {
        Some(b) => to_f64::<Ix1>(op, b)?,
        None => Array1::zeros(g.k),
    };
    let mut y = Array4::from_shape_fn((g.n, g.k, g.ho, g.wo), |(_, k, _, _)| b[k]);
    for_each_term(&g, |Term { n, k, oy, ox, c, r, s, iy, ix }| {
        y[[n, k, oy, ox]] += w[[k, c, r, s]] * x[[n, c, iy, ix]];
    });
    Ok(from_f64(y))
}

/// The specification of [`conv2d_backward_input`](super::conv2d_backward_input): each x[n, c, iy, ix] collects
/// w[k, c, r, s] * d_out[n, k, oy, ox] over every term of the sum it appeared in.
pub fn conv2d_backward_input_reference(
    d_out: &Tensor,
    weight: &Tensor,
    input_shape: &Shape,
    p: Conv2dParams,
) -> Result<Tensor> {
    let op = "conv2d_backward_input_reference";
    let g = Geometry::new(op, input_shape, weight.shape(), p)?;
    g.check_d_out(op, d_out)?;
    let (d_y, w) = (to_f64::<Ix4>(op, d_out)?, to_f64::<Ix4>(op, weight)?);
    let mut d_x = Array4::<f64>::zeros((g.n, g.c, g.h, g.w));
    for_each_term(&g, |Term { n, k, oy, ox, c, r, s, iy, ix }| {
        d_x[[n, c, iy, ix]] += w[[k, c, r, s]] * d_y[[n, k, oy, ox]];
    });
    Ok(from_f64(d_x))
}

/// The specification of [`conv2d_backward_weight`](super::conv2d_backward_weight): d_weight[k, c, r, s] collects
/// x[n, c, iy, ix] * d_out[n, k, oy, ox] over every term of the sum that used that weight.
pub fn conv2d_backward_weight_reference(
    input: &Tensor,
    d_out: &Tensor,
    weight_shape: &Shape,
    p: Conv2dParams,
) -> Result<Tensor> {
    let op = "conv2d_backward_weight_reference";
    let g = Geometry::new(op, input.shape(), weight_shape, p)?;
    g.check_d_out(op, d_out)?;
    let (x, d_y) = (to_f64::<Ix4>(op, input)?, to_f64::<Ix4>(op, d_out)?);
    let mut d_w = Array4::<f64>::zeros((g.k, g.c, g.r, g.s));
    for_each_term(&g, |Term { n, k, oy, ox, c, r, s, iy, ix }| {
        d_w[[k, c, r, s]] += x[[n, c, iy, ix]] * d_y[[n, k, oy, ox]];
    });
    Ok(from_f64(d_w))
}
