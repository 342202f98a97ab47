//! [`Tensor`] to and from [`ndarray`] arrays, so that other Rust code can hand
//! arrays in and take results out.
//!
//! A tensor is row-major and contiguous, which is ndarray's standard layout,
//! so the moves cost as little as the layouts allow:
//! - [`Tensor::from_ndarray`] (and `From<Array<f32, D>>`) takes over the
//!   array's buffer when the array is in standard layout and owns nothing
//!   else; any other array (transposed, sliced, Fortran order) is copied into
//!   row-major order first.
//! - [`Tensor::view_ndarray`] borrows a host tensor's values as an
//!   [`ArrayViewD`] without copying; [`Tensor::to_ndarray`] (and
//!   `TryFrom<&Tensor>`) copies them into an [`ArrayD`] of their own.
//!
//! Only host tensors have values in host memory: on a device tensor both are
//! an error, never a silent download. Move it first with
//! [`Tensor::to`]`(Device::Cpu)`, the one way numbers cross.
//!
//! ```
//! use ddpm_tensor::Tensor;
//! use ddpm_tensor::ndarray::{self, array, Axis};
//!
//! // An array in: [[1, 2, 3], [4, 5, 6]] becomes a [2, 3] tensor, its buffer moved, not copied.
//! let x = Tensor::from_ndarray(array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
//! assert_eq!(x.dims(), &[2, 3]);
//! // A tensor op, then a view of the result without a copy.
//! let y = x.softmax()?;
//! let rows = y.view_ndarray()?.sum_axis(Axis(1));
//! assert!(rows.iter().all(|&s| (s - 1.0).abs() < 1e-6));
//! // An array of its own to keep, and a transposed array in (copied into row-major order).
//! let owned: ndarray::ArrayD<f32> = y.to_ndarray()?;
//! assert_eq!(owned.shape(), &[2, 3]);
//! let t = Tensor::from_ndarray(array![[1.0f32, 2.0], [3.0, 4.0]].reversed_axes());
//! assert_eq!(t.to_vec(), vec![1.0, 3.0, 2.0, 4.0]);
//! # Ok::<(), ddpm_tensor::TensorError>(())
//! ```

use ndarray::{Array, ArrayD, ArrayView, ArrayViewD, Dimension, IxDyn};

use crate::device::not_on_host;
use crate::{Result, Shape, Storage, Tensor, TensorError};

impl Tensor {
    /// The array as a tensor of its shape, on the host. An array in standard
    /// (row-major, contiguous) layout gives up its buffer, with no copy; any
    /// other is copied into row-major order.
    pub fn from_ndarray<D: Dimension>(array: Array<f32, D>) -> Tensor {
        let shape = Shape::new(array.shape().to_vec());
        let numel = shape.numel();
        if array.is_standard_layout() {
            let (data, offset) = array.into_raw_vec_and_offset();
            // A sliced array may still own the rest of its allocation.
            if offset.unwrap_or(0) == 0 && data.len() == numel {
                return Tensor::from_parts(data, shape);
            }
            let start = offset.unwrap_or(0);
            return Tensor::from_parts(data[start..start + numel].to_vec(), shape);
        }
        // Logical order is row-major order, whatever the strides.
        Tensor::from_parts(array.iter().copied().collect(), shape)
    }

    /// A view of a host tensor's values as an array of its shape: no copy.
    /// An error on a device tensor (its values are not in host memory).
    pub fn view_ndarray(&self) -> Result<ArrayViewD<'_, f32>> {
        self.view_for("view_ndarray")
    }

    /// A copy of a host tensor's values as an array of its own. An error on a
    /// device tensor: move it with [`Tensor::to`] first.
    pub fn to_ndarray(&self) -> Result<ArrayD<f32>> {
        Ok(self.view_for("to_ndarray")?.to_owned())
    }

    /// The view of [`Tensor::view_ndarray`], with `op` named in its error.
    fn view_for(&self, op: &'static str) -> Result<ArrayViewD<'_, f32>> {
        let values = match self.storage() {
            Storage::Cpu(v) => v,
            Storage::Device(d) => return Err(not_on_host(op, d.backend().device())),
        };
        ArrayViewD::from_shape(IxDyn(self.dims()), values).map_err(|e| TensorError::invalid(op, e.to_string()))
    }
}

impl<D: Dimension> From<Array<f32, D>> for Tensor {
    fn from(array: Array<f32, D>) -> Tensor {
        Tensor::from_ndarray(array)
    }
}

/// A copy, as [`Tensor::to_ndarray`].
impl TryFrom<&Tensor> for ArrayD<f32> {
    type Error = TensorError;

    fn try_from(t: &Tensor) -> Result<ArrayD<f32>> {
        t.to_ndarray()
    }
}

/// A view without a copy, as [`Tensor::view_ndarray`].
impl<'a> TryFrom<&'a Tensor> for ArrayViewD<'a, f32> {
    type Error = TensorError;

    fn try_from(t: &'a Tensor) -> Result<ArrayViewD<'a, f32>> {
        t.view_ndarray()
    }
}

/// For the references: a host tensor's values as an f64 array of rank `D`
/// (the caller has checked the shape; `op` names it in the errors).
pub(crate) fn to_f64<D: Dimension>(op: &'static str, t: &Tensor) -> Result<Array<f64, D>> {
    Ok(view::<D>(op, t)?.mapv(f64::from))
}

/// For the references: a host tensor's values viewed as an f32 array of rank `D`.
pub(crate) fn view<'a, D: Dimension>(op: &'static str, t: &'a Tensor) -> Result<ArrayView<'a, f32, D>> {
    t.view_for(op)?.into_dimensionality::<D>().map_err(|e| TensorError::invalid(op, e.to_string()))
}

/// For the references: an f64 result rounded to the tensor's f32.
pub(crate) fn from_f64<D: Dimension>(a: Array<f64, D>) -> Tensor {
    Tensor::from_ndarray(a.mapv(|v| v as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, s, Array3, Ix2};

    #[test]
    fn round_trips_keep_shape_and_values() {
        let x = Tensor::from_vec((0..24).map(|i| i as f32).collect(), [2, 3, 4]).unwrap();
        let a = x.to_ndarray().unwrap();
        assert_eq!(a.shape(), &[2, 3, 4]);
        assert_eq!(a[[1, 2, 3]], 23.0);
        assert_eq!(a[[0, 1, 2]], 6.0);
        let back = Tensor::from_ndarray(a);
        assert_eq!(back.dims(), x.dims());
        assert_eq!(back.to_vec(), x.to_vec());
        // Through the traits, and a scalar (rank 0).
        let a: ArrayD<f32> = (&x).try_into().unwrap();
        assert_eq!(Tensor::from(a).to_vec(), x.to_vec());
        let scalar = Tensor::scalar(2.5);
        let a = scalar.to_ndarray().unwrap();
        assert_eq!((a.ndim(), a.sum()), (0, 2.5));
        assert_eq!(Tensor::from_ndarray(a).dims(), &[] as &[usize]);
        // Empty tensors too.
        let empty = Tensor::zeros([0, 3]);
        assert_eq!(Tensor::from_ndarray(empty.to_ndarray().unwrap()).dims(), &[0, 3]);
    }

    #[test]
    fn a_standard_layout_array_gives_up_its_buffer() {
        let a = Array3::from_shape_fn((2, 3, 4), |(i, j, k)| (i * 100 + j * 10 + k) as f32);
        let ptr = a.as_ptr();
        let t = Tensor::from_ndarray(a);
        assert_eq!(t.as_slice().as_ptr(), ptr, "copied a standard-layout array");
        assert_eq!(t.as_slice()[23], 123.0);
    }

    #[test]
    fn the_view_borrows_the_tensor_without_a_copy() {
        let x = Tensor::from_vec((0..6).map(|i| i as f32).collect(), [2, 3]).unwrap();
        let v = x.view_ndarray().unwrap();
        assert_eq!(v.as_ptr(), x.as_slice().as_ptr());
        assert_eq!(v.shape(), &[2, 3]);
        assert_eq!(v[[1, 0]], 3.0);
        let v: ArrayViewD<f32> = (&x).try_into().unwrap();
        assert_eq!(v.into_dimensionality::<Ix2>().unwrap().column(2).to_vec(), vec![2.0, 5.0]);
    }

    #[test]
    fn other_layouts_are_copied_into_row_major_order() {
        // A transposed array: its memory is column-major.
        let a = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]].reversed_axes();
        assert!(!a.is_standard_layout());
        let t = Tensor::from_ndarray(a);
        assert_eq!(t.dims(), &[3, 2]);
        assert_eq!(t.to_vec(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        // Sliced in place: standard layout, but owning more than it shows.
        let mut a = Array3::from_shape_fn((3, 2, 2), |(i, j, k)| (i * 4 + j * 2 + k) as f32);
        a.slice_collapse(s![1.., .., ..]);
        assert!(a.is_standard_layout());
        assert_eq!(Tensor::from_ndarray(a).to_vec(), (4..12).map(|i| i as f32).collect::<Vec<_>>());
        // Every other row: neither contiguous nor standard.
        let a = Array3::from_shape_fn((4, 2, 3), |(i, j, k)| (i * 6 + j * 3 + k) as f32);
        let t = Tensor::from_ndarray(a.slice_move(s![..;2, .., 1..]));
        assert_eq!(t.dims(), &[2, 2, 2]);
        assert_eq!(t.to_vec(), vec![1., 2., 4., 5., 13., 14., 16., 17.]);
    }

    #[test]
    fn the_references_helpers_check_the_rank() {
        let x = Tensor::zeros([2, 3]);
        assert!(to_f64::<ndarray::Ix2>("test", &x).is_ok());
        let e = to_f64::<ndarray::Ix4>("test", &x).unwrap_err();
        assert!(e.to_string().starts_with("test: "), "{e}");
    }
}
