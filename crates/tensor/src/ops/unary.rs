//! Elementwise maps of one tensor: y = f(x), same shape.

use super::parallel::map_into;
use crate::Tensor;

/// The logistic function, 1 / (1 + e^-x).
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Tensor {
    /// y = f(x) for every element, in parallel for large tensors.
    pub fn map(&self, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
        let mut out = crate::pool::take(self.numel());
        map_into(self.as_slice(), &mut out, f);
        Tensor::from_parts(out, self.shape().clone())
    }

    pub fn neg(&self) -> Tensor {
        self.map(|x| -x)
    }

    pub fn exp(&self) -> Tensor {
        self.map(f32::exp)
    }

    pub fn log(&self) -> Tensor {
        self.map(f32::ln)
    }

    pub fn sqrt(&self) -> Tensor {
        self.map(f32::sqrt)
    }

    pub fn square(&self) -> Tensor {
        self.map(|x| x * x)
    }

    pub fn powf(&self, p: f32) -> Tensor {
        self.map(|x| x.powf(p))
    }

    pub fn tanh(&self) -> Tensor {
        self.map(f32::tanh)
    }

    pub fn sigmoid(&self) -> Tensor {
        self.map(sigmoid)
    }

    /// SiLU (swish): x * sigmoid(x).
    pub fn silu(&self) -> Tensor {
        self.map(|x| x * sigmoid(x))
    }

    pub fn relu(&self) -> Tensor {
        self.map(|x| x.max(0.0))
    }

    pub fn sin(&self) -> Tensor {
        self.map(f32::sin)
    }

    pub fn cos(&self) -> Tensor {
        self.map(f32::cos)
    }

    /// y = scale * x + shift.
    pub fn affine(&self, scale: f32, shift: f32) -> Tensor {
        self.map(|x| scale * x + shift)
    }

    pub fn scale(&self, s: f32) -> Tensor {
        self.map(|x| s * x)
    }

    pub fn clamp(&self, low: f32, high: f32) -> Tensor {
        self.map(|x| x.clamp(low, high))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_is_x_times_sigmoid() {
        let x = Tensor::from_vec(vec![-2.0, 0.0, 3.0], [3]).unwrap();
        let y = x.silu().to_vec();
        assert_eq!(y[1], 0.0);
        assert!((y[0] - (-2.0 / (1.0 + 2f32.exp()))).abs() < 1e-6);
        assert!((y[2] - 3.0 / (1.0 + (-3f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn large_maps_match_small_ones() {
        // Above the parallel threshold the work is split; the answer must not change.
        let n = crate::PARALLEL_THRESHOLD * 3 + 7;
        let x = Tensor::from_vec((0..n).map(|i| i as f32 * 1e-4).collect(), [n]).unwrap();
        let y = x.exp();
        for (i, v) in y.as_slice().iter().enumerate() {
            assert_eq!(*v, (i as f32 * 1e-4).exp());
        }
    }
}
