//! Sums and means over chosen axes.
//!
//! Sums accumulate in f64: a bias gradient at batch 64 adds up 64 * 28 * 28 =
//! 50,176 terms, and the PyTorch parity tests need the result to about 1e-6.

use rayon::prelude::*;

use crate::{Result, Shape, Tensor, TensorError, PARALLEL_THRESHOLD};

/// Sorted, de-duplicated axes, each checked against the rank.
fn normalize_axes(op: &'static str, shape: &Shape, axes: &[usize]) -> Result<Vec<usize>> {
    let mut axes = axes.to_vec();
    axes.sort_unstable();
    axes.dedup();
    for &a in &axes {
        shape.check_axis(op, a)?;
    }
    Ok(axes)
}

/// The shape left after reducing `axes`: kept with extent 1, or dropped.
fn reduced_shape(shape: &Shape, axes: &[usize], keepdim: bool) -> Shape {
    let dims = shape.dims().iter().enumerate().filter_map(|(i, &d)| match (axes.contains(&i), keepdim) {
        (false, _) => Some(d),
        (true, true) => Some(1),
        (true, false) => None,
    });
    Shape::new(dims.collect::<Vec<_>>())
}

/// Runs of neighbouring axes that are all kept or all reduced merge into one
/// axis (possible because the input is contiguous). Returns (extent, stride)
/// for the kept and for the reduced axes, outermost first.
type Axes = Vec<(usize, usize)>;
fn split_axes(shape: &Shape, axes: &[usize]) -> (Axes, Axes) {
    let strides = shape.strides();
    let (mut kept, mut reduced): (Axes, Axes) = (vec![], vec![]);
    let mut last_kind = None;
    for (i, (&d, &s)) in shape.dims().iter().zip(&strides).enumerate() {
        if d == 1 {
            continue;
        }
        let is_reduced = axes.contains(&i);
        let group = if is_reduced { &mut reduced } else { &mut kept };
        if last_kind == Some(is_reduced) {
            let (ld, _) = group.last_mut().unwrap();
            *ld *= d;
            group.last_mut().unwrap().1 = s;
        } else {
            group.push((d, s));
        }
        last_kind = Some(is_reduced);
    }
    (kept, reduced)
}

/// Sum of the elements at `base + sum_j i_j * stride_j` over all index tuples of `reduced`.
fn sum_strided(data: &[f32], base: usize, reduced: &[(usize, usize)]) -> f64 {
    match reduced {
        [] => data[base] as f64,
        [(n, 1)] => data[base..base + n].iter().map(|&x| x as f64).sum(),
        [(n, s)] => (0..*n).map(|i| data[base + i * s] as f64).sum(),
        [(n, s), rest @ ..] => (0..*n).map(|i| sum_strided(data, base + i * s, rest)).sum(),
    }
}

impl Tensor {
    /// Sums over `axes`; with `keepdim` the reduced axes stay as extent 1.
    pub fn sum_axes(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let axes = normalize_axes("sum_axes", self.shape(), axes)?;
        let out_shape = reduced_shape(self.shape(), &axes, keepdim);
        let (kept, reduced) = split_axes(self.shape(), &axes);
        let data = self.as_slice();
        let n_out = out_shape.numel();

        // Each output element is an independent sum over the reduced axes.
        let one = |o: usize| -> f32 {
            let (mut rem, mut base) = (o, 0);
            for &(d, s) in kept.iter().rev() {
                base += (rem % d) * s;
                rem /= d;
            }
            sum_strided(data, base, &reduced) as f32
        };
        let out: Vec<f32> = if n_out == 1 && self.numel() >= PARALLEL_THRESHOLD {
            // A full reduction: split the (contiguous) input instead.
            let total: f64 = data.par_chunks(8192).map(|c| c.iter().map(|&x| x as f64).sum::<f64>()).sum();
            vec![total as f32]
        } else if self.numel() >= PARALLEL_THRESHOLD {
            (0..n_out).into_par_iter().map(one).collect()
        } else {
            (0..n_out).map(one).collect()
        };
        Ok(Tensor::from_parts(out, out_shape))
    }

    /// Sum of every element, as a scalar tensor.
    pub fn sum_all(&self) -> Tensor {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.sum_axes(&axes, false).expect("all axes are in range")
    }

    /// Mean over `axes`.
    pub fn mean_axes(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let axes = normalize_axes("mean_axes", self.shape(), axes)?;
        let count: usize = axes.iter().map(|&a| self.dims()[a]).product();
        Ok(self.sum_axes(&axes, keepdim)?.scale(1.0 / count as f32))
    }

    /// Sums a broadcast result back down to `target`, the shape it was
    /// broadcast from: the gradient rule of every broadcasting op.
    pub fn sum_to(&self, target: &Shape) -> Result<Tensor> {
        if self.shape() == target {
            return Ok(self.clone());
        }
        let out = Shape::broadcast("sum_to", self.shape(), target)?;
        if &out != self.shape() {
            return Err(TensorError::Broadcast { op: "sum_to", lhs: self.shape().clone(), rhs: target.clone() });
        }
        let offset = self.rank() - target.rank();
        let axes: Vec<usize> = (0..self.rank())
            .filter(|&i| i < offset || (target.dims()[i - offset] == 1 && self.dims()[i] != 1))
            .collect();
        self.sum_axes(&axes, true)?.reshape(target.clone())
    }
}

/// The specification of [`Tensor::sum_axes`] with `keepdim`: every input
/// element is added into the output element it maps to.
pub fn sum_axes_reference(x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    let axes = normalize_axes("sum_axes_reference", x.shape(), axes)?;
    let out_shape = reduced_shape(x.shape(), &axes, true);
    let out_strides = out_shape.broadcast_strides(x.shape());
    let mut out = vec![0.0f64; out_shape.numel()];
    for (i, &v) in x.as_slice().iter().enumerate() {
        let (mut rem, mut o) = (i, 0);
        for axis in (0..x.rank()).rev() {
            o += (rem % x.dims()[axis]) * out_strides[axis];
            rem /= x.dims()[axis];
        }
        out[o] += v as f64;
    }
    Tensor::from_vec(out.into_iter().map(|v| v as f32).collect(), out_shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn check(shape: &[usize], axes: &[usize]) {
        let x = Tensor::randn(shape, &mut StdRng::seed_from_u64(1));
        let fast = x.sum_axes(axes, true).unwrap();
        let naive = sum_axes_reference(&x, axes).unwrap();
        assert_eq!(fast.shape(), naive.shape());
        let err = fast.max_abs_diff(&naive).unwrap();
        assert!(err < 1e-5, "{shape:?} over {axes:?}: {err}");
    }

    #[test]
    fn unet_reductions_match_the_reference() {
        check(&[2, 3, 4, 5], &[0, 2, 3]); // bias gradient of a conv
        check(&[2, 3, 4, 5], &[2, 3]); // per-(sample, channel) mean, as in group norm
        check(&[2, 3, 4, 5], &[0]); // over the batch
        check(&[2, 3, 4, 5], &[0, 1, 2, 3]); // the loss
        check(&[2, 3, 4, 5], &[]); // nothing
        check(&[64, 32, 28, 28], &[0, 2, 3]); // parallel path
        check(&[64, 32, 28, 28], &[0, 1, 2, 3]); // parallel full reduction
    }

    #[test]
    fn keepdim_false_drops_axes() {
        let x = Tensor::ones([2, 3, 4]);
        let s = x.sum_axes(&[1], false).unwrap();
        assert_eq!(s.dims(), &[2, 4]);
        assert!(s.as_slice().iter().all(|&v| v == 3.0));
        assert_eq!(x.mean_axes(&[0, 2], false).unwrap().to_vec(), vec![1.0; 3]);
    }

    #[test]
    fn sum_to_undoes_a_broadcast() {
        let g = Tensor::ones([2, 3, 4, 5]);
        let s = g.sum_to(&Shape::new([3, 1, 1])).unwrap();
        assert_eq!(s.dims(), &[3, 1, 1]);
        assert!(s.as_slice().iter().all(|&v| v == 40.0));
        assert!(g.sum_to(&Shape::new([7])).is_err());
    }

    #[test]
    fn bad_axis_is_an_error() {
        let e = Tensor::ones([2, 3]).sum_axes(&[2], true).unwrap_err();
        assert_eq!(e.to_string(), "sum_axes: axis 2 is out of range for a tensor of rank 2");
    }

    proptest! {
        #[test]
        fn any_reduction_matches_the_reference(
            shape in proptest::collection::vec(1usize..5, 1..5),
            mask in proptest::collection::vec(any::<bool>(), 5),
        ) {
            let axes: Vec<usize> = (0..shape.len()).filter(|&i| mask[i]).collect();
            check(&shape, &axes);
        }
    }
}
