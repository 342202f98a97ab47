//! Where a tensor's numbers live.
//!
//! A tensor's [`Storage`] is a host vector ([`Device::Cpu`]) or a buffer of a
//! device backend ([`Device::Cuda`], and in the tests [`Device::Emulated`]),
//! reached through the [`Backend`](crate::backend::Backend) trait. Every op
//! looks at its operands' storage and runs the CPU kernel of this crate or the
//! backend's kernel; nothing above this crate needs to know which. Moving data
//! is explicit: [`Tensor::to`](crate::Tensor::to).

use std::fmt;
use std::sync::Arc;

use crate::backend::{Backend, DeviceBuffer};
use crate::{Result, TensorError};

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The host, with rayon for parallel loops and matrixmultiply for GEMM.
    Cpu,
    /// CUDA GPU number `ordinal`: the kernels of `kernels/*.cu` (crates/cuda).
    Cuda(usize),
    /// The same CUDA kernels compiled as C++ and run on the host, one block
    /// at a time (crates/kernel-emu): how CI runs the device path without a GPU.
    Emulated,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
            Device::Emulated => f.write_str("emulated"),
        }
    }
}

/// A tensor's buffer, tagged by the device it lives on.
pub enum Storage {
    Cpu(Vec<f32>),
    Device(DeviceStorage),
}

/// A buffer on a device, with the backend that made it (and that every op on
/// it launches through).
pub struct DeviceStorage {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) buffer: Box<dyn DeviceBuffer>,
}

impl DeviceStorage {
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn buffer(&self) -> &dyn DeviceBuffer {
        &*self.buffer
    }
}

/// A CPU buffer goes back to the pool for the next tensor of its size (a
/// device buffer goes back to its backend's pool when it drops).
impl Drop for Storage {
    fn drop(&mut self) {
        if let Storage::Cpu(v) = self {
            crate::pool::give(std::mem::take(v))
        }
    }
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Device(d) => d.backend.device(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
            Storage::Device(d) => d.buffer.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy on the same device (a device copy is a kernel, which can fail).
    pub(crate) fn try_clone(&self) -> Result<Storage> {
        match self {
            Storage::Cpu(v) => {
                let mut copy = crate::pool::take(v.len());
                copy.copy_from_slice(v);
                Ok(Storage::Cpu(copy))
            }
            Storage::Device(d) => {
                let mut buffer = d.backend.alloc(d.buffer.len())?;
                let all = crate::backend::BlockCopy::whole(d.buffer.len());
                d.backend.copy_blocks(&*d.buffer, &mut *buffer, &all)?;
                Ok(Storage::Device(DeviceStorage { backend: Arc::clone(&d.backend), buffer }))
            }
        }
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Storage({} numbers on {})", self.len(), self.device())
    }
}

/// The error of reading a device tensor's numbers as if they were on the host.
pub(crate) fn not_on_host(op: &'static str, device: Device) -> TensorError {
    TensorError::invalid(op, format!("the tensor is on {device}; move it to the host first with .to(Device::Cpu)"))
}
