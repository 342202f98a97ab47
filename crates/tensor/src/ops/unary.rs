//! Elementwise maps of one tensor: y = f(x), same shape.

use super::binary::zip_host;
use super::parallel::map_into;
use crate::{placement, Placement, Result, Tensor, TensorError};

/// e^x to within 2 ulp, written so that a loop of it vectorises (libm's expf is
/// an opaque call, one element at a time, and was 6% of a training step).
///
/// Cephes' method: write x = n ln2 + r with n an integer and |r| <= ln2/2, so
/// e^x = 2^n e^r; e^r comes from a degree-7 polynomial, and 2^n is built
/// directly in the float's exponent bits. ln2 is split in two parts so that
/// n ln2 is subtracted without rounding error.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Outside [-87, 88] e^x leaves f32's normal range: the answer is 0 or infinity,
    // chosen at the end (selects, not branches, so the loop still vectorises).
    let (low, high) = (x < -87.0, x > 88.0);
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // 2^n from n's bits: adding 1.5 * 2^23 puts the integer n in the low bits of
    // the mantissa. (`n as i32` would do, but Rust's saturating float-to-int
    // cast is done one element at a time, which made this loop 2.4x slower.)
    const SHIFTER: f32 = 12_582_912.0;
    let n_bits = (n + SHIFTER).to_bits().wrapping_sub(SHIFTER.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let y = e_r * two_n;
    let y = if low { 0.0 } else { y };
    if high {
        f32::INFINITY
    } else {
        y
    }
}

/// The logistic function, 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// An elementwise map y = f(x) that every device has a kernel for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Square,
    Powf(f32),
    Tanh,
    Sigmoid,
    /// SiLU (swish): x sigmoid(x).
    Silu,
    Relu,
    Sin,
    Cos,
    /// scale x + shift.
    Affine {
        scale: f32,
        shift: f32,
    },
    Scale(f32),
    /// x limited to [low, high]; a NaN stays NaN.
    Clamp {
        low: f32,
        high: f32,
    },
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Square => "square",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::Relu => "relu",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Affine { .. } => "affine",
            UnaryOp::Scale(_) => "scale",
            UnaryOp::Clamp { .. } => "clamp",
        }
    }
}

/// The derivative of a [`UnaryOp`] as a backward rule: d_x = g f'(.), where
/// f' is written with whichever of x (the input) and y (the output) is simpler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryBackward {
    /// y = sqrt(x): d_x = g / (2 y). Reads y.
    Sqrt,
    /// y = x^p: d_x = g p x^(p-1). Reads x.
    Powf(f32),
    /// y = tanh x: d_x = g (1 - y^2). Reads y.
    Tanh,
    /// y = s(x) = 1 / (1 + e^-x): d_x = g y (1 - y). Reads y.
    Sigmoid,
    /// y = x s(x): d_x = g s(x) (1 + x (1 - s(x))). Reads x.
    Silu,
    /// y = max(x, 0): d_x = g where x > 0, else 0. Reads x.
    Relu,
}

impl UnaryBackward {
    pub fn name(self) -> &'static str {
        match self {
            UnaryBackward::Sqrt => "sqrt_backward",
            UnaryBackward::Powf(_) => "powf_backward",
            UnaryBackward::Tanh => "tanh_backward",
            UnaryBackward::Sigmoid => "sigmoid_backward",
            UnaryBackward::Silu => "silu_backward",
            UnaryBackward::Relu => "relu_backward",
        }
    }
}

impl Tensor {
    /// y = f(x) for every element of a host tensor, in parallel for large
    /// tensors. A closure cannot run on a device: there this is an error
    /// naming `map` (the named ops, [`Tensor::unary`], run everywhere).
    pub fn map(&self, f: impl Fn(f32) -> f32 + Sync) -> Result<Tensor> {
        match placement("map", &[self])? {
            Placement::Cpu => Ok(self.map_host(f)),
            Placement::Device(_) => Err(TensorError::NoDeviceKernel { op: "map", device: self.device() }),
        }
    }

    fn map_host(&self, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
        let mut out = crate::pool::take(self.numel());
        map_into(self.as_slice(), &mut out, f);
        Tensor::from_parts(out, self.shape().clone())
    }

    /// y = op(x), elementwise, on the tensor's device.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        match placement(op.name(), &[self])? {
            Placement::Cpu => Ok(match op {
                // One closure per op, so that each loop is compiled (and vectorised) on its own.
                UnaryOp::Neg => self.map_host(|x| -x),
                UnaryOp::Exp => self.map_host(exp),
                UnaryOp::Log => self.map_host(f32::ln),
                UnaryOp::Sqrt => self.map_host(f32::sqrt),
                UnaryOp::Square => self.map_host(|x| x * x),
                UnaryOp::Powf(p) => self.map_host(|x| x.powf(p)),
                UnaryOp::Tanh => self.map_host(f32::tanh),
                UnaryOp::Sigmoid => self.map_host(sigmoid),
                UnaryOp::Silu => self.map_host(|x| x * sigmoid(x)),
                UnaryOp::Relu => self.map_host(|x| x.max(0.0)),
                UnaryOp::Sin => self.map_host(f32::sin),
                UnaryOp::Cos => self.map_host(f32::cos),
                UnaryOp::Affine { scale, shift } => self.map_host(|x| scale * x + shift),
                UnaryOp::Scale(s) => self.map_host(|x| s * x),
                UnaryOp::Clamp { low, high } => self.map_host(|x| x.clamp(low, high)),
            }),
            Placement::Device(backend) => {
                let mut out = backend.alloc(self.numel())?;
                backend.unary(op, self.buffer(), &mut *out)?;
                Ok(Tensor::from_device(&backend, out, self.shape().clone()))
            }
        }
    }

    /// The backward rule of a unary op: self is g = dL/dy, `saved` is x or y
    /// (as `op` says); returns dL/dx.
    pub fn unary_backward(&self, op: UnaryBackward, saved: &Tensor) -> Result<Tensor> {
        saved.expect_shape(op.name(), self.shape())?;
        match placement(op.name(), &[self, saved])? {
            Placement::Cpu => Ok(match op {
                UnaryBackward::Sqrt => zip_host(self, saved, |g, y| g / (2.0 * y)),
                UnaryBackward::Powf(p) => zip_host(self, saved, |g, x| g * p * x.powf(p - 1.0)),
                UnaryBackward::Tanh => zip_host(self, saved, |g, y| g * (1.0 - y * y)),
                UnaryBackward::Sigmoid => zip_host(self, saved, |g, y| g * y * (1.0 - y)),
                UnaryBackward::Silu => zip_host(self, saved, |g, x| {
                    let s = sigmoid(x);
                    g * s * (1.0 + x * (1.0 - s))
                }),
                UnaryBackward::Relu => zip_host(self, saved, |g, x| if x > 0.0 { g } else { 0.0 }),
            }),
            Placement::Device(backend) => {
                let mut out = backend.alloc(self.numel())?;
                backend.unary_backward(op, self.buffer(), saved.buffer(), &mut *out)?;
                Ok(Tensor::from_device(&backend, out, self.shape().clone()))
            }
        }
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }

    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }

    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }

    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }

    pub fn square(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Square)
    }

    pub fn powf(&self, p: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(p))
    }

    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }

    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }

    /// SiLU (swish): x * sigmoid(x).
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }

    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }

    pub fn sin(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sin)
    }

    pub fn cos(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Cos)
    }

    /// y = scale * x + shift.
    pub fn affine(&self, scale: f32, shift: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Affine { scale, shift })
    }

    pub fn scale(&self, s: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Scale(s))
    }

    pub fn clamp(&self, low: f32, high: f32) -> Result<Tensor> {
        self.unary(UnaryOp::Clamp { low, high })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_is_x_times_sigmoid() {
        let x = Tensor::from_vec(vec![-2.0, 0.0, 3.0], [3]).unwrap();
        let y = x.silu().unwrap().to_vec();
        assert_eq!(y[1], 0.0);
        assert!((y[0] - (-2.0 / (1.0 + 2f32.exp()))).abs() < 1e-6);
        assert!((y[2] - 3.0 / (1.0 + (-3f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn fast_exp_is_within_two_ulp_of_libm() {
        // Every 1/1000 between -87 and 88: relative error below 2 f32 ulps (2.4e-7).
        for i in -87_000..=88_000 {
            let x = (i as f64 * 1e-3) as f32;
            let (fast, libm) = (exp(x), x.exp());
            assert!(((fast - libm) / libm).abs() < 2.4e-7, "exp({x}) = {fast}, libm says {libm}");
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!((exp(-1000.0), exp(1000.0)), (0.0, f32::INFINITY));
        assert_eq!((exp(f32::NEG_INFINITY), exp(f32::INFINITY)), (0.0, f32::INFINITY));
        // A NaN (a diverged training run, say) must stay visible.
        assert!(exp(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan());
    }

    #[test]
    fn large_maps_match_small_ones() {
        // Above the parallel threshold the work is split; the answer must not change.
        let n = crate::PARALLEL_THRESHOLD * 3 + 7;
        let x = Tensor::from_vec((0..n).map(|i| i as f32 * 1e-4).collect(), [n]).unwrap();
        let y = x.exp().unwrap();
        for (i, v) in y.as_slice().iter().enumerate() {
            assert_eq!(*v, exp(i as f32 * 1e-4));
        }
    }
}
