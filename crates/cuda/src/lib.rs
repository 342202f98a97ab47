//! The CUDA side of the project: `kernels/*.cu`, compiled at run time by
//! NVRTC and launched through cudarc.
//!
//! - [`source`]: the kernel sources (embedded) and the names each defines;
//! - [`nvrtc`]: compiling them to PTX, once per process;
//! - [`launch`]: the grid of every kernel, shared with the CPU emulation
//!   (`crates/kernel-emu`) that tests the kernels without a GPU;
//! - [`Gpu`]: a device, its stream, and one checked method per kernel.
//!
//! Nothing here needs CUDA to build: cudarc loads libcuda and libnvrtc when
//! first used, and every entry point reports their absence as an error.

mod error;
mod gpu;
pub mod launch;
pub mod nvrtc;
pub mod source;

pub use error::{CudaError, Result};
pub use gpu::{driver_present, ConvKernel, Gpu, MatmulShape, NormShape, Step, Update};

/// Opens GPU 0, or says why not (for `--device auto|cuda`).
pub fn open() -> Result<Gpu> {
    Gpu::new(0)
}
