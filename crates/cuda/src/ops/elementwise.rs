//! The launches of `kernels/elementwise.cu`: fills, unary and binary maps,
//! moving numbers (block copies, permutations), upsampling, max pooling, the
//! embedding's rows and dropout.

use ddpm_tensor::backend::{BlockCopy, Broadcast, Gather, Planes};
use ddpm_tensor::ops::{BinaryOp, UnaryBackward, UnaryOp};

use super::{check_len, int, invalid, launch, long, In, Out};
use crate::exec::{Arg, Executor};
use crate::launch::elementwise;
use crate::source::ELEMENTWISE;
use crate::Result;

/// The most axes `binary_f32` and `gather_f32` walk.
pub const MAX_AXES: usize = 4;

/// `out[i] = value`.
pub fn fill<E: Executor>(e: &E, mut out: Out<'_, E::Buf>, value: f32) -> Result<()> {
    let n = out.len();
    if n == 0 {
        return Ok(());
    }
    let mut args = [out.arg(), Arg::I64(long("fill", "length", n)?), Arg::F32(value)];
    launch(e, "fill", &ELEMENTWISE, "fill_f32", elementwise(n), &mut args)
}

/// `unary_f32`'s code for `op` (the `UNARY_*` of elementwise.cu) and its two parameters.
fn unary_code(op: UnaryOp) -> (i32, f32, f32) {
    match op {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Square => (4, 0.0, 0.0),
        UnaryOp::Powf(p) => (5, p, 0.0),
        UnaryOp::Tanh => (6, 0.0, 0.0),
        UnaryOp::Sigmoid => (7, 0.0, 0.0),
        UnaryOp::Silu => (8, 0.0, 0.0),
        UnaryOp::Relu => (9, 0.0, 0.0),
        UnaryOp::Sin => (10, 0.0, 0.0),
        UnaryOp::Cos => (11, 0.0, 0.0),
        UnaryOp::Affine { scale, shift } => (12, scale, shift),
        UnaryOp::Scale(s) => (13, s, 0.0),
        UnaryOp::Clamp { low, high } => (14, low, high),
    }
}

/// y = op(x), elementwise.
pub fn unary<E: Executor>(e: &E, op: UnaryOp, x: In<'_, E::Buf>, mut y: Out<'_, E::Buf>) -> Result<()> {
    let name = op.name();
    check_len(name, "the output", y.len(), x.len())?;
    if y.is_empty() {
        return Ok(());
    }
    let (code, a, b) = unary_code(op);
    let n = long(name, "length", x.len())?;
    let mut args = [x.arg(), y.arg(), Arg::I64(n), Arg::I32(code), Arg::F32(a), Arg::F32(b)];
    launch(e, name, &ELEMENTWISE, "unary_f32", elementwise(x.len()), &mut args)
}

/// `unary_bwd_f32`'s code for `op` (the `BWD_*` of elementwise.cu) and its parameter.
fn backward_code(op: UnaryBackward) -> (i32, f32) {
    match op {
        UnaryBackward::Sqrt => (0, 0.0),
        UnaryBackward::Powf(p) => (1, p),
        UnaryBackward::Tanh => (2, 0.0),
        UnaryBackward::Sigmoid => (3, 0.0),
        UnaryBackward::Silu => (4, 0.0),
        UnaryBackward::Relu => (5, 0.0),
    }
}

/// d_x = g f'(saved), where saved is x or y as `op` says.
pub fn unary_backward<E: Executor>(
    e: &E,
    op: UnaryBackward,
    g: In<'_, E::Buf>,
    saved: In<'_, E::Buf>,
    mut d_x: Out<'_, E::Buf>,
) -> Result<()> {
    let name = op.name();
    check_len(name, "the saved tensor", saved.len(), g.len())?;
    check_len(name, "the output", d_x.len(), g.len())?;
    if d_x.is_empty() {
        return Ok(());
    }
    let (code, p) = backward_code(op);
    let n = long(name, "length", g.len())?;
    let mut args = [g.arg(), saved.arg(), d_x.arg(), Arg::I64(n), Arg::I32(code), Arg::F32(p)];
    launch(e, name, &ELEMENTWISE, "unary_bwd_f32", elementwise(g.len()), &mut args)
}

/// `binary_f32`'s code for `op` (the `BINARY_*` of elementwise.cu).
fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Maximum => 4,
    }
}

/// One past the largest element a walk over `dims` with `strides` reads (0
/// for an empty walk).
fn extent(dims: &[usize], strides: &[usize]) -> usize {
    if dims.contains(&0) {
        return 0;
    }
    dims.iter().zip(strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1
}

/// `dims` and each of `strides` padded on the left to [`MAX_AXES`] axes
/// (extent 1, stride 0), as kernel arguments; an error naming `op` when
/// there are more.
fn padded<const K: usize>(op: &'static str, dims: &[usize], strides: [&[usize]; K]) -> Result<Vec<i64>> {
    if dims.len() > MAX_AXES {
        return Err(invalid(
            op,
            format!("a walk over {} axes {dims:?} (after merging); the kernel takes at most {MAX_AXES}", dims.len()),
        ));
    }
    let pad = MAX_AXES - dims.len();
    let mut args = Vec::with_capacity(MAX_AXES * (K + 1));
    for (values, fill) in std::iter::once((dims, 1)).chain(strides.map(|s| (s, 0))) {
        args.extend(std::iter::repeat_n(fill, pad).chain(values.iter().copied()).map(|v| v as i64));
    }
    Ok(args)
}

/// out = lhs (op) rhs over the broadcast walk (at most [`MAX_AXES`] axes).
pub fn binary<E: Executor>(
    e: &E,
    op: BinaryOp,
    lhs: In<'_, E::Buf>,
    rhs: In<'_, E::Buf>,
    mut out: Out<'_, E::Buf>,
    walk: &Broadcast,
) -> Result<()> {
    let name = op.name();
    let n: usize = walk.dims.iter().product();
    if walk.lhs.len() != walk.dims.len() || walk.rhs.len() != walk.dims.len() {
        return Err(invalid(name, format!("a walk of {} axes with strides for fewer: {walk:?}", walk.dims.len())));
    }
    check_len(name, "the output", out.len(), n)?;
    for (what, x, strides) in [("the left operand", &lhs, &walk.lhs), ("the right operand", &rhs, &walk.rhs)] {
        if extent(&walk.dims, strides) > x.len() {
            return Err(invalid(name, format!("{what} of {} numbers is too short for {walk:?}", x.len())));
        }
    }
    let walked = padded(name, &walk.dims, [&walk.lhs, &walk.rhs])?;
    if n == 0 {
        return Ok(());
    }
    let mut args = vec![lhs.arg(), rhs.arg(), out.arg(), Arg::I32(binary_code(op))];
    args.extend(walked.into_iter().map(Arg::I64));
    launch(e, name, &ELEMENTWISE, "binary_f32", elementwise(n), &mut args)
}

/// dst's blocks from src's (see [`BlockCopy`]); the rest of dst stays.
pub fn copy_blocks<E: Executor>(e: &E, src: In<'_, E::Buf>, mut dst: Out<'_, E::Buf>, c: &BlockCopy) -> Result<()> {
    let op = "copy_blocks";
    let n = c.blocks * c.width;
    if n == 0 {
        return Ok(());
    }
    let last = c.blocks - 1;
    if last * c.src_stride + c.src_offset + c.width > src.len()
        || last * c.dst_stride + c.dst_offset + c.width > dst.len()
    {
        return Err(invalid(op, format!("{c:?} reaches outside {} or {} numbers", src.len(), dst.len())));
    }
    let mut args = vec![src.arg(), dst.arg()];
    for (what, v) in [
        ("blocks", c.blocks),
        ("width", c.width),
        ("source stride", c.src_stride),
        ("source offset", c.src_offset),
        ("destination stride", c.dst_stride),
        ("destination offset", c.dst_offset),
    ] {
        args.push(Arg::I64(long(op, what, v)?));
    }
    launch(e, op, &ELEMENTWISE, "copy_blocks_f32", elementwise(n), &mut args)
}

/// The gather's axes with the neighbours that walk as one run merged
/// (stride[k] == stride[k + 1] * dims[k + 1]) and unit axes dropped.
fn merge(g: &Gather) -> (Vec<usize>, Vec<usize>) {
    let (mut dims, mut strides): (Vec<usize>, Vec<usize>) = (vec![], vec![]);
    for (&d, &s) in g.dims.iter().zip(&g.strides) {
        if d == 1 {
            continue;
        }
        match (dims.last_mut(), strides.last_mut()) {
            (Some(ld), Some(ls)) if *ls == s * d => {
                *ld *= d;
                *ls = s;
            }
            _ => {
                dims.push(d);
                strides.push(s);
            }
        }
    }
    (dims, strides)
}

/// `dst[i] = src[sum_k i_k strides[k]]` for i unravelled over the gather's
/// dims: a permutation. At most [`MAX_AXES`] axes after merging.
pub fn gather<E: Executor>(e: &E, src: In<'_, E::Buf>, mut dst: Out<'_, E::Buf>, g: &Gather) -> Result<()> {
    let op = "permute";
    if g.strides.len() != g.dims.len() {
        return Err(invalid(op, format!("{} axes with {} strides", g.dims.len(), g.strides.len())));
    }
    let n: usize = g.dims.iter().product();
    check_len(op, "the output", dst.len(), n)?;
    if extent(&g.dims, &g.strides) > src.len() {
        return Err(invalid(op, format!("a source of {} numbers is too short for {g:?}", src.len())));
    }
    let (dims, strides) = merge(g);
    let walked = padded(op, &dims, [&strides])?;
    if n == 0 {
        return Ok(());
    }
    let mut args = vec![src.arg(), dst.arg()];
    args.extend(walked.into_iter().map(Arg::I64));
    launch(e, op, &ELEMENTWISE, "gather_f32", elementwise(n), &mut args)
}

/// The kernel arguments of [`Planes`]: planes, h, w.
fn plane_args<'a, B>(op: &'static str, p: &Planes) -> Result<[Arg<'a, B>; 3]> {
    Ok([Arg::I64(long(op, "planes", p.planes)?), Arg::I32(int(op, "height", p.h)?), Arg::I32(int(op, "width", p.w)?)])
}

/// y [planes, 2h, 2w] from x [planes, h, w], nearest neighbour.
pub fn upsample2x<E: Executor>(e: &E, x: In<'_, E::Buf>, mut y: Out<'_, E::Buf>, p: &Planes) -> Result<()> {
    let op = "upsample_nearest2x";
    let n = p.planes * p.h * p.w;
    check_len(op, "the input", x.len(), n)?;
    check_len(op, "the output", y.len(), 4 * n)?;
    if n == 0 {
        return Ok(());
    }
    let [a, b, c] = plane_args(op, p)?;
    let mut args = [x.arg(), y.arg(), a, b, c];
    launch(e, op, &ELEMENTWISE, "upsample2x_f32", elementwise(4 * n), &mut args)
}

/// d_x [planes, h, w] from d_y [planes, 2h, 2w]: each pixel's 2 x 2 block summed.
pub fn upsample2x_backward<E: Executor>(
    e: &E,
    d_y: In<'_, E::Buf>,
    mut d_x: Out<'_, E::Buf>,
    p: &Planes,
) -> Result<()> {
    let op = "upsample_nearest2x_backward";
    let n = p.planes * p.h * p.w;
    check_len(op, "the output gradient", d_y.len(), 4 * n)?;
    check_len(op, "the input gradient", d_x.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let [a, b, c] = plane_args(op, p)?;
    let mut args = [d_y.arg(), d_x.arg(), a, b, c];
    launch(e, op, &ELEMENTWISE, "upsample2x_bwd_f32", elementwise(n), &mut args)
}

/// Checks x [planes, h, w] with h and w even.
fn check_pool(op: &'static str, p: &Planes, x: usize) -> Result<usize> {
    if !p.h.is_multiple_of(2) || !p.w.is_multiple_of(2) {
        return Err(invalid(op, format!("planes of {} x {} are not of even extents", p.h, p.w)));
    }
    let n = p.planes * p.h * p.w;
    check_len(op, "the input", x, n)?;
    Ok(n)
}

/// y [planes, h/2, w/2]: the largest value of each 2 x 2 window of x [planes, h, w].
pub fn max_pool2x2<E: Executor>(e: &E, x: In<'_, E::Buf>, mut y: Out<'_, E::Buf>, p: &Planes) -> Result<()> {
    let op = "max_pool2x2";
    let n = check_pool(op, p, x.len())?;
    check_len(op, "the output", y.len(), n / 4)?;
    if n == 0 {
        return Ok(());
    }
    let [a, b, c] = plane_args(op, p)?;
    let mut args = [x.arg(), y.arg(), a, b, c];
    launch(e, op, &ELEMENTWISE, "max_pool2x2_f32", elementwise(n / 4), &mut args)
}

/// d_x [planes, h, w]: each window's d_y at its largest element of x (the first on a tie), 0 elsewhere.
pub fn max_pool2x2_backward<E: Executor>(
    e: &E,
    x: In<'_, E::Buf>,
    d_y: In<'_, E::Buf>,
    mut d_x: Out<'_, E::Buf>,
    p: &Planes,
) -> Result<()> {
    let op = "max_pool2x2_backward";
    let n = check_pool(op, p, x.len())?;
    check_len(op, "the output gradient", d_y.len(), n / 4)?;
    check_len(op, "the input gradient", d_x.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let [a, b, c] = plane_args(op, p)?;
    let mut args = [x.arg(), d_y.arg(), d_x.arg(), a, b, c];
    launch(e, op, &ELEMENTWISE, "max_pool2x2_bwd_f32", elementwise(n), &mut args)
}

/// The largest index `gather_rows_f32` and `scatter_rows_f32` read exactly
/// from a float: 2^24.
pub const MAX_ROW_INDEX: usize = 1 << 24;

/// out [B, dim] = rows `idx` (B indices as floats) of a table [rows, dim].
pub fn gather_rows<E: Executor>(
    e: &E,
    table: In<'_, E::Buf>,
    idx: In<'_, E::Buf>,
    mut out: Out<'_, E::Buf>,
    dim: usize,
) -> Result<()> {
    let op = "index_select_rows";
    let b = idx.len();
    check_len(op, "the output", out.len(), b * dim)?;
    if b * dim == 0 {
        return Ok(());
    }
    if table.len() % dim != 0 {
        return Err(invalid(op, format!("a table of {} numbers has no rows of {dim}", table.len())));
    }
    let at = elementwise(out.len());
    let (b, dim) = (int(op, "rows", b)?, int(op, "row length", dim)?);
    let mut args = [table.arg(), idx.arg(), out.arg(), Arg::I32(b), Arg::I32(dim)];
    launch(e, op, &ELEMENTWISE, "gather_rows_f32", at, &mut args)
}

/// d_table [rows, dim]: row r is the sum of the rows of d_out [B, dim] whose index is r.
pub fn scatter_rows<E: Executor>(
    e: &E,
    d_out: In<'_, E::Buf>,
    idx: In<'_, E::Buf>,
    mut d_table: Out<'_, E::Buf>,
    rows: usize,
    dim: usize,
) -> Result<()> {
    let op = "index_add_rows";
    let b = idx.len();
    check_len(op, "the output gradient", d_out.len(), b * dim)?;
    check_len(op, "the table gradient", d_table.len(), rows * dim)?;
    if rows * dim == 0 {
        return Ok(());
    }
    let at = elementwise(rows * dim);
    let (b, rows, dim) = (int(op, "indices", b)?, int(op, "rows", rows)?, int(op, "row length", dim)?);
    let mut args = [d_out.arg(), idx.arg(), d_table.arg(), Arg::I32(b), Arg::I32(rows), Arg::I32(dim)];
    launch(e, op, &ELEMENTWISE, "scatter_rows_f32", at, &mut args)
}

/// Inverted dropout: y = x * mask, the mask of Philox stream `seed`
/// (`ddpm_tensor::philox::dropout_mask`).
pub fn dropout<E: Executor>(e: &E, x: In<'_, E::Buf>, mut y: Out<'_, E::Buf>, seed: u64, p: f32) -> Result<()> {
    let op = "dropout";
    check_len(op, "the output", y.len(), x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let mut args = [x.arg(), y.arg(), Arg::I64(long(op, "length", x.len())?), Arg::F32(p), Arg::U64(seed)];
    launch(e, op, &ELEMENTWISE, "dropout_f32", elementwise(x.len()), &mut args)
}
