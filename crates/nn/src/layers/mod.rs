//! The layers of the U-Net, each the counterpart of a `torch.nn` module with
//! the same parameter names, shapes and default initialisation.

mod conv;
mod dropout;
mod embedding;
mod linear;
mod norm;
mod timestep;

pub use conv::Conv2d;
pub use dropout::{dropout, dropout_mask, Mode};
pub use embedding::Embedding;
pub use linear::Linear;
pub use norm::GroupNorm;
pub use timestep::timestep_embedding;

use ddpm_autograd::{Tensor, Var};
use rand::Rng;

/// PyTorch's default for Linear and Conv2d weights and biases:
/// kaiming_uniform_(a = sqrt(5)) works out to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub(crate) fn torch_uniform(dims: &[usize], fan_in: usize, rng: &mut impl Rng) -> Var {
    let bound = 1.0 / (fan_in as f32).sqrt();
    Var::param(Tensor::rand_uniform(dims, -bound, bound, rng))
}

/// Joins a module prefix and a parameter name: ("down.0.", "weight") -> "down.0.weight".
pub(crate) fn push(out: &mut crate::NamedParams, prefix: &str, name: &str, v: &Var) {
    out.push((format!("{prefix}{name}"), v.clone()));
}
