//! `ddpm`: the diffusion process itself, in the lecture's notation and the
//! paper's (Ho et al. 2020).
//!
//! - [`schedule`]: beta_t and everything derived from it, with the lecture's
//!   a_t, b_t, abar_t, bbar_t as accessors.
//! - [`data`]: MNIST-format IDX files, checked, and shuffled batches in [-1, 1].
//! - [`loss`]: the training objective: random t, closed-form x_t, MSE on the noise.
//! - [`sampler`]: DDPM ancestral sampling, DDIM, classifier-free guidance, and
//!   where the lecture's sampling formula differs from the paper's.

pub mod data;
pub mod loss;
pub mod sampler;
pub mod schedule;

pub use loss::train_loss;
pub use schedule::{Schedule, ScheduleKind};
