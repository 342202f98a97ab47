//! What runs a kernel: an [`Executor`] owns buffers and launches kernels by
//! name with a list of arguments.
//!
//! The GPU ([`crate::Gpu`], through cudarc) is one. The CPU emulation of the
//! kernels (`crates/kernel-emu`, tests only) is the other, so that every
//! launch of [`crate::ops`], and the [`crate::KernelBackend`] built on them,
//! run in the tests exactly as they will on the GPU: same argument checks,
//! same launch geometry, same kernels.

use crate::launch::Launch;
use crate::source::Module;
use crate::Result;

/// One kernel argument, in the order of the kernel's C signature.
pub enum Arg<'a, B> {
    /// A buffer the kernel reads.
    In(&'a B),
    /// A buffer the kernel writes (or reads and writes).
    Out(&'a mut B),
    /// A null pointer: an absent optional operand (a bias), or an empty
    /// buffer, of which the kernel reads nothing.
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

    /// A buffer for a kernel's output, which the kernel must write in full:
    /// uninitialised on the GPU (no memset), NaN in the emulation (so that a
    /// kernel that misses part of its output fails the tests).
    fn output(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    /// Copies `host` into `buf`, which has the same length.
    fn upload_into(&self, host: &[f32], buf: &mut Self::Buf) -> Result<()>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn len(&self, buf: &Self::Buf) -> usize;

    /// Makes a freed buffer that is handed out again look like a fresh
    /// [`Executor::output`]: nothing to do on the GPU, NaN again in the
    /// emulation (so that reuse cannot hide a kernel that misses part of its
    /// output behind the previous owner's numbers).
    fn recycle(&self, _buf: &mut Self::Buf) {}

    /// Waits for every launch so far (nothing to wait for where launches
    /// run to completion, as in the emulation).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Enqueues `kernel` of `module` over `at`. The caller has checked the
    /// buffer lengths against the shapes.
    fn launch(&self, module: &Module, kernel: &'static str, at: Launch, args: &mut [Arg<'_, Self::Buf>]) -> Result<()>;
}
