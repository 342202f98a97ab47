use std::fmt;

use crate::{Result, TensorError};

/// The extent of each axis, outermost first (NCHW for images).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements; 1 for a scalar (rank 0).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// Row-major strides: the last axis is contiguous.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.rank()];
        for i in (0..self.rank().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }

    /// Checks that `axis` names an axis of this shape.
    pub fn check_axis(&self, op: &'static str, axis: usize) -> Result<()> {
        if axis < self.rank() {
            Ok(())
        } else {
            Err(TensorError::Axis { op, axis, rank: self.rank() })
        }
    }

    /// NumPy broadcasting: align the shapes on the right; each pair of axes must
    /// be equal or contain a 1, and the result takes the larger.
    pub fn broadcast(op: &'static str, lhs: &Shape, rhs: &Shape) -> Result<Shape> {
        let rank = lhs.rank().max(rhs.rank());
        let mut dims = vec![0; rank];
        for (i, d) in dims.iter_mut().enumerate() {
            let a = lhs.dim_from_right(rank - 1 - i);
            let b = rhs.dim_from_right(rank - 1 - i);
            *d = match (a, b) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => return Err(TensorError::Broadcast { op, lhs: lhs.clone(), rhs: rhs.clone() }),
            };
        }
        Ok(Shape(dims))
    }

    /// The extent of the axis `k` places from the right, 1 past the left end.
    fn dim_from_right(&self, k: usize) -> usize {
        if k < self.rank() {
            self.0[self.rank() - 1 - k]
        } else {
            1
        }
    }

    /// Strides for reading this shape as if it had been broadcast to `target`:
    /// axes that are broadcast (missing or of extent 1) get stride 0.
    pub fn broadcast_strides(&self, target: &Shape) -> Vec<usize> {
        let own = self.strides();
        let offset = target.rank() - self.rank();
        (0..target.rank()).map(|i| if i < offset || self.0[i - offset] == 1 { 0 } else { own[i - offset] }).collect()
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(Shape::new([2, 3, 4]).strides(), vec![12, 4, 1]);
        assert_eq!(Shape::new([]).strides(), Vec::<usize>::new());
    }

    #[test]
    fn broadcast_follows_numpy() {
        let s = Shape::broadcast("t", &[4, 1, 3].into(), &[5, 1].into()).unwrap();
        assert_eq!(s.dims(), &[4, 5, 3]);
        assert!(Shape::broadcast("t", &[2, 3].into(), &[4].into()).is_err());
    }

    #[test]
    fn broadcast_strides_zero_the_repeated_axes() {
        let bias = Shape::new([1, 3, 1, 1]);
        let target = Shape::new([2, 3, 4, 5]);
        assert_eq!(bias.broadcast_strides(&target), vec![0, 1, 0, 0]);
        assert_eq!(Shape::new([5]).broadcast_strides(&target), vec![0, 0, 0, 1]);
    }
}
