use std::fmt;
use std::sync::Arc;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::backend::{backend_of, Backend, DeviceBuffer};
use crate::device::{not_on_host, DeviceStorage};
use crate::{Device, Result, Shape, Storage, TensorError};

/// A dense, contiguous f32 tensor, on the host or on a device.
///
/// Cloning is cheap: the buffer is shared behind an `Arc` and copied only when
/// a shared buffer is written to ([`Tensor::as_mut_slice`]).
///
/// ```
/// use ddpm_tensor::{Device, Tensor};
/// let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [2, 2])?;
/// // [[1, 2], [3, 4]]^2 = [[7, 10], [15, 22]], plus [1, 1] broadcast over the rows.
/// let y = x.matmul(&x)?.add(&Tensor::ones([2]))?;
/// assert_eq!(y.to_vec(), vec![8.0, 11.0, 16.0, 23.0]);
/// // Every op runs where its operands are; `to` moves them (here, nowhere).
/// assert_eq!(y.to(Device::Cpu)?.device(), Device::Cpu);
/// # Ok::<(), ddpm_tensor::TensorError>(())
/// ```
#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    storage: Arc<Storage>,
}

/// Where an op's operands live: all on the host, or all on one device.
pub(crate) enum Placement {
    Cpu,
    Device(Arc<dyn Backend>),
}

/// Checks that `operands` share one device; `op` names the op in the error.
pub(crate) fn placement(op: &'static str, operands: &[&Tensor]) -> Result<Placement> {
    let first = operands.first().map_or(Device::Cpu, |t| t.device());
    if let Some(other) = operands.iter().map(|t| t.device()).find(|&d| d != first) {
        return Err(TensorError::DeviceMismatch { op, lhs: first, rhs: other });
    }
    Ok(match operands.first().map(|t| &*t.storage) {
        Some(Storage::Device(d)) => Placement::Device(Arc::clone(&d.backend)),
        _ => Placement::Cpu,
    })
}

impl Tensor {
    /// Wraps `data` (row-major) as a tensor of `shape`, on the host.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(TensorError::DataLength { len: data.len(), shape });
        }
        Ok(Tensor { shape, storage: Arc::new(Storage::Cpu(data)) })
    }

    /// Builds a tensor whose length is known to match; for kernels in this crate.
    pub(crate) fn from_parts(data: Vec<f32>, shape: Shape) -> Tensor {
        debug_assert_eq!(data.len(), shape.numel());
        Tensor { shape, storage: Arc::new(Storage::Cpu(data)) }
    }

    /// Wraps a buffer that `backend` made (a kernel's output) as a tensor of `shape`.
    pub(crate) fn from_device(backend: &Arc<dyn Backend>, buffer: Box<dyn DeviceBuffer>, shape: Shape) -> Tensor {
        debug_assert_eq!(buffer.len(), shape.numel());
        Tensor { shape, storage: Arc::new(Storage::Device(DeviceStorage { backend: Arc::clone(backend), buffer })) }
    }

    /// The same buffer read with another shape of the same element count.
    pub(crate) fn with_shape(t: &Tensor, shape: Shape) -> Tensor {
        debug_assert_eq!(shape.numel(), t.numel());
        Tensor { shape, storage: Arc::clone(&t.storage) }
    }

    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_parts(vec![value], Shape::new([]))
    }

    /// `value` everywhere, on the host.
    pub fn full(shape: impl Into<Shape>, value: f32) -> Tensor {
        let shape = shape.into();
        let mut data = crate::pool::take(shape.numel());
        data.fill(value);
        Tensor::from_parts(data, shape)
    }

    /// `value` everywhere, on `device`.
    pub fn full_on(shape: impl Into<Shape>, value: f32, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        match device {
            Device::Cpu => Ok(Tensor::full(shape, value)),
            d => {
                let backend = backend_of(d)?;
                let mut out = backend.alloc(shape.numel())?;
                backend.fill(&mut *out, value)?;
                Ok(Tensor::from_device(&backend, out, shape))
            }
        }
    }

    pub fn zeros(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    pub fn ones(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// Zeros of this tensor's shape, on its device.
    pub fn zeros_like(&self) -> Result<Tensor> {
        self.full_like(0.0)
    }

    /// `value` in this tensor's shape, on its device.
    pub fn full_like(&self, value: f32) -> Result<Tensor> {
        match placement("full_like", &[self])? {
            Placement::Cpu => Ok(Tensor::full(self.shape.clone(), value)),
            Placement::Device(backend) => {
                let mut out = backend.alloc(self.numel())?;
                backend.fill(&mut *out, value)?;
                Ok(Tensor::from_device(&backend, out, self.shape.clone()))
            }
        }
    }

    /// Standard normal samples, N(0, 1), on the host.
    pub fn randn(shape: impl Into<Shape>, rng: &mut impl Rng) -> Tensor {
        let shape = shape.into();
        let mut data = crate::pool::take(shape.numel());
        data.iter_mut().for_each(|v| *v = StandardNormal.sample(rng));
        Tensor::from_parts(data, shape)
    }

    /// Uniform samples in [low, high), on the host.
    pub fn rand_uniform(shape: impl Into<Shape>, low: f32, high: f32, rng: &mut impl Rng) -> Tensor {
        let shape = shape.into();
        let dist = Uniform::new(low, high);
        let mut data = crate::pool::take(shape.numel());
        data.iter_mut().for_each(|v| *v = dist.sample(rng));
        Tensor::from_parts(data, shape)
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// This tensor on `device`: the one way numbers move between the host
    /// and a device. The same tensor (shared, not copied) when it is there
    /// already.
    pub fn to(&self, device: Device) -> Result<Tensor> {
        let here = self.device();
        if here == device {
            return Ok(self.clone());
        }
        let host;
        let values: &[f32] = match &*self.storage {
            Storage::Cpu(v) => v,
            Storage::Device(d) => {
                host = d.backend.download(&*d.buffer)?;
                &host
            }
        };
        match device {
            Device::Cpu => Ok(Tensor::from_vec(values.to_vec(), self.shape.clone())?),
            d => {
                let backend = backend_of(d)?;
                let buffer = backend.upload(values)?;
                Ok(Tensor::from_device(&backend, buffer, self.shape.clone()))
            }
        }
    }

    /// The values, row-major, of a tensor on the host.
    ///
    /// # Panics
    /// On a device tensor: its numbers are not in host memory. Move it first
    /// with [`Tensor::to`]`(Device::Cpu)`.
    pub fn as_slice(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(v) => v,
            Storage::Device(d) => panic!("{}", not_on_host("as_slice", d.backend.device())),
        }
    }

    /// Whether no other tensor shares this one's buffer, so that
    /// [`Tensor::as_mut_slice`] writes in place instead of copying first.
    pub fn is_unshared(&mut self) -> bool {
        Arc::get_mut(&mut self.storage).is_some()
    }

    /// Mutable access to the values of a host tensor; copies the buffer first
    /// if it is shared.
    ///
    /// # Panics
    /// On a device tensor, as [`Tensor::as_slice`].
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        if let Storage::Device(d) = &*self.storage {
            panic!("{}", not_on_host("as_mut_slice", d.backend.device()));
        }
        self.make_unique().expect("a host copy cannot fail");
        match Arc::get_mut(&mut self.storage) {
            Some(Storage::Cpu(v)) => v,
            _ => unreachable!("made unique and on the host above"),
        }
    }

    /// Gives this tensor a buffer of its own (a copy, if it was shared).
    fn make_unique(&mut self) -> Result<()> {
        if Arc::get_mut(&mut self.storage).is_none() {
            self.storage = Arc::new(self.storage.try_clone()?);
        }
        Ok(())
    }

    /// The device buffer, for the device arm of an op (whose placement said
    /// this tensor is on a device).
    pub(crate) fn buffer(&self) -> &dyn DeviceBuffer {
        match &*self.storage {
            Storage::Device(d) => &*d.buffer,
            Storage::Cpu(_) => unreachable!("the op's placement put this tensor on a device"),
        }
    }

    /// The device buffer to write in place, copied first if it is shared.
    pub(crate) fn buffer_mut(&mut self) -> Result<&mut dyn DeviceBuffer> {
        self.make_unique()?;
        match Arc::get_mut(&mut self.storage) {
            Some(Storage::Device(d)) => Ok(&mut *d.buffer),
            _ => unreachable!("the op's placement put this tensor on a device"),
        }
    }

    /// The values of a host tensor, as a vector (see [`Tensor::as_slice`]).
    pub fn to_vec(&self) -> Vec<f32> {
        self.as_slice().to_vec()
    }

    /// The value of a one-element tensor, wherever it is: on a device this
    /// waits for the work that computes it (reading a loss, say).
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(TensorError::invalid(
                "item",
                format!("tensor of shape {} has more than one element", self.shape),
            ));
        }
        match &*self.storage {
            Storage::Cpu(v) => Ok(v[0]),
            Storage::Device(d) => Ok(d.backend.download(&*d.buffer)?[0]),
        }
    }

    /// Errors unless `self` has exactly `shape`.
    pub fn expect_shape(&self, op: &'static str, shape: &Shape) -> Result<()> {
        if &self.shape == shape {
            Ok(())
        } else {
            Err(TensorError::ShapeMismatch { op, lhs: self.shape.clone(), rhs: shape.clone() })
        }
    }

    /// The largest absolute elementwise difference to `other` (same shape,
    /// both on the host).
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        other.expect_shape("max_abs_diff", &self.shape)?;
        Ok(self.as_slice().iter().zip(other.as_slice()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())))
    }

    /// True when every element is within `atol + rtol * |other|` of `other`
    /// (both on the host).
    pub fn all_close(&self, other: &Tensor, rtol: f32, atol: f32) -> bool {
        self.shape == other.shape
            && self.as_slice().iter().zip(other.as_slice()).all(|(a, b)| (a - b).abs() <= atol + rtol * b.abs())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        match &*self.storage {
            Storage::Cpu(v) => {
                write!(f, "Tensor{} {:?}", self.shape, &v[..v.len().min(SHOWN)])?;
                if v.len() > SHOWN {
                    write!(f, " ..")?;
                }
                Ok(())
            }
            Storage::Device(d) => write!(f, "Tensor{} on {}", self.shape, d.backend.device()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_the_length() {
        assert!(Tensor::from_vec(vec![1.0; 6], [2, 3]).is_ok());
        let err = Tensor::from_vec(vec![1.0; 5], [2, 3]).unwrap_err();
        assert_eq!(err.to_string(), "5 values cannot fill shape [2, 3] (6 elements)");
    }

    #[test]
    fn writes_to_a_shared_buffer_copy_it_first() {
        let a = Tensor::zeros([3]);
        let mut b = a.clone();
        b.as_mut_slice()[0] = 1.0;
        assert_eq!(a.to_vec(), vec![0.0, 0.0, 0.0]);
        assert_eq!(b.to_vec(), vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn a_device_that_was_never_opened_is_an_error() {
        let e = Tensor::zeros([2]).to(Device::Cuda(7)).unwrap_err();
        assert!(e.to_string().contains("cuda:7 has not been opened"), "{e}");
        assert_eq!(Tensor::zeros([2]).to(Device::Cpu).unwrap().to_vec(), vec![0.0, 0.0]);
    }
}
