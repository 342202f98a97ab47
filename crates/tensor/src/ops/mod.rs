//! The ops, one file per op family (conv2d, the largest, is a folder of them).
//! Each public op is a method on [`Tensor`](crate::Tensor) that checks its
//! operands, then runs the CPU kernel of its file on the host or the backend's
//! kernel on a device; each fast CPU kernel has a naive `*_reference` next to it
//! that its tests compare against (and the device kernels are tested against too).
//! The references for conv2d and its gradients, group norm, softmax, max
//! pooling, nearest upsampling and the embedding's lookup and scatter-add read
//! as their formulas, written over ndarray arrays with the formulas' indices
//! (`y[[n, k, oy, ox]] += w[[k, c, r, s]] * x[[n, c, iy, ix]]`), in f64 where
//! they sum; the matmul reference stays a plain triple loop (ndarray's own
//! product is the matrixmultiply GEMM the fast path calls).

mod binary;
mod conv2d;
mod embedding;
mod group_norm;
mod lanes;
mod layout;
mod matmul;
mod max_pool;
mod optim;
pub(crate) mod parallel;
mod reduce;
mod sampling;
mod softmax;
mod unary;
mod upsample;
pub(crate) mod wide;

pub use binary::{binary_reference, BinaryOp};
pub use conv2d::{
    conv2d_backward_bias, conv2d_backward_input, conv2d_backward_input_reference, conv2d_backward_shift,
    conv2d_backward_weight, conv2d_backward_weight_reference, conv2d_reference, Conv2dParams,
};
pub use embedding::{index_add_rows_reference, index_select_rows_reference};
pub use group_norm::{group_norm_backward, group_norm_reference, group_norm_silu_backward, GroupNormStats};
pub use layout::split_ranges;
pub use matmul::{matmul_reference, sgemm, sgemm_parallel, Transpose};
pub use max_pool::max_pool2x2_reference;
pub use reduce::sum_axes_reference;
pub use sampling::{apply_update, SamplingStep, Update};
pub use softmax::softmax_reference;
pub use unary::{exp, sigmoid, UnaryBackward, UnaryOp};
pub use upsample::{upsample_nearest2x_backward_reference, upsample_nearest2x_reference};
