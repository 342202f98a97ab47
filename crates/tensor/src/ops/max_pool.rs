//! 2x2 max pooling with stride 2: the down-sampling of a LeNet-style classifier.
//!
//! x [N, C, H, W] (H and W even) -> y [N, C, H/2, W/2] with
//!     y[n, c, i, j] = max(x[n, c, 2i + a, 2j + b]) over a, b in {0, 1}.
//! Backward: y is locally the identity in the window's largest element and
//! constant in the other three, so dL/dx is g at that element and 0 elsewhere.
//! On a tie the first of the window in row-major order (a, then b) takes g,
//! as PyTorch does; the derivative is undefined there, and any one choice gives
//! a valid subgradient.

use ndarray::{s, Array4, Ix4, Zip};

use super::parallel::for_each_row;
use crate::backend::Planes;
use crate::interop::view;
use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

/// (N, C, H, W) of an input with even H and W.
fn even_planes(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match *x.dims() {
        [n, c, h, w] if h % 2 == 0 && w % 2 == 0 => Ok((n, c, h, w)),
        _ => Err(TensorError::invalid(op, format!("needs [N, C, H, W] with even H and W, got {}", x.shape()))),
    }
}

/// Which of the window's four elements is the largest: 0..4 for
/// (0, 0), (0, 1), (1, 0), (1, 1); the first one on a tie.
fn window_argmax(top: [f32; 2], bottom: [f32; 2]) -> usize {
    let values = [top[0], top[1], bottom[0], bottom[1]];
    let mut best = 0;
    for k in 1..4 {
        if values[k] > values[best] {
            best = k;
        }
    }
    best
}

impl Tensor {
    /// [N, C, H, W] -> [N, C, H/2, W/2], the largest value of each 2x2 window.
    pub fn max_pool2x2(&self) -> Result<Tensor> {
        let (n, c, h, w) = even_planes("max_pool2x2", self)?;
        let (ho, wo) = (h / 2, w / 2);
        if let Placement::Device(backend) = placement("max_pool2x2", &[self])? {
            let mut y = backend.alloc(self.numel() / 4)?;
            backend.max_pool2x2(self.buffer(), &mut *y, &Planes { planes: n * c, h, w })?;
            return Ok(Tensor::from_device(&backend, y, Shape::new([n, c, ho, wo])));
        }
        let x = self.as_slice();
        let mut y = crate::pool::take(self.numel() / 4);
        // One output row at a time: output row r of plane p reads input rows 2i, 2i + 1.
        for_each_row(&mut y, wo, |r, row| {
            let (plane, i) = (r / ho, r % ho);
            let top = &x[(plane * h + 2 * i) * w..][..w];
            let bottom = &x[(plane * h + 2 * i + 1) * w..][..w];
            for (j, o) in row.iter_mut().enumerate() {
                *o = top[2 * j].max(top[2 * j + 1]).max(bottom[2 * j].max(bottom[2 * j + 1]));
            }
        });
        Ok(Tensor::from_parts(y, Shape::new([n, c, ho, wo])))
    }

    /// dL/dx of [`Tensor::max_pool2x2`] from its input `x` and `d_out` = dL/dy:
    /// each window's gradient goes to its largest element (the first on a tie).
    pub fn max_pool2x2_backward(x: &Tensor, d_out: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = even_planes("max_pool2x2_backward", x)?;
        let (ho, wo) = (h / 2, w / 2);
        d_out.expect_shape("max_pool2x2_backward", &Shape::new([n, c, ho, wo]))?;
        if let Placement::Device(backend) = placement("max_pool2x2_backward", &[x, d_out])? {
            let mut dx = backend.alloc(x.numel())?;
            backend.max_pool2x2_backward(x.buffer(), d_out.buffer(), &mut *dx, &Planes { planes: n * c, h, w })?;
            return Ok(Tensor::from_device(&backend, dx, x.shape().clone()));
        }
        let (xs, g) = (x.as_slice(), d_out.as_slice());
        let mut dx = crate::pool::take(x.numel());
        // Two input rows (one output row's windows) at a time, every element
        // written: the pool's buffers are not zeroed.
        for_each_row(&mut dx, 2 * w, |r, rows| {
            let (plane, i) = (r / ho, r % ho);
            let top = &xs[(plane * h + 2 * i) * w..][..w];
            let bottom = &xs[(plane * h + 2 * i + 1) * w..][..w];
            let g_row = &g[r * wo..][..wo];
            let (d_top, d_bottom) = rows.split_at_mut(w);
            for (j, &gj) in g_row.iter().enumerate() {
                let best = window_argmax([top[2 * j], top[2 * j + 1]], [bottom[2 * j], bottom[2 * j + 1]]);
                d_top[2 * j] = if best == 0 { gj } else { 0.0 };
                d_top[2 * j + 1] = if best == 1 { gj } else { 0.0 };
                d_bottom[2 * j] = if best == 2 { gj } else { 0.0 };
                d_bottom[2 * j + 1] = if best == 3 { gj } else { 0.0 };
            }
        });
        Ok(Tensor::from_parts(dx, x.shape().clone()))
    }
}

/// The definition over ndarray arrays: y and dL/dx of 2x2 max pooling.
/// Each window x[n, c, 2i..2i+2, 2j..2j+2] gives its largest value to
/// y[n, c, i, j], and its first maximum in row-major order takes g[n, c, i, j]
/// (a later element must be strictly larger to take over, as in the kernel).
pub fn max_pool2x2_reference(x: &Tensor, d_out: &Tensor) -> Result<(Tensor, Tensor)> {
    let op = "max_pool2x2_reference";
    let (n, c, h, w) = even_planes(op, x)?;
    let (ho, wo) = (h / 2, w / 2);
    d_out.expect_shape(op, &Shape::new([n, c, ho, wo]))?;
    let (x, g) = (view::<Ix4>(op, x)?, view::<Ix4>(op, d_out)?);
    let mut y = Array4::<f32>::zeros((n, c, ho, wo));
    let mut dx = Array4::<f32>::zeros((n, c, h, w));
    Zip::indexed(&mut y).and(&g).for_each(|(n, c, i, j), y, &g| {
        let window = x.slice(s![n, c, 2 * i..2 * i + 2, 2 * j..2 * j + 2]);
        let mut best = (0, 0);
        for ((a, b), &v) in window.indexed_iter() {
            if v > window[best] {
                best = (a, b);
            }
        }
        *y = window[best];
        dx[[n, c, 2 * i + best.0, 2 * j + best.1]] = g;
    });
    Ok((Tensor::from_ndarray(y), Tensor::from_ndarray(dx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn each_window_gives_its_largest_value() {
        #[rustfmt::skip]
        let x = Tensor::from_vec(vec![
            1., 5., 0., 0.,
            2., 3., 0., -1.,
            -4., -3., 7., 7.,
            -2., -5., 7., 6.], [1, 1, 4, 4]).unwrap();
        assert_eq!(x.max_pool2x2().unwrap().to_vec(), vec![5.0, 0.0, -2.0, 7.0]);
        // The gradient lands on each maximum; on the ties (0, 0 and 7, 7, 7) on the first.
        let g = Tensor::from_vec(vec![10.0, 20.0, 30.0, 40.0], [1, 1, 2, 2]).unwrap();
        #[rustfmt::skip]
        assert_eq!(Tensor::max_pool2x2_backward(&x, &g).unwrap().to_vec(), vec![
            0., 10., 20., 0.,
            0., 0., 0., 0.,
            0., 0., 40., 0.,
            30., 0., 0., 0.]);
    }

    #[test]
    fn odd_sizes_and_wrong_gradients_are_refused() {
        assert!(Tensor::zeros([1, 1, 3, 4]).max_pool2x2().is_err());
        assert!(Tensor::zeros([4, 4]).max_pool2x2().is_err());
        let err = Tensor::max_pool2x2_backward(&Tensor::zeros([1, 2, 4, 4]), &Tensor::zeros([1, 2, 4, 4]));
        assert!(err.is_err());
    }

    fn check(dims: [usize; 4], seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = Tensor::randn(dims, &mut rng);
        let g = Tensor::randn([dims[0], dims[1], dims[2] / 2, dims[3] / 2], &mut rng);
        let (y_ref, dx_ref) = max_pool2x2_reference(&x, &g).unwrap();
        assert_eq!(x.max_pool2x2().unwrap().to_vec(), y_ref.to_vec());
        assert_eq!(Tensor::max_pool2x2_backward(&x, &g).unwrap().to_vec(), dx_ref.to_vec());
    }

    #[test]
    fn ties_go_where_the_reference_sends_them() {
        // Values in {0, 1, 2}: most windows hold a tie for their maximum.
        let mut rng = StdRng::seed_from_u64(4);
        let values = (0..2 * 3 * 8 * 6).map(|_| rng.gen_range(0..3) as f32).collect();
        let x = Tensor::from_vec(values, [2, 3, 8, 6]).unwrap();
        let g = Tensor::randn([2, 3, 4, 3], &mut rng);
        let (y_ref, dx_ref) = max_pool2x2_reference(&x, &g).unwrap();
        assert_eq!(x.max_pool2x2().unwrap().to_vec(), y_ref.to_vec());
        assert_eq!(Tensor::max_pool2x2_backward(&x, &g).unwrap().to_vec(), dx_ref.to_vec());
    }

    #[test]
    fn large_enough_to_run_in_parallel() {
        // 64 x 16 x 28 x 28 is past the parallel threshold: the rows are split across threads.
        check([64, 16, 28, 28], 3);
    }

    proptest! {
        #[test]
        fn any_shape_matches_the_reference(
            n in 1usize..4, c in 1usize..4, h in 1usize..6, w in 1usize..6, seed in 0u64..1000,
        ) {
            check([n, c, 2 * h, 2 * w], seed);
        }
    }
}
