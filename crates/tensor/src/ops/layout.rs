//! Ops that move elements without arithmetic: reshape, permute, concat, narrow.

use super::parallel::{for_each_row, row_offsets};
use crate::backend::{BlockCopy, Gather};
use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

impl Tensor {
    /// Same elements, new shape (free: the buffer is shared).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(TensorError::ShapeMismatch { op: "reshape", lhs: self.shape().clone(), rhs: shape });
        }
        Ok(Tensor::with_shape(self, shape))
    }

    /// Reorders the axes: output axis i is input axis `perm[i]`.
    /// For example, [N, C, H*W] permuted by [0, 2, 1] is [N, H*W, C].
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
            return Err(TensorError::invalid(
                "permute",
                format!("{perm:?} is not a permutation of the {rank} axes of {}", self.shape()),
            ));
        }
        let in_strides = self.shape().strides();
        let out_dims: Vec<usize> = perm.iter().map(|&p| self.dims()[p]).collect();
        let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
        let out_shape = Shape::new(out_dims.clone());
        if rank == 0 {
            return Ok(self.clone());
        }
        if let Placement::Device(backend) = placement("permute", &[self])? {
            let mut out = backend.alloc(self.numel())?;
            backend.gather(self.buffer(), &mut *out, &Gather { dims: out_dims, strides: src_strides })?;
            return Ok(Tensor::from_device(&backend, out, out_shape));
        }
        let inner = out_dims[rank - 1];
        let inner_stride = src_strides[rank - 1];
        let outer = &out_dims[..rank - 1];
        let outer_strides = &src_strides[..rank - 1];
        let src = self.as_slice();
        let mut out = crate::pool::take(self.numel());
        for_each_row(&mut out, inner, |r, row| {
            let [base] = row_offsets(r, outer, [outer_strides]);
            for (j, o) in row.iter_mut().enumerate() {
                *o = src[base + j * inner_stride];
            }
        });
        Ok(Tensor::from_parts(out, out_shape))
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        self.shape().check_axis("transpose", a)?;
        self.shape().check_axis("transpose", b)?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Joins tensors along `axis`; every other axis must agree.
    /// The U-Net uses this on channels (axis 1) for its skip connections.
    pub fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor> {
        let first = parts.first().ok_or_else(|| TensorError::invalid("concat", "no tensors to join"))?;
        first.shape().check_axis("concat", axis)?;
        for p in parts {
            let same_rank = p.rank() == first.rank();
            if !same_rank || (0..p.rank()).any(|i| i != axis && p.dims()[i] != first.dims()[i]) {
                return Err(TensorError::ShapeMismatch {
                    op: "concat",
                    lhs: first.shape().clone(),
                    rhs: p.shape().clone(),
                });
            }
        }
        let outer: usize = first.dims()[..axis].iter().product();
        let mut dims = first.dims().to_vec();
        dims[axis] = parts.iter().map(|p| p.dims()[axis]).sum();
        // Per outer index, each part contributes one contiguous block.
        let blocks: Vec<usize> = parts.iter().map(|p| p.numel() / outer.max(1)).collect();
        if let Placement::Device(backend) = placement("concat", parts)? {
            let row: usize = blocks.iter().sum();
            let mut out = backend.alloc(outer * row)?;
            let mut offset = 0;
            for (p, &width) in parts.iter().zip(&blocks) {
                let copy = BlockCopy {
                    blocks: outer,
                    width,
                    src_stride: width,
                    src_offset: 0,
                    dst_stride: row,
                    dst_offset: offset,
                };
                backend.copy_blocks(p.buffer(), &mut *out, &copy)?;
                offset += width;
            }
            return Ok(Tensor::from_device(&backend, out, Shape::new(dims)));
        }
        let mut out = crate::pool::take(dims.iter().product());
        for_each_row(&mut out, blocks.iter().sum(), |o, row| {
            let mut pos = 0;
            for (p, &len) in parts.iter().zip(&blocks) {
                row[pos..pos + len].copy_from_slice(&p.as_slice()[o * len..(o + 1) * len]);
                pos += len;
            }
        });
        Ok(Tensor::from_parts(out, Shape::new(dims)))
    }

    /// The slice `start .. start + len` along `axis`.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        self.shape().check_axis("narrow", axis)?;
        let extent = self.dims()[axis];
        check_slice("narrow", axis, start, len, extent)?;
        let outer: usize = self.dims()[..axis].iter().product();
        let inner: usize = self.dims()[axis + 1..].iter().product();
        let mut dims = self.dims().to_vec();
        dims[axis] = len;
        let block = len * inner;
        if let Placement::Device(backend) = placement("narrow", &[self])? {
            let mut out = backend.alloc(outer * block)?;
            let copy = BlockCopy {
                blocks: outer,
                width: block,
                src_stride: extent * inner,
                src_offset: start * inner,
                dst_stride: block,
                dst_offset: 0,
            };
            backend.copy_blocks(self.buffer(), &mut *out, &copy)?;
            return Ok(Tensor::from_device(&backend, out, Shape::new(dims)));
        }
        let src = self.as_slice();
        let mut out = crate::pool::take(outer * block);
        for_each_row(&mut out, block, |o, dst| {
            let base = (o * extent + start) * inner;
            dst.copy_from_slice(&src[base..base + block]);
        });
        Ok(Tensor::from_parts(out, Shape::new(dims)))
    }

    /// The gradient of [`Tensor::narrow`]: self (the slice's gradient) put back
    /// at `start..` along `axis`, whose full extent is `extent`, and zero around
    /// it; each element written once.
    pub fn narrow_backward(&self, axis: usize, start: usize, extent: usize) -> Result<Tensor> {
        self.shape().check_axis("narrow_backward", axis)?;
        let len = self.dims()[axis];
        check_slice("narrow_backward", axis, start, len, extent)?;
        let inner: usize = self.dims()[axis + 1..].iter().product();
        let mut dims = self.dims().to_vec();
        dims[axis] = extent;
        let (before, block) = (start * inner, len * inner);
        if let Placement::Device(backend) = placement("narrow_backward", &[self])? {
            let outer: usize = self.dims()[..axis].iter().product();
            let mut out = backend.alloc(outer * extent * inner)?;
            backend.fill(&mut *out, 0.0)?;
            let copy = BlockCopy {
                blocks: outer,
                width: block,
                src_stride: block,
                src_offset: 0,
                dst_stride: extent * inner,
                dst_offset: before,
            };
            backend.copy_blocks(self.buffer(), &mut *out, &copy)?;
            return Ok(Tensor::from_device(&backend, out, Shape::new(dims)));
        }
        let src = self.as_slice();
        let mut out = crate::pool::take(dims.iter().product());
        for_each_row(&mut out, extent * inner, |o, row| {
            let (head, rest) = row.split_at_mut(before);
            let (middle, tail) = rest.split_at_mut(block);
            head.fill(0.0);
            middle.copy_from_slice(&src[o * block..(o + 1) * block]);
            tail.fill(0.0);
        });
        Ok(Tensor::from_parts(out, Shape::new(dims)))
    }

    /// Cuts `axis` into consecutive pieces of the given sizes (the inverse of concat).
    pub fn split(&self, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
        split_ranges(self.shape(), axis, sizes)?.into_iter().map(|(start, len)| self.narrow(axis, start, len)).collect()
    }
}

/// That the slice start .. start + len fits in an axis of `extent`.
fn check_slice(op: &'static str, axis: usize, start: usize, len: usize, extent: usize) -> Result<()> {
    if start + len > extent {
        let msg = format!("{start}..{} is outside axis {axis} of extent {extent}", start + len);
        return Err(TensorError::invalid(op, msg));
    }
    Ok(())
}

/// The (start, len) of each piece when `axis` of `shape` is cut into `sizes`,
/// after checking that the sizes add up to the axis: what [`Tensor::split`]
/// narrows to, and what a graph-recording split narrows to as well.
pub fn split_ranges(shape: &Shape, axis: usize, sizes: &[usize]) -> Result<Vec<(usize, usize)>> {
    shape.check_axis("split", axis)?;
    if sizes.iter().sum::<usize>() != shape.dims()[axis] {
        return Err(TensorError::invalid("split", format!("sizes {sizes:?} do not add up to axis {axis} of {shape}")));
    }
    let starts = sizes.iter().scan(0, |start, &len| {
        let piece = (*start, len);
        *start += len;
        Some(piece)
    });
    Ok(starts.collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn arange(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::from_vec((0..n).map(|i| i as f32).collect(), dims).unwrap()
    }

    #[test]
    fn transpose_of_a_matrix() {
        let t = arange(&[2, 3]).transpose(0, 1).unwrap();
        assert_eq!(t.dims(), &[3, 2]);
        assert_eq!(t.to_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn permute_rejects_a_non_permutation() {
        assert!(arange(&[2, 3]).permute(&[0, 0]).is_err());
        assert!(arange(&[2, 3]).permute(&[0]).is_err());
    }

    #[test]
    fn concat_and_split_on_channels() {
        let a = arange(&[2, 1, 2]);
        let b = arange(&[2, 2, 2]).scale(-1.0).unwrap();
        let c = Tensor::concat(&[&a, &b], 1).unwrap();
        assert_eq!(c.dims(), &[2, 3, 2]);
        assert_eq!(c.to_vec(), vec![0., 1., -0., -1., -2., -3., 2., 3., -4., -5., -6., -7.]);
        let parts = c.split(1, &[1, 2]).unwrap();
        assert_eq!(parts[0].to_vec(), a.to_vec());
        assert_eq!(parts[1].to_vec(), b.to_vec());
        assert!(Tensor::concat(&[&a, &arange(&[3, 1, 2])], 1).is_err());
    }

    #[test]
    fn narrow_backward_puts_the_slice_back_among_zeros() {
        // Large enough to run in parallel, and small: each along every axis.
        for dims in [[2usize, 3, 4], [64, 12, 49]] {
            let x = arange(&dims);
            for (axis, &extent) in dims.iter().enumerate() {
                let (start, len) = (extent / 3, extent - extent / 3 - extent / 4);
                let slice = x.narrow(axis, start, len).unwrap();
                // A stale buffer in the pool, so that zeros must be written, not inherited.
                crate::pool::give(vec![7.0; x.numel()]);
                let back = slice.narrow_backward(axis, start, extent).unwrap();
                assert_eq!(back.dims(), x.dims());
                // Inside the slice: x's elements; outside: zeros.
                let inside = x.narrow(axis, start, len).unwrap();
                assert_eq!(back.narrow(axis, start, len).unwrap().to_vec(), inside.to_vec());
                let zeros_before = back.narrow(axis, 0, start).unwrap();
                let zeros_after = back.narrow(axis, start + len, extent - start - len).unwrap();
                assert!(zeros_before.to_vec().iter().chain(&zeros_after.to_vec()).all(|&v| v == 0.0));
            }
        }
        assert!(arange(&[2, 3]).narrow_backward(1, 1, 3).is_err());
        assert!(arange(&[2, 3]).narrow_backward(2, 0, 3).is_err());
    }

    #[test]
    fn reshape_checks_the_count() {
        assert_eq!(arange(&[2, 3]).reshape([3, 2]).unwrap().dims(), &[3, 2]);
        assert!(arange(&[2, 3]).reshape([4]).is_err());
    }

    proptest! {
        #[test]
        fn permute_then_inverse_is_identity(
            dims in proptest::collection::vec(1usize..5, 1..5),
            seed in 0u64..1000,
        ) {
            use rand::seq::SliceRandom;
            let mut rng = StdRng::seed_from_u64(seed);
            let mut perm: Vec<usize> = (0..dims.len()).collect();
            perm.shuffle(&mut rng);
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            let x = Tensor::randn(dims.as_slice(), &mut rng);
            let y = x.permute(&perm).unwrap();
            for (i, &p) in perm.iter().enumerate() {
                prop_assert_eq!(y.dims()[i], x.dims()[p]);
            }
            prop_assert_eq!(y.permute(&inverse).unwrap().to_vec(), x.to_vec());
        }
    }
}
