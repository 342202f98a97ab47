//! One step of a sampler as one fused op: classifier-free guidance, the
//! update of x and its fresh noise, in a single pass over x (one kernel on a
//! device, `kernels/sampling.cu`). The coefficients come from the noise
//! schedule (`ddpm::sampler`, in the lecture's notation); this op only
//! applies them.
//!
//! For each element i, with e the network's noise estimate and z fresh noise:
//!
//! ```text
//! guidance   e  = (1 + w) e(x, t, y) - w e(x, t, null)          (when guided)
//! DDPM       x' = (x - eps_coef e) / a + sigma z
//! DDIM       x0 = (x - sqrt(1 - alphabar) e) / sqrt(alphabar),
//!            x' = sqrt(alphabar_prev) x0 + dir e + sigma z      (in f64)
//! ```
//!
//! In the lecture's names (docs/lecture.md) a DDPM step has a = a_t,
//! eps_coef = b_t^2 / bbar_t and sigma = b_t; `ddpm::sampler` says why.
//!
//! z is element i of Philox stream `seed`, draw `offset` ([`crate::philox::normal`]):
//! the same number on every device, so a seed gives the same samples on each.

use super::parallel::for_each_row;
use crate::{philox, placement, Placement, Result, Shape, Tensor, TensorError};

/// The coefficients of one sampling step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Update {
    /// x' = (x - eps_coef e) / a + sigma z, in f32; a is a_t = sqrt(alpha_t).
    Ddpm { eps_coef: f32, a: f32, sigma: f32 },
    /// x0 = (x - sqrt(1 - alphabar) e) / sqrt(alphabar);
    /// x' = sqrt(alphabar_prev) x0 + dir e + sigma z, in f64. alphabar is the
    /// paper's alphabar_t = abar_t^2 at this step, alphabar_prev at the next.
    Ddim { alphabar: f64, alphabar_prev: f64, sigma: f64, dir: f64 },
}

impl Update {
    /// The scale of the fresh noise the step adds (0: none).
    pub fn sigma(&self) -> f64 {
        match *self {
            Update::Ddpm { sigma, .. } => sigma as f64,
            Update::Ddim { sigma, .. } => sigma,
        }
    }

    /// x' from one element's x, noise estimate e and fresh noise z.
    #[inline(always)]
    pub fn apply(&self, x: f32, e: f32, z: f32) -> f32 {
        match *self {
            Update::Ddpm { eps_coef, a, sigma } => (x - eps_coef * e) / a + sigma * z,
            Update::Ddim { alphabar, alphabar_prev, sigma, dir } => {
                let (x, e, z) = (x as f64, e as f64, z as f64);
                // The network's estimate of x_0: invert x_t = abar_t x_0 + bbar_t e.
                let x0 = (x - (1.0 - alphabar).sqrt() * e) / alphabar.sqrt();
                (alphabar_prev.sqrt() * x0 + dir * e + sigma * z) as f32
            }
        }
    }
}

/// One step of the reverse process: the update, the guidance weight w
/// (`None`: the noise estimate is only the conditional one) and where the
/// fresh noise comes from (Philox stream `seed`, draw `offset`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingStep {
    pub update: Update,
    pub guidance: Option<f32>,
    pub seed: u64,
    pub offset: u64,
}

impl Tensor {
    /// x' from x (self, [N, ...]) and the network's noise estimate: eps of
    /// x's shape, or, when the step is guided, [2N, ...] holding the
    /// conditional estimates and then the unconditional ones.
    pub fn sampling_step(&self, eps: &Tensor, step: &SamplingStep) -> Result<Tensor> {
        let n = self.numel();
        let mut eps_dims = self.dims().to_vec();
        if step.guidance.is_some() {
            match eps_dims.first_mut() {
                Some(d) => *d *= 2,
                None => return Err(TensorError::invalid("sampling_step", "guidance needs x of shape [N, ...]")),
            }
        }
        eps.expect_shape("sampling_step (noise estimate)", &Shape::new(eps_dims))?;
        match placement("sampling_step", &[self, eps])? {
            Placement::Cpu => {
                let (x, e) = (self.as_slice(), eps.as_slice());
                let mut out = crate::pool::take(n);
                let noisy = step.update.sigma() != 0.0;
                const ROW: usize = 1024;
                for_each_row(&mut out, ROW, |row, values| {
                    for (j, o) in values.iter_mut().enumerate() {
                        let i = row * ROW + j;
                        let e = match step.guidance {
                            Some(w) => (1.0 + w) * e[i] - w * e[i + n],
                            None => e[i],
                        };
                        // Fresh noise only where the step adds some (not at DDPM's
                        // last step, nor in DDIM at eta 0): it would be multiplied by 0.
                        let z = if noisy { philox::normal(step.seed, step.offset, i as u64) } else { 0.0 };
                        *o = step.update.apply(x[i], e, z);
                    }
                });
                Ok(Tensor::from_parts(out, self.shape().clone()))
            }
            Placement::Device(backend) => {
                let mut out = backend.alloc(n)?;
                backend.sampling_step(self.buffer(), eps.buffer(), &mut *out, step)?;
                Ok(Tensor::from_device(&backend, out, self.shape().clone()))
            }
        }
    }
}

/// The update with the noise estimate `eps_hat` and the fresh noise `z`
/// given, on the host: how the reference's single steps (with PyTorch's z)
/// are checked.
pub fn apply_update(update: &Update, x: &Tensor, eps_hat: &Tensor, z: &Tensor) -> Result<Tensor> {
    eps_hat.expect_shape("apply_update", x.shape())?;
    z.expect_shape("apply_update", x.shape())?;
    let terms = x.as_slice().iter().zip(eps_hat.as_slice()).zip(z.as_slice());
    let out: Vec<f32> = terms.map(|((&x, &e), &z)| update.apply(x, e, z)).collect();
    Tensor::from_vec(out, x.shape().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    /// The fused step is guidance, then the update with Philox noise, done
    /// one after the other with the plain ops.
    #[test]
    fn the_fused_step_is_guidance_then_the_update() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 3 * 784;
        let x = Tensor::randn([3, 1, 28, 28], &mut rng);
        let eps = Tensor::randn([6, 1, 28, 28], &mut rng);
        let (c, u) = (eps.narrow(0, 0, 3).unwrap(), eps.narrow(0, 3, 3).unwrap());
        let w = 1.5;
        let guided = c.zip_map(&u, |c, u| (1.0 + w) * c - w * u).unwrap();
        for update in [
            Update::Ddpm { eps_coef: 0.3, a: 0.99, sigma: 0.1 },
            Update::Ddim { alphabar: 0.5, alphabar_prev: 0.7, sigma: 0.05, dir: 0.4 },
        ] {
            let step = SamplingStep { update, guidance: Some(w), seed: 9, offset: 4 };
            let z = Tensor::randn_philox([3, 1, 28, 28], 9, 4);
            let want = apply_update(&update, &x, &guided, &z).unwrap();
            assert_eq!(x.sampling_step(&eps, &step).unwrap().to_vec(), want.to_vec(), "{update:?}");
            // Unguided: eps is x's shape.
            let step = SamplingStep { guidance: None, ..step };
            let want = apply_update(&update, &x, &c, &z).unwrap();
            assert_eq!(x.sampling_step(&c, &step).unwrap().to_vec(), want.to_vec());
        }
        // The guided step needs both halves.
        let step = SamplingStep {
            update: Update::Ddpm { eps_coef: 0.3, a: 0.99, sigma: 0.0 },
            guidance: Some(w),
            seed: 0,
            offset: 0,
        };
        assert!(x.sampling_step(&c, &step).is_err());
        assert_eq!(n, x.numel());
    }
}
