//! The tensor crate's [`Backend`] on the kernels of `kernels/*.cu`, for any
//! [`Executor`]: the GPU (`KernelBackend<Gpu>`, opened by [`crate::open`])
//! and, in the tests, the CPU emulation of the same kernels
//! (`KernelBackend<Emu>`, `crates/kernel-emu`).
//!
//! Each entry point takes its buffers back from the trait objects the tensor
//! crate holds (every buffer here is a [`PoolBuffer`] of this executor) and
//! makes one checked launch of [`crate::ops`] (two or three where a kernel
//! needs its partial sums added up). Every failure comes back as
//! `TensorError::Device`, naming the op and the device.

use std::sync::Arc;

use ddpm_tensor::backend::{
    AdamStep, Backend, BlockCopy, Broadcast, ConvShape, DeviceBuffer, Gather, MatmulShape, NormShape, Planes, Reduction,
};
use ddpm_tensor::ops::{BinaryOp, SamplingStep, UnaryBackward, UnaryOp};
use ddpm_tensor::{Device, Result, TensorError};

use crate::exec::Executor;
use crate::ops::conv2d::ConvKernel;
use crate::ops::norm::NormGrads;
use crate::ops::{self, In, Out};
use crate::pool::{self, Pool, PoolBuffer, MAX_CACHED_BYTES};
use crate::CudaError;

/// A device that runs the kernels through `E`, its buffers cached in a [`Pool`].
pub struct KernelBackend<E: Executor> {
    exec: E,
    device: Device,
    description: String,
    pool: Arc<Pool<E::Buf>>,
}

impl<E: Executor> KernelBackend<E>
where
    E::Buf: Send + Sync + 'static,
{
    /// The backend of `device`, described as `description` ("NVIDIA H200 (cuda:0)").
    pub fn new(exec: E, device: Device, description: impl Into<String>) -> KernelBackend<E> {
        KernelBackend { exec, device, description: description.into(), pool: Arc::new(Pool::new(MAX_CACHED_BYTES)) }
    }

    /// The freed buffers waiting for reuse.
    pub fn pool(&self) -> &Pool<E::Buf> {
        &self.pool
    }

    /// A failure of `op` on this device, in one line.
    fn error(&self, op: &'static str, e: CudaError) -> TensorError {
        let msg = match e {
            CudaError::Invalid { message, .. } => message,
            other => other.to_string(),
        };
        TensorError::Device { op, device: self.device, msg: msg.lines().map(str::trim).collect::<Vec<_>>().join(" ") }
    }

    fn pooled<'a>(&self, op: &'static str, b: &'a dyn DeviceBuffer) -> Result<&'a PoolBuffer<E::Buf>> {
        b.as_any().downcast_ref().ok_or_else(|| self.foreign(op))
    }

    fn foreign(&self, op: &'static str) -> TensorError {
        TensorError::Device { op, device: self.device, msg: "a buffer this backend did not make".into() }
    }

    fn input<'a>(&self, op: &'static str, b: &'a dyn DeviceBuffer) -> Result<In<'a, E::Buf>> {
        Ok(self.pooled(op, b)?.input())
    }

    fn optional<'a>(&self, op: &'static str, b: Option<&'a dyn DeviceBuffer>) -> Result<Option<In<'a, E::Buf>>> {
        b.map(|b| self.input(op, b)).transpose()
    }

    fn output<'a>(&self, op: &'static str, b: &'a mut dyn DeviceBuffer) -> Result<Out<'a, E::Buf>> {
        let pooled: &mut PoolBuffer<E::Buf> = b.as_any_mut().downcast_mut().ok_or_else(|| self.foreign(op))?;
        Ok(pooled.output())
    }

    /// A buffer from the pool, for a kernel's output or its scratch.
    fn buffer(&self, op: &'static str, len: usize) -> Result<PoolBuffer<E::Buf>> {
        pool::alloc(&self.exec, &self.pool, len).map_err(|e| self.error(op, e))
    }

    /// `host` in a buffer from the pool.
    fn upload_buffer(&self, op: &'static str, host: &[f32]) -> Result<PoolBuffer<E::Buf>> {
        let mut buf = self.buffer(op, host.len())?;
        if let Some(b) = buf.get_mut() {
            self.exec.upload_into(host, b).map_err(|e| self.error(op, e))?;
        }
        Ok(buf)
    }

    /// Row indices as the floats `gather_rows_f32` and `scatter_rows_f32` read, on the device.
    fn indices(&self, op: &'static str, indices: &[usize]) -> Result<PoolBuffer<E::Buf>> {
        if let Some(&i) = indices.iter().find(|&&i| i >= ops::elementwise::MAX_ROW_INDEX) {
            let max = ops::elementwise::MAX_ROW_INDEX;
            return Err(TensorError::Device { op, device: self.device, msg: format!("index {i} is not below {max}") });
        }
        let floats: Vec<f32> = indices.iter().map(|&i| i as f32).collect();
        self.upload_buffer(op, &floats)
    }
}

impl<E> Backend for KernelBackend<E>
where
    E: Executor + Send + Sync + 'static,
    E::Buf: Send + Sync + 'static,
{
    fn device(&self) -> Device {
        self.device
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn alloc(&self, len: usize) -> Result<Box<dyn DeviceBuffer>> {
        Ok(Box::new(self.buffer("alloc", len)?))
    }

    fn upload(&self, host: &[f32]) -> Result<Box<dyn DeviceBuffer>> {
        Ok(Box::new(self.upload_buffer("to", host)?))
    }

    fn download(&self, buf: &dyn DeviceBuffer) -> Result<Vec<f32>> {
        match self.pooled("to", buf)?.get() {
            Some(b) => self.exec.download(b).map_err(|e| self.error("to", e)),
            None => Ok(Vec::new()),
        }
    }

    fn synchronize(&self) -> Result<()> {
        self.exec.synchronize().map_err(|e| self.error("synchronize", e))
    }

    fn fill(&self, out: &mut dyn DeviceBuffer, value: f32) -> Result<()> {
        let op = "fill";
        ops::elementwise::fill(&self.exec, self.output(op, out)?, value).map_err(|e| self.error(op, e))
    }

    fn copy_blocks(&self, src: &dyn DeviceBuffer, dst: &mut dyn DeviceBuffer, copy: &BlockCopy) -> Result<()> {
        let op = "copy";
        ops::elementwise::copy_blocks(&self.exec, self.input(op, src)?, self.output(op, dst)?, copy)
            .map_err(|e| self.error(op, e))
    }

    fn gather(&self, src: &dyn DeviceBuffer, dst: &mut dyn DeviceBuffer, gather: &Gather) -> Result<()> {
        let op = "permute";
        ops::elementwise::gather(&self.exec, self.input(op, src)?, self.output(op, dst)?, gather)
            .map_err(|e| self.error(op, e))
    }

    fn unary(&self, op: UnaryOp, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer) -> Result<()> {
        let name = op.name();
        ops::elementwise::unary(&self.exec, op, self.input(name, x)?, self.output(name, y)?)
            .map_err(|e| self.error(name, e))
    }

    fn unary_backward(
        &self,
        op: UnaryBackward,
        g: &dyn DeviceBuffer,
        saved: &dyn DeviceBuffer,
        d_x: &mut dyn DeviceBuffer,
    ) -> Result<()> {
        let name = op.name();
        let (g, saved) = (self.input(name, g)?, self.input(name, saved)?);
        ops::elementwise::unary_backward(&self.exec, op, g, saved, self.output(name, d_x)?)
            .map_err(|e| self.error(name, e))
    }

    fn binary(
        &self,
        op: BinaryOp,
        lhs: &dyn DeviceBuffer,
        rhs: &dyn DeviceBuffer,
        out: &mut dyn DeviceBuffer,
        walk: &Broadcast,
    ) -> Result<()> {
        let name = op.name();
        let (lhs, rhs) = (self.input(name, lhs)?, self.input(name, rhs)?);
        ops::elementwise::binary(&self.exec, op, lhs, rhs, self.output(name, out)?, walk)
            .map_err(|e| self.error(name, e))
    }

    fn sum(&self, x: &dyn DeviceBuffer, out: &mut dyn DeviceBuffer, reduction: &Reduction) -> Result<()> {
        let op = "sum_axes";
        ops::reduce::sum(&self.exec, self.input(op, x)?, self.output(op, out)?, reduction)
            .map_err(|e| self.error(op, e))
    }

    fn global_norm(&self, xs: &[&dyn DeviceBuffer], out: &mut dyn DeviceBuffer) -> Result<()> {
        let op = "global_norm";
        let xs: Vec<In<'_, E::Buf>> = xs.iter().map(|x| self.input(op, *x)).collect::<Result<_>>()?;
        let lens: Vec<usize> = xs.iter().map(In::len).collect();
        let mut partials = self.buffer(op, ops::reduce::partials_len(&lens))?;
        ops::reduce::global_norm(&self.exec, &xs, partials.output(), self.output(op, out)?)
            .map_err(|e| self.error(op, e))
    }

    fn matmul(
        &self,
        a: &dyn DeviceBuffer,
        b: &dyn DeviceBuffer,
        c: &mut dyn DeviceBuffer,
        s: &MatmulShape,
    ) -> Result<()> {
        let op = "matmul";
        let (a, b) = (self.input(op, a)?, self.input(op, b)?);
        ops::matmul::matmul(&self.exec, a, b, self.output(op, c)?, s).map_err(|e| self.error(op, e))
    }

    fn conv2d(
        &self,
        x: &dyn DeviceBuffer,
        w: &dyn DeviceBuffer,
        bias: Option<&dyn DeviceBuffer>,
        shift: Option<&dyn DeviceBuffer>,
        residual: Option<&dyn DeviceBuffer>,
        y: &mut dyn DeviceBuffer,
        g: &ConvShape,
    ) -> Result<()> {
        let op = "conv2d";
        let (x, w) = (self.input(op, x)?, self.input(op, w)?);
        let [bias, shift, residual] =
            [self.optional(op, bias)?, self.optional(op, shift)?, self.optional(op, residual)?];
        let y = self.output(op, y)?;
        ops::conv2d::forward(&self.exec, ConvKernel::Tiled, g, x, w, bias, shift, residual, y)
            .map_err(|e| self.error(op, e))
    }

    fn conv2d_backward_input(
        &self,
        d_y: &dyn DeviceBuffer,
        w: &dyn DeviceBuffer,
        d_x: &mut dyn DeviceBuffer,
        g: &ConvShape,
    ) -> Result<()> {
        let op = "conv2d_backward_input";
        let (d_y, w) = (self.input(op, d_y)?, self.input(op, w)?);
        ops::conv2d::backward_input(&self.exec, ConvKernel::Tiled, g, d_y, w, self.output(op, d_x)?)
            .map_err(|e| self.error(op, e))
    }

    fn conv2d_backward_weight(
        &self,
        x: &dyn DeviceBuffer,
        d_y: &dyn DeviceBuffer,
        d_w: &mut dyn DeviceBuffer,
        g: &ConvShape,
    ) -> Result<()> {
        let op = "conv2d_backward_weight";
        let (x, d_y) = (self.input(op, x)?, self.input(op, d_y)?);
        ops::conv2d::backward_weight(&self.exec, ConvKernel::Tiled, g, x, d_y, self.output(op, d_w)?)
            .map_err(|e| self.error(op, e))
    }

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
    ) -> Result<()> {
        let op = if silu { "group_norm_silu" } else { "group_norm" };
        let (x, gamma, beta) = (self.input(op, x)?, self.input(op, gamma)?, self.input(op, beta)?);
        let (y, mean, rstd) = (self.output(op, y)?, self.output(op, mean)?, self.output(op, rstd)?);
        ops::norm::group_norm(&self.exec, s, x, gamma, beta, y, mean, rstd, eps, silu).map_err(|e| self.error(op, e))
    }

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
    ) -> Result<()> {
        let op = "group_norm_backward";
        let (x, gamma, beta) = (self.input(op, x)?, self.input(op, gamma)?, self.input(op, beta)?);
        let (mean, rstd, d_y) = (self.input(op, mean)?, self.input(op, rstd)?, self.input(op, d_y)?);
        let (mut d_gamma_part, mut d_beta_part) = (self.buffer(op, s.n * s.c)?, self.buffer(op, s.n * s.c)?);
        let grads = NormGrads {
            d_x: self.output(op, d_x)?,
            d_gamma: self.output(op, d_gamma)?,
            d_beta: self.output(op, d_beta)?,
            d_gamma_part: d_gamma_part.output(),
            d_beta_part: d_beta_part.output(),
        };
        ops::norm::group_norm_backward(&self.exec, s, x, gamma, beta, mean, rstd, d_y, grads, silu)
            .map_err(|e| self.error(op, e))
    }

    fn softmax(&self, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer, cols: usize, log: bool) -> Result<()> {
        let op = if log { "log_softmax" } else { "softmax" };
        ops::softmax::softmax(&self.exec, self.input(op, x)?, self.output(op, y)?, cols, log)
            .map_err(|e| self.error(op, e))
    }

    fn softmax_backward(
        &self,
        y: &dyn DeviceBuffer,
        d_y: &dyn DeviceBuffer,
        d_x: &mut dyn DeviceBuffer,
        cols: usize,
        log: bool,
    ) -> Result<()> {
        let op = if log { "log_softmax_backward" } else { "softmax_backward" };
        let (y, d_y) = (self.input(op, y)?, self.input(op, d_y)?);
        ops::softmax::softmax_backward(&self.exec, y, d_y, self.output(op, d_x)?, cols, log)
            .map_err(|e| self.error(op, e))
    }

    fn upsample2x(&self, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer, p: &Planes) -> Result<()> {
        let op = "upsample_nearest2x";
        ops::elementwise::upsample2x(&self.exec, self.input(op, x)?, self.output(op, y)?, p)
            .map_err(|e| self.error(op, e))
    }

    fn upsample2x_backward(&self, d_y: &dyn DeviceBuffer, d_x: &mut dyn DeviceBuffer, p: &Planes) -> Result<()> {
        let op = "upsample_nearest2x_backward";
        ops::elementwise::upsample2x_backward(&self.exec, self.input(op, d_y)?, self.output(op, d_x)?, p)
            .map_err(|e| self.error(op, e))
    }

    fn max_pool2x2(&self, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer, p: &Planes) -> Result<()> {
        let op = "max_pool2x2";
        ops::elementwise::max_pool2x2(&self.exec, self.input(op, x)?, self.output(op, y)?, p)
            .map_err(|e| self.error(op, e))
    }

    fn max_pool2x2_backward(
        &self,
        x: &dyn DeviceBuffer,
        d_y: &dyn DeviceBuffer,
        d_x: &mut dyn DeviceBuffer,
        p: &Planes,
    ) -> Result<()> {
        let op = "max_pool2x2_backward";
        let (x, d_y) = (self.input(op, x)?, self.input(op, d_y)?);
        ops::elementwise::max_pool2x2_backward(&self.exec, x, d_y, self.output(op, d_x)?, p)
            .map_err(|e| self.error(op, e))
    }

    fn index_select_rows(
        &self,
        table: &dyn DeviceBuffer,
        indices: &[usize],
        out: &mut dyn DeviceBuffer,
        dim: usize,
    ) -> Result<()> {
        let op = "index_select_rows";
        let idx = self.indices(op, indices)?;
        ops::elementwise::gather_rows(&self.exec, self.input(op, table)?, idx.input(), self.output(op, out)?, dim)
            .map_err(|e| self.error(op, e))
    }

    fn index_add_rows(
        &self,
        d_out: &dyn DeviceBuffer,
        indices: &[usize],
        d_table: &mut dyn DeviceBuffer,
        rows: usize,
        dim: usize,
    ) -> Result<()> {
        let op = "index_add_rows";
        let idx = self.indices(op, indices)?;
        let d_out = self.input(op, d_out)?;
        ops::elementwise::scatter_rows(&self.exec, d_out, idx.input(), self.output(op, d_table)?, rows, dim)
            .map_err(|e| self.error(op, e))
    }

    fn dropout(&self, x: &dyn DeviceBuffer, y: &mut dyn DeviceBuffer, seed: u64, p: f32) -> Result<()> {
        let op = "dropout";
        ops::elementwise::dropout(&self.exec, self.input(op, x)?, self.output(op, y)?, seed, p)
            .map_err(|e| self.error(op, e))
    }

    fn randn_philox(&self, out: &mut dyn DeviceBuffer, seed: u64, offset: u64) -> Result<()> {
        let op = "randn_philox";
        ops::sampling::randn(&self.exec, self.output(op, out)?, seed, offset).map_err(|e| self.error(op, e))
    }

    fn sampling_step(
        &self,
        x: &dyn DeviceBuffer,
        eps: &dyn DeviceBuffer,
        out: &mut dyn DeviceBuffer,
        step: &SamplingStep,
    ) -> Result<()> {
        let op = "sampling_step";
        let (x, eps) = (self.input(op, x)?, self.input(op, eps)?);
        ops::sampling::step(&self.exec, x, eps, self.output(op, out)?, step).map_err(|e| self.error(op, e))
    }

    fn adam(
        &self,
        p: &dyn DeviceBuffer,
        g: &dyn DeviceBuffer,
        m: &mut dyn DeviceBuffer,
        v: &mut dyn DeviceBuffer,
        p_out: &mut dyn DeviceBuffer,
        s: &AdamStep,
    ) -> Result<()> {
        let op = "adam_update";
        let (p, g) = (self.input(op, p)?, self.input(op, g)?);
        let (m, v, p_out) = (self.output(op, m)?, self.output(op, v)?, self.output(op, p_out)?);
        ops::optim::adam(&self.exec, p, g, m, v, p_out, s).map_err(|e| self.error(op, e))
    }

    fn lerp(&self, x: &mut dyn DeviceBuffer, end: &dyn DeviceBuffer, weight: f32) -> Result<()> {
        let op = "lerp_assign";
        ops::optim::lerp(&self.exec, self.output(op, x)?, self.input(op, end)?, weight).map_err(|e| self.error(op, e))
    }
}
