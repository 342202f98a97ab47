//! Sums and means over chosen axes.
//!
//! Sums accumulate in f64: a bias gradient at batch 64 adds up 64 * 28 * 28 =
//! 50,176 terms, and the PyTorch parity tests need the result to about 1e-6.

use rayon::prelude::*;

use crate::backend::Reduction;
use crate::{placement, Placement, Result, Shape, Tensor, TensorError, PARALLEL_THRESHOLD};

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
        if let Placement::Device(backend) = placement("sum_axes", &[self])? {
            let mut out = backend.alloc(out_shape.numel())?;
            backend.sum(self.buffer(), &mut *out, &Reduction { kept, reduced })?;
            return Ok(Tensor::from_device(&backend, out, out_shape));
        }
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
    pub fn sum_all(&self) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.sum_axes(&axes, false)
    }

    /// Mean over `axes`.
    pub fn mean_axes(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let axes = normalize_axes("mean_axes", self.shape(), axes)?;
        let count: usize = axes.iter().map(|&a| self.dims()[a]).product();
        self.sum_axes(&axes, keepdim)?.scale(1.0 / count as f32)
    }

    /// ||x|| over all the tensors at once, as if they were one long vector:
    /// sqrt(sum of every element squared), accumulated in f64 (gradient
    /// clipping's norm). A scalar tensor on the tensors' device.
    pub fn global_norm(tensors: &[&Tensor]) -> Result<Tensor> {
        match placement("global_norm", tensors)? {
            Placement::Cpu => {
                let sum: f64 = tensors.iter().map(|t| sum_of_squares(t.as_slice())).sum();
                Ok(Tensor::scalar(sum.sqrt() as f32))
            }
            Placement::Device(backend) => {
                let buffers: Vec<_> = tensors.iter().map(|t| t.buffer()).collect();
                let mut out = backend.alloc(1)?;
                backend.global_norm(&buffers, &mut *out)?;
                Ok(Tensor::from_device(&backend, out, Shape::new([])))
            }
        }
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

/// Elements a parallel task of [`sum_of_squares`] handles.
const CHUNK: usize = 1 << 14;

/// The sum of x^2 in f64, in a fixed order whatever the number of threads:
/// chunks of [`CHUNK`] summed in parallel, each in 8 interleaved partial sums
/// (which the compiler keeps in vector lanes), then the chunks' sums in order.
fn sum_of_squares(x: &[f32]) -> f64 {
    let chunk_sum = |c: &[f32]| {
        let mut lanes = [0.0f64; 8];
        let mut eights = c.chunks_exact(8);
        for e in &mut eights {
            for (acc, &v) in lanes.iter_mut().zip(e) {
                *acc += f64::from(v) * f64::from(v);
            }
        }
        let tail: f64 = eights.remainder().iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        lanes.iter().sum::<f64>() + tail
    };
    let sums: Vec<f64> = x.par_chunks(CHUNK).map(chunk_sum).collect();
    sums.iter().sum()
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

    #[test]
    fn the_parallel_sum_of_squares_is_the_plain_one_and_does_not_depend_on_threads() {
        // Several chunks and a ragged tail; values of very different sizes.
        let x: Vec<f32> =
            (0..3 * CHUNK + 13).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5 + (i % 3) as f32 * 40.0).collect();
        let plain: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let parallel = sum_of_squares(&x);
        assert!((parallel - plain).abs() <= 1e-12 * plain, "{parallel} vs {plain}");
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(one_thread.install(|| sum_of_squares(&x)), parallel);
        assert_eq!(sum_of_squares(&[]), 0.0);
        let t = Tensor::from_vec(x, [3 * CHUNK + 13]).unwrap();
        let norm = Tensor::global_norm(&[&t, &t]).unwrap().item().unwrap();
        assert_eq!(norm, (2.0 * parallel).sqrt() as f32);
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
