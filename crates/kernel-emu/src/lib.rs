//! The CUDA kernels of `kernels/*.cu`, compiled as C++ for the CPU with
//! `kernels/emu/cuda_emu.h`, and a launcher: a test harness that checks the
//! kernels' logic (indexing, tiling, shared memory, barriers) on machines
//! without a GPU. The tests in `tests/` compare each kernel with the CPU
//! reference of the tensor crate.
//!
//! The declarations below repeat the kernels' C signatures; the launch
//! geometry comes from `ddpm_cuda::launch`, the same as on the GPU.

use std::ffi::c_void;

use ddpm_cuda::launch::Launch;
use ddpm_cuda::source::Module;
use ddpm_cuda::{Arg, Executor};

#[repr(C)]
#[derive(Clone, Copy)]
struct Dim3 {
    x: u32,
    y: u32,
    z: u32,
}

extern "C" {
    fn emu_launch(grid: Dim3, block: Dim3, body: extern "C" fn(*mut c_void), ctx: *mut c_void);
}

/// The kernels' C signatures (`kernels/*.cu`), repeated by hand.
pub mod ffi {
    /// The trailing ints of conv2d.cu's kernels: n, c, h, w, k, r, s, stride, pad.
    macro_rules! conv_kernels {
        ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
            extern "C" {
                $(pub fn $name($($arg: $ty,)* n: i32, c: i32, h: i32, w: i32, k: i32, r: i32, s: i32, stride: i32, pad: i32);)*
            }
        };
    }
    conv_kernels! {
        conv2d_fwd_f32(x: *const f32, w: *const f32, bias: *const f32, y: *mut f32);
        conv2d_fwd_naive_f32(x: *const f32, w: *const f32, bias: *const f32, y: *mut f32);
        conv2d_bwd_input_f32(dy: *const f32, w: *const f32, dx: *mut f32);
        conv2d_bwd_input_naive_f32(dy: *const f32, w: *const f32, dx: *mut f32);
        conv2d_bwd_weight_f32(x: *const f32, dy: *const f32, dw: *mut f32);
        conv2d_bwd_weight_naive_f32(x: *const f32, dy: *const f32, dw: *mut f32);
    }

    extern "C" {
        // matmul.cu
        pub fn matmul_f32(
            a: *const f32,
            b: *const f32,
            c: *mut f32,
            bias: *const f32,
            m: i32,
            n: i32,
            l: i32,
            transpose_a: i32,
            transpose_b: i32,
            stride_a: i64,
            stride_b: i64,
            stride_c: i64,
            alpha: f32,
            accumulate: i32,
        );
        // elementwise.cu
        pub fn silu_f32(x: *const f32, y: *mut f32, n: i64);
        pub fn add_assign_f32(x: *mut f32, y: *const f32, n: i64);
        pub fn add_broadcast_f32(x: *mut f32, v: *const f32, rows: i64, inner: i32);
        pub fn concat2_f32(a: *const f32, b: *const f32, out: *mut f32, outer: i64, ca: i64, cb: i64);
        pub fn upsample2x_f32(x: *const f32, y: *mut f32, planes: i64, h: i32, w: i32);
        pub fn silu_bwd_f32(x: *const f32, dy: *const f32, dx: *mut f32, n: i64);
        pub fn upsample2x_bwd_f32(dy: *const f32, dx: *mut f32, planes: i64, h: i32, w: i32);
        pub fn split2_f32(cat: *const f32, a: *mut f32, b: *mut f32, outer: i64, ca: i64, cb: i64);
        pub fn q_sample_f32(
            x0: *const f32,
            e: *const f32,
            abar: *const f32,
            bbar: *const f32,
            xt: *mut f32,
            n: i64,
            inner: i32,
        );
        pub fn mse_grad_f32(pred: *const f32, target: *const f32, grad: *mut f32, sq: *mut f32, n: i64, scale: f32);
        pub fn gather_rows_f32(table: *const f32, idx: *const f32, out: *mut f32, n: i32, dim: i32);
        pub fn scatter_rows_f32(d_out: *const f32, idx: *const f32, d_table: *mut f32, n: i32, rows: i32, dim: i32);
        pub fn dropout_f32(x: *const f32, y: *mut f32, n: i64, p: f32, seed: u64);
        // softmax.cu
        pub fn softmax_rows_f32(x: *mut f32, cols: i32);
        pub fn softmax_bwd_rows_f32(y: *const f32, g: *mut f32, cols: i32);
        // norm.cu (with the sums above)
        pub fn sum_inner_f32(x: *const f32, out: *mut f32, inner: i32);
        // optim.cu
        pub fn clip_coef_f32(sumsq: *const f32, count: i32, max_norm: f32, out: *mut f32);
        pub fn sumsq_f32(x: *const f32, n: i64, out: *mut f32, index: i32);
        pub fn adam_f32(
            p: *mut f32,
            g: *const f32,
            m: *mut f32,
            v: *mut f32,
            n: i64,
            clip: *const f32,
            step_size: f32,
            b1: f32,
            b2: f32,
            bc2_sqrt: f32,
            eps: f32,
        );
        pub fn ema_f32(shadow: *mut f32, p: *const f32, n: i64, one_minus_d: f32);
        // norm.cu
        pub fn group_norm_fwd_f32(
            x: *const f32,
            gamma: *const f32,
            beta: *const f32,
            y: *mut f32,
            mean: *mut f32,
            rstd: *mut f32,
            c: i32,
            hw: i32,
            groups: i32,
            eps: f32,
            silu: i32,
        );
        pub fn group_norm_bwd_f32(
            x: *const f32,
            gamma: *const f32,
            beta: *const f32,
            dy: *const f32,
            mean: *const f32,
            rstd: *const f32,
            dx: *mut f32,
            dgamma_part: *mut f32,
            dbeta_part: *mut f32,
            c: i32,
            hw: i32,
            groups: i32,
            silu: i32,
        );
        pub fn sum_rows_f32(input: *const f32, out: *mut f32, rows: i32, cols: i32);
        // sampling.cu
        pub fn philox4x32_10_u32(out: *mut u32, ctr_key: *const u32, count: i32);
        pub fn randn_f32(out: *mut f32, n: u64, seed: u64, offset: u64);
        pub fn ddpm_step_f32(
            x: *mut f32,
            eps: *const f32,
            n: u64,
            guided: i32,
            guidance: f32,
            eps_coef: f32,
            sqrt_a: f32,
            sigma: f32,
            seed: u64,
            offset: u64,
        );
        pub fn ddim_step_f32(
            x: *mut f32,
            eps: *const f32,
            n: u64,
            guided: i32,
            guidance: f32,
            ab: f64,
            ab_prev: f64,
            sigma: f64,
            dir: f64,
            seed: u64,
            offset: u64,
        );
    }
}

/// A raw pointer the emulated threads share, as CUDA threads share device
/// memory: each thread writes only the elements it owns.
#[derive(Clone, Copy)]
pub struct Shared<T>(*mut T);

// Safety: the kernels give every output element to one thread (or use
// atomics), as they must on the GPU.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// An output (or in-out) buffer.
    pub fn new(buffer: &mut [T]) -> Shared<T> {
        Shared(buffer.as_mut_ptr())
    }

    /// An input buffer: the kernels only read through it.
    pub fn input(buffer: &[T]) -> Shared<T> {
        Shared(buffer.as_ptr() as *mut T)
    }

    /// A null pointer (an absent optional operand, such as a bias).
    pub fn null() -> Shared<T> {
        Shared(std::ptr::null_mut())
    }

    pub fn get(&self) -> *mut T {
        self.0
    }
}

/// Runs `thread` once per thread of `at`, with CUDA's indices set, blocks
/// one after another and the threads of a block at once.
pub fn launch<F: Fn() + Sync>(at: Launch, thread: F) {
    extern "C" fn trampoline<F: Fn() + Sync>(ctx: *mut c_void) {
        // Safety: ctx is the &F passed below, alive until emu_launch returns.
        let f = unsafe { &*(ctx as *const F) };
        f();
    }
    let dim = |(x, y, z): (u32, u32, u32)| Dim3 { x, y, z };
    // Safety: emu_launch calls trampoline::<F> with the pointer we pass and
    // joins every thread before it returns.
    unsafe { emu_launch(dim(at.grid), dim(at.block), trampoline::<F>, &thread as *const F as *mut c_void) };
}

/// The emulated device: buffers are host vectors, and a launch runs the
/// kernel's C++ build in [`launch`]. It implements the same [`Executor`] as
/// the GPU, so `ddpm_cuda::DeviceOps` (and the U-Net and the sampler built
/// on them) run in the tests through the very code the GPU runs.
pub struct Emu;

/// An argument reduced to what the C call needs.
#[derive(Clone, Copy, Debug)]
enum Value {
    P(Shared<f32>),
    I(i32),
    L(i64),
    U(u64),
    F(f32),
    D(f64),
}

impl<T> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:p}", self.0)
    }
}

impl Executor for Emu {
    type Buf = Vec<f32>;

    fn zeros(&self, len: usize) -> ddpm_cuda::Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn output(&self, len: usize) -> ddpm_cuda::Result<Vec<f32>> {
        Ok(vec![f32::NAN; len])
    }

    fn upload(&self, host: &[f32]) -> ddpm_cuda::Result<Vec<f32>> {
        Ok(host.to_vec())
    }

    fn download(&self, buf: &Vec<f32>) -> ddpm_cuda::Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn launch(
        &self,
        module: &Module,
        kernel: &'static str,
        at: Launch,
        args: &mut [Arg<'_, Vec<f32>>],
    ) -> ddpm_cuda::Result<()> {
        use Value::*;
        assert!(module.kernels.contains(&kernel), "{kernel} is not listed for {}", module.file);
        let v: Vec<Value> = args
            .iter_mut()
            .map(|a| match a {
                Arg::In(b) => P(Shared::input(b)),
                Arg::InAt(b, off) => P(Shared::input(&b[*off..])),
                Arg::Out(b) => P(Shared::new(b)),
                Arg::Null => P(Shared::null()),
                Arg::I32(x) => I(*x),
                Arg::I64(x) => L(*x),
                Arg::U64(x) => U(*x),
                Arg::F32(x) => F(*x),
                Arg::F64(x) => D(*x),
            })
            .collect();
        // Safety (every arm): the arguments are those DeviceOps pushed for
        // this kernel, checked against the shapes; the pattern checks their kinds.
        match (kernel, &v[..]) {
            (
                "conv2d_fwd_f32" | "conv2d_fwd_naive_f32",
                &[P(x), P(w), P(b), P(y), I(n), I(c), I(h), I(wd), I(k), I(r), I(s), I(st), I(pd)],
            ) => {
                let f = if kernel == "conv2d_fwd_f32" { ffi::conv2d_fwd_f32 } else { ffi::conv2d_fwd_naive_f32 };
                launch(at, || unsafe { f(x.get(), w.get(), b.get(), y.get(), n, c, h, wd, k, r, s, st, pd) })
            }
            (
                "conv2d_bwd_input_f32"
                | "conv2d_bwd_input_naive_f32"
                | "conv2d_bwd_weight_f32"
                | "conv2d_bwd_weight_naive_f32",
                &[P(a), P(b), P(o), I(n), I(c), I(h), I(wd), I(k), I(r), I(s), I(st), I(pd)],
            ) => {
                let f = match kernel {
                    "conv2d_bwd_input_f32" => ffi::conv2d_bwd_input_f32,
                    "conv2d_bwd_input_naive_f32" => ffi::conv2d_bwd_input_naive_f32,
                    "conv2d_bwd_weight_f32" => ffi::conv2d_bwd_weight_f32,
                    _ => ffi::conv2d_bwd_weight_naive_f32,
                };
                launch(at, || unsafe { f(a.get(), b.get(), o.get(), n, c, h, wd, k, r, s, st, pd) })
            }
            (
                "matmul_f32",
                &[P(a), P(b), P(c), P(bias), I(m), I(n), I(l), I(ta), I(tb), L(sa), L(sb), L(sc), F(alpha), I(acc)],
            ) => launch(at, || unsafe {
                ffi::matmul_f32(a.get(), b.get(), c.get(), bias.get(), m, n, l, ta, tb, sa, sb, sc, alpha, acc)
            }),
            (
                "group_norm_fwd_f32",
                &[P(x), P(g), P(b), P(y), P(mean), P(rstd), I(c), I(hw), I(groups), F(eps), I(silu)],
            ) => launch(at, || unsafe {
                ffi::group_norm_fwd_f32(
                    x.get(),
                    g.get(),
                    b.get(),
                    y.get(),
                    mean.get(),
                    rstd.get(),
                    c,
                    hw,
                    groups,
                    eps,
                    silu,
                )
            }),
            (
                "group_norm_bwd_f32",
                &[P(x), P(g), P(b), P(dy), P(mean), P(rstd), P(dx), P(dg), P(db), I(c), I(hw), I(groups), I(silu)],
            ) => launch(at, || unsafe {
                ffi::group_norm_bwd_f32(
                    x.get(),
                    g.get(),
                    b.get(),
                    dy.get(),
                    mean.get(),
                    rstd.get(),
                    dx.get(),
                    dg.get(),
                    db.get(),
                    c,
                    hw,
                    groups,
                    silu,
                )
            }),
            ("sum_rows_f32", &[P(i), P(o), I(rows), I(cols)]) => {
                launch(at, || unsafe { ffi::sum_rows_f32(i.get(), o.get(), rows, cols) })
            }
            ("silu_f32", &[P(x), P(y), L(n)]) => launch(at, || unsafe { ffi::silu_f32(x.get(), y.get(), n) }),
            ("add_assign_f32", &[P(x), P(y), L(n)]) => {
                launch(at, || unsafe { ffi::add_assign_f32(x.get(), y.get(), n) })
            }
            ("add_broadcast_f32", &[P(x), P(y), L(rows), I(inner)]) => {
                launch(at, || unsafe { ffi::add_broadcast_f32(x.get(), y.get(), rows, inner) })
            }
            ("concat2_f32", &[P(a), P(b), P(o), L(outer), L(ca), L(cb)]) => {
                launch(at, || unsafe { ffi::concat2_f32(a.get(), b.get(), o.get(), outer, ca, cb) })
            }
            ("upsample2x_f32", &[P(x), P(y), L(planes), I(h), I(w)]) => {
                launch(at, || unsafe { ffi::upsample2x_f32(x.get(), y.get(), planes, h, w) })
            }
            ("softmax_rows_f32", &[P(x), I(cols)]) => launch(at, || unsafe { ffi::softmax_rows_f32(x.get(), cols) }),
            ("softmax_bwd_rows_f32", &[P(y), P(g), I(cols)]) => {
                launch(at, || unsafe { ffi::softmax_bwd_rows_f32(y.get(), g.get(), cols) })
            }
            ("silu_bwd_f32", &[P(x), P(dy), P(dx), L(n)]) => {
                launch(at, || unsafe { ffi::silu_bwd_f32(x.get(), dy.get(), dx.get(), n) })
            }
            ("upsample2x_bwd_f32", &[P(dy), P(dx), L(planes), I(h), I(w)]) => {
                launch(at, || unsafe { ffi::upsample2x_bwd_f32(dy.get(), dx.get(), planes, h, w) })
            }
            ("split2_f32", &[P(c), P(a), P(b), L(outer), L(ca), L(cb)]) => {
                launch(at, || unsafe { ffi::split2_f32(c.get(), a.get(), b.get(), outer, ca, cb) })
            }
            ("q_sample_f32", &[P(x0), P(e), P(a), P(b), P(xt), L(n), I(inner)]) => {
                launch(at, || unsafe { ffi::q_sample_f32(x0.get(), e.get(), a.get(), b.get(), xt.get(), n, inner) })
            }
            ("mse_grad_f32", &[P(p), P(t), P(g), P(sq), L(n), F(scale)]) => {
                launch(at, || unsafe { ffi::mse_grad_f32(p.get(), t.get(), g.get(), sq.get(), n, scale) })
            }
            ("gather_rows_f32", &[P(t), P(i), P(o), I(n), I(d)]) => {
                launch(at, || unsafe { ffi::gather_rows_f32(t.get(), i.get(), o.get(), n, d) })
            }
            ("scatter_rows_f32", &[P(g), P(i), P(o), I(n), I(r), I(d)]) => {
                launch(at, || unsafe { ffi::scatter_rows_f32(g.get(), i.get(), o.get(), n, r, d) })
            }
            ("dropout_f32", &[P(x), P(y), L(n), F(p), U(seed)]) => {
                launch(at, || unsafe { ffi::dropout_f32(x.get(), y.get(), n, p, seed) })
            }
            ("sum_inner_f32", &[P(x), P(o), I(inner)]) => {
                launch(at, || unsafe { ffi::sum_inner_f32(x.get(), o.get(), inner) })
            }
            ("clip_coef_f32", &[P(s), I(count), F(max), P(o)]) => {
                launch(at, || unsafe { ffi::clip_coef_f32(s.get(), count, max, o.get()) })
            }
            ("sumsq_f32", &[P(x), L(n), P(o), I(i)]) => {
                launch(at, || unsafe { ffi::sumsq_f32(x.get(), n, o.get(), i) })
            }
            ("adam_f32", &[P(p), P(g), P(m), P(v), L(n), P(clip), F(step), F(b1), F(b2), F(bc2), F(eps)]) => {
                launch(at, || unsafe {
                    ffi::adam_f32(p.get(), g.get(), m.get(), v.get(), n, clip.get(), step, b1, b2, bc2, eps)
                })
            }
            ("ema_f32", &[P(s), P(p), L(n), F(d)]) => launch(at, || unsafe { ffi::ema_f32(s.get(), p.get(), n, d) }),
            ("randn_f32", &[P(o), U(n), U(seed), U(off)]) => {
                launch(at, || unsafe { ffi::randn_f32(o.get(), n, seed, off) })
            }
            ("ddpm_step_f32", &[P(x), P(e), U(n), I(g), F(w), F(c), F(sa), F(sigma), U(seed), U(off)]) => {
                launch(at, || unsafe { ffi::ddpm_step_f32(x.get(), e.get(), n, g, w, c, sa, sigma, seed, off) })
            }
            ("ddim_step_f32", &[P(x), P(e), U(n), I(g), F(w), D(ab), D(abp), D(sigma), D(dir), U(seed), U(off)]) => {
                launch(at, || unsafe { ffi::ddim_step_f32(x.get(), e.get(), n, g, w, ab, abp, sigma, dir, seed, off) })
            }
            _ => panic!("emulation: no call for {kernel} with arguments {v:?}"),
        }
        Ok(())
    }
}
