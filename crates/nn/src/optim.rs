//! What training does with the gradients: Adam, gradient clipping, and an
//! exponential moving average (EMA) of the weights.
//!
//! Each follows PyTorch's definition (`torch.optim.Adam`,
//! `torch.nn.utils.clip_grad_norm_`), so that a training run here and one in
//! the reference take the same steps; `crates/nn/tests/optim.rs` checks the
//! numbers against tensors written by PyTorch.
//!
//! Every update runs where the parameters live, as one fused op per
//! parameter (`Tensor::adam_update`, `Tensor::lerp_assign`: a rayon loop on
//! the host, one kernel of kernels/optim.cu on a device). The gradient norm
//! stays on the parameters' device too, so a training step on a GPU reads
//! nothing back until the caller asks for the loss and the norm.

use ddpm_autograd::{Gradients, Result, Tensor, TensorError, Var};
use ddpm_tensor::backend::AdamStep;

/// Adam's hyperparameters, named as in Kingma & Ba (2015), Algorithm 1:
/// `lr` is alpha, `beta1` and `beta2` the decay rates of the two moment
/// estimates, `eps` the constant that keeps the division finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl AdamConfig {
    /// The scalars of step t (1-based), in f64 as PyTorch computes them (in
    /// Python floats): step_size = lr / (1 - b1^t) and sqrt(1 - b2^t). The
    /// moments start at zero, so early on they underestimate the true moments
    /// by exactly these factors: dividing the step by 1 - b1^t gives mhat_t =
    /// m_t / (1 - b1^t) for free, and sqrt(vhat_t) = sqrt(v_t) / sqrt(1 - b2^t).
    pub fn step_scalars(&self, t: u64) -> AdamStep {
        let t = t as f64;
        let bias_correction1 = 1.0 - (self.beta1 as f64).powf(t);
        let bias_correction2 = 1.0 - (self.beta2 as f64).powf(t);
        AdamStep {
            step_size: (self.lr as f64 / bias_correction1) as f32,
            beta1: self.beta1,
            beta2: self.beta2,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps: self.eps,
        }
    }
}

impl Default for AdamConfig {
    /// The paper's (and PyTorch's) defaults.
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// Adam (Kingma & Ba, 2015), as `torch.optim.Adam` computes it (no weight
/// decay, no amsgrad).
///
/// The state is one pair of moment estimates per parameter, `m` (the mean of
/// the gradients) and `v` (the mean of their squares), in the order of the
/// `params` given to [`Adam::new`]; every call to [`Adam::step`] must pass the
/// same parameters in the same order.
///
/// PyTorch writes the first moment's update as `m.lerp_(g, 1 - b1)`, the same
/// value up to the last bit of rounding.
///
/// One difference from PyTorch, in a case this project never meets: PyTorch
/// keeps a step counter per parameter and advances it only for parameters that
/// received a gradient, while this optimiser keeps the paper's single `t`. The
/// two agree whenever every parameter gets a gradient at every step, as every
/// parameter of the U-Net does.
pub struct Adam {
    config: AdamConfig,
    /// t: the number of steps taken so far.
    step_count: u64,
    /// m: the first moment estimate of each parameter.
    m: Vec<Tensor>,
    /// v: the second (raw) moment estimate of each parameter.
    v: Vec<Tensor>,
}

impl Adam {
    /// An optimiser for `params`, with both moments at zero (m_0 = 0, v_0 = 0),
    /// each on its parameter's device.
    pub fn new(params: &[Var], config: AdamConfig) -> Result<Adam> {
        let zeros = || params.iter().map(|p| p.value().zeros_like()).collect::<Result<Vec<_>>>();
        Ok(Adam { config, step_count: 0, m: zeros()?, v: zeros()? })
    }

    pub fn config(&self) -> AdamConfig {
        self.config
    }

    pub fn lr(&self) -> f32 {
        self.config.lr
    }

    /// Changes the learning rate for the following steps (a warm-up or a decay
    /// schedule); the moments are kept.
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    /// t: how many steps have been taken.
    pub fn step_count(&self) -> u64 {
        self.step_count
    }

    /// The moment estimates (m, v), one tensor per parameter, for saving a
    /// resumable training state.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Puts back a saved state: the step count and the moments written by
    /// [`Adam::moments`], moved to the device of the moments they replace.
    /// Refuses a state of another length or shape (a different model),
    /// leaving the optimiser unchanged.
    pub fn restore(&mut self, step_count: u64, m: Vec<Tensor>, v: Vec<Tensor>) -> Result<()> {
        for (what, saved) in [("m", &m), ("v", &v)] {
            check_same_shapes("Adam::restore", what, &self.m, saved)?;
        }
        let m = to_devices_of(&self.m, m)?;
        let v = to_devices_of(&self.v, v)?;
        self.step_count = step_count;
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// Moves the moments to `device` (with their parameters).
    pub fn to_device(&mut self, device: ddpm_tensor::Device) -> Result<()> {
        for t in self.m.iter_mut().chain(&mut self.v) {
            *t = t.to(device)?;
        }
        Ok(())
    }

    /// One update of every parameter that has a gradient in `grads`; a
    /// parameter without one (the loss does not depend on it) is left alone,
    /// moments included, as PyTorch does when `p.grad` is None.
    ///
    /// Everything is checked before anything is written: a wrong number of
    /// parameters or a misshaped gradient is an error, and nothing changes.
    pub fn step(&mut self, params: &[Var], grads: &Gradients) -> Result<()> {
        self.check_params(params)?;
        for (i, p) in params.iter().enumerate() {
            if let Some(g) = grads.get(p) {
                if g.shape() != &p.shape() {
                    let msg =
                        format!("the gradient of parameter {i} has shape {}, the parameter {}", g.shape(), p.shape());
                    return Err(TensorError::invalid("Adam::step", msg));
                }
            }
        }

        // t <- t + 1
        self.step_count += 1;
        let scalars = self.config.step_scalars(self.step_count);
        for ((p, m), v) in params.iter().zip(&mut self.m).zip(&mut self.v) {
            let Some(g) = grads.get(p) else { continue };
            // m_t = b1 m_{t-1} + (1 - b1) g_t
            // v_t = b2 v_{t-1} + (1 - b2) g_t^2
            // theta_t = theta_{t-1} - alpha mhat_t / (sqrt(vhat_t) + eps),
            //   mhat_t = m_t / (1 - b1^t), vhat_t = v_t / (1 - b2^t),
            // in one pass; the new weights replace the Var's value.
            p.set_value(p.value().adam_update(g, m, v, &scalars)?);
        }
        Ok(())
    }

    /// The parameters must be the ones the moments were made for.
    fn check_params(&self, params: &[Var]) -> Result<()> {
        let values: Vec<Tensor> = params.iter().map(|p| p.value()).collect();
        check_same_shapes("Adam::step", "parameter", &self.m, &values)
    }
}

/// Rescales the gradients of `params` so that their global L2 norm is at most
/// `max_norm`, as `torch.nn.utils.clip_grad_norm_` does, and returns the norm
/// before clipping (a scalar tensor on the gradients' device: reading it is
/// the caller's choice, since on a GPU that waits for the step).
///
/// The norm is taken over all gradients at once, as if they were one long
/// vector: ||g|| = sqrt(sum over every element of g^2) (accumulated in f64).
/// Every gradient is then multiplied by min(1, max_norm / (||g|| + 1e-6)); the
/// 1e-6 keeps the division finite, and the minimum leaves gradients already
/// inside the ball untouched. Parameters without a gradient are skipped.
///
/// A non-finite norm (an overflow or a NaN somewhere) makes every gradient
/// non-finite too, as in PyTorch; the caller sees it in the returned norm and
/// should stop.
pub fn clip_grad_norm(params: &[Var], grads: &mut Gradients, max_norm: f32) -> Result<Tensor> {
    let present: Vec<&Tensor> = params.iter().filter_map(|p| grads.get(p)).collect();
    if present.is_empty() {
        return Ok(Tensor::scalar(0.0));
    }
    let total_norm = Tensor::global_norm(&present)?;
    // coef = max_norm / (||g|| + 1e-6), then min(1, coef); a NaN coefficient
    // stays NaN (as PyTorch's clamp keeps it), so that the caller sees it.
    let coef = total_norm.full_like(max_norm)?.div(&total_norm.affine(1.0, 1e-6)?)?;
    let factor = coef.clamp(f32::NEG_INFINITY, 1.0)?;
    for p in params {
        if let Some(g) = grads.get_mut(p) {
            g.scale_by(&factor)?;
        }
    }
    Ok(total_norm)
}

/// The EMA's decay after `updates` updates: min(decay, (1 + n) / (10 + n)),
/// a warm-up that lets the first averages follow the weights closely.
pub fn ema_decay(decay: f32, updates: u64) -> f32 {
    let n = updates as f64;
    (decay as f64).min((1.0 + n) / (10.0 + n)) as f32
}

/// An exponential moving average of the weights, the model DDPM samples with
/// (Ho et al. 2020 use decay 0.9999): the raw weights jitter from
/// step to step with the noise of the gradient, their average does not.
///
/// After each optimiser step, `shadow <- d shadow + (1 - d) theta`, with
///
/// ```text
/// d = min(decay, (1 + n) / (10 + n)),   n = the number of updates before this one.
/// ```
///
/// Why the warm-up: with a fixed d = 0.9999 the average would remember its
/// starting point (the random initialisation) for tens of thousands of steps,
/// and a model sampled early in training would be mostly noise. With
/// (1 + n) / (10 + n) the first updates give the new weights most of the weight
/// (d = 0.1, 0.18, 0.25, ...) and d approaches `decay` as training goes on; it
/// reaches 0.999 after about 9,000 updates and 0.9999 after about 90,000. This
/// is the `num_updates` rule of TensorFlow's `ExponentialMovingAverage`.
pub struct Ema {
    decay: f32,
    num_updates: u64,
    shadow: Vec<Tensor>,
}

impl Ema {
    /// Starts the average at the current weights.
    pub fn new(params: &[Var], decay: f32) -> Ema {
        // The shadow shares the parameters' buffers until the first update
        // writes to it (copy on write).
        Ema { decay, num_updates: 0, shadow: params.iter().map(|p| p.value()).collect() }
    }

    pub fn decay(&self) -> f32 {
        self.decay
    }

    /// n: how many updates have been averaged in.
    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }

    /// The averaged weights, one tensor per parameter, in the order given to
    /// [`Ema::new`].
    pub fn shadow(&self) -> &[Tensor] {
        &self.shadow
    }

    /// The decay the next update will use: min(decay, (1 + n) / (10 + n)).
    pub fn current_decay(&self) -> f32 {
        ema_decay(self.decay, self.num_updates)
    }

    /// Averages the current weights in: shadow <- d shadow + (1 - d) theta,
    /// written as s + (1 - d)(theta - s): the same average, and a shadow
    /// equal to theta stays exactly equal.
    pub fn update(&mut self, params: &[Var]) -> Result<()> {
        let values: Vec<Tensor> = params.iter().map(|p| p.value()).collect();
        check_same_shapes("Ema::update", "parameter", &self.shadow, &values)?;
        let d = self.current_decay();
        for (shadow, theta) in self.shadow.iter_mut().zip(&values) {
            shadow.lerp_assign(theta, 1.0 - d)?;
        }
        self.num_updates += 1;
        Ok(())
    }

    /// Puts back a saved average and its update count (so the warm-up resumes
    /// where it was), on the device of the average it replaces. Refuses
    /// tensors of another number or shape.
    pub fn restore(&mut self, shadow: Vec<Tensor>, num_updates: u64) -> Result<()> {
        check_same_shapes("Ema::restore", "shadow", &self.shadow, &shadow)?;
        self.shadow = to_devices_of(&self.shadow, shadow)?;
        self.num_updates = num_updates;
        Ok(())
    }

    /// Moves the average to `device` (with the parameters).
    pub fn to_device(&mut self, device: ddpm_tensor::Device) -> Result<()> {
        for t in &mut self.shadow {
            *t = t.to(device)?;
        }
        Ok(())
    }

    /// Loads the averaged weights into `params` (a model to sample with). The
    /// tensors are shared, not copied: the model's next optimiser step writes
    /// to a copy of its own.
    pub fn copy_to(&self, params: &[Var]) -> Result<()> {
        let values: Vec<Tensor> = params.iter().map(|p| p.value()).collect();
        check_same_shapes("Ema::copy_to", "parameter", &self.shadow, &values)?;
        for (p, s) in params.iter().zip(&self.shadow) {
            p.set_value(s.clone());
        }
        Ok(())
    }
}

/// `given`, each moved to the device of its counterpart in `like`.
fn to_devices_of(like: &[Tensor], given: Vec<Tensor>) -> Result<Vec<Tensor>> {
    like.iter().zip(given).map(|(l, g)| g.to(l.device())).collect()
}

/// Errors unless `given` has as many tensors as `expected`, each of the same
/// shape; `what` names the given tensors in the message.
fn check_same_shapes(op: &'static str, what: &str, expected: &[Tensor], given: &[Tensor]) -> Result<()> {
    if expected.len() != given.len() {
        let msg = format!("{} {what} tensors given, the state holds {}", given.len(), expected.len());
        return Err(TensorError::invalid(op, msg));
    }
    for (i, (e, g)) in expected.iter().zip(given).enumerate() {
        if e.shape() != g.shape() {
            let msg = format!("{what} {i} has shape {}, the state holds {}", g.shape(), e.shape());
            return Err(TensorError::invalid(op, msg));
        }
    }
    Ok(())
}
