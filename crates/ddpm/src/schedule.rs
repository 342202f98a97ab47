//! The noise schedule.
//!
//! Lecture: one noising step is x_t = a_t x_{t-1} + b_t e_t with a_t^2 + b_t^2 = 1,
//! and the chain collapses to x_t = abar_t x_0 + bbar_t e with abar_t = a_1 ... a_t
//! and bbar_t = sqrt(1 - abar_t^2).
//! Paper: beta_t = b_t^2, alpha_t = 1 - beta_t = a_t^2, alphabar_t = prod alpha_s = abar_t^2.
//! Timesteps are indexed t = 0 .. T-1 as in the reference (t = 0 is the first step).
//! Everything is computed in f64 and handed out as f32 where it meets tensors.

use std::fmt;
use std::str::FromStr;

use ddpm_tensor::{Result, Tensor, TensorError};

/// The smallest and largest T a model may have. One step (T = 1) leaves no
/// chain to learn; above 100,000 a DDPM sample takes hours even for `tiny`,
/// and every published schedule uses T <= 4,000. A checkpoint or a training
/// state outside this range is refused rather than run.
pub const TIMESTEPS: std::ops::RangeInclusive<usize> = 2..=100_000;

/// How beta_t grows with t.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// beta_t from 1e-4 to 0.02, evenly spaced (Ho et al.).
    Linear,
    /// alphabar_t = f(t+1)/f(0)-like cosine ramp, s = 0.008, betas clipped at 0.999 (Nichol & Dhariwal).
    Cosine,
}

impl FromStr for ScheduleKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => Err(format!("unknown schedule {other:?}: expected \"linear\" or \"cosine\"")),
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
        })
    }
}

/// beta_t and its derived quantities for t = 0 .. T-1, in f64.
///
/// ```
/// use ddpm::{Schedule, ScheduleKind};
/// let s = Schedule::new(ScheduleKind::Linear, 1000);
/// // The lecture's names: a_t^2 + b_t^2 = 1 for one step, abar_t^2 + bbar_t^2 = 1 for the jump.
/// assert!((s.a(500).powi(2) + s.b(500).powi(2) - 1.0).abs() < 1e-12);
/// assert!((s.abar(500).powi(2) + s.bbar(500).powi(2) - 1.0).abs() < 1e-12);
/// // x at the last step is almost pure noise.
/// assert!(s.abar(999) < 0.01 && s.bbar(999) > 0.99);
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// beta_t = b_t^2: the variance of the noise added at step t.
    pub betas: Vec<f64>,
    /// alpha_t = 1 - beta_t = a_t^2.
    pub alphas: Vec<f64>,
    /// alphabar_t = alpha_0 ... alpha_t = abar_t^2 (`alphas_cumprod` in diffusers).
    pub alphas_cumprod: Vec<f64>,
    /// Variance of q(x_{t-1} | x_t, x_0): beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t).
    pub posterior_var: Vec<f64>,
}

impl Schedule {
    pub fn new(kind: ScheduleKind, timesteps: usize) -> Schedule {
        let t = timesteps;
        let betas: Vec<f64> = match kind {
            // torch.linspace(1e-4, 0.02, T) in f64.
            ScheduleKind::Linear => {
                (0..t).map(|i| if t == 1 { 1e-4 } else { 1e-4 + (0.02 - 1e-4) * i as f64 / (t - 1) as f64 }).collect()
            }
            ScheduleKind::Cosine => {
                let s = 0.008;
                let f = |u: f64| ((u / t as f64 + s) / (1.0 + s) * std::f64::consts::PI / 2.0).cos().powi(2);
                (0..t).map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).min(0.999)).collect()
            }
        };
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod: Vec<f64> = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        let posterior_var = (0..t)
            .map(|i| {
                let prev = if i == 0 { 1.0 } else { alphas_cumprod[i - 1] };
                betas[i] * (1.0 - prev) / (1.0 - alphas_cumprod[i])
            })
            .collect();
        Schedule { kind, betas, alphas, alphas_cumprod, posterior_var }
    }

    /// T, the number of steps.
    pub fn timesteps(&self) -> usize {
        self.betas.len()
    }

    /// Lecture's a_t = sqrt(alpha_t): how much of x_{t-1} survives step t.
    pub fn a(&self, t: usize) -> f64 {
        self.alphas[t].sqrt()
    }

    /// Lecture's b_t = sqrt(beta_t): how much fresh noise step t adds.
    pub fn b(&self, t: usize) -> f64 {
        self.betas[t].sqrt()
    }

    /// Lecture's abar_t = a_0 ... a_t = sqrt(alphabar_t): how much of x_0 survives to x_t.
    pub fn abar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t].sqrt()
    }

    /// Lecture's bbar_t = sqrt(1 - abar_t^2): the noise level of x_t.
    pub fn bbar(&self, t: usize) -> f64 {
        (1.0 - self.alphas_cumprod[t]).sqrt()
    }

    /// Lecture section 1 (paper eq. 2): one noising step,
    /// x_t = a_t x_{t-1} + b_t e_t, with a_t^2 + b_t^2 = 1 so a unit-variance
    /// signal keeps unit variance.
    pub fn noise_step(&self, x_prev: &Tensor, t: usize, e: &Tensor) -> Result<Tensor> {
        if t >= self.timesteps() {
            return Err(TensorError::invalid(
                "noise_step",
                format!("timestep {t} is not below T = {}", self.timesteps()),
            ));
        }
        let (a, b) = (self.a(t) as f32, self.b(t) as f32);
        x_prev.scale(a)?.add(&e.scale(b)?)
    }

    /// Lecture section 2: x_t the slow way, running [`Schedule::noise_step`]
    /// for steps 0, 1, ..., t with fresh noise each time. Its distribution is
    /// that of [`Schedule::q_sample`]'s one step, N(abar_t x_0, bbar_t^2 I)
    /// (`cargo xtask lecture` and this module's tests compare the two).
    pub fn noise_chain(&self, x0: &Tensor, t: usize, rng: &mut impl rand::Rng) -> Result<Tensor> {
        let mut x = x0.clone();
        for s in 0..=t {
            x = self.noise_step(&x, s, &Tensor::randn(x.shape().clone(), rng))?;
        }
        Ok(x)
    }

    /// Lecture section 4 (paper eq. 4): x_t = abar_t x_0 + bbar_t e, in one step,
    /// for a batch x0 [N, ...] with one timestep per sample, on x0's device.
    /// As the reference: alphabar_t is rounded to f32 first, then square-rooted in f32.
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
        eps.expect_shape("q_sample", x0.shape())?;
        let Some(&n) = x0.dims().first() else {
            return Err(TensorError::invalid("q_sample", "needs a batch [N, ...], got a scalar"));
        };
        if t.len() != n {
            return Err(TensorError::invalid("q_sample", format!("{} timesteps for a batch of {n}", t.len())));
        }
        if let Some(&bad) = t.iter().find(|&&s| s >= self.timesteps()) {
            return Err(TensorError::invalid(
                "q_sample",
                format!("timestep {bad} is not below T = {}", self.timesteps()),
            ));
        }
        // abar_t and bbar_t of each image, [N, 1, ..., 1], made on the host.
        let (signal, noise): (Vec<f32>, Vec<f32>) = t
            .iter()
            .map(|&step| {
                let alphabar = self.alphas_cumprod[step] as f32;
                (alphabar.sqrt(), (1.0 - alphabar).sqrt())
            })
            .unzip();
        let mut per_image = vec![1; x0.rank()];
        per_image[0] = n;
        let coefficient = |v: Vec<f32>| Tensor::from_vec(v, per_image.clone())?.to(x0.device());
        x0.mul(&coefficient(signal)?)?.add(&eps.mul(&coefficient(noise)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lecture_names_satisfy_their_identities() {
        for kind in [ScheduleKind::Linear, ScheduleKind::Cosine] {
            let s = Schedule::new(kind, 1000);
            for t in [0, 1, 500, 999] {
                // a_t^2 + b_t^2 = 1 and abar_t^2 + bbar_t^2 = 1.
                assert!((s.a(t).powi(2) + s.b(t).powi(2) - 1.0).abs() < 1e-12);
                assert!((s.abar(t).powi(2) + s.bbar(t).powi(2) - 1.0).abs() < 1e-12);
            }
            // abar_t = a_0 a_1 ... a_t.
            let product: f64 = (0..=700).map(|t| s.a(t)).product();
            assert!((product - s.abar(700)).abs() < 1e-12);
        }
    }

    /// The iterated chain and the closed form have the same mean and variance:
    /// 20,000 draws of each from x_0 = 0.8, checked against abar_t x_0 and
    /// bbar_t^2 to about 4 standard errors (the seeds are fixed, so the test is
    /// deterministic; a wrong a_t or b_t, e.g. beta_t in place of sqrt(beta_t),
    /// misses by far more).
    #[test]
    fn the_iterated_chain_has_the_closed_form_distribution() {
        use rand::{rngs::StdRng, SeedableRng};
        let s = Schedule::new(ScheduleKind::Linear, 1000);
        let n = 20_000;
        let x0 = Tensor::full([n], 0.8);
        let stats = |x: &Tensor| {
            let v = x.as_slice();
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
            let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (mean, var)
        };
        let mut rng = StdRng::seed_from_u64(3);
        for t in [0, 50, 300, 999] {
            let (abar, bbar) = (s.abar(t), s.bbar(t));
            let chain = s.noise_chain(&x0, t, &mut rng).unwrap();
            let eps = Tensor::randn([n], &mut rng);
            let closed = s.q_sample(&x0.reshape([n, 1]).unwrap(), &vec![t; n], &eps.reshape([n, 1]).unwrap()).unwrap();
            for (what, x) in [("chain", chain), ("closed form", closed)] {
                let (mean, var) = stats(&x);
                let se_mean = bbar / (n as f64).sqrt();
                let se_var = bbar * bbar * (2.0 / n as f64).sqrt();
                assert!(
                    (mean - abar * 0.8).abs() < 4.0 * se_mean + 1e-6,
                    "{what} t = {t}: mean {mean}, want {}",
                    abar * 0.8
                );
                assert!(
                    (var - bbar * bbar).abs() < 4.0 * se_var + 1e-7,
                    "{what} t = {t}: variance {var}, want {}",
                    bbar * bbar
                );
            }
        }
    }

    #[test]
    fn abar_decreases_from_nearly_one_to_nearly_zero() {
        for kind in [ScheduleKind::Linear, ScheduleKind::Cosine] {
            let s = Schedule::new(kind, 1000);
            assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]), "{kind}");
            assert!(s.abar(0) > 0.99 && s.abar(999) < 0.01, "{kind}");
        }
    }
}
