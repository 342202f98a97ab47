use ddpm_autograd::{Result, Tensor, Var};

use super::push;
use crate::{Module, NamedParams};

/// torch.nn.GroupNorm(groups, channels) with eps 1e-5 and an affine scale
/// (weight, initialised to 1) and shift (bias, initialised to 0), each [C].
pub struct GroupNorm {
    pub weight: Var,
    pub bias: Var,
    pub groups: usize,
}

impl GroupNorm {
    pub const EPS: f32 = 1e-5;

    pub fn new(groups: usize, channels: usize) -> GroupNorm {
        GroupNorm { weight: Var::param(Tensor::ones([channels])), bias: Var::param(Tensor::zeros([channels])), groups }
    }

    /// [N, C, H, W] -> [N, C, H, W].
    pub fn forward(&self, x: &Var) -> Result<Var> {
        x.group_norm(self.groups, &self.weight, &self.bias, Self::EPS)
    }

    /// silu(GroupNorm(x)) as one fused op: the same numbers, half the memory traffic.
    pub fn forward_silu(&self, x: &Var) -> Result<Var> {
        x.group_norm_silu(self.groups, &self.weight, &self.bias, Self::EPS)
    }
}

impl Module for GroupNorm {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        push(out, prefix, "weight", &self.weight);
        push(out, prefix, "bias", &self.bias);
    }
}
