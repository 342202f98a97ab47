//! `ddpm-tensor`: dense f32 tensors and the CPU kernels a DDPM U-Net needs,
//! with the same ops on a device through a [`Backend`](backend::Backend).
//!
//! Conventions, used by every op in this crate:
//! - Layout is row-major and always contiguous; images are NCHW. Strides are
//!   derived from the shape, so `permute` and `transpose` copy. At U-Net sizes
//!   the copy costs far less than the convolutions around it, and every kernel
//!   stays a plain loop over a slice.
//! - A tensor's storage lives on a [`Device`]: the host, or a device whose
//!   backend another crate implements (crates/cuda on a GPU, crates/kernel-emu
//!   in the tests). Every op checks that its operands share one device and
//!   runs there: the CPU kernel of this crate on the host, the backend's
//!   kernel on a device. Mixing devices is an error; [`Tensor::to`] moves data.
//! - Every fast kernel keeps a naive `*_reference` beside it (the spec), and the
//!   tests compare the two. The references are the formulas written over
//!   [`ndarray`] arrays with their own indices, mostly in f64; the fast kernels
//!   are hand-written loops over slices.
//! - Shape errors are values ([`TensorError`]), never panics.
//! - Other Rust code hands arrays in and takes results out as [`ndarray`]
//!   arrays: [`Tensor::from_ndarray`], [`Tensor::view_ndarray`] (no copy) and
//!   [`Tensor::to_ndarray`], for host tensors.

pub mod backend;
mod device;
mod error;
mod interop;
pub mod philox;
pub mod pool;
mod shape;
mod tensor;

pub mod ops;

pub use device::{Device, DeviceStorage, Storage};
pub use error::{Result, TensorError};
/// The ndarray this crate converts to and from ([`Tensor::from_ndarray`],
/// [`Tensor::view_ndarray`], [`Tensor::to_ndarray`]): use it to be sure of one version.
pub use ndarray;
pub use shape::Shape;
pub use tensor::Tensor;
pub(crate) use tensor::{placement, Placement};

/// Below this many elements a kernel runs on the calling thread: handing tiny
/// loops to rayon costs more than it saves.
pub(crate) const PARALLEL_THRESHOLD: usize = 1 << 15;
