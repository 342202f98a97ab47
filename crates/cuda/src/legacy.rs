//! The device ops of the first GPU path (`crates/ddpm/src/device.rs`,
//! `device_train.rs`, xtask's `--device cuda`, `benches/device.rs`), on an
//! [`Executor`]'s own buffers: each allocates its output and makes the
//! launches of [`crate::ops`] that compute it, several where the new kernels
//! split what one old kernel did (a bias after a product, the clipping factor
//! before Adam). Kept until that path moves onto `ddpm_tensor::Tensor` on a
//! device ([`crate::KernelBackend`]); then this file goes, and nothing else
//! in the crate depends on it.

use ddpm_tensor::backend::{BlockCopy, Broadcast, Reduction};
use ddpm_tensor::ops::{BinaryOp, SamplingStep, UnaryBackward, UnaryOp};

use crate::exec::Executor;
use crate::launch::ConvShape;
use crate::ops::conv2d::ConvKernel;
use crate::ops::norm::NormGrads;
use crate::ops::{self, In, Out};
use crate::{CudaError, Result};

/// The scalars of one Adam step (the tensor crate's).
pub use ddpm_tensor::backend::AdamStep;

/// A batched product `C[i] = alpha op(A[i]) op(B[i]) + bias` for i < batch: C
/// is m x n (contiguous batches), the reduction has length l; A is m x l
/// (l x m when transposed), B is l x n (n x l when transposed). A's and B's
/// batch strides are explicit: 0 for a shared weight, larger than the matrix
/// for one read out of a bigger tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub l: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
    pub stride_a: usize,
    pub stride_b: usize,
}

impl MatmulShape {
    /// Contiguous batches of both operands, no transposes.
    pub fn new(batch: usize, m: usize, n: usize, l: usize) -> MatmulShape {
        MatmulShape { batch, m, n, l, transpose_a: false, transpose_b: false, stride_a: m * l, stride_b: l * n }
    }

    /// The elements A's batches span (from the first one's start).
    pub fn a_len(&self) -> usize {
        (self.batch - 1) * self.stride_a + self.m * self.l
    }

    pub fn b_len(&self) -> usize {
        (self.batch - 1) * self.stride_b + self.l * self.n
    }

    pub fn c_len(&self) -> usize {
        self.batch * self.m * self.n
    }
}

/// A group norm's extents: x [n, c, hw] in `groups` groups of c / groups
/// channels, followed by SiLU or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub groups: usize,
    pub silu: bool,
}

impl NormShape {
    fn shape(&self) -> ddpm_tensor::backend::NormShape {
        ddpm_tensor::backend::NormShape { n: self.n, c: self.c, hw: self.hw, groups: self.groups }
    }
}

/// The coefficients of one sampling step, computed on the host in f64 as
/// `ddpm::sampler` does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Update {
    /// x' = (x - eps_coef e) / sqrt_a + sigma z.
    Ddpm { eps_coef: f32, sqrt_a: f32, sigma: f32 },
    /// x0 = (x - sqrt(1 - ab) e) / sqrt(ab); x' = sqrt(ab_prev) x0 + dir e + sigma z.
    Ddim { ab: f64, ab_prev: f64, sigma: f64, dir: f64 },
}

impl Update {
    /// The scale of the fresh noise the step adds (0: none).
    pub fn sigma(&self) -> f64 {
        match *self {
            Update::Ddpm { sigma, .. } => sigma as f64,
            Update::Ddim { sigma, .. } => sigma,
        }
    }
}

/// One sampling step: the update, the guidance weight (None: eps holds only
/// the conditional estimate) and where its noise comes from (Philox stream
/// `seed`, draw `offset`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub update: Update,
    pub guidance: Option<f32>,
    pub seed: u64,
    pub offset: u64,
}

impl Step {
    fn sampling_step(&self) -> SamplingStep {
        use ddpm_tensor::ops::Update as U;
        let update = match self.update {
            Update::Ddpm { eps_coef, sqrt_a, sigma } => U::Ddpm { eps_coef, sqrt_a, sigma },
            Update::Ddim { ab, ab_prev, sigma, dir } => U::Ddim { ab, ab_prev, sigma, dir },
        };
        SamplingStep { update, guidance: self.guidance, seed: self.seed, offset: self.offset }
    }
}

fn invalid(op: &'static str, message: String) -> CudaError {
    CudaError::Invalid { op, message }
}

fn check_len(what: &'static str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(invalid(what, format!("buffer holds {got} numbers, the shape needs {want}")))
    }
}

/// A walk over `n` elements of two operands of the same shape.
fn same_shape(n: usize) -> Broadcast {
    Broadcast { dims: vec![n], lhs: vec![1], rhs: vec![1] }
}

/// A walk over x [rows, inner] with v [rows] broadcast along each row.
fn per_row(rows: usize, inner: usize) -> Broadcast {
    Broadcast { dims: vec![rows, inner], lhs: vec![inner, 1], rhs: vec![1, 0] }
}

/// For [`DeviceOps::matmul`]: `batch` matrices of `len` at `stride` from
/// element `from.1` of `from.0`, as a buffer they start at (a compact
/// copy, None when they start at 0 already) and their stride there.
fn batches_from<E: Executor>(
    e: &E,
    from: (&E::Buf, usize),
    batch: usize,
    len: usize,
    stride: usize,
) -> Result<(Option<E::Buf>, usize)> {
    let (buf, offset) = from;
    if offset == 0 {
        return Ok((None, stride));
    }
    // A shared matrix (stride 0) is copied once; batches are packed.
    let blocks = if stride == 0 { 1 } else { batch };
    let mut copy = e.output(blocks * len)?;
    let c = BlockCopy { blocks, width: len, src_stride: stride, src_offset: offset, dst_stride: len, dst_offset: 0 };
    ops::elementwise::copy_blocks(e, In::new(e, buf), Out::new(e, &mut copy), &c)?;
    Ok((Some(copy), if stride == 0 { 0 } else { len }))
}

/// `reduction` of x, into a new buffer of its outputs.
fn reduce<E: Executor>(e: &E, x: &E::Buf, reduction: &Reduction) -> Result<E::Buf> {
    let mut out = e.output(reduction.outputs())?;
    ops::reduce::sum(e, In::new(e, x), Out::new(e, &mut out), reduction)?;
    Ok(out)
}

/// `op` of x, into a new buffer.
fn map<E: Executor>(e: &E, op: UnaryOp, x: &E::Buf) -> Result<E::Buf> {
    let mut y = e.output(e.len(x))?;
    ops::elementwise::unary(e, op, In::new(e, x), Out::new(e, &mut y))?;
    Ok(y)
}

/// lhs (op) rhs over `walk`, into a new buffer.
fn zip<E: Executor>(e: &E, op: BinaryOp, lhs: &E::Buf, rhs: &E::Buf, walk: &Broadcast) -> Result<E::Buf> {
    let mut out = e.output(walk.dims.iter().product())?;
    ops::elementwise::binary(e, op, In::new(e, lhs), In::new(e, rhs), Out::new(e, &mut out), walk)?;
    Ok(out)
}

/// The ops, for every executor.
pub trait DeviceOps: Executor + Sized {
    /// y = conv2d(x, w) + bias, NCHW.
    fn conv2d_forward(
        &self,
        kernel: ConvKernel,
        g: &ConvShape,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
    ) -> Result<Self::Buf> {
        let mut y = self.output(g.output_len())?;
        let (x, w, bias) = (In::new(self, x), In::new(self, w), bias.map(|b| In::new(self, b)));
        ops::conv2d::forward(self, kernel, g, x, w, bias, None, None, Out::new(self, &mut y))?;
        Ok(y)
    }

    /// The gradient of the convolution's input, from that of its output.
    fn conv2d_backward_input(
        &self,
        kernel: ConvKernel,
        g: &ConvShape,
        d_y: &Self::Buf,
        w: &Self::Buf,
    ) -> Result<Self::Buf> {
        let mut d_x = self.output(g.input_len())?;
        ops::conv2d::backward_input(self, kernel, g, In::new(self, d_y), In::new(self, w), Out::new(self, &mut d_x))?;
        Ok(d_x)
    }

    /// The gradient of the convolution's weight, from its input and the
    /// gradient of its output.
    fn conv2d_backward_weight(
        &self,
        kernel: ConvKernel,
        g: &ConvShape,
        x: &Self::Buf,
        d_y: &Self::Buf,
    ) -> Result<Self::Buf> {
        let mut d_w = self.output(g.weight_len())?;
        ops::conv2d::backward_weight(self, kernel, g, In::new(self, x), In::new(self, d_y), Out::new(self, &mut d_w))?;
        Ok(d_w)
    }

    /// C = alpha op(A) op(B) + bias, A read from element `a.1` of `a.0` on
    /// (and B likewise); see [`MatmulShape`]. An operand read from an offset
    /// is first copied out (the product's kernel reads from the start).
    fn matmul(
        &self,
        s: &MatmulShape,
        a: (&Self::Buf, usize),
        b: (&Self::Buf, usize),
        bias: Option<&Self::Buf>,
        alpha: f32,
    ) -> Result<Self::Buf> {
        if s.batch == 0 {
            return Err(invalid("matmul", "an empty batch".into()));
        }
        if self.len(a.0) < a.1 + s.a_len() || self.len(b.0) < b.1 + s.b_len() {
            return Err(invalid(
                "matmul",
                format!("operands of {} and {} numbers are too short for {s:?}", self.len(a.0), self.len(b.0)),
            ));
        }
        if let Some(bias) = bias {
            check_len("matmul bias", self.len(bias), s.n)?;
        }
        let (a_copy, a_stride) = batches_from(self, a, s.batch, s.m * s.l, s.stride_a)?;
        let (b_copy, b_stride) = batches_from(self, b, s.batch, s.l * s.n, s.stride_b)?;
        let shape = ddpm_tensor::backend::MatmulShape {
            batch: s.batch,
            m: s.m,
            n: s.n,
            k: s.l,
            transpose_a: s.transpose_a,
            transpose_b: s.transpose_b,
            a_stride,
            b_stride,
        };
        let mut c = self.output(s.c_len())?;
        let a = In::new(self, a_copy.as_ref().unwrap_or(a.0));
        let b = In::new(self, b_copy.as_ref().unwrap_or(b.0));
        ops::matmul::matmul(self, a, b, Out::new(self, &mut c), &shape)?;
        if alpha != 1.0 {
            let mut scaled = self.output(s.c_len())?;
            ops::elementwise::unary(self, UnaryOp::Scale(alpha), In::new(self, &c), Out::new(self, &mut scaled))?;
            c = scaled;
        }
        if let Some(bias) = bias {
            let mut biased = self.output(s.c_len())?;
            let (c_in, bias) = (In::new(self, &c), In::new(self, bias));
            // bias[j] added to every row of C.
            let walk = Broadcast { dims: vec![s.batch * s.m, s.n], lhs: vec![s.n, 1], rhs: vec![0, 1] };
            ops::elementwise::binary(self, BinaryOp::Add, c_in, bias, Out::new(self, &mut biased), &walk)?;
            c = biased;
        }
        Ok(c)
    }

    /// y = act(GroupNorm(x)); returns y and the per-(sample, group) mean and 1/std.
    fn group_norm_forward(
        &self,
        g: &NormShape,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        eps: f32,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)> {
        let rows = g.n * g.groups;
        let (mut y, mut mean, mut rstd) = (self.output(self.len(x))?, self.output(rows)?, self.output(rows)?);
        let (x, gamma, beta) = (In::new(self, x), In::new(self, gamma), In::new(self, beta));
        let outs = (Out::new(self, &mut y), Out::new(self, &mut mean), Out::new(self, &mut rstd));
        ops::norm::group_norm(self, &g.shape(), x, gamma, beta, outs.0, outs.1, outs.2, eps, g.silu)?;
        Ok((y, mean, rstd))
    }

    /// The gradients of [`DeviceOps::group_norm_forward`]: (d_x, d_gamma, d_beta).
    #[allow(clippy::too_many_arguments)]
    fn group_norm_backward(
        &self,
        g: &NormShape,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        d_y: &Self::Buf,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)> {
        let mut d_x = self.output(self.len(x))?;
        let (mut d_gamma, mut d_beta) = (self.output(g.c)?, self.output(g.c)?);
        let (mut dg_part, mut db_part) = (self.output(g.n * g.c)?, self.output(g.n * g.c)?);
        let grads = NormGrads {
            d_x: Out::new(self, &mut d_x),
            d_gamma: Out::new(self, &mut d_gamma),
            d_beta: Out::new(self, &mut d_beta),
            d_gamma_part: Out::new(self, &mut dg_part),
            d_beta_part: Out::new(self, &mut db_part),
        };
        let (x, gamma, beta) = (In::new(self, x), In::new(self, gamma), In::new(self, beta));
        let (mean, rstd, d_y) = (In::new(self, mean), In::new(self, rstd), In::new(self, d_y));
        ops::norm::group_norm_backward(self, &g.shape(), x, gamma, beta, mean, rstd, d_y, grads, g.silu)?;
        Ok((d_x, d_gamma, d_beta))
    }

    /// The column sums of a rows x cols matrix.
    fn sum_rows(&self, m: &Self::Buf, rows: usize, cols: usize) -> Result<Self::Buf> {
        check_len("sum_rows input", self.len(m), rows * cols)?;
        reduce(self, m, &Reduction { kept: vec![(cols, 1)], reduced: vec![(rows, cols)] })
    }

    /// silu(x).
    fn silu(&self, x: &Self::Buf) -> Result<Self::Buf> {
        map(self, UnaryOp::Silu, x)
    }

    /// x += y.
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf) -> Result<()> {
        let n = self.len(x);
        check_len("add_assign rhs", self.len(y), n)?;
        *x = zip(self, BinaryOp::Add, x, y, &same_shape(n))?;
        Ok(())
    }

    /// `x[r, j] += v[r]` for x `[rows, inner]`, v `[rows]`.
    fn add_broadcast(&self, x: &mut Self::Buf, v: &Self::Buf, inner: usize) -> Result<()> {
        let rows = self.len(v);
        check_len("add_broadcast", self.len(x), rows * inner)?;
        *x = zip(self, BinaryOp::Add, x, v, &per_row(rows, inner))?;
        Ok(())
    }

    /// [a; b] along an axis: a is [outer, ca], b is [outer, cb] (inner extents).
    fn concat2(&self, a: &Self::Buf, b: &Self::Buf, outer: usize, ca: usize, cb: usize) -> Result<Self::Buf> {
        check_len("concat lhs", self.len(a), outer * ca)?;
        check_len("concat rhs", self.len(b), outer * cb)?;
        let mut out = self.output(outer * (ca + cb))?;
        for (part, width, offset) in [(a, ca, 0), (b, cb, ca)] {
            let c = BlockCopy {
                blocks: outer,
                width,
                src_stride: width,
                src_offset: 0,
                dst_stride: ca + cb,
                dst_offset: offset,
            };
            ops::elementwise::copy_blocks(self, In::new(self, part), Out::new(self, &mut out), &c)?;
        }
        Ok(out)
    }

    /// Nearest-neighbour x2 upsampling of [planes, h, w].
    fn upsample2x(&self, x: &Self::Buf, planes: usize, h: usize, w: usize) -> Result<Self::Buf> {
        let mut y = self.output(4 * planes * h * w)?;
        let p = ddpm_tensor::backend::Planes { planes, h, w };
        ops::elementwise::upsample2x(self, In::new(self, x), Out::new(self, &mut y), &p)?;
        Ok(y)
    }

    /// Softmax over each row of x [rows, cols] (into a new buffer that replaces x).
    fn softmax_rows(&self, x: &mut Self::Buf, cols: usize) -> Result<()> {
        let mut y = self.output(self.len(x))?;
        ops::softmax::softmax(self, In::new(self, x), Out::new(self, &mut y), cols, false)?;
        *x = y;
        Ok(())
    }

    /// dL/dx of y = silu(x), from dL/dy.
    fn silu_backward(&self, x: &Self::Buf, d_y: &Self::Buf) -> Result<Self::Buf> {
        let mut d_x = self.output(self.len(x))?;
        let (g, saved) = (In::new(self, d_y), In::new(self, x));
        ops::elementwise::unary_backward(self, UnaryBackward::Silu, g, saved, Out::new(self, &mut d_x))?;
        Ok(d_x)
    }

    /// The gradient of [`DeviceOps::upsample2x`] for an input [planes, h, w].
    fn upsample2x_backward(&self, d_y: &Self::Buf, planes: usize, h: usize, w: usize) -> Result<Self::Buf> {
        let mut d_x = self.output(planes * h * w)?;
        let p = ddpm_tensor::backend::Planes { planes, h, w };
        ops::elementwise::upsample2x_backward(self, In::new(self, d_y), Out::new(self, &mut d_x), &p)?;
        Ok(d_x)
    }

    /// [`DeviceOps::concat2`] undone: cat [outer, ca + cb] into its two parts.
    fn split2(&self, cat: &Self::Buf, outer: usize, ca: usize, cb: usize) -> Result<(Self::Buf, Self::Buf)> {
        check_len("split input", self.len(cat), outer * (ca + cb))?;
        let (mut a, mut b) = (self.output(outer * ca)?, self.output(outer * cb)?);
        for (part, width, offset) in [(&mut a, ca, 0), (&mut b, cb, ca)] {
            let c = BlockCopy {
                blocks: outer,
                width,
                src_stride: ca + cb,
                src_offset: offset,
                dst_stride: width,
                dst_offset: 0,
            };
            ops::elementwise::copy_blocks(self, In::new(self, cat), Out::new(self, part), &c)?;
        }
        Ok((a, b))
    }

    /// `x_t = abar[r] x0 + bbar[r] e`, per row r of `inner` elements (one image).
    fn q_sample(
        &self,
        x0: &Self::Buf,
        e: &Self::Buf,
        abar: &Self::Buf,
        bbar: &Self::Buf,
        inner: usize,
    ) -> Result<Self::Buf> {
        let n = self.len(x0);
        check_len("q_sample noise", self.len(e), n)?;
        let rows = self.len(abar).min(self.len(bbar));
        check_len("q_sample coefficients", rows * inner, n)?;
        let signal = zip(self, BinaryOp::Mul, x0, abar, &per_row(rows, inner))?;
        let noise = zip(self, BinaryOp::Mul, e, bbar, &per_row(rows, inner))?;
        zip(self, BinaryOp::Add, &signal, &noise, &same_shape(n))
    }

    /// (scale (pred - target), (pred - target)^2).
    fn mse_grad(&self, pred: &Self::Buf, target: &Self::Buf, scale: f32) -> Result<(Self::Buf, Self::Buf)> {
        let n = self.len(pred);
        check_len("mse target", self.len(target), n)?;
        let d = zip(self, BinaryOp::Sub, pred, target, &same_shape(n))?;
        Ok((map(self, UnaryOp::Scale(scale), &d)?, map(self, UnaryOp::Square, &d)?))
    }

    /// The sums of each row of x [rows, inner].
    fn sum_inner(&self, x: &Self::Buf, rows: usize, inner: usize) -> Result<Self::Buf> {
        check_len("sum_inner input", self.len(x), rows * inner)?;
        reduce(self, x, &Reduction { kept: vec![(rows, inner)], reduced: vec![(inner, 1)] })
    }

    /// The gradient of [`DeviceOps::softmax_rows`]: y is the softmax's
    /// output, g the gradient of its output on entry and of its input on
    /// return (a new buffer).
    fn softmax_rows_backward(&self, y: &Self::Buf, g: &mut Self::Buf, cols: usize) -> Result<()> {
        let mut d_x = self.output(self.len(y))?;
        ops::softmax::softmax_backward(
            self,
            In::new(self, y),
            In::new(self, g),
            Out::new(self, &mut d_x),
            cols,
            false,
        )?;
        *g = d_x;
        Ok(())
    }

    /// Clips the gradients `grads` to a global norm of `max_norm` lazily:
    /// returns [norm, factor] on the device, for [`DeviceOps::adam`] to
    /// apply, with factor = min(1, max_norm / (norm + 1e-6)) (a NaN stays NaN).
    fn clip_coefficient(&self, grads: &[&Self::Buf], max_norm: f32) -> Result<Self::Buf> {
        let xs: Vec<In<'_, Self::Buf>> = grads.iter().map(|g| In::new(self, *g)).collect();
        let lens: Vec<usize> = xs.iter().map(In::len).collect();
        let parts_len = ops::reduce::partials_len(&lens);
        let mut parts = if parts_len > 0 { Some(self.output(parts_len)?) } else { None };
        let parts_out = match &mut parts {
            Some(p) => Out::new(self, p),
            None => Out::from_parts(0, None),
        };
        let mut norm = self.output(1)?;
        ops::reduce::global_norm(self, &xs, parts_out, Out::new(self, &mut norm))?;
        let mut limit = self.output(1)?;
        ops::elementwise::fill(self, Out::new(self, &mut limit), max_norm)?;
        let shifted = map(self, UnaryOp::Affine { scale: 1.0, shift: 1e-6 }, &norm)?;
        let coef = zip(self, BinaryOp::Div, &limit, &shifted, &same_shape(1))?;
        let factor = map(self, UnaryOp::Clamp { low: f32::NEG_INFINITY, high: 1.0 }, &coef)?;
        let mut out = self.output(2)?;
        for (part, at) in [(&norm, 0), (&factor, 1)] {
            let c = BlockCopy { blocks: 1, width: 1, src_stride: 1, src_offset: 0, dst_stride: 2, dst_offset: at };
            ops::elementwise::copy_blocks(self, In::new(self, part), Out::new(self, &mut out), &c)?;
        }
        Ok(out)
    }

    /// One Adam step on parameter p with gradient g times `clip[1]`; see
    /// `kernels/optim.cu` for the formula and [`AdamStep`] for the scalars.
    fn adam(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        clip: &Self::Buf,
        s: &AdamStep,
    ) -> Result<()> {
        let n = self.len(p);
        check_len("adam clip", self.len(clip), 2)?;
        let mut factor = self.output(1)?;
        let c = BlockCopy { blocks: 1, width: 1, src_stride: 1, src_offset: 1, dst_stride: 1, dst_offset: 0 };
        ops::elementwise::copy_blocks(self, In::new(self, clip), Out::new(self, &mut factor), &c)?;
        check_len("adam gradient", self.len(g), n)?;
        let clipped = zip(self, BinaryOp::Mul, g, &factor, &Broadcast { dims: vec![n], lhs: vec![1], rhs: vec![0] })?;
        let mut p_out = self.output(n)?;
        let (m, v) = (Out::new(self, m), Out::new(self, v));
        ops::optim::adam(self, In::new(self, p), In::new(self, &clipped), m, v, Out::new(self, &mut p_out), s)?;
        *p = p_out;
        Ok(())
    }

    /// shadow += (1 - d) (p - shadow).
    fn ema(&self, shadow: &mut Self::Buf, p: &Self::Buf, one_minus_d: f32) -> Result<()> {
        ops::optim::lerp(self, Out::new(self, shadow), In::new(self, p), one_minus_d)
    }

    /// Rows `idx` (indices as floats) of a table [rows, dim].
    fn gather_rows(&self, table: &Self::Buf, idx: &Self::Buf, dim: usize) -> Result<Self::Buf> {
        if dim == 0 || self.len(table) % dim != 0 {
            return Err(invalid("gather_rows", format!("a table of {} numbers has no rows of {dim}", self.len(table))));
        }
        let mut out = self.output(self.len(idx) * dim)?;
        ops::elementwise::gather_rows(self, In::new(self, table), In::new(self, idx), Out::new(self, &mut out), dim)?;
        Ok(out)
    }

    /// The gradient of [`DeviceOps::gather_rows`] for a table of `rows` rows.
    fn scatter_rows(&self, d_out: &Self::Buf, idx: &Self::Buf, rows: usize, dim: usize) -> Result<Self::Buf> {
        let mut d_table = self.output(rows * dim)?;
        let (d_out, idx) = (In::new(self, d_out), In::new(self, idx));
        ops::elementwise::scatter_rows(self, d_out, idx, Out::new(self, &mut d_table), rows, dim)?;
        Ok(d_table)
    }

    /// Inverted dropout with the mask of Philox stream `seed` (the same mask
    /// as `ddpm_nn::layers::dropout_mask`); its gradient is the same op on dy.
    fn dropout(&self, x: &Self::Buf, p: f32, seed: u64) -> Result<Self::Buf> {
        let mut y = self.output(self.len(x))?;
        ops::elementwise::dropout(self, In::new(self, x), Out::new(self, &mut y), seed, p)?;
        Ok(y)
    }

    /// A copy of x.
    fn copy(&self, x: &Self::Buf) -> Result<Self::Buf> {
        let n = self.len(x);
        let mut out = self.output(n)?;
        ops::elementwise::copy_blocks(self, In::new(self, x), Out::new(self, &mut out), &BlockCopy::whole(n))?;
        Ok(out)
    }

    /// `len` standard normal numbers: draw `offset` of the Philox stream
    /// `seed`, the same numbers as `ddpm_tensor::philox::normal` on the CPU.
    fn randn(&self, len: usize, seed: u64, offset: u64) -> Result<Self::Buf> {
        let mut out = self.output(len)?;
        ops::sampling::randn(self, Out::new(self, &mut out), seed, offset)?;
        Ok(out)
    }

    /// One sampling step on `x` (its new value replaces it), guidance included (see [`Step`]).
    fn sampling_step(&self, x: &mut Self::Buf, eps: &Self::Buf, step: &Step) -> Result<()> {
        let mut out = self.output(self.len(x))?;
        ops::sampling::step(
            self,
            In::new(self, x),
            In::new(self, eps),
            Out::new(self, &mut out),
            &step.sampling_step(),
        )?;
        *x = out;
        Ok(())
    }
}

impl<E: Executor> DeviceOps for E {}
