//! The CUDA kernels of `kernels/*.cu`, compiled as C++ for the CPU with
//! `kernels/emu/cuda_emu.h`, and a launcher: a test harness that checks the
//! kernels' logic (indexing, tiling, shared memory, barriers) on machines
//! without a GPU. [`device`] opens it as a device for tensors
//! (`Device::Emulated`): the workspace's tests/emulated.rs runs every op and
//! the whole U-Net there against the host; the tests in `tests/` here check
//! what the tensor ops do not reach.
//!
//! The declarations below repeat the kernels' C signatures; the launch
//! geometry comes from `ddpm_cuda::launch`, the same as on the GPU.

use std::ffi::c_void;

use std::sync::Arc;

use ddpm_cuda::launch::Launch;
use ddpm_cuda::source::Module;
use ddpm_cuda::{Arg, Executor, KernelBackend};
use ddpm_tensor::backend::{backend_of, register};
use ddpm_tensor::Device;

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

/// The kernels' C signatures (`kernels/*.cu`), repeated by hand. Pointers
/// to `unsigned int` in C (the partial sums of reduce.cu) are declared as
/// f32 pointers: the buffers are f32 on the Rust side, and a pointer is a
/// pointer to the C ABI.
pub mod ffi {
    /// The trailing ints of conv2d.cu's kernels: n, c, h, w, k, r, s, stride, pad.
    macro_rules! conv_kernels {
        ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
            extern "C" {
                $(pub fn $name(
                    $($arg: $ty,)*
                    n: i32, c: i32, h: i32, w: i32, k: i32, r: i32, s: i32, stride: i32, pad: i32,
                );)*
            }
        };
    }
    conv_kernels! {
        conv2d_fwd_f32(
            x: *const f32, w: *const f32, bias: *const f32, shift: *const f32, residual: *const f32, y: *mut f32
        );
        conv2d_fwd_naive_f32(
            x: *const f32, w: *const f32, bias: *const f32, shift: *const f32, residual: *const f32, y: *mut f32
        );
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
            m: i32,
            n: i32,
            k: i32,
            transpose_a: i32,
            transpose_b: i32,
            stride_a: i64,
            stride_b: i64,
        );
        // elementwise.cu
        pub fn fill_f32(out: *mut f32, n: i64, value: f32);
        pub fn unary_f32(x: *const f32, y: *mut f32, n: i64, op: i32, a: f32, b: f32);
        pub fn unary_bwd_f32(g: *const f32, saved: *const f32, d_x: *mut f32, n: i64, op: i32, p: f32);
        pub fn binary_f32(
            a: *const f32,
            b: *const f32,
            out: *mut f32,
            op: i32,
            d0: i64,
            d1: i64,
            d2: i64,
            d3: i64,
            sa0: i64,
            sa1: i64,
            sa2: i64,
            sa3: i64,
            sb0: i64,
            sb1: i64,
            sb2: i64,
            sb3: i64,
        );
        pub fn copy_blocks_f32(
            src: *const f32,
            dst: *mut f32,
            blocks: i64,
            width: i64,
            src_stride: i64,
            src_offset: i64,
            dst_stride: i64,
            dst_offset: i64,
        );
        pub fn gather_f32(
            src: *const f32,
            dst: *mut f32,
            d0: i64,
            d1: i64,
            d2: i64,
            d3: i64,
            s0: i64,
            s1: i64,
            s2: i64,
            s3: i64,
        );
        pub fn upsample2x_f32(x: *const f32, y: *mut f32, planes: i64, h: i32, w: i32);
        pub fn upsample2x_bwd_f32(dy: *const f32, dx: *mut f32, planes: i64, h: i32, w: i32);
        pub fn max_pool2x2_f32(x: *const f32, y: *mut f32, planes: i64, h: i32, w: i32);
        pub fn max_pool2x2_bwd_f32(x: *const f32, dy: *const f32, dx: *mut f32, planes: i64, h: i32, w: i32);
        pub fn gather_rows_f32(table: *const f32, idx: *const f32, out: *mut f32, n: i32, dim: i32);
        pub fn scatter_rows_f32(d_out: *const f32, idx: *const f32, d_table: *mut f32, n: i32, rows: i32, dim: i32);
        pub fn dropout_f32(x: *const f32, y: *mut f32, n: i64, p: f32, seed: u64);
        // reduce.cu
        pub fn sum_f32(
            x: *const f32,
            out: *mut f32,
            k1: i64,
            k2: i64,
            k3: i64,
            ks0: i64,
            ks1: i64,
            ks2: i64,
            ks3: i64,
            r0: i64,
            r1: i64,
            r2: i64,
            r3: i64,
            rs0: i64,
            rs1: i64,
            rs2: i64,
            rs3: i64,
        );
        pub fn sumsq_partial_f32(x: *const f32, n: i64, partial: *mut f32, first: i32);
        pub fn global_norm_f32(partial: *const f32, count: i32, out: *mut f32);
        // softmax.cu
        pub fn softmax_f32(x: *const f32, y: *mut f32, cols: i32);
        pub fn log_softmax_f32(x: *const f32, y: *mut f32, cols: i32);
        pub fn softmax_bwd_f32(y: *const f32, g: *const f32, dx: *mut f32, cols: i32);
        pub fn log_softmax_bwd_f32(y: *const f32, g: *const f32, dx: *mut f32, cols: i32);
        // optim.cu
        pub fn adam_f32(
            p: *const f32,
            g: *const f32,
            m: *mut f32,
            v: *mut f32,
            p_out: *mut f32,
            n: i64,
            step_size: f32,
            b1: f32,
            b2: f32,
            bc2_sqrt: f32,
            eps: f32,
        );
        pub fn lerp_f32(x: *mut f32, end: *const f32, n: i64, w: f32);
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
        // sampling.cu
        pub fn philox4x32_10_u32(out: *mut u32, ctr_key: *const u32, count: i32);
        pub fn randn_f32(out: *mut f32, n: u64, seed: u64, offset: u64);
        pub fn ddpm_step_f32(
            x: *const f32,
            eps: *const f32,
            out: *mut f32,
            n: u64,
            guided: i32,
            guidance: f32,
            eps_coef: f32,
            a: f32,
            sigma: f32,
            seed: u64,
            offset: u64,
        );
        pub fn ddim_step_f32(
            x: *const f32,
            eps: *const f32,
            out: *mut f32,
            n: u64,
            guided: i32,
            guidance: f32,
            alphabar: f64,
            alphabar_prev: f64,
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
/// the GPU, so `ddpm_cuda::KernelBackend` (see [`device`]), and every tensor
/// op on `Device::Emulated`, run in the tests through the very code the GPU
/// runs.
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

    fn output(&self, len: usize) -> ddpm_cuda::Result<Vec<f32>> {
        Ok(vec![f32::NAN; len])
    }

    fn upload(&self, host: &[f32]) -> ddpm_cuda::Result<Vec<f32>> {
        Ok(host.to_vec())
    }

    fn upload_into(&self, host: &[f32], buf: &mut Vec<f32>) -> ddpm_cuda::Result<()> {
        buf.copy_from_slice(host);
        Ok(())
    }

    fn download(&self, buf: &Vec<f32>) -> ddpm_cuda::Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn recycle(&self, buf: &mut Vec<f32>) {
        buf.fill(f32::NAN);
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
                Arg::Out(b) => P(Shared::new(b)),
                Arg::Null => P(Shared::null()),
                Arg::I32(x) => I(*x),
                Arg::I64(x) => L(*x),
                Arg::U64(x) => U(*x),
                Arg::F32(x) => F(*x),
                Arg::F64(x) => D(*x),
            })
            .collect();
        // Safety (every arm): the arguments are those crate::ops pushed for
        // this kernel, checked against the shapes; the pattern checks their kinds.
        match (kernel, &v[..]) {
            (
                "conv2d_fwd_f32" | "conv2d_fwd_naive_f32",
                &[P(x), P(w), P(b), P(sh), P(res), P(y), I(n), I(c), I(h), I(wd), I(k), I(r), I(s), I(st), I(pd)],
            ) => {
                let f = if kernel == "conv2d_fwd_f32" { ffi::conv2d_fwd_f32 } else { ffi::conv2d_fwd_naive_f32 };
                launch(at, || unsafe {
                    f(x.get(), w.get(), b.get(), sh.get(), res.get(), y.get(), n, c, h, wd, k, r, s, st, pd)
                })
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
            ("matmul_f32", &[P(a), P(b), P(c), I(m), I(n), I(k), I(ta), I(tb), L(sa), L(sb)]) => {
                launch(at, || unsafe { ffi::matmul_f32(a.get(), b.get(), c.get(), m, n, k, ta, tb, sa, sb) })
            }
            ("fill_f32", &[P(o), L(n), F(value)]) => launch(at, || unsafe { ffi::fill_f32(o.get(), n, value) }),
            ("unary_f32", &[P(x), P(y), L(n), I(op), F(a), F(b)]) => {
                launch(at, || unsafe { ffi::unary_f32(x.get(), y.get(), n, op, a, b) })
            }
            ("unary_bwd_f32", &[P(g), P(saved), P(dx), L(n), I(op), F(p)]) => {
                launch(at, || unsafe { ffi::unary_bwd_f32(g.get(), saved.get(), dx.get(), n, op, p) })
            }
            (
                "binary_f32",
                &[P(a), P(b), P(o), I(op), L(d0), L(d1), L(d2), L(d3), L(a0), L(a1), L(a2), L(a3), L(b0), L(b1), L(b2), L(b3)],
            ) => launch(at, || unsafe {
                ffi::binary_f32(a.get(), b.get(), o.get(), op, d0, d1, d2, d3, a0, a1, a2, a3, b0, b1, b2, b3)
            }),
            ("copy_blocks_f32", &[P(s), P(d), L(blocks), L(width), L(ss), L(so), L(ds), L(dof)]) => {
                launch(at, || unsafe { ffi::copy_blocks_f32(s.get(), d.get(), blocks, width, ss, so, ds, dof) })
            }
            ("gather_f32", &[P(s), P(d), L(d0), L(d1), L(d2), L(d3), L(s0), L(s1), L(s2), L(s3)]) => {
                launch(at, || unsafe { ffi::gather_f32(s.get(), d.get(), d0, d1, d2, d3, s0, s1, s2, s3) })
            }
            ("upsample2x_f32", &[P(x), P(y), L(planes), I(h), I(w)]) => {
                launch(at, || unsafe { ffi::upsample2x_f32(x.get(), y.get(), planes, h, w) })
            }
            ("upsample2x_bwd_f32", &[P(dy), P(dx), L(planes), I(h), I(w)]) => {
                launch(at, || unsafe { ffi::upsample2x_bwd_f32(dy.get(), dx.get(), planes, h, w) })
            }
            ("max_pool2x2_f32", &[P(x), P(y), L(planes), I(h), I(w)]) => {
                launch(at, || unsafe { ffi::max_pool2x2_f32(x.get(), y.get(), planes, h, w) })
            }
            ("max_pool2x2_bwd_f32", &[P(x), P(dy), P(dx), L(planes), I(h), I(w)]) => {
                launch(at, || unsafe { ffi::max_pool2x2_bwd_f32(x.get(), dy.get(), dx.get(), planes, h, w) })
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
            (
                "sum_f32",
                &[P(x), P(o), L(k1), L(k2), L(k3), L(ks0), L(ks1), L(ks2), L(ks3), L(r0), L(r1), L(r2), L(r3), L(rs0), L(rs1), L(rs2), L(rs3)],
            ) => launch(at, || unsafe {
                ffi::sum_f32(x.get(), o.get(), k1, k2, k3, ks0, ks1, ks2, ks3, r0, r1, r2, r3, rs0, rs1, rs2, rs3)
            }),
            ("sumsq_partial_f32", &[P(x), L(n), P(p), I(first)]) => {
                launch(at, || unsafe { ffi::sumsq_partial_f32(x.get(), n, p.get(), first) })
            }
            ("global_norm_f32", &[P(p), I(count), P(o)]) => {
                launch(at, || unsafe { ffi::global_norm_f32(p.get(), count, o.get()) })
            }
            ("softmax_f32" | "log_softmax_f32", &[P(x), P(y), I(cols)]) => {
                let f = if kernel == "softmax_f32" { ffi::softmax_f32 } else { ffi::log_softmax_f32 };
                launch(at, || unsafe { f(x.get(), y.get(), cols) })
            }
            ("softmax_bwd_f32" | "log_softmax_bwd_f32", &[P(y), P(g), P(dx), I(cols)]) => {
                let f = if kernel == "softmax_bwd_f32" { ffi::softmax_bwd_f32 } else { ffi::log_softmax_bwd_f32 };
                launch(at, || unsafe { f(y.get(), g.get(), dx.get(), cols) })
            }
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
            ("adam_f32", &[P(p), P(g), P(m), P(v), P(out), L(n), F(step), F(b1), F(b2), F(bc2), F(eps)]) => {
                launch(at, || unsafe {
                    ffi::adam_f32(p.get(), g.get(), m.get(), v.get(), out.get(), n, step, b1, b2, bc2, eps)
                })
            }
            ("lerp_f32", &[P(x), P(e), L(n), F(w)]) => launch(at, || unsafe { ffi::lerp_f32(x.get(), e.get(), n, w) }),
            ("randn_f32", &[P(o), U(n), U(seed), U(off)]) => {
                launch(at, || unsafe { ffi::randn_f32(o.get(), n, seed, off) })
            }
            ("ddpm_step_f32", &[P(x), P(e), P(o), U(n), I(g), F(w), F(c), F(sa), F(sigma), U(seed), U(off)]) => {
                launch(at, || unsafe {
                    ffi::ddpm_step_f32(x.get(), e.get(), o.get(), n, g, w, c, sa, sigma, seed, off)
                })
            }
            (
                "ddim_step_f32",
                &[P(x), P(e), P(o), U(n), I(g), F(w), D(ab), D(abp), D(sigma), D(dir), U(seed), U(off)],
            ) => launch(at, || unsafe {
                ffi::ddim_step_f32(x.get(), e.get(), o.get(), n, g, w, ab, abp, sigma, dir, seed, off)
            }),
            _ => panic!("emulation: no call for {kernel} with arguments {v:?}"),
        }
        Ok(())
    }
}

/// The emulated device, for tensors: registers the [`KernelBackend`] of
/// [`Emu`] for [`Device::Emulated`] (once; later calls find it) and returns
/// the device, so that `tensor.to(ddpm_kernel_emu::device())` runs every op
/// of the tensor on the emulated kernels.
pub fn device() -> Device {
    if backend_of(Device::Emulated).is_err() {
        register(Arc::new(KernelBackend::new(Emu, Device::Emulated, "kernels/*.cu emulated on the CPU")));
    }
    Device::Emulated
}
