//! Where a tensor's numbers live.
//!
//! The CPU is the only device built so far. The CUDA backend adds a
//! `Storage::Cuda` variant holding a device buffer; every kernel dispatches on
//! the storage, so code above the tensor crate never needs to know which one it
//! holds.

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
