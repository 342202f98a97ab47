//! `ddpm`: the diffusion process itself, in the lecture's notation and the
//! paper's (Ho et al. 2020).
//!
//! - [`schedule`]: beta_t and everything derived from it, with the lecture's
//!   a_t, b_t, abar_t, bbar_t as accessors.
//! - [`data`]: MNIST-format IDX files, checked, and shuffled batches in [-1, 1].
//! - [`device`]: where a job runs (the host, or a GPU when one can be used).
//! - [`loss`]: the training objective: random t, closed-form x_t, MSE on the noise.
//! - [`train`]: one training step (Adam with warm-up, clipping, EMA, label
//!   dropout) and a resumable training state; [`fit`]: the loop around it
//!   (when to stop, when to save, progress for an observer).
//! - [`rng`]: the seeded random streams that make a resumed run exact.
//! - [`sampler`]: DDPM ancestral sampling, DDIM, classifier-free guidance, and
//!   where the lecture's sampling formula differs from the paper's;
//!   [`pipeline`]: a checkpoint in, images out, as `cargo xtask sample` does;
//!   [`picture`]: those images as a PNG grid, a GIF of the chain, a strip.
//! - [`eval`]: judging generated digits: an MNIST classifier, the Fréchet
//!   distance of its features (FLD), accuracy as asked, class balance.

pub mod data;
pub mod device;
pub mod eval;
pub mod fit;
pub mod loss;
pub mod picture;
pub mod pipeline;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod train;

pub use fit::{Fit, Progress, Stop};
pub use loss::train_loss;
pub use pipeline::{Pipeline, Samples, Sampling};
pub use schedule::{Schedule, ScheduleKind, TIMESTEPS};
pub use train::{TrainConfig, Trainer};
