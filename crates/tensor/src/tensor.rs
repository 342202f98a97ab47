use std::fmt;
use std::sync::Arc;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::{Device, Result, Shape, Storage, TensorError};

/// A dense, contiguous f32 tensor.
///
/// Cloning is cheap: the buffer is shared behind an `Arc` and copied only when
/// a shared buffer is written to ([`Tensor::as_mut_slice`]).
#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    storage: Arc<Storage>,
}

impl Tensor {
    /// Wraps `data` (row-major) as a tensor of `shape`.
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

    /// The same buffer read with another shape of the same element count.
    pub(crate) fn with_shape(t: &Tensor, shape: Shape) -> Tensor {
        debug_assert_eq!(shape.numel(), t.numel());
        Tensor { shape, storage: Arc::clone(&t.storage) }
    }

    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_parts(vec![value], Shape::new([]))
    }

    pub fn full(shape: impl Into<Shape>, value: f32) -> Tensor {
        let shape = shape.into();
        let mut data = crate::pool::take(shape.numel());
        data.fill(value);
        Tensor::from_parts(data, shape)
    }

    pub fn zeros(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    pub fn ones(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.shape.clone())
    }

    /// Standard normal samples, N(0, 1).
    pub fn randn(shape: impl Into<Shape>, rng: &mut impl Rng) -> Tensor {
        let shape = shape.into();
        let mut data = crate::pool::take(shape.numel());
        data.iter_mut().for_each(|v| *v = StandardNormal.sample(rng));
        Tensor::from_parts(data, shape)
    }

    /// Uniform samples in [low, high).
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

    /// The values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(v) => v,
        }
    }

    /// Mutable access to the values; copies the buffer first if it is shared.
    /// Whether no other tensor shares this one's buffer, so that
    /// [`Tensor::as_mut_slice`] writes in place instead of copying first.
    pub fn is_unshared(&mut self) -> bool {
        Arc::get_mut(&mut self.storage).is_some()
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        match Arc::make_mut(&mut self.storage) {
            Storage::Cpu(v) => v,
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.as_slice().to_vec()
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() == 1 {
            Ok(self.as_slice()[0])
        } else {
            Err(TensorError::invalid("item", format!("tensor of shape {} has more than one element", self.shape)))
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

    /// The largest absolute elementwise difference to `other` (same shape).
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        other.expect_shape("max_abs_diff", &self.shape)?;
        Ok(self.as_slice().iter().zip(other.as_slice()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())))
    }

    /// True when every element is within `atol + rtol * |other|` of `other`.
    pub fn all_close(&self, other: &Tensor, rtol: f32, atol: f32) -> bool {
        self.shape == other.shape
            && self.as_slice().iter().zip(other.as_slice()).all(|(a, b)| (a - b).abs() <= atol + rtol * b.abs())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let v = self.as_slice();
        write!(f, "Tensor{} {:?}", self.shape, &v[..v.len().min(SHOWN)])?;
        if v.len() > SHOWN {
            write!(f, " ..")?;
        }
        Ok(())
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
}
