//! `ddpm-tensor`: dense f32 tensors and the CPU kernels a DDPM U-Net needs.
//!
//! Conventions, used by every op in this crate:
//! - Layout is row-major and always contiguous; images are NCHW. Strides are
//!   derived from the shape, so `permute` and `transpose` copy. At U-Net sizes
//!   the copy costs far less than the convolutions around it, and every kernel
//!   stays a plain loop over a slice.
//! - A tensor's storage lives on the host ([`Device::Cpu`]); the GPU side
//!   (crates/cuda, crates/ddpm/src/device.rs) keeps its own buffers.
//! - Every fast kernel keeps a naive `*_reference` beside it (the spec), and the
//!   tests compare the two.
//! - Shape errors are values ([`TensorError`]), never panics.

mod device;
mod error;
pub mod philox;
pub mod pool;
mod shape;
mod tensor;

pub mod ops;

pub use device::{Device, Storage};
pub use error::{Result, TensorError};
pub use shape::Shape;
pub use tensor::Tensor;

/// Below this many elements a kernel runs on the calling thread: handing tiny
/// loops to rayon costs more than it saves.
pub(crate) const PARALLEL_THRESHOLD: usize = 1 << 15;
