//! The references: the defining sum of a convolution as plain nested loops,
//! accumulated in f64, for the forward pass and both gradients: the
//! specification. `tests.rs` holds every CPU path to them, and the device
//! kernels' tests hold the devices to them.

use super::{check_bias, Conv2dParams, Geometry};
use crate::{Result, Shape, Tensor};

/// Every term of the defining sum of a convolution,
///     y[n, k, oy, ox] = bias[k] + sum_{c, r, s} w[k, c, r, s] x[n, c, oy*stride + r - P, ox*stride + s - P],
/// as flat indices (x, w, y) into the three buffers, in plain nested loops.
/// Taps that land in the padding read 0 and add nothing, so they are skipped.
/// The three references below are this loop with a different accumulation.
fn for_each_term(g: &Geometry, mut term: impl FnMut(usize, usize, usize)) {
    for n in 0..g.n {
        for k in 0..g.k {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let y = ((n * g.k + k) * g.ho + oy) * g.wo + ox;
                    for c in 0..g.c {
                        for r in 0..g.r {
                            for s in 0..g.s {
                                let (Some(iy), Some(ix)) = (g.source(oy, r, g.h), g.source(ox, s, g.w)) else {
                                    continue;
                                };
                                term(((n * g.c + c) * g.h + iy) * g.w + ix, ((k * g.c + c) * g.r + r) * g.s + s, y);
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
    let g = Geometry::new("conv2d_reference", x.shape(), weight.shape(), p)?;
    if let Some(b) = bias {
        check_bias("conv2d_reference", b, g.k)?;
    }
    let (xs, ws) = (x.as_slice(), weight.as_slice());
    let mut y = vec![0.0f64; g.n * g.output_len()];
    if let Some(b) = bias {
        for (i, v) in y.iter_mut().enumerate() {
            *v = b.as_slice()[(i / g.positions()) % g.k] as f64;
        }
    }
    for_each_term(&g, |xi, wi, yi| y[yi] += ws[wi] as f64 * xs[xi] as f64);
    Ok(Tensor::from_parts(y.into_iter().map(|v| v as f32).collect(), g.output_shape()))
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
    let (d_ys, ws) = (d_out.as_slice(), weight.as_slice());
    let mut d_x = vec![0.0f64; g.n * g.input_len()];
    for_each_term(&g, |xi, wi, yi| d_x[xi] += ws[wi] as f64 * d_ys[yi] as f64);
    Ok(Tensor::from_parts(d_x.into_iter().map(|v| v as f32).collect(), input_shape.clone()))
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
    let (xs, d_ys) = (input.as_slice(), d_out.as_slice());
    let mut d_w = vec![0.0f64; weight_shape.numel()];
    for_each_term(&g, |xi, wi, yi| d_w[wi] += xs[xi] as f64 * d_ys[yi] as f64);
    Ok(Tensor::from_parts(d_w.into_iter().map(|v| v as f32).collect(), weight_shape.clone()))
}
