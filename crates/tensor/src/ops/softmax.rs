//! Softmax and log-softmax over the last axis, and their backward passes.
//!
//! Stable form: softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m) with m = max_j x_j,
//! which equals the textbook formula but never overflows exp.

use ndarray::{Axis, IxDyn, Zip};

use super::parallel::for_each_row;
use crate::interop::{from_f64, to_f64};
use crate::{placement, Placement, Result, Tensor, TensorError};

/// The device arm of a row-wise softmax (or log-softmax) over rows of `cols`.
fn softmax_on_device(op: &'static str, x: &Tensor, cols: usize, log: bool) -> Result<Option<Tensor>> {
    let Placement::Device(backend) = placement(op, &[x])? else { return Ok(None) };
    let mut y = backend.alloc(x.numel())?;
    backend.softmax(x.buffer(), &mut *y, cols, log)?;
    Ok(Some(Tensor::from_device(&backend, y, x.shape().clone())))
}

/// The device arm of their gradients.
fn softmax_backward_on_device(op: &'static str, y: &Tensor, d_out: &Tensor, log: bool) -> Result<Option<Tensor>> {
    let Placement::Device(backend) = placement(op, &[y, d_out])? else { return Ok(None) };
    let cols = last_axis(op, y)?;
    let mut d_x = backend.alloc(y.numel())?;
    backend.softmax_backward(y.buffer(), d_out.buffer(), &mut *d_x, cols, log)?;
    Ok(Some(Tensor::from_device(&backend, d_x, y.shape().clone())))
}

fn last_axis(op: &'static str, x: &Tensor) -> Result<usize> {
    match x.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => Err(TensorError::invalid(op, format!("needs a non-empty last axis, got {}", x.shape()))),
    }
}

impl Tensor {
    /// Softmax along the last axis (the attention weights over keys).
    pub fn softmax(&self) -> Result<Tensor> {
        let n = last_axis("softmax", self)?;
        if let Some(y) = softmax_on_device("softmax", self, n, false)? {
            return Ok(y);
        }
        let src = self.as_slice();
        let mut out = crate::pool::take(self.numel());
        for_each_row(&mut out, n, |r, row| {
            let x = &src[r * n..(r + 1) * n];
            let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut total = 0.0;
            for (o, &v) in row.iter_mut().zip(x) {
                *o = super::exp(v - m);
                total += *o;
            }
            let inv = 1.0 / total;
            row.iter_mut().for_each(|o| *o *= inv);
        });
        Ok(Tensor::from_parts(out, self.shape().clone()))
    }

    /// log(softmax(x)) along the last axis: x_i - m - log sum_j exp(x_j - m).
    pub fn log_softmax(&self) -> Result<Tensor> {
        let n = last_axis("log_softmax", self)?;
        if let Some(y) = softmax_on_device("log_softmax", self, n, true)? {
            return Ok(y);
        }
        let src = self.as_slice();
        let mut out = crate::pool::take(self.numel());
        for_each_row(&mut out, n, |r, row| {
            let x = &src[r * n..(r + 1) * n];
            let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let lse = m + x.iter().map(|&v| super::exp(v - m)).sum::<f32>().ln();
            row.iter_mut().zip(x).for_each(|(o, &v)| *o = v - lse);
        });
        Ok(Tensor::from_parts(out, self.shape().clone()))
    }

    /// Given y = softmax(x) and dL/dy, returns dL/dx = y * (dy - sum_j dy_j y_j), row by row.
    pub fn softmax_backward(y: &Tensor, d_out: &Tensor) -> Result<Tensor> {
        d_out.expect_shape("softmax_backward", y.shape())?;
        let n = last_axis("softmax_backward", y)?;
        if let Some(d_x) = softmax_backward_on_device("softmax_backward", y, d_out, false)? {
            return Ok(d_x);
        }
        let (ys, gs) = (y.as_slice(), d_out.as_slice());
        let mut out = crate::pool::take(y.numel());
        for_each_row(&mut out, n, |r, row| {
            let (y, g) = (&ys[r * n..(r + 1) * n], &gs[r * n..(r + 1) * n]);
            let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
            for ((o, &y), &g) in row.iter_mut().zip(y).zip(g) {
                *o = y * (g - dot);
            }
        });
        Ok(Tensor::from_parts(out, y.shape().clone()))
    }

    /// Given y = log_softmax(x) and dL/dy, returns dL/dx = dy - exp(y) * sum_j dy_j.
    pub fn log_softmax_backward(y: &Tensor, d_out: &Tensor) -> Result<Tensor> {
        d_out.expect_shape("log_softmax_backward", y.shape())?;
        let n = last_axis("log_softmax_backward", y)?;
        if let Some(d_x) = softmax_backward_on_device("log_softmax_backward", y, d_out, true)? {
            return Ok(d_x);
        }
        let (ys, gs) = (y.as_slice(), d_out.as_slice());
        let mut out = crate::pool::take(y.numel());
        for_each_row(&mut out, n, |r, row| {
            let (y, g) = (&ys[r * n..(r + 1) * n], &gs[r * n..(r + 1) * n]);
            let total: f32 = g.iter().sum();
            for ((o, &y), &g) in row.iter_mut().zip(y).zip(g) {
                *o = g - super::exp(y) * total;
            }
        });
        Ok(Tensor::from_parts(out, y.shape().clone()))
    }
}

/// The specification: the textbook formula y_i = exp(x_i) / sum_j exp(x_j)
/// in f64, one lane (row) of the last axis at a time.
pub fn softmax_reference(x: &Tensor) -> Result<Tensor> {
    let op = "softmax_reference";
    last_axis(op, x)?;
    let mut y = to_f64::<IxDyn>(op, x)?;
    let last = Axis(y.ndim() - 1);
    Zip::from(y.lanes_mut(last)).for_each(|mut row| {
        let total: f64 = row.iter().map(|v| v.exp()).sum();
        row.mapv_inplace(|v| v.exp() / total);
    });
    Ok(from_f64(y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn softmax_matches_the_textbook_formula() {
        let x = Tensor::randn([3, 49, 49], &mut StdRng::seed_from_u64(2)).scale(3.0).unwrap();
        let err = x.softmax().unwrap().max_abs_diff(&softmax_reference(&x).unwrap()).unwrap();
        assert!(err < 1e-6, "{err}");
    }

    #[test]
    fn softmax_survives_huge_logits() {
        // exp(1000) overflows f32; the stable form does not.
        let x = Tensor::from_vec(vec![1000.0, 1000.0, 0.0], [1, 3]).unwrap();
        let y = x.softmax().unwrap().to_vec();
        assert!((y[0] - 0.5).abs() < 1e-6 && (y[1] - 0.5).abs() < 1e-6 && y[2] == 0.0);
        let l = x.log_softmax().unwrap().to_vec();
        // At magnitude 1000 one f32 step is 6e-5, so that is the resolution here.
        assert!((l[0] - (0.5f32).ln()).abs() < 2e-4 && (l[2] + 1000.0 + 2f32.ln()).abs() < 2e-4);
    }

    #[test]
    fn log_softmax_is_log_of_softmax() {
        let x = Tensor::randn([4, 10], &mut StdRng::seed_from_u64(3));
        let a = x.log_softmax().unwrap();
        let b = x.softmax().unwrap().log().unwrap();
        assert!(a.max_abs_diff(&b).unwrap() < 1e-5);
    }
}
