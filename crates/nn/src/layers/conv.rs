use ddpm_autograd::{Result, Var};
use ddpm_tensor::ops::Conv2dParams;
use rand::Rng;

use super::{push, torch_uniform};
use crate::{Module, NamedParams};

/// A 2-D convolution with bias, as torch.nn.Conv2d (square kernel, same stride
/// and padding on both axes). Weight [K, C, R, R], bias [K].
pub struct Conv2d {
    pub weight: Var,
    pub bias: Var,
    pub params: Conv2dParams,
}

impl Conv2d {
    pub fn new(cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize, rng: &mut impl Rng) -> Conv2d {
        let fan_in = cin * kernel * kernel;
        Conv2d {
            weight: torch_uniform(&[cout, cin, kernel, kernel], fan_in, rng),
            bias: torch_uniform(&[cout], fan_in, rng),
            params: Conv2dParams { stride, padding },
        }
    }

    /// [N, C, H, W] -> [N, K, Ho, Wo].
    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.conv2d(&self.weight, Some(&self.bias), self.params)
    }

    /// forward(x) + shift [N, K] (broadcast over the positions) + residual (the
    /// output's shape), the adds fused into the convolution's output pass.
    pub fn forward_add(&self, x: &Var, shift: Option<&Var>, residual: Option<&Var>) -> Result<Var> {
        x.conv2d_add(&self.weight, Some(&self.bias), shift, residual, self.params)
    }
}

impl Module for Conv2d {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        push(out, prefix, "weight", &self.weight);
        push(out, prefix, "bias", &self.bias);
    }
}
