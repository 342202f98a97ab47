//! The CUDA side of the project: `kernels/*.cu`, compiled at run time by
//! NVRTC and launched through cudarc.
//!
//! - [`source`]: the kernel sources (embedded) and the names each defines;
//! - [`nvrtc`]: compiling them to PTX, once per process;
//! - [`launch`]: the grid of every kernel;
//! - [`Executor`]: what launches kernels on its buffers: the [`Gpu`], and in
//!   the tests the CPU emulation of the kernels (`crates/kernel-emu`);
//! - [`DeviceOps`]: every kernel as a checked op, written once for both.
//!
//! Nothing here needs CUDA to build: cudarc loads libcuda and libnvrtc when
//! first used, and every entry point reports their absence as an error.

mod error;
mod exec;
mod gpu;
pub mod launch;
pub mod nvrtc;
mod ops;
pub mod source;

pub use error::{CudaError, Result};
pub use exec::{Arg, Executor};
pub use gpu::{driver_present, Gpu};
pub use ops::{AdamStep, ConvKernel, DeviceOps, MatmulShape, NormShape, Step, Update};

/// Opens GPU 0, or says why not (for `--device auto|cuda`).
pub fn open() -> Result<Gpu> {
    Gpu::new(0)
}
