//! Turning noise into digits: the reverse process.
//!
//! Lecture: start from pure noise x_T and denoise step by step with the
//! network's estimate of the noise, e = f(x_t, t). Its formula,
//!
//! ```text
//! x_{t-1} = (x_t - b_t e) / a_t,
//! ```
//!
//! simplifies two things the DDPM paper (Ho et al. 2020, Algorithm 2) keeps:
//! 1. the noise estimate is scaled by b_t^2 / bbar_t (paper: beta_t / sqrt(1 - alphabar_t)),
//!    not b_t: e predicts the *total* noise in x_t, of size bbar_t, of which one
//!    step removes only the part b_t^2 / bbar_t;
//! 2. fresh noise sigma_t z is added back at every step but the last
//!    (sigma_t^2 = beta_t = b_t^2 here), which keeps the samples diverse
//!    instead of collapsing to the blurry mean.
//!
//! The correct step, in the lecture's notation:
//!
//! ```text
//! x_{t-1} = (x_t - (b_t^2 / bbar_t) e) / a_t + b_t z,   z ~ N(0, I), z = 0 at t = 0.
//! ```
//!
//! DDIM (Song et al. 2021) reuses the same network with a non-Markovian
//! process that can skip steps: from x_t it estimates x_0, then moves to an
//! earlier t_prev along the predicted noise direction (eta = 0: deterministic).

use ddpm_autograd::{no_grad, Result, Tensor, TensorError, Var};
use ddpm_nn::layers::Mode;
use ddpm_nn::UNet;
pub use ddpm_tensor::ops::{apply_update, SamplingStep, Update};
use ddpm_tensor::Device;

use crate::Schedule;

/// One DDPM ancestral step x_t -> x_{t-1} (paper Algorithm 2, line 4):
///
/// ```text
/// lecture:  x_{t-1} = (x_t - (b_t^2 / bbar_t) e) / a_t + b_t z
/// paper:    x_{t-1} = (x_t - beta_t / sqrt(1 - alphabar_t) e) / sqrt(alpha_t) + sigma_t z,  sigma_t^2 = beta_t
/// ```
///
/// with z ~ N(0, I) and no noise at the last step (t = 0). Returned as the
/// coefficients of the fused step (`Tensor::sampling_step` applies them,
/// with the guidance and the noise), computed as the reference does: in
/// f64 from the paper's quantities, rounded to f32 (the step runs in f32).
pub fn ddpm_update(schedule: &Schedule, t: usize) -> Update {
    let (beta_t, alpha_t, alphabar_t) = (schedule.betas[t], schedule.alphas[t], schedule.alphas_cumprod[t]);
    Update::Ddpm {
        // b_t^2 / bbar_t: of the whole noise bbar_t e in x_t, the share one step removes.
        eps_coef: (beta_t / (1.0 - alphabar_t).sqrt()) as f32,
        // a_t = sqrt(alpha_t): undoes the step's shrinking of x_{t-1}.
        a: alpha_t.sqrt() as f32,
        // b_t = sqrt(beta_t): the fresh noise, none at the last step.
        sigma: if t > 0 { beta_t.sqrt() as f32 } else { 0.0 },
    }
}

/// One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12), in the
/// paper's alphabar (the lecture's abar_t^2):
///
/// ```text
/// x0_hat = (x_t - sqrt(1 - alphabar_t) e) / sqrt(alphabar_t)
/// x_prev = sqrt(alphabar_prev) x0_hat + sqrt(1 - alphabar_prev - sigma^2) e + sigma z
/// sigma  = eta sqrt((1 - alphabar_prev) / (1 - alphabar_t) (1 - alphabar_t / alphabar_prev))
/// ```
///
/// in f64 as the reference; `t_prev = None` means "to x_0" (alphabar_prev = 1).
pub fn ddim_update(schedule: &Schedule, t: usize, t_prev: Option<usize>, eta: f64) -> Update {
    let alphabar = schedule.alphas_cumprod[t];
    let alphabar_prev = t_prev.map_or(1.0, |p| schedule.alphas_cumprod[p]);
    let sigma = eta * ((1.0 - alphabar_prev) / (1.0 - alphabar) * (1.0 - alphabar / alphabar_prev)).sqrt();
    Update::Ddim { alphabar, alphabar_prev, sigma, dir: (1.0 - alphabar_prev - sigma * sigma).sqrt() }
}

/// One DDPM ancestral step x_t -> x_{t-1}; `z` is ignored at t = 0.
pub fn ddpm_step(schedule: &Schedule, x: &Tensor, t: usize, eps_hat: &Tensor, z: &Tensor) -> Result<Tensor> {
    apply_update(&ddpm_update(schedule, t), x, eps_hat, z)
}

/// The DDIM timesteps of the reference: [(steps-1) k, ..., k, 0] with k = T / steps.
pub fn ddim_timesteps(timesteps: usize, steps: usize) -> Vec<usize> {
    let k = timesteps / steps;
    (0..steps).rev().map(|i| i * k).collect()
}

/// One DDIM step x_t -> x_{t_prev}; `t_prev = None` means "to x_0".
pub fn ddim_step(
    schedule: &Schedule,
    x: &Tensor,
    t: usize,
    t_prev: Option<usize>,
    eps_hat: &Tensor,
    z: &Tensor,
    eta: f64,
) -> Result<Tensor> {
    apply_update(&ddim_update(schedule, t, t_prev, eta), x, eps_hat, z)
}

/// What the sampler conditions on.
#[derive(Debug, Clone, Copy)]
pub struct Conditioning<'a> {
    /// One digit per image, or `None` for unconditional sampling.
    pub labels: Option<&'a [usize]>,
    /// Classifier-free guidance weight w: eps = (1 + w) eps(x, t, y) - w eps(x, t, null).
    pub guidance: f32,
}

impl Conditioning<'_> {
    pub const UNCONDITIONAL: Conditioning<'static> = Conditioning { labels: None, guidance: 0.0 };
}

/// The labels of a guided pass over [x; x]: `y`, then the null class
/// `null` once per image.
pub fn guided_labels(y: &[usize], null: usize) -> Vec<usize> {
    y.iter().copied().chain(std::iter::repeat_n(null, y.len())).collect()
}

/// The network's noise estimates at x_t for one sampling step: [N, ...], or,
/// with classifier-free guidance, [2N, ...] holding eps(x, t, y) and then
/// eps(x, t, null), both from one forward pass over [x; x] with labels
/// [y; null]. The step itself combines them ([`SamplingStep::guidance`]).
pub fn noise_estimates(model: &UNet, x: &Tensor, t: usize, cond: Conditioning) -> Result<Tensor> {
    let n = x.dims()[0];
    no_grad(|| match cond.labels {
        Some(y) if cond.guidance != 0.0 => {
            let both = Tensor::concat(&[x, x], 0)?;
            let labels = guided_labels(y, model.num_classes);
            Ok(model.forward(&Var::constant(both), &vec![t; 2 * n], Some(&labels), &mut Mode::Eval)?.value())
        }
        labels => Ok(model.forward(&Var::constant(x.clone()), &vec![t; n], labels, &mut Mode::Eval)?.value()),
    })
}

/// The lecture's literal sampling step, x_{t-1} = (x_t - b_t e) / a_t: no
/// noise added back, and the noise estimate scaled by b_t instead of
/// b_t^2 / bbar_t. Kept to show why it fails: e estimates the *whole* noise
/// bbar_t e of x_t, so subtracting b_t e removes far more than one step's worth
/// when t is small (b_t >> b_t^2 / bbar_t) and far less when bbar_t is near 1,
/// and without fresh noise every image slides to the same over-smoothed
/// average. `cargo xtask lecture` draws both.
///
/// It has the form of a DDPM step with the coefficients b_t and a_t and no
/// noise, so it runs as one ([`Update::Ddpm`]), on any device.
pub fn lecture_update(schedule: &Schedule, t: usize) -> Update {
    Update::Ddpm { eps_coef: schedule.b(t) as f32, a: schedule.a(t) as f32, sigma: 0.0 }
}

/// The lecture's second sampling loop: x = (x - bbar_t f(x, t)) / abar_t,
/// for t running *up* from the first step to T.
///
/// Each step inverts the closed form x_t = abar_t x_0 + bbar_t e: it is the
/// network's estimate of x_0 from x taken as x_t, in one jump. Run once, at
/// the right t (the noise level of x), that is a blurry x_0; run again and
/// again with t growing, the estimate of each step is handed to the next as
/// if it were x at a higher noise level, which it is not: at small t the
/// network removes almost nothing (bbar_t is small) but the division by
/// abar_t ~ 1 changes nothing either, and as t grows, 1 / abar_t grows to
/// about 160 at t = T while the network, asked to find noise of size bbar_t
/// in an image that has another amount, subtracts the wrong amount, so x is
/// multiplied up step after step. `cargo xtask lecture` runs it from the
/// same x_T as the others and prints how far it goes.
///
/// Also of the DDPM form: eps_coef = bbar_t, a = abar_t, no noise.
pub fn lecture_jump_update(schedule: &Schedule, t: usize) -> Update {
    Update::Ddpm { eps_coef: schedule.bbar(t) as f32, a: schedule.abar(t) as f32, sigma: 0.0 }
}

/// Which reverse process to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// DDPM ancestral sampling over all T steps (Ho et al., Algorithm 2).
    Ddpm,
    /// DDIM over `steps` evenly spaced timesteps; eta = 0 is deterministic.
    Ddim { steps: usize, eta: f64 },
    /// The lecture's simplified formula over all T steps ([`lecture_update`]).
    Lecture,
    /// The lecture's second loop, x_0 from x_t over and over, t rising from
    /// the first step to T ([`lecture_jump_update`]).
    LectureJump,
}

impl Method {
    /// The timesteps the loop visits, first to last.
    pub fn timesteps(&self, schedule: &Schedule) -> Vec<usize> {
        match *self {
            Method::Ddim { steps, .. } => ddim_timesteps(schedule.timesteps(), steps),
            Method::Ddpm | Method::Lecture => (0..schedule.timesteps()).rev().collect(),
            Method::LectureJump => (0..schedule.timesteps()).collect(),
        }
    }

    /// The update of step i of the loop over `ts` (this method's timesteps).
    pub fn update(&self, schedule: &Schedule, ts: &[usize], i: usize) -> Update {
        match *self {
            Method::Ddpm => ddpm_update(schedule, ts[i]),
            Method::Ddim { eta, .. } => ddim_update(schedule, ts[i], ts.get(i + 1).copied(), eta),
            Method::Lecture => lecture_update(schedule, ts[i]),
            Method::LectureJump => lecture_jump_update(schedule, ts[i]),
        }
    }

    /// Network evaluations per image (twice that with guidance).
    pub fn num_steps(&self, schedule: &Schedule) -> usize {
        self.timesteps(schedule).len()
    }
}

/// Refuses DDIM step counts outside 1..=T and an eta outside [0, 1].
///
/// eta scales DDIM's fresh noise sigma; at eta = 1 sigma^2 is the DDPM
/// posterior variance, and above 1 it is larger than the 1 - alphabar_prev
/// the step has to give out, so the direction term sqrt(1 - alphabar_prev -
/// sigma^2) would be the square root of a negative number: NaN.
pub fn check_method(schedule: &Schedule, method: Method) -> Result<()> {
    if let Method::Ddim { steps, eta } = method {
        if steps == 0 || steps > schedule.timesteps() {
            return Err(TensorError::invalid("sample_ddim", format!("steps must be 1 ..= {}", schedule.timesteps())));
        }
        if !(0.0..=1.0).contains(&eta) {
            return Err(TensorError::invalid("sample_ddim", format!("eta must be in [0, 1], not {eta}")));
        }
    }
    Ok(())
}

/// Why the reverse process stopped.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// x held NaN or infinite values after step `step` (1-based) of `steps`,
    /// the one at timestep `t`: nothing after it would mean anything.
    #[error(
        "the sampler diverged: after step {step} of {steps} (t = {t}) x holds {count} NaN or infinite values; \
         nothing was written"
    )]
    Diverged { step: usize, steps: usize, t: usize, count: usize },
}

/// The number of NaN and infinite values in x, without bringing x to the
/// host where it is finite: a device sends back one number, the sum, which
/// is finite unless a value is not (or the values are so large that their
/// sum overflows; then x is read to tell the two apart).
fn non_finite_count(x: &Tensor) -> Result<usize> {
    let count = |x: &Tensor| x.as_slice().iter().filter(|v| !v.is_finite()).count();
    if x.device() == Device::Cpu {
        return Ok(count(x));
    }
    if x.sum_all()?.to(Device::Cpu)?.as_slice()[0].is_finite() {
        return Ok(0);
    }
    Ok(count(&x.to(Device::Cpu)?))
}

/// Runs the reverse process from x_T and returns the last x before the final
/// clamp to [-1, 1], on the device of x_T and the model. `observe(i, t, x)`
/// sees the state after each step i (at timestep t): for a progress bar, or
/// frames of the denoising chain (x is on the device: reading it is the
/// observer's choice). Fresh noise (every DDPM step, and DDIM steps when
/// eta > 0) is draw i of the Philox stream `noise` at step i, the same
/// numbers on every device, so a seed gives the same samples on each.
///
/// A step that leaves a NaN or an infinity in x stops the loop with
/// [`SampleError::Diverged`] naming it (the observer does not see that x):
/// from there on every image would be NaN, and a NaN image clamps to a
/// picture that looks like a result.
pub fn run(
    model: &UNet,
    schedule: &Schedule,
    x_t: &Tensor,
    method: Method,
    cond: Conditioning,
    noise: u64,
    observe: &mut dyn FnMut(usize, usize, &Tensor),
) -> std::result::Result<Tensor, SampleError> {
    check_method(schedule, method)?;
    let ts = method.timesteps(schedule);
    let guidance = cond.labels.and(Some(cond.guidance)).filter(|&w| w != 0.0);
    let mut x = x_t.clone();
    for (i, &t) in ts.iter().enumerate() {
        let eps = noise_estimates(model, &x, t, cond)?;
        let step = SamplingStep { update: method.update(schedule, &ts, i), guidance, seed: noise, offset: i as u64 };
        x = x.sampling_step(&eps, &step)?;
        let count = non_finite_count(&x)?;
        if count > 0 {
            return Err(SampleError::Diverged { step: i + 1, steps: ts.len(), t, count });
        }
        observe(i, t, &x);
    }
    Ok(x)
}

/// DDIM from a given x_T: deterministic for eta = 0 (the same x_T, weights and
/// labels give the same images). Noise (Philox stream `noise`) only when eta > 0.
/// Returns x_0 clamped to [-1, 1].
pub fn sample_ddim(
    model: &UNet,
    schedule: &Schedule,
    x_t: &Tensor,
    steps: usize,
    eta: f64,
    cond: Conditioning,
    noise: u64,
) -> std::result::Result<Tensor, SampleError> {
    Ok(ddim_trajectory_end(model, schedule, x_t, steps, eta, cond, noise)?.clamp(-1.0, 1.0)?)
}

/// The DDIM loop's last x, before the final clamp to the pixel range.
pub fn ddim_trajectory_end(
    model: &UNet,
    schedule: &Schedule,
    x_t: &Tensor,
    steps: usize,
    eta: f64,
    cond: Conditioning,
    noise: u64,
) -> std::result::Result<Tensor, SampleError> {
    run(model, schedule, x_t, Method::Ddim { steps, eta }, cond, noise, &mut |_, _, _| {})
}

/// DDPM ancestral sampling over all T steps from x_T ~ N(0, I) (paper Algorithm 2).
/// Returns x_0 clamped to [-1, 1].
pub fn sample_ddpm(
    model: &UNet,
    schedule: &Schedule,
    x_t: &Tensor,
    cond: Conditioning,
    noise: u64,
) -> std::result::Result<Tensor, SampleError> {
    Ok(run(model, schedule, x_t, Method::Ddpm, cond, noise, &mut |_, _, _| {})?.clamp(-1.0, 1.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddim_timesteps_follow_the_reference() {
        assert_eq!(ddim_timesteps(1000, 10), vec![900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
        assert_eq!(ddim_timesteps(1000, 3), vec![666, 333, 0]);
        assert_eq!(ddim_timesteps(1000, 50)[0], 980);
    }

    /// One element's step, x' from x, the noise estimate e and fresh noise z.
    fn step(update: Update, x: f32, e: f32, z: f32) -> f64 {
        update.apply(x, e, z) as f64
    }

    const TS: [usize; 6] = [0, 1, 10, 100, 500, 999];

    /// x at the edge of f32: the first step's division by a_t < 1 overflows,
    /// and the loop stops there, naming the step, before anyone sees x.
    #[test]
    fn a_step_that_overflows_stops_the_sampler() {
        let model = UNet::new(ddpm_nn::Preset::Tiny, 0, &mut crate::rng::stream(0, crate::rng::Stream::Init, 0));
        let s = Schedule::new(crate::ScheduleKind::Linear, 1000);
        let x_t = Tensor::from_vec(vec![f32::MAX; 784], [1, 1, 28, 28]).unwrap();
        let mut seen = 0;
        let ended = run(&model, &s, &x_t, Method::Ddpm, Conditioning::UNCONDITIONAL, 0, &mut |_, _, _| seen += 1);
        match ended {
            Err(SampleError::Diverged { step: 1, steps: 1000, t: 999, count }) => assert!(count > 0),
            other => panic!("expected a divergence at step 1, got {other:?}"),
        }
        assert_eq!(seen, 0, "the observer never sees a non-finite x");
    }

    /// The paper's step in the lecture's names, term by term.
    #[test]
    fn the_ddpm_update_is_the_formula_in_the_lecture_names() {
        let s = Schedule::new(crate::ScheduleKind::Linear, 1000);
        let (x, e, z) = (0.3f32, -1.2f32, 0.7f32);
        for t in TS {
            let (a, b, bbar) = (s.a(t), s.b(t), s.bbar(t));
            let noise = if t > 0 { b * z as f64 } else { 0.0 };
            let want = (x as f64 - b * b / bbar * e as f64) / a + noise;
            let got = step(ddpm_update(&s, t), x, e, z);
            assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "t = {t}: {got} against {want}");
        }
    }

    /// x_{t-1} = (x_t - b_t e) / a_t, with no noise whatever z is.
    #[test]
    fn the_lecture_update_is_its_literal_formula() {
        let s = Schedule::new(crate::ScheduleKind::Linear, 1000);
        let (x, e) = (0.3f32, -1.2f32);
        for t in TS {
            let want = (x as f64 - s.b(t) * e as f64) / s.a(t);
            for z in [0.0, 5.0] {
                let got = step(lecture_update(&s, t), x, e, z);
                assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "t = {t}, z = {z}: {got} against {want}");
            }
        }
    }

    /// Each step of the second loop inverts the closed form: given the true
    /// noise of x_t = abar_t x_0 + bbar_t e, it gives x_0 back.
    #[test]
    fn the_lecture_jump_inverts_the_closed_form() {
        let s = Schedule::new(crate::ScheduleKind::Linear, 1000);
        let (x0, e) = (0.8f64, -0.6f64);
        for t in TS {
            let x_t = s.abar(t) * x0 + s.bbar(t) * e;
            let got = step(lecture_jump_update(&s, t), x_t as f32, e as f32, 3.0);
            // f32 rounding of x_t, divided by abar_t (about 0.006 at t = 999).
            assert!((got - x0).abs() < 1e-6 / s.abar(t), "t = {t}: {got} against x_0 = {x0}");
        }
    }
}
