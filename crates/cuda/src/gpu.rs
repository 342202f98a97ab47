//! The GPU: a CUDA context and stream, the compiled modules, and one method
//! per kernel that checks its arguments and launches it.
//!
//! Buffers stay on the device between calls; only `upload` and `download`
//! cross to the host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchArgs, PushKernelArg};
use cudarc::nvrtc::Ptx;

use crate::launch::{self, ConvShape, Launch};
use crate::source::{Module, CONV2D, MATMUL, NORM, SAMPLING};
use crate::{nvrtc, CudaError, Result};

/// Whether the CUDA driver library can be loaded here.
pub fn driver_present() -> bool {
    // Safety: only probes for the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Which of a convolution's kernels to run: the tiled implicit GEMM, or the
/// one-output-per-thread reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKernel {
    Tiled,
    Naive,
}

/// One CUDA device, its default stream and the kernels loaded on it.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl Gpu {
    /// Opens device `ordinal`. Errors, never panics, when there is no driver,
    /// no NVRTC or no such device.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        if !nvrtc::available() {
            return Err(CudaError::NoNvrtc);
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice { ordinal, reason: e.to_string() })?;
        let stream = ctx.default_stream();
        Ok(Gpu { ctx, stream, modules: Mutex::new(HashMap::new()) })
    }

    /// "NVIDIA H100 80GB HBM3 (device 0)", say.
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        format!("{name} (device {})", self.ctx.ordinal())
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for every launch so far (for timing; downloads wait by themselves).
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    pub fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        Ok(self.stream.clone_htod(host)?)
    }

    pub fn download(&self, device: &CudaSlice<f32>) -> Result<Vec<f32>> {
        Ok(self.stream.clone_dtoh(device)?)
    }

    pub fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        Ok(self.stream.alloc_zeros::<f32>(len)?)
    }

    /// `kernel` of `module`, compiling and loading the module on first use.
    pub fn function(&self, module: &Module, kernel: &'static str) -> Result<CudaFunction> {
        let loaded = {
            let mut modules = self.modules.lock().unwrap();
            match modules.get(module.file) {
                Some(m) => Arc::clone(m),
                None => {
                    let m = self.ctx.load_module(Ptx::from_src(nvrtc::ptx(module)?))?;
                    modules.insert(module.file, Arc::clone(&m));
                    m
                }
            }
        };
        loaded.load_function(kernel).map_err(|_| CudaError::NoKernel { file: module.file, kernel })
    }

    /// y = conv2d(x, w) + bias, NCHW.
    pub fn conv2d_forward(
        &self,
        kernel: ConvKernel,
        g: &ConvShape,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        bias: Option<&CudaSlice<f32>>,
    ) -> Result<CudaSlice<f32>> {
        check_len("conv2d input", x.len(), g.input_len())?;
        check_len("conv2d weight", w.len(), g.weight_len())?;
        if let Some(b) = bias {
            check_len("conv2d bias", b.len(), g.k)?;
        }
        let mut y = self.zeros(g.output_len())?;
        let (name, at) = match kernel {
            ConvKernel::Tiled => ("conv2d_fwd_f32", g.forward()),
            ConvKernel::Naive => ("conv2d_fwd_naive_f32", launch::elementwise(g.output_len())),
        };
        let f = self.function(&CONV2D, name)?;
        let dims = g.args();
        let null = 0u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(w);
        match bias {
            Some(bias) => b.arg(bias),
            None => b.arg(&null),
        };
        b.arg(&mut y);
        dims.iter().for_each(|d| {
            b.arg(d);
        });
        launch(b, at)?;
        Ok(y)
    }

    /// The gradient of the convolution's input, from that of its output.
    pub fn conv2d_backward_input(
        &self,
        kernel: ConvKernel,
        g: &ConvShape,
        d_y: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        check_len("conv2d output gradient", d_y.len(), g.output_len())?;
        check_len("conv2d weight", w.len(), g.weight_len())?;
        let mut d_x = self.zeros(g.input_len())?;
        let (name, at) = match kernel {
            ConvKernel::Tiled => ("conv2d_bwd_input_f32", g.backward_input()),
            ConvKernel::Naive => ("conv2d_bwd_input_naive_f32", launch::elementwise(g.input_len())),
        };
        let f = self.function(&CONV2D, name)?;
        let dims = g.args();
        let mut b = self.stream.launch_builder(&f);
        b.arg(d_y).arg(w).arg(&mut d_x);
        dims.iter().for_each(|d| {
            b.arg(d);
        });
        launch(b, at)?;
        Ok(d_x)
    }

    /// The gradient of the convolution's weight, from its input and the
    /// gradient of its output.
    pub fn conv2d_backward_weight(
        &self,
        kernel: ConvKernel,
        g: &ConvShape,
        x: &CudaSlice<f32>,
        d_y: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        check_len("conv2d input", x.len(), g.input_len())?;
        check_len("conv2d output gradient", d_y.len(), g.output_len())?;
        let mut d_w = self.zeros(g.weight_len())?;
        let (name, at) = match kernel {
            ConvKernel::Tiled => ("conv2d_bwd_weight_f32", g.backward_weight()),
            ConvKernel::Naive => ("conv2d_bwd_weight_naive_f32", launch::elementwise(g.weight_len())),
        };
        let f = self.function(&CONV2D, name)?;
        let dims = g.args();
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(d_y).arg(&mut d_w);
        dims.iter().for_each(|d| {
            b.arg(d);
        });
        launch(b, at)?;
        Ok(d_w)
    }

    /// C[i] = op(A[i]) op(B[i]) for i < batch; see [`MatmulShape`].
    pub fn matmul(&self, s: &MatmulShape, a: &CudaSlice<f32>, b: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        check_len("matmul lhs", a.len(), s.a_len())?;
        check_len("matmul rhs", b.len(), s.b_len())?;
        let mut c = self.zeros(s.c_len())?;
        let f = self.function(&MATMUL, "matmul_f32")?;
        let [m, n, l, ta, tb] = s.args();
        let [sa, sb, sc] = s.strides();
        let accumulate = 0i32;
        let mut k = self.stream.launch_builder(&f);
        k.arg(a).arg(b).arg(&mut c);
        for v in [&m, &n, &l, &ta, &tb] {
            k.arg(v);
        }
        k.arg(&sa).arg(&sb).arg(&sc).arg(&accumulate);
        launch(k, launch::tiled_gemm(s.m, s.n, s.batch))?;
        Ok(c)
    }

    /// y = act(GroupNorm(x)) for x [n, c, hw] in `groups` groups, act = SiLU
    /// or nothing; returns y and the per-(sample, group) mean and 1/std.
    pub fn group_norm_forward(
        &self,
        g: &NormShape,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        eps: f32,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
        g.check(x, gamma, beta)?;
        let (mut y, mut mean, mut rstd) = (self.zeros(x.len())?, self.zeros(g.rows())?, self.zeros(g.rows())?);
        let f = self.function(&NORM, "group_norm_fwd_f32")?;
        let [c, hw, groups, silu] = g.args();
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(gamma).arg(beta).arg(&mut y).arg(&mut mean).arg(&mut rstd);
        b.arg(&c).arg(&hw).arg(&groups).arg(&eps).arg(&silu);
        launch(b, launch::per_row(g.rows()))?;
        Ok((y, mean, rstd))
    }

    /// The gradients of [`Gpu::group_norm_forward`]: (d_x, d_gamma, d_beta).
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm_backward(
        &self,
        g: &NormShape,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        mean: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        d_y: &CudaSlice<f32>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
        g.check(x, gamma, beta)?;
        check_len("group norm output gradient", d_y.len(), x.len())?;
        check_len("group norm statistics", mean.len().min(rstd.len()), g.rows())?;
        let mut d_x = self.zeros(x.len())?;
        let (mut dg_part, mut db_part) = (self.zeros(g.n * g.c)?, self.zeros(g.n * g.c)?);
        let f = self.function(&NORM, "group_norm_bwd_f32")?;
        let [c, hw, groups, silu] = g.args();
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(gamma).arg(beta).arg(d_y).arg(mean).arg(rstd);
        b.arg(&mut d_x).arg(&mut dg_part).arg(&mut db_part);
        b.arg(&c).arg(&hw).arg(&groups).arg(&silu);
        launch(b, launch::per_row(g.rows()))?;
        let d_gamma = self.sum_rows(&dg_part, g.n, g.c)?;
        let d_beta = self.sum_rows(&db_part, g.n, g.c)?;
        Ok((d_x, d_gamma, d_beta))
    }

    /// The column sums of a rows x cols matrix.
    pub fn sum_rows(&self, m: &CudaSlice<f32>, rows: usize, cols: usize) -> Result<CudaSlice<f32>> {
        check_len("sum_rows input", m.len(), rows * cols)?;
        let mut out = self.zeros(cols)?;
        let f = self.function(&NORM, "sum_rows_f32")?;
        let (r, c) = (rows as i32, cols as i32);
        let mut b = self.stream.launch_builder(&f);
        b.arg(m).arg(&mut out).arg(&r).arg(&c);
        launch(b, launch::elementwise(cols))?;
        Ok(out)
    }

    /// `len` standard normal numbers: draw `offset` of the stream `seed`,
    /// the same numbers as `ddpm_tensor::philox::normals` on the CPU.
    pub fn randn(&self, len: usize, seed: u64, offset: u64) -> Result<CudaSlice<f32>> {
        let mut out = self.zeros(len)?;
        let f = self.function(&SAMPLING, "randn_f32")?;
        let n = len as u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut out).arg(&n).arg(&seed).arg(&offset);
        launch(b, launch::elementwise(len))?;
        Ok(out)
    }

    /// One sampling step in place on `x`, guidance included: see
    /// `kernels/sampling.cu` and [`Step`].
    pub fn sampling_step(&self, x: &mut CudaSlice<f32>, eps: &CudaSlice<f32>, step: &Step) -> Result<()> {
        let n = x.len() as u64;
        let guided = i32::from(step.guidance.is_some());
        check_len("sampling step noise estimate", eps.len(), x.len() * (1 + guided as usize))?;
        let w = step.guidance.unwrap_or(0.0);
        let at = launch::elementwise(x.len());
        match step.update {
            Update::Ddpm { eps_coef, sqrt_a, sigma } => {
                let f = self.function(&SAMPLING, "ddpm_step_f32")?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&mut *x).arg(eps).arg(&n).arg(&guided).arg(&w);
                b.arg(&eps_coef).arg(&sqrt_a).arg(&sigma).arg(&step.seed).arg(&step.offset);
                launch(b, at)
            }
            Update::Ddim { ab, ab_prev, sigma, dir } => {
                let f = self.function(&SAMPLING, "ddim_step_f32")?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(&mut *x).arg(eps).arg(&n).arg(&guided).arg(&w);
                b.arg(&ab).arg(&ab_prev).arg(&sigma).arg(&dir).arg(&step.seed).arg(&step.offset);
                launch(b, at)
            }
        }
    }
}

/// Enqueues a launch whose arguments are pushed.
fn launch(mut args: LaunchArgs<'_>, at: Launch) -> Result<()> {
    // Safety: each caller pushes the arguments in the order and types of the
    // kernel's C signature, and checked the buffer lengths first.
    unsafe { args.launch(at.into()) }?;
    Ok(())
}

fn check_len(what: &'static str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(CudaError::Invalid { op: what, message: format!("buffer holds {got} numbers, the shape needs {want}") })
    }
}

/// A batched product C = op(A) op(B): C is m x n, the reduction has length
/// l; A is m x l (l x m when transposed), B is l x n (n x l when transposed).
/// A shared operand (a weight used by every batch item) has stride 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub l: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
    pub shared_a: bool,
    pub shared_b: bool,
}

impl MatmulShape {
    pub fn a_len(&self) -> usize {
        self.m * self.l * if self.shared_a { 1 } else { self.batch }
    }

    pub fn b_len(&self) -> usize {
        self.l * self.n * if self.shared_b { 1 } else { self.batch }
    }

    pub fn c_len(&self) -> usize {
        self.batch * self.m * self.n
    }

    /// m, n, l, transpose_a, transpose_b as the kernel's ints.
    pub fn args(&self) -> [i32; 5] {
        let a = [self.m, self.n, self.l, self.transpose_a as usize, self.transpose_b as usize];
        a.map(|v| i32::try_from(v).expect("matmul extent beyond i32"))
    }

    /// The batch strides of A, B and C, in elements.
    pub fn strides(&self) -> [i64; 3] {
        let a = if self.shared_a { 0 } else { self.m * self.l };
        let b = if self.shared_b { 0 } else { self.l * self.n };
        [a as i64, b as i64, (self.m * self.n) as i64]
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

    /// c, hw, groups, silu as the kernels' ints.
    pub fn args(&self) -> [i32; 4] {
        [self.c as i32, self.hw as i32, self.groups as i32, self.silu as i32]
    }

    fn check(&self, x: &CudaSlice<f32>, gamma: &CudaSlice<f32>, beta: &CudaSlice<f32>) -> Result<()> {
        if self.groups == 0 || self.c % self.groups != 0 {
            return Err(CudaError::Invalid {
                op: "group norm",
                message: format!("{} channels cannot be cut into {} groups", self.c, self.groups),
            });
        }
        check_len("group norm input", x.len(), self.n * self.c * self.hw)?;
        check_len("group norm weight", gamma.len(), self.c)?;
        check_len("group norm bias", beta.len(), self.c)
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

/// One sampling step: the update, the guidance weight (None: eps holds only
/// the conditional estimate) and where its noise comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub update: Update,
    pub guidance: Option<f32>,
    pub seed: u64,
    pub offset: u64,
}
