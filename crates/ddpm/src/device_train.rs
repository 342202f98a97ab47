//! A training step with everything on a device: the noising, the recorded
//! forward pass, the loss, the backward pass, the gradient clipping, Adam
//! and the EMA. Only the step's inputs go up (the batch, its t, e and
//! labels, drawn by [`Trainer::step_inputs`] exactly as the CPU draws them),
//! and only the loss and the gradient norm come back. Dropout masks come from
//! Philox streams whose seeds the step's generator draws, one per ResBlock,
//! as the CPU's dropout draws them: both devices drop the same elements.
//!
//! The CPU [`Trainer`] keeps the run (configuration, data order, counters,
//! saving and resuming); [`DeviceTrainer`] takes over its state, and gives
//! it back with [`DeviceTrainer::state`] before a save.

use ddpm_autograd::{Result, Tensor, TensorError, Var};
use ddpm_cuda::{AdamStep, DeviceOps};
use ddpm_nn::optim::{ema_decay, AdamConfig};
use ddpm_nn::{Module, UNet};

use crate::device::{device_error, DeviceUNet};
use crate::rng::{stream, Stream};
use crate::train::{StepInputs, StepStats, TrainState, Trainer};

/// The run's parameters, moments and average on the device.
pub struct DeviceTrainer<E: DeviceOps> {
    net: DeviceUNet<'static, E>,
    vars: Vec<Var>,
    m: Vec<E::Buf>,
    v: Vec<E::Buf>,
    ema: Vec<E::Buf>,
    adam: AdamConfig,
    adam_steps: u64,
    ema_decay: f32,
    ema_updates: u64,
    clip: f32,
}

impl<E: DeviceOps> DeviceTrainer<E> {
    /// Uploads `trainer`'s state.
    pub fn new(e: &E, trainer: &Trainer) -> Result<Self> {
        let config = trainer.config();
        let state = trainer.state();
        let model = UNet::new(config.preset, config.classes, &mut stream(0, Stream::Init, 0));
        let vars: Vec<Var> = model.named_params().into_iter().map(|(_, v)| v).collect();
        let net = DeviceUNet::upload_values(e, model, &state.weights)?;
        let up = |ts: &[Tensor]| -> Result<Vec<E::Buf>> {
            ts.iter().map(|t| e.upload(t.as_slice()).map_err(device_error)).collect()
        };
        Ok(DeviceTrainer {
            net,
            vars,
            m: up(&state.m)?,
            v: up(&state.v)?,
            ema: up(&state.ema)?,
            adam: AdamConfig { lr: config.lr, ..AdamConfig::default() },
            adam_steps: state.adam_steps,
            ema_decay: config.ema_decay,
            ema_updates: state.ema_updates,
            clip: config.clip,
        })
    }

    /// One step on `inputs` at learning rate `lr`: returns (loss, gradient
    /// norm before clipping).
    pub fn step(&mut self, e: &E, trainer: &Trainer, inputs: &StepInputs, lr: f32) -> Result<(f32, f32)> {
        self.step_inner(e, trainer, inputs, lr).map_err(device_error)
    }

    fn step_inner(&mut self, e: &E, trainer: &Trainer, inputs: &StepInputs, lr: f32) -> ddpm_cuda::Result<(f32, f32)> {
        let n = inputs.x0.dims()[0];
        let schedule = trainer.schedule();
        // x_t = abar_t x0 + bbar_t e, each image at its own t.
        let abar: Vec<f32> = inputs.t.iter().map(|&t| schedule.abar(t) as f32).collect();
        let bbar: Vec<f32> = inputs.t.iter().map(|&t| schedule.bbar(t) as f32).collect();
        let eps = e.upload(inputs.eps.as_slice())?;
        let x_t = e.q_sample(&e.upload(inputs.x0.as_slice())?, &eps, &e.upload(&abar)?, &e.upload(&bbar)?, 28 * 28)?;

        let invalid =
            |err: TensorError| ddpm_cuda::CudaError::Invalid { op: "device training", message: err.to_string() };
        let (out, tape) = self
            .net
            .forward_recorded(e, x_t, n, &inputs.t, inputs.labels.as_deref(), &inputs.dropout_seeds)
            .map_err(invalid)?;
        let numel = inputs.eps.numel();
        let (d_out, squares) = e.mse_grad(&out, &eps, 2.0 / numel as f32)?;
        let mut grads = self.net.backward(e, tape, d_out).map_err(invalid)?;
        let grads: Vec<E::Buf> = self
            .vars
            .iter()
            .map(|v| grads.remove(&v.id()).expect("every parameter of the U-Net gets a gradient"))
            .collect();

        // Clipping, Adam (its scalars computed as on the CPU), then the EMA.
        let clip = e.clip_coefficient(&grads.iter().collect::<Vec<_>>(), self.clip)?;
        self.adam_steps += 1;
        let s = adam_step(&AdamConfig { lr, ..self.adam }, self.adam_steps);
        let decay = ema_decay(self.ema_decay, self.ema_updates);
        for (i, var) in self.vars.iter().enumerate() {
            let p = self.net.param_mut(var);
            e.adam(p, &grads[i], &mut self.m[i], &mut self.v[i], &clip, &s)?;
            e.ema(&mut self.ema[i], self.net.param(var), 1.0 - decay)?;
        }
        self.ema_updates += 1;

        // The one transfer back: the loss and the norm, in one buffer.
        let loss_sum = e.sum_inner(&squares, 1, numel)?;
        let back = e.download(&e.concat2(&loss_sum, &clip, 1, 1, 2)?)?;
        Ok((back[0] / numel as f32, back[1]))
    }

    /// The state, downloaded, for [`Trainer::set_state`] (`step`: the run's
    /// step count to record).
    pub fn state(&self, e: &E, step: u64) -> Result<TrainState> {
        let down = |bufs: &[&E::Buf]| -> Result<Vec<Tensor>> {
            bufs.iter()
                .zip(&self.vars)
                .map(|(b, v)| Tensor::from_vec(e.download(b).map_err(device_error)?, v.shape()))
                .collect()
        };
        let weights: Vec<&E::Buf> = self.vars.iter().map(|v| self.net.param(v)).collect();
        Ok(TrainState {
            weights: down(&weights)?,
            ema: down(&self.ema.iter().collect::<Vec<_>>())?,
            m: down(&self.m.iter().collect::<Vec<_>>())?,
            v: down(&self.v.iter().collect::<Vec<_>>())?,
            step,
            adam_steps: self.adam_steps,
            ema_updates: self.ema_updates,
        })
    }
}

/// The scalars of Adam's step `t` (1-based) for the device, the same numbers
/// `ddpm_nn::optim::Adam::step` uses on the CPU.
pub fn adam_step(config: &AdamConfig, t: u64) -> AdamStep {
    let s = config.step_scalars(t);
    AdamStep {
        step_size: s.step_size,
        beta1: s.beta1,
        beta2: s.beta2,
        bias_correction2_sqrt: s.bias_correction2_sqrt,
        eps: s.eps,
    }
}

impl Trainer {
    /// [`Trainer::train_step`] with the work on `device`: the same inputs,
    /// the same counters and statistics. The trainer's own weights are stale
    /// until [`Trainer::set_state`] takes the device's back.
    pub fn train_step_on<E: DeviceOps>(
        &mut self,
        e: &E,
        device: &mut DeviceTrainer<E>,
        data: &crate::data::Split,
    ) -> std::result::Result<StepStats, crate::train::TrainError> {
        let k = self.step_count();
        let inputs = self.step_inputs(data)?;
        let lr = self.lr_at(k);
        let (loss, grad_norm) = device.step(e, self, &inputs, lr)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(crate::train::TrainError::Diverged {
                step: k + 1,
                loss: if loss.is_finite() { grad_norm } else { loss },
            });
        }
        self.advance();
        Ok(StepStats { step: k + 1, epoch: self.epoch_of(k), loss, grad_norm, lr })
    }
}
