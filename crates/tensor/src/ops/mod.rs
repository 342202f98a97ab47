//! The CPU kernels, one file per op family. Each public kernel is a method on
//! [`Tensor`](crate::Tensor); each fast kernel has a naive `*_reference` next to
//! it that its tests compare against.

mod binary;
mod layout;
mod matmul;
mod parallel;
mod reduce;
mod softmax;
mod unary;

pub use binary::{binary_reference, BinaryOp};
pub use matmul::{matmul_reference, sgemm, sgemm_parallel, Transpose};
pub use reduce::sum_axes_reference;
pub use softmax::softmax_reference;
