//! The gradients of a convolution, as their public entry points: each checks its
//! operands and picks a path as [`Tensor::conv2d_add`] does (the backend's kernel
//! on a device; on the host the direct kernels where they apply, else im2col +
//! GEMM in `gemm.rs`; a stride-1 input gradient runs as a forward convolution,
//! see [`transposed_as_convolution`]). d_input and d_weight are the module doc's two products;
//! d_bias and d_shift are sums of d_out.

use rayon::prelude::*;

use super::{direct, gemm, Conv2dParams, Geometry};
use crate::ops::lanes::sum_f32;
use crate::pool;
use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

/// d_input [N, C, H, W] from d_out [N, K, Ho, Wo] and weight [K, C, R, S]. The input's
/// shape is passed in because the output does not determine it: with stride 2, inputs
/// of height 13 and 14 both give Ho = 7.
pub fn conv2d_backward_input(d_out: &Tensor, weight: &Tensor, input_shape: &Shape, p: Conv2dParams) -> Result<Tensor> {
    let op = "conv2d_backward_input";
    let g = Geometry::new(op, input_shape, weight.shape(), p)?;
    g.check_d_out(op, d_out)?;
    if let Placement::Device(backend) = placement(op, &[d_out, weight])? {
        let mut d_x = backend.alloc(g.n * g.input_len())?;
        backend.conv2d_backward_input(d_out.buffer(), weight.buffer(), &mut *d_x, &g.device_shape())?;
        return Ok(Tensor::from_device(&backend, d_x, input_shape.clone()));
    }
    if g.stride == 1 && g.r == g.s && g.pad < g.r {
        return transposed_as_convolution(&g, d_out, weight);
    }
    let d_x = gemm::backward_input(&g, d_out.as_slice(), weight.as_slice());
    Ok(Tensor::from_parts(d_x, input_shape.clone()))
}

/// The input gradient of a stride-1 convolution is itself a convolution:
///     d_x[c, y, x] = sum_{k,r,s} w[k, c, r, s] d_out[k, y + P - r, x + P - s]
///                  = conv(d_out, w')[c, y, x] with padding R - 1 - P,
/// where w'[c, k, r, s] = w[k, c, R-1-r, S-1-s] (channels swapped, taps flipped).
/// That runs on the forward path: one GEMM per sample whose inner dimension is
/// K*R*S, instead of a GEMM over only K followed by a scatter-add (col2im).
fn transposed_as_convolution(g: &Geometry, d_out: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (k, c, r, s) = (g.k, g.c, g.r, g.s);
    let w = weight.as_slice();
    let mut flipped = pool::take(w.len());
    for ki in 0..k {
        for ci in 0..c {
            for ri in 0..r {
                for si in 0..s {
                    flipped[((ci * k + ki) * r + ri) * s + si] =
                        w[((ki * c + ci) * r + (r - 1 - ri)) * s + (s - 1 - si)];
                }
            }
        }
    }
    let flipped = Tensor::from_parts(flipped, Shape::new([c, k, r, s]));
    d_out.conv2d(&flipped, None, Conv2dParams { stride: 1, padding: g.r - 1 - g.pad })
}

/// d_weight [K, C, R, S] = sum over the batch of d_out_n [K, Ho*Wo] cols_n^T, from
/// input [N, C, H, W] and d_out [N, K, Ho, Wo].
pub fn conv2d_backward_weight(input: &Tensor, d_out: &Tensor, weight_shape: &Shape, p: Conv2dParams) -> Result<Tensor> {
    let op = "conv2d_backward_weight";
    let g = Geometry::new(op, input.shape(), weight_shape, p)?;
    g.check_d_out(op, d_out)?;
    if let Placement::Device(backend) = placement(op, &[input, d_out])? {
        let mut d_w = backend.alloc(weight_shape.numel())?;
        backend.conv2d_backward_weight(input.buffer(), d_out.buffer(), &mut *d_w, &g.device_shape())?;
        return Ok(Tensor::from_device(&backend, d_w, weight_shape.clone()));
    }
    let (x, d_y) = (input.as_slice(), d_out.as_slice());
    if let Some(direct) = direct::Direct::new(&g).filter(|_| direct::Direct::has_weight_grad(&g)) {
        return Ok(Tensor::from_parts(direct.weight_grad(&g, x, d_y), weight_shape.clone()));
    }
    Ok(Tensor::from_parts(gemm::backward_weight(&g, x, d_y), weight_shape.clone()))
}

/// d_bias `[K]` = d_out `[N, K, Ho, Wo]` summed over N, Ho and Wo (each `bias[k]` is added
/// to every output of channel k).
pub fn conv2d_backward_bias(d_out: &Tensor) -> Result<Tensor> {
    if let Placement::Device(_) = placement("conv2d_backward_bias", &[d_out])? {
        rank4("conv2d_backward_bias", d_out)?;
        return d_out.sum_axes(&[0, 2, 3], false);
    }
    let (k, per_sample) = sums_per_sample_and_channel("conv2d_backward_bias", d_out)?;
    let mut d_b = vec![0.0f64; k];
    for sums in &per_sample {
        d_b.iter_mut().zip(sums).for_each(|(d, s)| *d += s);
    }
    Ok(Tensor::from_parts(d_b.into_iter().map(|v| v as f32).collect(), Shape::new([k])))
}

/// d_shift `[N, K]` = d_out `[N, K, Ho, Wo]` summed over Ho and Wo: the gradient of
/// [`Tensor::conv2d_add`]'s shift, which is added to every output of its sample and channel.
pub fn conv2d_backward_shift(d_out: &Tensor) -> Result<Tensor> {
    if let Placement::Device(_) = placement("conv2d_backward_shift", &[d_out])? {
        rank4("conv2d_backward_shift", d_out)?;
        return d_out.sum_axes(&[2, 3], false);
    }
    let (k, per_sample) = sums_per_sample_and_channel("conv2d_backward_shift", d_out)?;
    let n = per_sample.len();
    Ok(Tensor::from_parts(per_sample.into_iter().flatten().map(|v| v as f32).collect(), Shape::new([n, k])))
}

/// That d_out has the rank of a convolution's output, [N, K, Ho, Wo].
fn rank4(op: &'static str, d_out: &Tensor) -> Result<[usize; 4]> {
    match *d_out.dims() {
        [n, k, ho, wo] => Ok([n, k, ho, wo]),
        _ => {
            Err(TensorError::invalid(op, format!("d_out must have rank 4 [N, K, Ho, Wo], got shape {}", d_out.shape())))
        }
    }
}

/// K, and for each sample the sum of each channel's plane of d_out [N, K, Ho, Wo]
/// (in f64, one sample per task).
fn sums_per_sample_and_channel(op: &'static str, d_out: &Tensor) -> Result<(usize, Vec<Vec<f64>>)> {
    let [n, k, ho, wo] = rank4(op, d_out)?;
    if k * ho * wo == 0 {
        return Ok((k, vec![vec![0.0f64; k]; n]));
    }
    let per_sample =
        |sample: &[f32]| -> Vec<f64> { sample.chunks_exact(ho * wo).map(|plane| sum_f32(plane) as f64).collect() };
    Ok((k, d_out.as_slice().par_chunks_exact(k * ho * wo).map(per_sample).collect()))
}
