//! What runs a kernel: an [`Executor`] owns buffers and launches kernels by
//! name with a list of arguments.
//!
//! The GPU ([`crate::Gpu`], through cudarc) is one. The CPU emulation of the
//! kernels (`crates/kernel-emu`, tests only) is the other, so that every op
//! of [`crate::DeviceOps`], and the U-Net and sampler built on them, run in
//! the tests exactly as they will on the GPU: same argument checks, same
//! launch geometry, same kernels.

use crate::launch::Launch;
use crate::source::Module;
use crate::Result;

/// One kernel argument, in the order of the kernel's C signature.
pub enum Arg<'a, B> {
    /// A buffer the kernel reads.
    In(&'a B),
    /// A buffer read from element `offset` on (q, k, v inside one qkv tensor).
    InAt(&'a B, usize),
    /// A buffer the kernel writes (or reads and writes).
    Out(&'a mut B),
    /// A null pointer: an absent optional operand (a bias).
    Null,
    I32(i32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
}

/// A device: f32 buffers, copies to and from the host, and kernel launches.
pub trait Executor {
    type Buf;

    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer for a kernel's output, which the kernel must write in full:
    /// uninitialised on the GPU (no memset), NaN in the emulation (so that a
    /// kernel that misses part of its output fails the tests).
    fn output(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn len(&self, buf: &Self::Buf) -> usize;

    /// Enqueues `kernel` of `module` over `at`. The caller has checked the
    /// buffer lengths against the shapes.
    fn launch(&self, module: &Module, kernel: &'static str, at: Launch, args: &mut [Arg<'_, Self::Buf>]) -> Result<()>;
}
