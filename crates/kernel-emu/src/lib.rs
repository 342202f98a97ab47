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
            m: i32,
            n: i32,
            l: i32,
            transpose_a: i32,
            transpose_b: i32,
            stride_a: i64,
            stride_b: i64,
            stride_c: i64,
            accumulate: i32,
        );
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
