//! `ddpm-autograd`: reverse-mode automatic differentiation over `ddpm-tensor`.
//!
//! The whole engine, in the order a reader should take it:
//! - [`var`]: a [`Var`] is a node of the graph: a value, and the [`Op`] that made it.
//! - [`ops`]: the forward functions. Each computes its value with a tensor kernel
//!   and, when gradients are wanted, records an `Op` naming its inputs.
//! - [`backward`]: the derivative rule of every primitive op, in one `match`,
//!   and the reverse sweep that applies them (chain rule, in topological order).
//! - [`grad_mode`]: `no_grad`, for sampling, where nothing is recorded.
//! - [`gradcheck`]: central finite differences, the test every rule must pass.
//!
//! Composite ops (mean, split, linear layers, attention) are written in terms of
//! primitives and need no rule of their own.

pub mod backward;
pub mod grad_mode;
pub mod gradcheck;
mod op;
mod ops;
pub mod profile;
mod var;

pub use backward::Gradients;
pub use grad_mode::{is_grad_enabled, no_grad, NoGradGuard};
pub use op::Op;
pub use var::{live_nodes, Var};

pub use ddpm_tensor::{Result, Shape, Tensor, TensorError};
