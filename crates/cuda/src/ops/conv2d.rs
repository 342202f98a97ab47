//! The launches of `kernels/conv2d.cu`: the convolution (with its bias,
//! per-sample shift and residual added in the store) and its two gradients,
//! each as the tiled implicit GEMM or the one-output-per-thread reference.

use super::{check_len, int, launch, optional, In, Out};
use crate::exec::{Arg, Executor};
use crate::launch::{conv_backward_input, conv_backward_weight, conv_forward, elementwise, ConvShape, Launch};
use crate::source::CONV2D;
use crate::Result;

/// Which of a convolution's kernels to run: the tiled implicit GEMM, or the
/// one-output-per-thread reference it is tested against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    Tiled,
    Naive,
}

/// The kernels' integer arguments, n, c, h, w, k, r, s, stride, pad, after
/// checking that every index of the three tensors fits the kernels' ints.
fn conv_args<'a, B>(op: &'static str, g: &ConvShape) -> Result<Vec<Arg<'a, B>>> {
    for (what, len) in [("the input", g.input_len()), ("the weight", g.weight_len()), ("the output", g.output_len())] {
        int(op, what, len)?;
    }
    let values = [g.n, g.c, g.h, g.w, g.k, g.r, g.s, g.stride, g.pad];
    values.iter().map(|&v| int(op, "an extent", v).map(Arg::I32)).collect()
}

/// The kernel of `tiled` or `naive`, and its grid.
fn pick(kernel: ConvKernel, tiled: (&'static str, Launch), naive: (&'static str, usize)) -> (&'static str, Launch) {
    match kernel {
        ConvKernel::Tiled => tiled,
        ConvKernel::Naive => (naive.0, elementwise(naive.1)),
    }
}

/// `y = conv2d(x, w) + bias[k] + shift[n, k] + residual`, the optional terms
/// absent when `None`.
#[allow(clippy::too_many_arguments)]
pub fn forward<E: Executor>(
    e: &E,
    kernel: ConvKernel,
    g: &ConvShape,
    x: In<'_, E::Buf>,
    w: In<'_, E::Buf>,
    bias: Option<In<'_, E::Buf>>,
    shift: Option<In<'_, E::Buf>>,
    residual: Option<In<'_, E::Buf>>,
    mut y: Out<'_, E::Buf>,
) -> Result<()> {
    let op = "conv2d";
    check_len(op, "the input", x.len(), g.input_len())?;
    check_len(op, "the weight", w.len(), g.weight_len())?;
    check_len(op, "the output", y.len(), g.output_len())?;
    for (what, t, len) in
        [("the bias", bias, g.k), ("the shift", shift, g.n * g.k), ("the residual", residual, g.output_len())]
    {
        if let Some(t) = t {
            check_len(op, what, t.len(), len)?;
        }
    }
    if y.is_empty() {
        return Ok(());
    }
    let (name, at) = pick(kernel, ("conv2d_fwd_f32", conv_forward(g)), ("conv2d_fwd_naive_f32", g.output_len()));
    let mut args = vec![x.arg(), w.arg(), optional(bias), optional(shift), optional(residual), y.arg()];
    args.extend(conv_args(op, g)?);
    launch(e, op, &CONV2D, name, at, &mut args)
}

/// d_x from d_y and the weight.
pub fn backward_input<E: Executor>(
    e: &E,
    kernel: ConvKernel,
    g: &ConvShape,
    d_y: In<'_, E::Buf>,
    w: In<'_, E::Buf>,
    mut d_x: Out<'_, E::Buf>,
) -> Result<()> {
    let op = "conv2d_backward_input";
    check_len(op, "the output gradient", d_y.len(), g.output_len())?;
    check_len(op, "the weight", w.len(), g.weight_len())?;
    check_len(op, "the input gradient", d_x.len(), g.input_len())?;
    if d_x.is_empty() {
        return Ok(());
    }
    let (name, at) =
        pick(kernel, ("conv2d_bwd_input_f32", conv_backward_input(g)), ("conv2d_bwd_input_naive_f32", g.input_len()));
    let mut args = vec![d_y.arg(), w.arg(), d_x.arg()];
    args.extend(conv_args(op, g)?);
    launch(e, op, &CONV2D, name, at, &mut args)
}

/// d_w from the input and d_y.
pub fn backward_weight<E: Executor>(
    e: &E,
    kernel: ConvKernel,
    g: &ConvShape,
    x: In<'_, E::Buf>,
    d_y: In<'_, E::Buf>,
    mut d_w: Out<'_, E::Buf>,
) -> Result<()> {
    let op = "conv2d_backward_weight";
    check_len(op, "the input", x.len(), g.input_len())?;
    check_len(op, "the output gradient", d_y.len(), g.output_len())?;
    check_len(op, "the weight gradient", d_w.len(), g.weight_len())?;
    if d_w.is_empty() {
        return Ok(());
    }
    let (name, at) = pick(
        kernel,
        ("conv2d_bwd_weight_f32", conv_backward_weight(g)),
        ("conv2d_bwd_weight_naive_f32", g.weight_len()),
    );
    let mut args = vec![x.arg(), d_y.arg(), d_w.arg()];
    args.extend(conv_args(op, g)?);
    launch(e, op, &CONV2D, name, at, &mut args)
}
