//! Every kernel as a checked operation on an [`Executor`]'s buffers: the
//! lengths are checked against the shapes, the output allocated, the grid
//! taken from [`crate::launch`]. Written once for the GPU and the emulation.

use crate::exec::{Arg, Executor};
use crate::launch::{self, ConvShape};
use crate::source::{CONV2D, ELEMENTWISE, MATMUL, NORM, OPTIM, SAMPLING, SOFTMAX};
use crate::{CudaError, Result};

/// Which of a convolution's kernels to run: the tiled implicit GEMM, or the
/// one-output-per-thread reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    Tiled,
    Naive,
}

/// A batched product C[i] = alpha op(A[i]) op(B[i]) + bias for i < batch: C
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

    /// m, n, l, transpose_a, transpose_b as the kernel's ints.
    pub fn args(&self) -> [i32; 5] {
        let a = [self.m, self.n, self.l, self.transpose_a as usize, self.transpose_b as usize];
        a.map(|v| i32::try_from(v).expect("matmul extent beyond i32"))
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
    /// One block per (sample, group).
    pub fn rows(&self) -> usize {
        self.n * self.groups
    }

    fn check(&self, x: usize, gamma: usize, beta: usize) -> Result<()> {
        if self.groups == 0 || !self.c.is_multiple_of(self.groups) {
            return Err(invalid(
                "group norm",
                format!("{} channels cannot be cut into {} groups", self.c, self.groups),
            ));
        }
        check_len("group norm input", x, self.n * self.c * self.hw)?;
        check_len("group norm weight", gamma, self.c)?;
        check_len("group norm bias", beta, self.c)
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

/// The scalars of one Adam step, computed on the host as
/// `ddpm_nn::optim::Adam::step` does: step_size = lr / (1 - b1^t),
/// bias_correction2_sqrt = sqrt(1 - b2^t).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    pub step_size: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
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

fn i32_of(v: usize) -> i32 {
    i32::try_from(v).expect("extent beyond i32")
}

/// The ops, for every executor.
pub trait DeviceOps: Executor {
    /// y = conv2d(x, w) + bias, NCHW.
    fn conv2d_forward(
        &self,
        kernel: ConvKernel,
        g: &ConvShape,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
    ) -> Result<Self::Buf> {
        check_len("conv2d input", self.len(x), g.input_len())?;
        check_len("conv2d weight", self.len(w), g.weight_len())?;
        if let Some(b) = bias {
            check_len("conv2d bias", self.len(b), g.k)?;
        }
        let mut y = self.output(g.output_len())?;
        let (name, at) = match kernel {
            ConvKernel::Tiled => ("conv2d_fwd_f32", g.forward()),
            ConvKernel::Naive => ("conv2d_fwd_naive_f32", launch::elementwise(g.output_len())),
        };
        let mut args = vec![Arg::In(x), Arg::In(w), bias.map_or(Arg::Null, Arg::In), Arg::Out(&mut y)];
        args.extend(g.args().map(Arg::I32));
        self.launch(&CONV2D, name, at, &mut args)?;
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
        check_len("conv2d output gradient", self.len(d_y), g.output_len())?;
        check_len("conv2d weight", self.len(w), g.weight_len())?;
        let mut d_x = self.output(g.input_len())?;
        let (name, at) = match kernel {
            ConvKernel::Tiled => ("conv2d_bwd_input_f32", g.backward_input()),
            ConvKernel::Naive => ("conv2d_bwd_input_naive_f32", launch::elementwise(g.input_len())),
        };
        let mut args = vec![Arg::In(d_y), Arg::In(w), Arg::Out(&mut d_x)];
        args.extend(g.args().map(Arg::I32));
        self.launch(&CONV2D, name, at, &mut args)?;
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
        check_len("conv2d input", self.len(x), g.input_len())?;
        check_len("conv2d output gradient", self.len(d_y), g.output_len())?;
        let mut d_w = self.output(g.weight_len())?;
        let (name, at) = match kernel {
            ConvKernel::Tiled => ("conv2d_bwd_weight_f32", g.backward_weight()),
            ConvKernel::Naive => ("conv2d_bwd_weight_naive_f32", launch::elementwise(g.weight_len())),
        };
        let mut args = vec![Arg::In(x), Arg::In(d_y), Arg::Out(&mut d_w)];
        args.extend(g.args().map(Arg::I32));
        self.launch(&CONV2D, name, at, &mut args)?;
        Ok(d_w)
    }

    /// C = alpha op(A) op(B) + bias, A read from element `a.1` of `a.0` on
    /// (and B likewise); see [`MatmulShape`].
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
        let mut c = self.output(s.c_len())?;
        let mut args =
            vec![Arg::InAt(a.0, a.1), Arg::InAt(b.0, b.1), Arg::Out(&mut c), bias.map_or(Arg::Null, Arg::In)];
        args.extend(s.args().map(Arg::I32));
        args.extend([Arg::I64(s.stride_a as i64), Arg::I64(s.stride_b as i64), Arg::I64((s.m * s.n) as i64)]);
        args.extend([Arg::F32(alpha), Arg::I32(0)]);
        self.launch(&MATMUL, "matmul_f32", launch::tiled_gemm(s.m, s.n, s.batch), &mut args)?;
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
        g.check(self.len(x), self.len(gamma), self.len(beta))?;
        let (mut y, mut mean, mut rstd) = (self.output(self.len(x))?, self.output(g.rows())?, self.output(g.rows())?);
        let mut args =
            vec![Arg::In(x), Arg::In(gamma), Arg::In(beta), Arg::Out(&mut y), Arg::Out(&mut mean), Arg::Out(&mut rstd)];
        args.extend([
            Arg::I32(i32_of(g.c)),
            Arg::I32(i32_of(g.hw)),
            Arg::I32(i32_of(g.groups)),
            Arg::F32(eps),
            Arg::I32(g.silu.into()),
        ]);
        self.launch(&NORM, "group_norm_fwd_f32", launch::per_row(g.rows()), &mut args)?;
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
        g.check(self.len(x), self.len(gamma), self.len(beta))?;
        check_len("group norm output gradient", self.len(d_y), self.len(x))?;
        check_len("group norm mean", self.len(mean), g.rows())?;
        check_len("group norm rstd", self.len(rstd), g.rows())?;
        let mut d_x = self.output(self.len(x))?;
        let (mut dg_part, mut db_part) = (self.output(g.n * g.c)?, self.output(g.n * g.c)?);
        let mut args = vec![Arg::In(x), Arg::In(gamma), Arg::In(beta), Arg::In(d_y), Arg::In(mean), Arg::In(rstd)];
        args.extend([Arg::Out(&mut d_x), Arg::Out(&mut dg_part), Arg::Out(&mut db_part)]);
        args.extend([
            Arg::I32(i32_of(g.c)),
            Arg::I32(i32_of(g.hw)),
            Arg::I32(i32_of(g.groups)),
            Arg::I32(g.silu.into()),
        ]);
        self.launch(&NORM, "group_norm_bwd_f32", launch::per_row(g.rows()), &mut args)?;
        let d_gamma = self.sum_rows(&dg_part, g.n, g.c)?;
        let d_beta = self.sum_rows(&db_part, g.n, g.c)?;
        Ok((d_x, d_gamma, d_beta))
    }

    /// The column sums of a rows x cols matrix.
    fn sum_rows(&self, m: &Self::Buf, rows: usize, cols: usize) -> Result<Self::Buf> {
        check_len("sum_rows input", self.len(m), rows * cols)?;
        let mut out = self.output(cols)?;
        let mut args = [Arg::In(m), Arg::Out(&mut out), Arg::I32(i32_of(rows)), Arg::I32(i32_of(cols))];
        self.launch(&NORM, "sum_rows_f32", launch::elementwise(cols), &mut args)?;
        Ok(out)
    }

    /// silu(x).
    fn silu(&self, x: &Self::Buf) -> Result<Self::Buf> {
        let n = self.len(x);
        let mut y = self.output(n)?;
        self.launch(
            &ELEMENTWISE,
            "silu_f32",
            launch::elementwise(n),
            &mut [Arg::In(x), Arg::Out(&mut y), Arg::I64(n as i64)],
        )?;
        Ok(y)
    }

    /// x += y.
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf) -> Result<()> {
        let n = self.len(x);
        check_len("add_assign rhs", self.len(y), n)?;
        self.launch(
            &ELEMENTWISE,
            "add_assign_f32",
            launch::elementwise(n),
            &mut [Arg::Out(x), Arg::In(y), Arg::I64(n as i64)],
        )
    }

    /// x[r, j] += v[r] for x [rows, inner], v [rows].
    fn add_broadcast(&self, x: &mut Self::Buf, v: &Self::Buf, inner: usize) -> Result<()> {
        let rows = self.len(v);
        check_len("add_broadcast", self.len(x), rows * inner)?;
        let mut args = [Arg::Out(x), Arg::In(v), Arg::I64(rows as i64), Arg::I32(i32_of(inner))];
        self.launch(&ELEMENTWISE, "add_broadcast_f32", launch::elementwise(rows * inner), &mut args)
    }

    /// [a; b] along an axis: a is [outer, ca], b is [outer, cb] (inner extents).
    fn concat2(&self, a: &Self::Buf, b: &Self::Buf, outer: usize, ca: usize, cb: usize) -> Result<Self::Buf> {
        check_len("concat lhs", self.len(a), outer * ca)?;
        check_len("concat rhs", self.len(b), outer * cb)?;
        let n = outer * (ca + cb);
        let mut out = self.output(n)?;
        let mut args = [
            Arg::In(a),
            Arg::In(b),
            Arg::Out(&mut out),
            Arg::I64(outer as i64),
            Arg::I64(ca as i64),
            Arg::I64(cb as i64),
        ];
        self.launch(&ELEMENTWISE, "concat2_f32", launch::elementwise(n), &mut args)?;
        Ok(out)
    }

    /// Nearest-neighbour x2 upsampling of [planes, h, w].
    fn upsample2x(&self, x: &Self::Buf, planes: usize, h: usize, w: usize) -> Result<Self::Buf> {
        check_len("upsample input", self.len(x), planes * h * w)?;
        let n = 4 * planes * h * w;
        let mut y = self.output(n)?;
        let mut args =
            [Arg::In(x), Arg::Out(&mut y), Arg::I64(planes as i64), Arg::I32(i32_of(h)), Arg::I32(i32_of(w))];
        self.launch(&ELEMENTWISE, "upsample2x_f32", launch::elementwise(n), &mut args)?;
        Ok(y)
    }

    /// Softmax over each row of x [rows, cols], in place.
    fn softmax_rows(&self, x: &mut Self::Buf, cols: usize) -> Result<()> {
        let n = self.len(x);
        if cols == 0 || n % cols != 0 {
            return Err(invalid("softmax", format!("{n} numbers are not rows of {cols}")));
        }
        let mut args = [Arg::Out(x), Arg::I32(i32_of(cols))];
        self.launch(&SOFTMAX, "softmax_rows_f32", launch::per_row(n / cols), &mut args)
    }

    /// dL/dx of y = silu(x), from dL/dy.
    fn silu_backward(&self, x: &Self::Buf, d_y: &Self::Buf) -> Result<Self::Buf> {
        let n = self.len(x);
        check_len("silu gradient", self.len(d_y), n)?;
        let mut d_x = self.output(n)?;
        let mut args = [Arg::In(x), Arg::In(d_y), Arg::Out(&mut d_x), Arg::I64(n as i64)];
        self.launch(&ELEMENTWISE, "silu_bwd_f32", launch::elementwise(n), &mut args)?;
        Ok(d_x)
    }

    /// The gradient of [`DeviceOps::upsample2x`] for an input [planes, h, w].
    fn upsample2x_backward(&self, d_y: &Self::Buf, planes: usize, h: usize, w: usize) -> Result<Self::Buf> {
        check_len("upsample gradient", self.len(d_y), 4 * planes * h * w)?;
        let mut d_x = self.output(planes * h * w)?;
        let mut args =
            [Arg::In(d_y), Arg::Out(&mut d_x), Arg::I64(planes as i64), Arg::I32(i32_of(h)), Arg::I32(i32_of(w))];
        self.launch(&ELEMENTWISE, "upsample2x_bwd_f32", launch::elementwise(planes * h * w), &mut args)?;
        Ok(d_x)
    }

    /// [`DeviceOps::concat2`] undone: cat [outer, ca + cb] into its two parts.
    fn split2(&self, cat: &Self::Buf, outer: usize, ca: usize, cb: usize) -> Result<(Self::Buf, Self::Buf)> {
        check_len("split input", self.len(cat), outer * (ca + cb))?;
        let (mut a, mut b) = (self.output(outer * ca)?, self.output(outer * cb)?);
        let mut args = [
            Arg::In(cat),
            Arg::Out(&mut a),
            Arg::Out(&mut b),
            Arg::I64(outer as i64),
            Arg::I64(ca as i64),
            Arg::I64(cb as i64),
        ];
        self.launch(&ELEMENTWISE, "split2_f32", launch::elementwise(outer * (ca + cb)), &mut args)?;
        Ok((a, b))
    }

    /// x_t = abar[r] x0 + bbar[r] e, per row r of `inner` elements (one image).
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
        check_len("q_sample coefficients", self.len(abar).min(self.len(bbar)) * inner, n)?;
        let mut x_t = self.output(n)?;
        let mut args = [
            Arg::In(x0),
            Arg::In(e),
            Arg::In(abar),
            Arg::In(bbar),
            Arg::Out(&mut x_t),
            Arg::I64(n as i64),
            Arg::I32(i32_of(inner)),
        ];
        self.launch(&ELEMENTWISE, "q_sample_f32", launch::elementwise(n), &mut args)?;
        Ok(x_t)
    }

    /// (scale (pred - target), (pred - target)^2).
    fn mse_grad(&self, pred: &Self::Buf, target: &Self::Buf, scale: f32) -> Result<(Self::Buf, Self::Buf)> {
        let n = self.len(pred);
        check_len("mse target", self.len(target), n)?;
        let (mut grad, mut sq) = (self.output(n)?, self.output(n)?);
        let mut args = [
            Arg::In(pred),
            Arg::In(target),
            Arg::Out(&mut grad),
            Arg::Out(&mut sq),
            Arg::I64(n as i64),
            Arg::F32(scale),
        ];
        self.launch(&ELEMENTWISE, "mse_grad_f32", launch::elementwise(n), &mut args)?;
        Ok((grad, sq))
    }

    /// The sums of each row of x [rows, inner].
    fn sum_inner(&self, x: &Self::Buf, rows: usize, inner: usize) -> Result<Self::Buf> {
        check_len("sum_inner input", self.len(x), rows * inner)?;
        let mut out = self.output(rows)?;
        let mut args = [Arg::In(x), Arg::Out(&mut out), Arg::I32(i32_of(inner))];
        self.launch(&NORM, "sum_inner_f32", launch::per_row(rows), &mut args)?;
        Ok(out)
    }

    /// The gradient of [`DeviceOps::softmax_rows`], in place on g: y is the
    /// softmax's output, g the gradient of its output on entry and of its
    /// input on return.
    fn softmax_rows_backward(&self, y: &Self::Buf, g: &mut Self::Buf, cols: usize) -> Result<()> {
        let n = self.len(y);
        check_len("softmax gradient", self.len(g), n)?;
        if cols == 0 || n % cols != 0 {
            return Err(invalid("softmax gradient", format!("{n} numbers are not rows of {cols}")));
        }
        let mut args = [Arg::In(y), Arg::Out(g), Arg::I32(i32_of(cols))];
        self.launch(&SOFTMAX, "softmax_bwd_rows_f32", launch::per_row(n / cols), &mut args)
    }

    /// Clips the gradients `grads` to a global norm of `max_norm` lazily:
    /// returns [norm, factor] on the device, for [`DeviceOps::adam`] to apply.
    fn clip_coefficient(&self, grads: &[&Self::Buf], max_norm: f32) -> Result<Self::Buf> {
        let mut sums = self.output(grads.len().max(1))?;
        for (i, g) in grads.iter().enumerate() {
            let n = self.len(g);
            let mut args = [Arg::In(*g), Arg::I64(n as i64), Arg::Out(&mut sums), Arg::I32(i32_of(i))];
            self.launch(&OPTIM, "sumsq_f32", launch::per_row(1), &mut args)?;
        }
        let mut out = self.output(2)?;
        let mut args = [Arg::In(&sums), Arg::I32(i32_of(grads.len())), Arg::F32(max_norm), Arg::Out(&mut out)];
        self.launch(&OPTIM, "clip_coef_f32", launch::per_row(1), &mut args)?;
        Ok(out)
    }

    /// One Adam step on parameter p with gradient g times clip[1]; see
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
        for (what, len) in [("adam gradient", self.len(g)), ("adam m", self.len(m)), ("adam v", self.len(v))] {
            check_len(what, len, n)?;
        }
        check_len("adam clip", self.len(clip), 2)?;
        let mut args = [
            Arg::Out(p),
            Arg::In(g),
            Arg::Out(m),
            Arg::Out(v),
            Arg::I64(n as i64),
            Arg::In(clip),
            Arg::F32(s.step_size),
            Arg::F32(s.beta1),
            Arg::F32(s.beta2),
            Arg::F32(s.bias_correction2_sqrt),
            Arg::F32(s.eps),
        ];
        self.launch(&OPTIM, "adam_f32", launch::elementwise(n), &mut args)
    }

    /// shadow += (1 - d) (p - shadow).
    fn ema(&self, shadow: &mut Self::Buf, p: &Self::Buf, one_minus_d: f32) -> Result<()> {
        let n = self.len(p);
        check_len("ema shadow", self.len(shadow), n)?;
        let mut args = [Arg::Out(shadow), Arg::In(p), Arg::I64(n as i64), Arg::F32(one_minus_d)];
        self.launch(&OPTIM, "ema_f32", launch::elementwise(n), &mut args)
    }

    /// Rows `idx` (indices as floats) of a table [rows, dim].
    fn gather_rows(&self, table: &Self::Buf, idx: &Self::Buf, dim: usize) -> Result<Self::Buf> {
        let n = self.len(idx);
        if dim == 0 || self.len(table) % dim != 0 {
            return Err(invalid("gather_rows", format!("a table of {} numbers has no rows of {dim}", self.len(table))));
        }
        let mut out = self.output(n * dim)?;
        let mut args = [Arg::In(table), Arg::In(idx), Arg::Out(&mut out), Arg::I32(i32_of(n)), Arg::I32(i32_of(dim))];
        self.launch(&ELEMENTWISE, "gather_rows_f32", launch::elementwise(n * dim), &mut args)?;
        Ok(out)
    }

    /// The gradient of [`DeviceOps::gather_rows`] for a table of `rows` rows.
    fn scatter_rows(&self, d_out: &Self::Buf, idx: &Self::Buf, rows: usize, dim: usize) -> Result<Self::Buf> {
        let n = self.len(idx);
        check_len("scatter_rows gradient", self.len(d_out), n * dim)?;
        let mut d_table = self.output(rows * dim)?;
        let mut args = [
            Arg::In(d_out),
            Arg::In(idx),
            Arg::Out(&mut d_table),
            Arg::I32(i32_of(n)),
            Arg::I32(i32_of(rows)),
            Arg::I32(i32_of(dim)),
        ];
        self.launch(&ELEMENTWISE, "scatter_rows_f32", launch::elementwise(rows * dim), &mut args)?;
        Ok(d_table)
    }

    /// Inverted dropout with the mask of Philox stream `seed` (the same mask
    /// as `ddpm_nn::layers::dropout_mask`); its gradient is the same op on dy.
    fn dropout(&self, x: &Self::Buf, p: f32, seed: u64) -> Result<Self::Buf> {
        let n = self.len(x);
        let mut y = self.output(n)?;
        let mut args = [Arg::In(x), Arg::Out(&mut y), Arg::I64(n as i64), Arg::F32(p), Arg::U64(seed)];
        self.launch(&ELEMENTWISE, "dropout_f32", launch::elementwise(n), &mut args)?;
        Ok(y)
    }

    /// A copy of x.
    fn copy(&self, x: &Self::Buf) -> Result<Self::Buf> {
        let mut out = self.zeros(self.len(x))?;
        self.add_assign(&mut out, x)?;
        Ok(out)
    }

    /// `len` standard normal numbers: draw `offset` of the Philox stream
    /// `seed`, the same numbers as `ddpm_tensor::philox::normal` on the CPU.
    fn randn(&self, len: usize, seed: u64, offset: u64) -> Result<Self::Buf> {
        let mut out = self.output(len)?;
        let mut args = [Arg::Out(&mut out), Arg::U64(len as u64), Arg::U64(seed), Arg::U64(offset)];
        self.launch(&SAMPLING, "randn_f32", launch::elementwise(len), &mut args)?;
        Ok(out)
    }

    /// One sampling step in place on `x`, guidance included (see [`Step`]).
    fn sampling_step(&self, x: &mut Self::Buf, eps: &Self::Buf, step: &Step) -> Result<()> {
        let n = self.len(x);
        let guided = step.guidance.is_some();
        check_len("sampling step noise estimate", self.len(eps), n * (1 + guided as usize))?;
        let at = launch::elementwise(n);
        let w = step.guidance.unwrap_or(0.0);
        let head = |x| [Arg::Out(x), Arg::In(eps), Arg::U64(n as u64), Arg::I32(guided.into()), Arg::F32(w)];
        match step.update {
            Update::Ddpm { eps_coef, sqrt_a, sigma } => {
                let mut args: Vec<_> = head(x).into_iter().collect();
                args.extend([
                    Arg::F32(eps_coef),
                    Arg::F32(sqrt_a),
                    Arg::F32(sigma),
                    Arg::U64(step.seed),
                    Arg::U64(step.offset),
                ]);
                self.launch(&SAMPLING, "ddpm_step_f32", at, &mut args)
            }
            Update::Ddim { ab, ab_prev, sigma, dir } => {
                let mut args: Vec<_> = head(x).into_iter().collect();
                args.extend([Arg::F64(ab), Arg::F64(ab_prev), Arg::F64(sigma), Arg::F64(dir)]);
                args.extend([Arg::U64(step.seed), Arg::U64(step.offset)]);
                self.launch(&SAMPLING, "ddim_step_f32", at, &mut args)
            }
        }
    }
}

impl<E: Executor> DeviceOps for E {}
