//! The device side of a tensor: the [`Backend`] trait a device implements,
//! and the registry that finds a device's backend.
//!
//! A backend owns buffers of f32 on its device ([`DeviceBuffer`]) and runs
//! one kernel per entry point. The tensor ops of this crate do everything
//! else: they check shapes and devices, work out the layout of the operands
//! (the descriptors below), allocate the output and call the entry point. So
//! a backend is a list of kernel launches, nothing more; `crates/cuda`
//! implements it with the kernels of `kernels/*.cu` through cudarc, and
//! `crates/kernel-emu` with the same kernels compiled for the CPU.
//!
//! Every entry point writes the whole of its output buffers, which the caller
//! allocated with [`Backend::alloc`] (contents unspecified) at the lengths the
//! descriptor implies. Launches are asynchronous where the device is: only
//! [`Backend::download`] and [`Backend::synchronize`] wait for the device.

use std::any::Any;
use std::sync::{Arc, RwLock};

use crate::ops::{BinaryOp, SamplingStep, UnaryBackward, UnaryOp};
use crate::{Device, Result, TensorError};

/// A buffer of f32 on a device. Backends downcast it to their own type.
pub trait DeviceBuffer: Any + Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// `dst[b * dst_stride + dst_offset + j] = src[b * src_stride + src_offset + j]`
/// for b < blocks, j < width: a copy, a slice (narrow), one part of a
/// concatenation, a slice's gradient put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    pub blocks: usize,
    pub width: usize,
    pub src_stride: usize,
    pub src_offset: usize,
    pub dst_stride: usize,
    pub dst_offset: usize,
}

impl BlockCopy {
    /// All `len` elements, in one block.
    pub fn whole(len: usize) -> BlockCopy {
        BlockCopy { blocks: 1, width: len, src_stride: len, src_offset: 0, dst_stride: len, dst_offset: 0 }
    }
}

/// A walk over an output of extents `dims` (row-major, outermost first),
/// reading each operand at `sum_k i_k * strides[k]` (stride 0 on a
/// broadcast axis). Axes that both operands walk as one run are merged
/// first, so that the U-Net's broadcasts need at most three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    pub dims: Vec<usize>,
    pub lhs: Vec<usize>,
    pub rhs: Vec<usize>,
}

/// `dst[i] = src[sum_k i_k * strides[k]]` for the output index i unravelled
/// over `dims`: a permutation of the axes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gather {
    pub dims: Vec<usize>,
    pub strides: Vec<usize>,
}

/// A sum over some axes of a contiguous input: output element o unravels
/// over the `kept` (extent, stride) pairs to a base offset, and is the sum
/// of the input over every index of the `reduced` pairs from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reduction {
    pub kept: Vec<(usize, usize)>,
    pub reduced: Vec<(usize, usize)>,
}

impl Reduction {
    pub fn outputs(&self) -> usize {
        self.kept.iter().map(|&(d, _)| d).product()
    }
}

/// C[i] = op(A[i]) op(B[i]) for i < batch: C is m x n (batches contiguous),
/// the reduction has length k; A is m x k (k x m when transposed), B is
/// k x n (n x k when transposed). `b_stride` is 0 for a B shared by the
/// whole batch (a weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
    pub a_stride: usize,
    pub b_stride: usize,
}

/// A convolution's extents: x [n, c, h, w], weight [k, c, r, s], y [n, k, ho, wo].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub r: usize,
    pub s: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.r) / self.stride + 1
    }

    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.s) / self.stride + 1
    }

    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    pub fn weight_len(&self) -> usize {
        self.k * self.c * self.r * self.s
    }

    pub fn output_len(&self) -> usize {
        self.n * self.k * self.ho() * self.wo()
    }

    /// Multiply-adds of one pass (the forward pass, or either gradient).
    pub fn macs(&self) -> usize {
        self.output_len() * self.c * self.r * self.s
    }
}

/// A group norm's extents: x [n, c, hw] in `groups` groups of c / groups channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub groups: usize,
}

/// `planes` images of h x w (N * C of them for [N, C, H, W]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planes {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
}

/// The scalars of one Adam step t, computed on the host in f64 as PyTorch
/// does: `step_size` = lr / (1 - b1^t), `bias_correction2_sqrt` = sqrt(1 - b2^t).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    pub step_size: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
}

/// A device: its buffers, and one kernel per op of this crate that runs there.
///
/// The arguments are checked by the tensor op that calls the entry point
/// (shapes, lengths, devices); an implementation may still refuse a layout it
/// has no kernel for (more axes than its kernel takes, say) with an error.
#[allow(clippy::too_many_arguments)]
pub trait Backend: Send + Sync {
    fn device(&self) -> Device;
    /// "NVIDIA H200 (cuda:0)", say.
    fn describe(&self) -> String;

    // ---- memory
    /// A buffer of `len` floats with unspecified contents, for a kernel that
    /// writes all of it (a backend should cache freed buffers: a training
    /// step asks for the same sizes every time).
    fn alloc(&self, len: usize) -> Result<Box<dyn DeviceBuffer>>;
    fn upload(&self, host: &[f32]) -> Result<Box<dyn DeviceBuffer>>;
    /// Waits for the work that writes `buf`, then copies it to the host.
    fn download(&self, buf: &dyn DeviceBuffer) -> Result<Vec<f32>>;
    /// Waits for every launch so far (for timing).
    fn synchronize(&self) -> Result<()>;

    // ---- moving numbers
    fn fill(&self, out: &mut dyn DeviceBuffer, value: f32) -> Result<()>;
    fn copy_blocks(&self, src: &dyn DeviceBuffer, dst: &mut dyn DeviceBuffer, copy: &BlockCopy) -> Result<()>;
    fn gather(&self, src: &dyn DeviceBuffer, dst: &mut dyn DeviceBuffer, gather: &Gather) -> Result<()>;

    // ---- elementwise
    fn unary(&self, op: UnaryOp, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer) -> Result<()>;
    /// d_x = g * f'(saved), where saved is x or y as `op` says.
    fn unary_backward(
        &self,
        op: UnaryBackward,
        g: &dyn DeviceBuffer,
        saved: &dyn DeviceBuffer,
        d_x: &mut dyn DeviceBuffer,
    ) -> Result<()>;
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn DeviceBuffer,
        rhs: &dyn DeviceBuffer,
        out: &mut dyn DeviceBuffer,
        walk: &Broadcast,
    ) -> Result<()>;

    // ---- reductions and products
    fn sum(&self, x: &dyn DeviceBuffer, out: &mut dyn DeviceBuffer, reduction: &Reduction) -> Result<()>;
    /// out[0] = sqrt(sum over every x of every element squared), accumulated in f64.
    fn global_norm(&self, xs: &[&dyn DeviceBuffer], out: &mut dyn DeviceBuffer) -> Result<()>;
    fn matmul(
        &self,
        a: &dyn DeviceBuffer,
        b: &dyn DeviceBuffer,
        c: &mut dyn DeviceBuffer,
        s: &MatmulShape,
    ) -> Result<()>;

    // ---- the layers' fused kernels
    /// y = conv2d(x, w) + bias[k] + shift[n, k] + residual, the optional terms absent when `None`.
    fn conv2d(
        &self,
        x: &dyn DeviceBuffer,
        w: &dyn DeviceBuffer,
        bias: Option<&dyn DeviceBuffer>,
        shift: Option<&dyn DeviceBuffer>,
        residual: Option<&dyn DeviceBuffer>,
        y: &mut dyn DeviceBuffer,
        g: &ConvShape,
    ) -> Result<()>;
    fn conv2d_backward_input(
        &self,
        d_y: &dyn DeviceBuffer,
        w: &dyn DeviceBuffer,
        d_x: &mut dyn DeviceBuffer,
        g: &ConvShape,
    ) -> Result<()>;
    fn conv2d_backward_weight(
        &self,
        x: &dyn DeviceBuffer,
        d_y: &dyn DeviceBuffer,
        d_w: &mut dyn DeviceBuffer,
        g: &ConvShape,
    ) -> Result<()>;
    /// y = act(GroupNorm(x)) with act = SiLU or the identity; mean and rstd [n * groups].
    fn group_norm(
        &self,
        x: &dyn DeviceBuffer,
        gamma: &dyn DeviceBuffer,
        beta: &dyn DeviceBuffer,
        y: &mut dyn DeviceBuffer,
        mean: &mut dyn DeviceBuffer,
        rstd: &mut dyn DeviceBuffer,
        s: &NormShape,
        eps: f32,
        silu: bool,
    ) -> Result<()>;
    fn group_norm_backward(
        &self,
        x: &dyn DeviceBuffer,
        gamma: &dyn DeviceBuffer,
        beta: &dyn DeviceBuffer,
        mean: &dyn DeviceBuffer,
        rstd: &dyn DeviceBuffer,
        d_y: &dyn DeviceBuffer,
        d_x: &mut dyn DeviceBuffer,
        d_gamma: &mut dyn DeviceBuffer,
        d_beta: &mut dyn DeviceBuffer,
        s: &NormShape,
        silu: bool,
    ) -> Result<()>;
    /// Row-wise softmax (or log-softmax) over rows of `cols`.
    fn softmax(&self, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer, cols: usize, log: bool) -> Result<()>;
    /// The gradient of [`Backend::softmax`] from its output y and dL/dy.
    fn softmax_backward(
        &self,
        y: &dyn DeviceBuffer,
        d_y: &dyn DeviceBuffer,
        d_x: &mut dyn DeviceBuffer,
        cols: usize,
        log: bool,
    ) -> Result<()>;
    fn upsample2x(&self, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer, p: &Planes) -> Result<()>;
    fn upsample2x_backward(&self, d_y: &dyn DeviceBuffer, d_x: &mut dyn DeviceBuffer, p: &Planes) -> Result<()>;
    fn max_pool2x2(&self, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer, p: &Planes) -> Result<()>;
    fn max_pool2x2_backward(
        &self,
        x: &dyn DeviceBuffer,
        d_y: &dyn DeviceBuffer,
        d_x: &mut dyn DeviceBuffer,
        p: &Planes,
    ) -> Result<()>;
    /// out[b] = table[indices[b]] for a table of rows of `dim`.
    fn index_select_rows(
        &self,
        table: &dyn DeviceBuffer,
        indices: &[usize],
        out: &mut dyn DeviceBuffer,
        dim: usize,
    ) -> Result<()>;
    /// d_table [rows, dim]: each row the sum of the d_out rows whose index is it.
    fn index_add_rows(
        &self,
        d_out: &dyn DeviceBuffer,
        indices: &[usize],
        d_table: &mut dyn DeviceBuffer,
        rows: usize,
        dim: usize,
    ) -> Result<()>;
    /// Inverted dropout with the mask of Philox stream `seed` (crate::philox).
    fn dropout(&self, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer, seed: u64, p: f32) -> Result<()>;

    // ---- randomness, sampling, optimisation
    /// N(0, 1) numbers: element i is `philox::normal(seed, offset, i)`.
    fn randn_philox(&self, out: &mut dyn DeviceBuffer, seed: u64, offset: u64) -> Result<()>;
    /// One sampling step (crate::ops::sampling): out from x and the noise estimate.
    fn sampling_step(
        &self,
        x: &dyn DeviceBuffer,
        eps: &dyn DeviceBuffer,
        out: &mut dyn DeviceBuffer,
        step: &SamplingStep,
    ) -> Result<()>;
    /// One Adam step: m and v in place, the new weights to `p_out`.
    fn adam(
        &self,
        p: &dyn DeviceBuffer,
        g: &dyn DeviceBuffer,
        m: &mut dyn DeviceBuffer,
        v: &mut dyn DeviceBuffer,
        p_out: &mut dyn DeviceBuffer,
        s: &AdamStep,
    ) -> Result<()>;
    /// x += weight (end - x), in place.
    fn lerp(&self, x: &mut dyn DeviceBuffer, end: &dyn DeviceBuffer, weight: f32) -> Result<()>;
}

/// The backends that have been opened, one per device.
static BACKENDS: RwLock<Vec<Arc<dyn Backend>>> = RwLock::new(Vec::new());

/// Makes `backend` the one that [`backend_of`] (and so `Tensor::to`) finds
/// for its device; one that is there already stays (tensors may hold it).
/// Returns the device's backend.
pub fn register(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    let mut all = BACKENDS.write().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = all.iter().find(|b| b.device() == backend.device()) {
        return Arc::clone(existing);
    }
    all.push(Arc::clone(&backend));
    backend
}

/// The backend of a device that has been opened. The host has none: its
/// kernels are this crate's own.
pub fn backend_of(device: Device) -> Result<Arc<dyn Backend>> {
    if device == Device::Cpu {
        return Err(TensorError::invalid("backend_of", "the CPU runs this crate's own kernels, not a backend"));
    }
    let all = BACKENDS.read().unwrap_or_else(|e| e.into_inner());
    all.iter().find(|b| b.device() == device).cloned().ok_or_else(|| {
        TensorError::invalid("device", format!("{device} has not been opened (no backend is registered for it)"))
    })
}

/// What a device is, in words: "cpu", or the backend's description.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        d => backend_of(d).map_or_else(|_| d.to_string(), |b| b.describe()),
    }
}

/// Waits until `device` has finished every launch so far (nothing to wait
/// for on the CPU): what a benchmark does before it stops the clock.
pub fn synchronize(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        d => backend_of(d)?.synchronize(),
    }
}
