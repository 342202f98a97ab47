//! Where a tensor's numbers live.
//!
//! A `Tensor` always lives on the host. The GPU side keeps its own buffers
//! (`ddpm_cuda::Executor::Buf`) in the structures that run there as a whole
//! (`ddpm::device::DeviceUNet`, `ddpm::device_train::DeviceTrainer`), the way
//! llm.c does: a forward pass, a backward pass and an optimiser step written
//! out for the device, rather than every tensor op dispatching on its
//! storage. Tensors cross to the device only as a step's inputs, and back as
//! its results or a state to save.

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The host, with rayon for parallel loops and matrixmultiply for GEMM.
    Cpu,
}

/// A tensor's buffer, tagged by the device it lives on.
#[derive(Debug, PartialEq)]
pub enum Storage {
    Cpu(Vec<f32>),
}

impl Clone for Storage {
    fn clone(&self) -> Self {
        match self {
            Storage::Cpu(v) => {
                let mut copy = crate::pool::take(v.len());
                copy.copy_from_slice(v);
                Storage::Cpu(copy)
            }
        }
    }
}

/// A CPU buffer goes back to the pool for the next tensor of its size.
impl Drop for Storage {
    fn drop(&mut self) {
        match self {
            Storage::Cpu(v) => crate::pool::give(std::mem::take(v)),
        }
    }
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
