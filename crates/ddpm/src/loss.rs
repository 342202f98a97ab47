//! Lecture section 4, the training step: pick a random t per image, noise the
//! image in one step (x_t = abar_t x_0 + bbar_t e), and ask the network for e:
//!     L = mean || e - eps_theta(x_t, t) ||^2        (paper eq. 14, "L_simple").

use ddpm_autograd::{Result, Tensor, Var};
use ddpm_nn::layers::Mode;
use ddpm_nn::{Module, UNet};
use rand::rngs::StdRng;
use rand::Rng;

use crate::Schedule;

/// A training step's t (one per image, uniform in 0..T) and noise e, in
/// the reference's order: t first.
pub fn draw_t_and_noise(schedule: &Schedule, x0: &Tensor, rng: &mut StdRng) -> (Vec<usize>, Tensor) {
    let n = x0.dims()[0];
    let t: Vec<usize> = (0..n).map(|_| rng.gen_range(0..schedule.timesteps())).collect();
    (t, Tensor::randn(x0.shape().clone(), rng))
}

/// The epsilon-MSE loss on a batch x0 [N, 1, 28, 28] in [-1, 1], with
/// optional labels, on the model's device. Draws t and e from `rng` (t
/// first, as the reference), and uses it for dropout too. x0 and e are made
/// on the host and go to the model's device.
pub fn train_loss(
    model: &UNet,
    schedule: &Schedule,
    x0: &Tensor,
    labels: Option<&[usize]>,
    rng: &mut StdRng,
) -> Result<Var> {
    let (t, eps) = draw_t_and_noise(schedule, x0, rng);
    let device = model.device();
    let (x0, eps) = (x0.to(device)?, eps.to(device)?);
    let x_t = schedule.q_sample(&x0, &t, &eps)?;
    let eps_hat = model.forward(&Var::constant(x_t), &t, labels, &mut Mode::Train(rng))?;
    eps_hat.mse(&Var::constant(eps))
}
