use ddpm_autograd::{Result, Tensor, Var};
use rand::Rng;

use super::push;
use crate::{Module, NamedParams};

/// A table of learned vectors, as torch.nn.Embedding: weight [V, D] ~ N(0, 1).
pub struct Embedding {
    pub weight: Var,
}

impl Embedding {
    pub fn new(entries: usize, dim: usize, rng: &mut impl Rng) -> Embedding {
        Embedding { weight: Var::param(Tensor::randn([entries, dim], rng)) }
    }

    /// Indices [B] -> vectors [B, D].
    pub fn forward(&self, indices: &[usize]) -> Result<Var> {
        self.weight.embedding(indices)
    }
}

impl Module for Embedding {
    fn visit_params(&self, prefix: &str, out: &mut NamedParams) {
        push(out, prefix, "weight", &self.weight);
    }
}
