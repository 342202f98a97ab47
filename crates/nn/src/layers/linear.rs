use ddpm_autograd::{Result, Var};
use rand::Rng;

use super::{push, torch_uniform};
use crate::{Module, NamedParams};

/// y = x W^T + b, as torch.nn.Linear. x is [B, IN], W is [OUT, IN], b is [OUT].
pub struct Linear {
    pub weight: Var,
    pub bias: Var,
}

impl Linear {
    pub fn new(inputs: usize, outputs: usize, rng: &mut impl Rng) -> Linear {
        Linear { weight: torch_uniform(&[outputs, inputs], inputs, rng), bias: torch_uniform(&[outputs], inputs, rng) }
    }

    /// [B, IN] -> [B, OUT].
    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.matmul_nt(&self.weight)?.add(&self.bias)
    }
}

impl Module for Linear {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        push(out, prefix, "weight", &self.weight);
        push(out, prefix, "bias", &self.bias);
    }
}
