//! The CUDA side of the project: `kernels/*.cu`, compiled at run time by
//! NVRTC and launched through cudarc.
//!
//! - [`source`]: the kernel sources (embedded) and the names each defines;
//! - [`nvrtc`]: compiling them to PTX, once per process;
//! - [`launch`]: the grid of every kernel;
//! - [`Executor`]: what launches kernels on its buffers: the [`Gpu`], and in
//!   the tests the CPU emulation of the kernels (`crates/kernel-emu`);
//! - [`ops`]: every kernel as a checked launch, written once for both;
//! - [`pool`]: the caching allocator of a device's buffers;
//! - [`KernelBackend`]: the tensor crate's `Backend` on those launches, so
//!   that `ddpm_tensor::Tensor`s live and compute on the device; [`open`]
//!   registers it for a GPU.
//!
//! Nothing here needs CUDA to build: cudarc loads libcuda and libnvrtc when
//! first used, and every entry point reports their absence as an error.

mod backend;
mod error;
mod exec;
mod gpu;
pub mod launch;
pub mod nvrtc;
pub mod ops;
pub mod pool;
pub mod source;

use std::sync::Arc;

use ddpm_tensor::backend::{backend_of, register};
use ddpm_tensor::Device;

pub use backend::KernelBackend;
pub use error::{CudaError, Result};
pub use exec::{Arg, Executor};
pub use gpu::{driver_present, Gpu};
pub use ops::conv2d::ConvKernel;

/// Opens GPU `ordinal` and registers its backend, so that tensors can move
/// there (`Tensor::to(Device::Cuda(ordinal))`); returns the device. An error,
/// never a panic, when there is no driver, no NVRTC or no such device.
/// Opening a device twice keeps the first backend (tensors may hold it).
pub fn open(ordinal: usize) -> Result<Device> {
    let device = Device::Cuda(ordinal);
    if backend_of(device).is_ok() {
        return Ok(device);
    }
    let gpu = Gpu::new(ordinal)?;
    let description = format!("{} ({device})", gpu.name());
    register(Arc::new(KernelBackend::new(gpu, device, description)));
    Ok(device)
}
