//! Nearest-neighbour upsampling by 2: each pixel becomes a 2x2 block.
//!
//! x [N, C, H, W] -> y [N, C, 2H, 2W] with y[n, c, i, j] = x[n, c, i/2, j/2].
//! Backward: each input pixel fed four outputs, so it receives the sum of
//! their four gradients, d_x[n, c, i, j] = sum of d_y[n, c, 2i..2i+2, 2j..2j+2].
//! [`upsample_nearest2x_reference`] and [`upsample_nearest2x_backward_reference`]
//! are those two formulas over ndarray arrays.

use ndarray::{s, Array4, Ix4, Zip};

use super::parallel::for_each_row;
use crate::backend::Planes;
use crate::interop::{from_f64, to_f64, view};
use crate::{placement, Placement, Result, Shape, Tensor, TensorError};

fn planes(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match *x.dims() {
        [n, c, h, w] => Ok((n, c, h, w)),
        _ => Err(TensorError::invalid(op, format!("needs [N, C, H, W], got {}", x.shape()))),
    }
}

impl Tensor {
    /// [N, C, H, W] -> [N, C, 2H, 2W], nearest neighbour.
    pub fn upsample_nearest2x(&self) -> Result<Tensor> {
        let (n, c, h, w) = planes("upsample_nearest2x", self)?;
        if let Placement::Device(backend) = placement("upsample_nearest2x", &[self])? {
            let mut y = backend.alloc(self.numel() * 4)?;
            backend.upsample2x(self.buffer(), &mut *y, &Planes { planes: n * c, h, w })?;
            return Ok(Tensor::from_device(&backend, y, Shape::new([n, c, 2 * h, 2 * w])));
        }
        let x = self.as_slice();
        let mut y = crate::pool::take(self.numel() * 4);
        // One output row (2W values) at a time: row r of plane p is input row r/2.
        for_each_row(&mut y, 2 * w, |r, row| {
            let (plane, i) = (r / (2 * h), (r % (2 * h)) / 2);
            let src = &x[(plane * h + i) * w..][..w];
            for (pair, &v) in row.chunks_mut(2).zip(src) {
                pair[0] = v;
                pair[1] = v;
            }
        });
        Ok(Tensor::from_parts(y, Shape::new([n, c, 2 * h, 2 * w])))
    }

    /// dL/dx from dL/dy of [`Tensor::upsample_nearest2x`]: sums of 2x2 blocks.
    pub fn upsample_nearest2x_backward(&self) -> Result<Tensor> {
        let (n, c, h2, w2) = planes("upsample_nearest2x_backward", self)?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            return Err(TensorError::invalid("upsample_nearest2x_backward", format!("odd size {}", self.shape())));
        }
        let (h, w) = (h2 / 2, w2 / 2);
        if let Placement::Device(backend) = placement("upsample_nearest2x_backward", &[self])? {
            let mut dx = backend.alloc(self.numel() / 4)?;
            backend.upsample2x_backward(self.buffer(), &mut *dx, &Planes { planes: n * c, h, w })?;
            return Ok(Tensor::from_device(&backend, dx, Shape::new([n, c, h, w])));
        }
        let g = self.as_slice();
        let mut dx = crate::pool::take(self.numel() / 4);
        for_each_row(&mut dx, w, |r, row| {
            let (plane, i) = (r / h, r % h);
            let top = &g[(plane * h2 + 2 * i) * w2..][..w2];
            let bottom = &g[(plane * h2 + 2 * i + 1) * w2..][..w2];
            for (j, o) in row.iter_mut().enumerate() {
                *o = top[2 * j] + top[2 * j + 1] + bottom[2 * j] + bottom[2 * j + 1];
            }
        });
        Ok(Tensor::from_parts(dx, Shape::new([n, c, h, w])))
    }
}

/// The specification of [`Tensor::upsample_nearest2x`]: y[n, c, i, j] = x[n, c, i/2, j/2].
pub fn upsample_nearest2x_reference(x: &Tensor) -> Result<Tensor> {
    let op = "upsample_nearest2x_reference";
    let (n, c, h, w) = planes(op, x)?;
    let x = view::<Ix4>(op, x)?;
    let mut y = Array4::<f32>::zeros((n, c, 2 * h, 2 * w));
    Zip::indexed(&mut y).for_each(|(n, c, i, j), y| *y = x[[n, c, i / 2, j / 2]]);
    Ok(Tensor::from_ndarray(y))
}

/// The specification of [`Tensor::upsample_nearest2x_backward`], from d_out =
/// dL/dy [N, C, 2H, 2W]: each input pixel's gradient is the sum, in f64, of
/// the 2x2 block of outputs it was copied to.
pub fn upsample_nearest2x_backward_reference(d_out: &Tensor) -> Result<Tensor> {
    let op = "upsample_nearest2x_backward_reference";
    let (n, c, h2, w2) = planes(op, d_out)?;
    if h2 % 2 != 0 || w2 % 2 != 0 {
        return Err(TensorError::invalid(op, format!("odd size {}", d_out.shape())));
    }
    let d_y = to_f64::<Ix4>(op, d_out)?;
    let mut d_x = Array4::<f64>::zeros((n, c, h2 / 2, w2 / 2));
    Zip::indexed(&mut d_x)
        .for_each(|(n, c, i, j), d_x| *d_x = d_y.slice(s![n, c, 2 * i..2 * i + 2, 2 * j..2 * j + 2]).sum());
    Ok(from_f64(d_x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn check(dims: [usize; 4], seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = Tensor::randn(dims, &mut rng);
        assert_eq!(x.upsample_nearest2x().unwrap().to_vec(), upsample_nearest2x_reference(&x).unwrap().to_vec());
        let [n, c, h, w] = dims;
        let g = Tensor::randn([n, c, 2 * h, 2 * w], &mut rng);
        let (fast, reference) =
            (g.upsample_nearest2x_backward().unwrap(), upsample_nearest2x_backward_reference(&g).unwrap());
        assert_eq!(fast.shape(), reference.shape());
        // Four f32 additions against an f64 sum rounded once: a few ulp of sums of size ~2.
        let err = fast.max_abs_diff(&reference).unwrap();
        assert!(err < 1e-6, "{dims:?}: {err}");
    }

    #[test]
    fn large_enough_to_run_in_parallel() {
        // 16 x 32 x 14 x 14 in, four times that out: past the parallel threshold both ways.
        check([16, 32, 14, 14], 1);
    }

    proptest! {
        #[test]
        fn any_shape_matches_the_reference(
            n in 1usize..4, c in 1usize..4, h in 1usize..6, w in 1usize..6, seed in 0u64..1000,
        ) {
            check([n, c, h, w], seed);
        }
    }

    #[test]
    fn each_pixel_becomes_a_block() {
        let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2]).unwrap();
        let y = x.upsample_nearest2x().unwrap();
        assert_eq!(y.dims(), &[1, 1, 4, 4]);
        #[rustfmt::skip]
        assert_eq!(y.to_vec(), vec![
            1., 1., 2., 2.,
            1., 1., 2., 2.,
            3., 3., 4., 4.,
            3., 3., 4., 4.]);
        // Backward sums each block: with all-ones g, every input gets 4.
        assert_eq!(Tensor::ones([1, 1, 4, 4]).upsample_nearest2x_backward().unwrap().to_vec(), vec![4.0; 4]);
    }
}
