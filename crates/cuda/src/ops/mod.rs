//! Every kernel of `kernels/*.cu` as a checked launch on an [`Executor`]'s
//! buffers, one file per kernel file: the lengths are checked against the
//! descriptors (a launch must never read or write outside its buffers), a
//! layout the kernel cannot take is refused with an error, the grid comes
//! from [`crate::launch`]. Written once for the GPU and the emulation; the
//! [`crate::KernelBackend`] calls them.
//!
//! Buffers come as [`In`] (read) and [`Out`] (written, or read and written):
//! a buffer with its length, or nothing for an empty one (a device allocates
//! nothing for it; the kernel gets a null pointer and reads none of it). A
//! launch whose outputs are all empty is skipped.

pub mod conv2d;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod sampling;
pub mod softmax;

use crate::exec::{Arg, Executor};
use crate::launch::Launch;
use crate::source::Module;
use crate::{CudaError, Result};

/// A buffer a kernel reads: `len` floats, or none.
pub struct In<'a, B> {
    len: usize,
    buf: Option<&'a B>,
}

// Manual impls: a shared reference is Copy whatever B is.
impl<B> Clone for In<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for In<'_, B> {}

impl<'a, B> In<'a, B> {
    /// An executor's buffer.
    pub fn new<E: Executor<Buf = B>>(e: &E, buf: &'a B) -> Self {
        In { len: e.len(buf), buf: Some(buf) }
    }

    /// `len` floats in `buf`, or an empty buffer (`buf` None, `len` 0).
    pub fn from_parts(len: usize, buf: Option<&'a B>) -> Self {
        debug_assert!(buf.is_some() || len == 0, "only an empty buffer has no storage");
        In { len, buf }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn arg(&self) -> Arg<'a, B> {
        match self.buf {
            Some(b) if self.len > 0 => Arg::In(b),
            _ => Arg::Null,
        }
    }
}

/// A buffer a kernel writes (or reads and writes): `len` floats, or none.
pub struct Out<'a, B> {
    len: usize,
    buf: Option<&'a mut B>,
}

impl<'a, B> Out<'a, B> {
    pub fn new<E: Executor<Buf = B>>(e: &E, buf: &'a mut B) -> Self {
        Out { len: e.len(buf), buf: Some(buf) }
    }

    pub fn from_parts(len: usize, buf: Option<&'a mut B>) -> Self {
        debug_assert!(buf.is_some() || len == 0, "only an empty buffer has no storage");
        Out { len, buf }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same buffer, to read once it has been written (a partial sum
    /// that a second kernel adds up).
    pub fn as_in(&self) -> In<'_, B> {
        In { len: self.len, buf: self.buf.as_deref() }
    }

    fn arg(&mut self) -> Arg<'_, B> {
        match &mut self.buf {
            Some(b) if self.len > 0 => Arg::Out(b),
            _ => Arg::Null,
        }
    }
}

/// An optional operand (a bias): its argument, a null pointer when absent.
fn optional<'a, B>(x: Option<In<'a, B>>) -> Arg<'a, B> {
    x.map_or(Arg::Null, |x| x.arg())
}

pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> CudaError {
    CudaError::Invalid { op, message: message.into() }
}

fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(invalid(op, format!("{what} holds {got} numbers, the shape needs {want}")))
    }
}

/// `v` as a kernel's `int`.
fn int(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| invalid(op, format!("{what} = {v} is beyond the kernel's 32-bit int")))
}

/// `v` as a kernel's `long long`.
fn long(op: &'static str, what: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| invalid(op, format!("{what} = {v} is beyond the kernel's 64-bit int")))
}

/// Launches `kernel` after checking that CUDA takes its grid.
fn launch<E: Executor>(
    e: &E,
    op: &'static str,
    module: &Module,
    kernel: &'static str,
    at: Launch,
    args: &mut [Arg<'_, E::Buf>],
) -> Result<()> {
    at.check().map_err(|m| invalid(op, m))?;
    e.launch(module, kernel, at, args)
}
