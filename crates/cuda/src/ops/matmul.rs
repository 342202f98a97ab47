//! The launch of `kernels/matmul.cu`: batched products on `gemm.cuh`'s tiles.

use ddpm_tensor::backend::MatmulShape;

use super::{check_len, int, invalid, launch, long, In, Out};
use crate::exec::{Arg, Executor};
use crate::launch::tiled_gemm;
use crate::source::MATMUL;
use crate::Result;

/// The numbers a batch of matrices of `len` spans at batch stride `stride`.
fn span(batch: usize, stride: usize, len: usize) -> usize {
    if batch == 0 || len == 0 {
        0
    } else {
        (batch - 1) * stride + len
    }
}

/// `C[i] = op(A[i]) op(B[i])` for i < batch (see [`MatmulShape`]).
pub fn matmul<E: Executor>(
    e: &E,
    a: In<'_, E::Buf>,
    b: In<'_, E::Buf>,
    mut c: Out<'_, E::Buf>,
    s: &MatmulShape,
) -> Result<()> {
    let op = "matmul";
    check_len(op, "the product", c.len(), s.batch * s.m * s.n)?;
    if span(s.batch, s.a_stride, s.m * s.k) > a.len() || span(s.batch, s.b_stride, s.k * s.n) > b.len() {
        return Err(invalid(op, format!("operands of {} and {} numbers are too short for {s:?}", a.len(), b.len())));
    }
    if c.is_empty() {
        return Ok(());
    }
    let mut args = vec![a.arg(), b.arg(), c.arg()];
    for (what, v) in [("m", s.m), ("n", s.n), ("k", s.k)] {
        args.push(Arg::I32(int(op, what, v)?));
    }
    args.extend([Arg::I32(s.transpose_a.into()), Arg::I32(s.transpose_b.into())]);
    args.extend([Arg::I64(long(op, "A's stride", s.a_stride)?), Arg::I64(long(op, "B's stride", s.b_stride)?)]);
    launch(e, op, &MATMUL, "matmul_f32", tiled_gemm(s.m, s.n, s.batch), &mut args)
}
