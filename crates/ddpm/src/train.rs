//! The training loop's state and one step of it, resumable to the bit.
//!
//! One step (lecture section 4, with what a working run adds around it):
//! 1. take the step's mini-batch x_0 and, for a conditional model, its labels,
//!    10% of them replaced by the "no label" class so the same network also
//!    learns the unconditional noise (needed by classifier-free guidance);
//! 2. L = mean || e - f(abar_t x_0 + bbar_t e, t, y) ||^2 with random t and e;
//! 3. backpropagate, clip the gradient norm, take an Adam step with the
//!    learning rate ramped up linearly over the first `warmup` steps;
//! 4. average the new weights into the EMA, the model that samples.
//!
//! Every random number of step k comes from generators seeded by (seed, k)
//! (see [`crate::rng`]), so a run saved after step k and resumed computes the
//! same step k + 1 as a run that never stopped: [`Trainer::save_state`] needs
//! only the weights, the EMA, Adam's moments and the counters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ddpm_autograd::{Tensor, TensorError, Var};
use ddpm_nn::checkpoint::{self, CheckpointError, Metadata};
use ddpm_nn::optim::{clip_grad_norm, Adam, AdamConfig, Ema};
use ddpm_nn::{Module, Preset, UNet};
use ddpm_tensor::Device;
use rand::rngs::StdRng;
use rand::Rng;

use crate::data::{Batches, Split};
use crate::rng::{stream, Stream};
use crate::{train_loss, Schedule, ScheduleKind, TIMESTEPS};

/// Why training could not go on. Messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("training state {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
    /// The loss or the gradient norm was not finite. The step had already
    /// updated the weights (a device reports the two numbers only at the end
    /// of the step), so the trainer is not usable after this: the last save is.
    #[error("the loss became {loss} at step {step}: training diverged; try a lower --lr or a longer warm-up")]
    Diverged { step: u64, loss: f32 },
}

/// Everything that decides what a run computes. A resumed run must use the
/// same values ([`TrainConfig::differences`] names the ones that differ).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub preset: Preset,
    /// 0 (unconditional) or the number of digit classes.
    pub classes: usize,
    pub schedule: ScheduleKind,
    /// T, the number of diffusion steps.
    pub timesteps: usize,
    pub batch: usize,
    /// Adam's learning rate after the warm-up.
    pub lr: f32,
    /// Steps over which the learning rate grows linearly from lr / warmup to lr.
    pub warmup: u64,
    /// The EMA's final decay (reached gradually, see [`Ema`]).
    pub ema_decay: f32,
    /// The largest gradient norm; larger gradients are scaled down to it.
    pub clip: f32,
    /// The fraction of labels replaced by "no label" (conditional models only).
    pub label_dropout: f64,
    pub seed: u64,
}

impl TrainConfig {
    /// The defaults of `cargo xtask train` for a preset.
    pub fn new(preset: Preset, classes: usize) -> TrainConfig {
        TrainConfig {
            preset,
            classes,
            schedule: ScheduleKind::Linear,
            timesteps: 1000,
            batch: 64,
            lr: 1e-3,
            warmup: 200,
            ema_decay: 0.999,
            clip: 1.0,
            label_dropout: 0.1,
            seed: 0,
        }
    }

    /// The configuration as string pairs, for the state file's metadata.
    fn to_map(&self) -> Vec<(&'static str, String)> {
        vec![
            ("preset", self.preset.to_string()),
            ("classes", self.classes.to_string()),
            ("schedule", self.schedule.to_string()),
            ("timesteps", self.timesteps.to_string()),
            ("batch", self.batch.to_string()),
            ("lr", self.lr.to_string()),
            ("warmup", self.warmup.to_string()),
            ("ema_decay", self.ema_decay.to_string()),
            ("clip", self.clip.to_string()),
            ("label_dropout", self.label_dropout.to_string()),
            ("seed", self.seed.to_string()),
        ]
    }

    /// The configuration a state's metadata holds; every entry must be there
    /// and parse (the numbers as the types of the fields: `warmup` and `seed`
    /// as u64). Not validated: [`TrainConfig::validate`] does that.
    fn from_map(map: &HashMap<String, String>) -> Result<TrainConfig, String> {
        fn get<T: std::str::FromStr>(map: &HashMap<String, String>, key: &str) -> Result<T, String> {
            let value = map.get(key).ok_or_else(|| format!("metadata \"{key}\" is missing"))?;
            value.parse().map_err(|_| format!("metadata \"{key}\" is {value:?}, which does not parse"))
        }
        Ok(TrainConfig {
            preset: get(map, "preset")?,
            classes: get(map, "classes")?,
            schedule: get(map, "schedule")?,
            timesteps: get(map, "timesteps")?,
            batch: get(map, "batch")?,
            lr: get(map, "lr")?,
            warmup: get(map, "warmup")?,
            ema_decay: get(map, "ema_decay")?,
            clip: get(map, "clip")?,
            label_dropout: get(map, "label_dropout")?,
            seed: get(map, "seed")?,
        })
    }

    /// "name: saved X, given Y" for every setting that differs from `other`.
    pub fn differences(&self, other: &TrainConfig) -> Vec<String> {
        self.to_map()
            .into_iter()
            .zip(other.to_map())
            .filter(|((_, a), (_, b))| a != b)
            .map(|((key, a), (_, b))| format!("{key}: {a} in the saved run, {b} now"))
            .collect()
    }

    /// Refuses settings no run can use.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |msg: String| Err(TrainError::Config(msg));
        if self.classes != 0 && self.classes != 10 {
            return bad(format!("--classes must be 0 or 10, not {}", self.classes));
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number, not {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("--ema must be in [0, 1), not {}", self.ema_decay));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad(format!("the gradient clip must be positive, not {}", self.clip));
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return bad(format!("the label dropout must be in [0, 1), not {}", self.label_dropout));
        }
        if !TIMESTEPS.contains(&self.timesteps) {
            return bad(format!(
                "T must be in {}..={}, not {}: one step leaves no chain to learn, and above {} a DDPM sample takes hours",
                TIMESTEPS.start(),
                TIMESTEPS.end(),
                self.timesteps,
                TIMESTEPS.end()
            ));
        }
        Ok(())
    }
}

/// What one step did, for the progress bar and the log.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// The number of steps taken, this one included.
    pub step: u64,
    /// The epoch this step's batch came from (0 for the first pass).
    pub epoch: u64,
    pub loss: f32,
    /// The gradient norm before clipping.
    pub grad_norm: f32,
    pub lr: f32,
}

/// A model being trained, with its optimiser, EMA and position in the data,
/// on one device. [`Trainer::fit`] runs the loop with a stopping rule.
///
/// ```
/// use ddpm::data::{Images, Split};
/// use ddpm::{TrainConfig, Trainer};
/// use ddpm_nn::Preset;
/// use ddpm_tensor::Device;
///
/// // Four blank images of digit 0 (a real run loads MNIST with `Split::load`).
/// let data = Split { images: Images { count: 4, rows: 28, cols: 28, pixels: vec![0; 4 * 784] }, labels: vec![0; 4] };
/// let mut trainer = Trainer::new(TrainConfig { batch: 2, ..TrainConfig::new(Preset::Tiny, 10) }, data.len())?;
/// trainer.to_device(Device::Cpu)?; // or `ddpm::device::auto().0`: the GPU where there is one
/// let stats = trainer.train_step(&data)?;
/// assert_eq!((stats.step, trainer.step_count()), (1, 1));
/// assert!(stats.loss.is_finite());
/// # Ok::<(), ddpm::train::TrainError>(())
/// ```
pub struct Trainer {
    config: TrainConfig,
    model: UNet,
    named: Vec<(String, Var)>,
    params: Vec<Var>,
    schedule: Schedule,
    adam: Adam,
    ema: Ema,
    batches: Batches,
    data_len: usize,
    step: u64,
}

const STATE_FORMAT: &str = "ddpm-rs training state 1";

/// The metadata entry of a model file written by [`Trainer::save_model`]
/// that names the training step of its weights.
pub const MODEL_STEP: &str = "step";

impl Trainer {
    /// A fresh run over a data set of `data_len` images: weights initialised
    /// from the seed, Adam's moments at zero, the EMA at the initial weights.
    pub fn new(config: TrainConfig, data_len: usize) -> Result<Trainer, TrainError> {
        config.validate()?;
        let batches = Batches::new(data_len, config.batch, config.seed).map_err(TrainError::Config)?;
        let model = UNet::new(config.preset, config.classes, &mut stream(config.seed, Stream::Init, 0));
        let named = model.named_params();
        let params: Vec<Var> = named.iter().map(|(_, p)| p.clone()).collect();
        let adam = Adam::new(&params, AdamConfig { lr: config.lr, ..AdamConfig::default() })?;
        let ema = Ema::new(&params, config.ema_decay);
        let schedule = Schedule::new(config.schedule, config.timesteps);
        Ok(Trainer { config, model, named, params, schedule, adam, ema, batches, data_len, step: 0 })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn batches_per_epoch(&self) -> u64 {
        self.batches.per_epoch()
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The raw (not averaged) weights, by name.
    pub fn named_params(&self) -> &[(String, Var)] {
        &self.named
    }

    /// The optimiser, with its moments and step count.
    pub fn adam(&self) -> &Adam {
        &self.adam
    }

    /// The moving average of the weights (what `model.safetensors` holds).
    pub fn ema(&self) -> &Ema {
        &self.ema
    }

    /// The learning rate of step `step` (0-based): a linear warm-up to `lr`.
    pub fn lr_at(&self, step: u64) -> f32 {
        let warm = if self.config.warmup == 0 { 1.0 } else { ((step + 1) as f64 / self.config.warmup as f64).min(1.0) };
        (self.config.lr as f64 * warm) as f32
    }

    /// The next step's batch and its labels after label dropout, drawn from
    /// the step's own stream (which `rng` continues, for t, e and dropout).
    fn batch_and_labels(&mut self, data: &Split) -> Result<(Tensor, Option<Vec<usize>>, StdRng), TrainError> {
        if data.len() != self.data_len {
            let msg = format!("the run was set up for {} images, the data has {}", self.data_len, data.len());
            return Err(TrainError::Config(msg));
        }
        let k = self.step;
        let (x0, labels) = data.batch(self.batches.indices(k));
        let mut rng = stream(self.config.seed, Stream::Step, k);
        let labels: Option<Vec<usize>> = (self.config.classes > 0).then(|| {
            let null = self.config.classes;
            labels.into_iter().map(|y| if rng.gen::<f64>() < self.config.label_dropout { null } else { y }).collect()
        });
        Ok((x0, labels, rng))
    }

    /// One training step on `data`, which must be the data set of
    /// [`Trainer::new`] (its length is checked), on the trainer's device.
    /// The batch and the step's noise are drawn on the host and sent there;
    /// the loss and the gradient norm are the only numbers read back, once,
    /// at the end of the step.
    pub fn train_step(&mut self, data: &Split) -> Result<StepStats, TrainError> {
        let k = self.step;
        let (x0, labels, mut rng) = self.batch_and_labels(data)?;
        let loss = train_loss(&self.model, &self.schedule, &x0, labels.as_deref(), &mut rng)?;
        let mut grads = loss.backward()?;
        let grad_norm = clip_grad_norm(&self.params, &mut grads, self.config.clip)?;
        let lr = self.lr_at(k);
        self.adam.set_lr(lr);
        self.adam.step(&self.params, &grads)?;
        self.ema.update(&self.params)?;
        let read = Tensor::concat(&[&loss.value().reshape([1])?, &grad_norm.reshape([1])?], 0)?.to(Device::Cpu)?;
        let [loss, grad_norm] = [read.as_slice()[0], read.as_slice()[1]];
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::Diverged { step: k + 1, loss: if loss.is_finite() { grad_norm } else { loss } });
        }
        self.step += 1;
        Ok(StepStats { step: self.step, epoch: self.batches.epoch_of(k), loss, grad_norm, lr })
    }

    /// Where the run's weights, moments and average live.
    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// Moves the run to `device`: the weights, Adam's moments and the EMA
    /// (a fresh or resumed trainer starts on the host).
    pub fn to_device(&mut self, device: Device) -> Result<(), TrainError> {
        self.model.to_device(device)?;
        self.adam.to_device(device)?;
        self.ema.to_device(device)?;
        Ok(())
    }

    /// The interchange metadata of this run's model files.
    pub fn metadata(&self) -> Metadata {
        Metadata {
            preset: self.config.preset.to_string(),
            num_classes: self.config.classes,
            schedule: self.config.schedule.to_string(),
            timesteps: self.config.timesteps,
        }
    }

    /// A copy of the model holding the EMA weights: the one to sample with.
    pub fn ema_model(&self) -> Result<UNet, TrainError> {
        let model = UNet::new(self.config.preset, self.config.classes, &mut stream(0, Stream::Init, 0));
        let params: Vec<Var> = model.named_params().into_iter().map(|(_, p)| p).collect();
        self.ema.copy_to(&params)?;
        Ok(model)
    }

    /// Writes the EMA weights in the interchange format (atomically), with
    /// the step they are of as one more metadata entry ([`MODEL_STEP`];
    /// readers of the format ignore entries they do not know).
    pub fn save_model(&self, path: &Path) -> Result<(), TrainError> {
        let names = self.named.iter().map(|(name, _)| name.clone());
        let tensors: Vec<(String, Tensor)> = names.zip(self.ema.shadow().iter().cloned()).collect();
        let mut metadata = self.metadata().to_map();
        metadata.insert(MODEL_STEP.into(), self.step.to_string());
        checkpoint::save_tensors(path, &tensors, &metadata)?;
        Ok(())
    }

    /// Writes everything a resumed run needs (atomically): raw weights, EMA,
    /// Adam's moments, the counters and the configuration.
    pub fn save_state(&self, path: &Path) -> Result<(), TrainError> {
        let (m, v) = self.adam.moments();
        let mut tensors = vec![];
        for (part, values) in
            [("model", None), ("ema", Some(self.ema.shadow())), ("adam.m", Some(m)), ("adam.v", Some(v))]
        {
            for (i, (name, p)) in self.named.iter().enumerate() {
                let value = values.map_or_else(|| p.value(), |vs| vs[i].clone());
                tensors.push((format!("{part}/{name}"), value));
            }
        }
        let mut meta: HashMap<String, String> =
            self.config.to_map().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        meta.insert("format".into(), STATE_FORMAT.into());
        meta.insert("step".into(), self.step.to_string());
        meta.insert("adam_steps".into(), self.adam.step_count().to_string());
        meta.insert("ema_updates".into(), self.ema.num_updates().to_string());
        meta.insert("data_len".into(), self.data_len.to_string());
        checkpoint::save_tensors(path, &tensors, &meta)?;
        Ok(())
    }

    /// The settings of the run saved at `path` (the counters are checked
    /// too: a state that [`Trainer::resume`] would refuse is refused here).
    pub fn saved_config(path: &Path) -> Result<TrainConfig, TrainError> {
        let (_, meta) = checkpoint::load_tensors(path)?;
        let config = config_of_state(path, &meta)?;
        counters_of_state(path, &meta)?;
        Ok(config)
    }

    /// Continues the run saved at `path`. `config` must equal the saved one
    /// and `data_len` the saved data set's size: anything else would not be
    /// the same run, and is refused with the settings that differ.
    pub fn resume(path: &Path, config: &TrainConfig, data_len: usize) -> Result<Trainer, TrainError> {
        let state_error = |reason: String| TrainError::State { path: path.to_path_buf(), reason };
        let (mut tensors, meta) = checkpoint::load_tensors(path)?;
        let saved = config_of_state(path, &meta)?;
        let counters = counters_of_state(path, &meta)?;
        let differences = saved.differences(config);
        if !differences.is_empty() {
            return Err(state_error(format!(
                "written by a run with other settings ({}); resume with the same flags or train into a new --out",
                differences.join("; ")
            )));
        }
        let saved_len = counters.data_len;
        if saved_len != data_len {
            return Err(state_error(format!(
                "the run was trained on {saved_len} images, this data set has {data_len}; resume with the same data"
            )));
        }
        let mut trainer = Trainer::new(config.clone(), data_len)?;
        let mut take = |part: &str| -> Result<Vec<Tensor>, TrainError> {
            trainer
                .named
                .iter()
                .map(|(name, p)| {
                    let key = format!("{part}/{name}");
                    match tensors.remove(&key) {
                        Some(t) if t.shape() == &p.shape() => Ok(t),
                        Some(t) => {
                            Err(state_error(format!("\"{key}\" has shape {}, expected {}", t.shape(), p.shape())))
                        }
                        None => Err(state_error(format!("tensor \"{key}\" is missing"))),
                    }
                })
                .collect()
        };
        let (weights, shadow, m, v) = (take("model")?, take("ema")?, take("adam.m")?, take("adam.v")?);
        if let Some(name) = tensors.keys().next() {
            return Err(state_error(format!("tensor \"{name}\" does not belong to this model")));
        }
        for ((_, p), w) in trainer.named.iter().zip(weights) {
            p.set_value(w);
        }
        // Adam and the EMA each count one update per step (see `train_step`).
        trainer.ema.restore(shadow, counters.step)?;
        trainer.adam.restore(counters.step, m, v)?;
        trainer.step = counters.step;
        Ok(trainer)
    }

    /// The number of parameters of the model.
    pub fn num_params(&self) -> usize {
        self.model.num_params()
    }

    /// The epoch step `k` (0-based) belongs to.
    pub fn epoch_of(&self, k: u64) -> u64 {
        self.batches.epoch_of(k)
    }
}

/// The configuration in a training state's metadata, parsed and validated:
/// a state holding a setting no run can use (lr = NaN, batch 0, T = 10^7)
/// was not written by a run, and is refused before a model is built for it.
fn config_of_state(path: &Path, meta: &HashMap<String, String>) -> Result<TrainConfig, TrainError> {
    let state_error = |reason: String| TrainError::State { path: path.to_path_buf(), reason };
    if meta.get("format").map(String::as_str) != Some(STATE_FORMAT) {
        return Err(state_error(format!("not a training state (no \"format\": \"{STATE_FORMAT}\" entry)")));
    }
    let config = TrainConfig::from_map(meta).map_err(state_error)?;
    config.validate().map_err(|e| state_error(format!("the saved settings are not usable: {e}")))?;
    Ok(config)
}

/// The most steps a state may have taken: 2^53, the largest count an f64 (in
/// which the warm-up divides) holds exactly, and 285 years of steps at a
/// million a second; any more and the step arithmetic could overflow.
const MAX_STEPS: u64 = 1 << 53;

/// A training state's counters, checked against each other.
struct Counters {
    step: u64,
    data_len: usize,
}

/// The counters in a training state's metadata. A run's steps each make one
/// Adam step and one EMA update ([`Trainer::train_step`]; a step that
/// diverges makes them too, but then the trainer is never saved), so a state
/// written by a run has `adam_steps` == `ema_updates` == `step`; anything else
/// was written by something else, and resuming it would bias-correct the
/// moments or warm up the average for a step the run is not at.
fn counters_of_state(path: &Path, meta: &HashMap<String, String>) -> Result<Counters, TrainError> {
    let state_error = |reason: String| TrainError::State { path: path.to_path_buf(), reason };
    let counter = |key: &str| -> Result<u64, TrainError> {
        let value = meta.get(key).ok_or_else(|| state_error(format!("metadata \"{key}\" is missing")))?;
        value.parse().map_err(|_| state_error(format!("metadata \"{key}\" is {value:?}, not a step count")))
    };
    let step = counter("step")?;
    if step > MAX_STEPS {
        return Err(state_error(format!(
            "metadata \"step\" is {step}, more than the {MAX_STEPS} steps a run can take; \
             the file was not written by a run of this program"
        )));
    }
    for key in ["adam_steps", "ema_updates"] {
        let count = counter(key)?;
        if count != step {
            return Err(state_error(format!(
                "metadata \"{key}\" is {count} but \"step\" is {step}; the file was not written by a run of this program"
            )));
        }
    }
    let data_len = match counter("data_len")? {
        0 => return Err(state_error("metadata \"data_len\" is 0: a run trains on at least one image".into())),
        n => usize::try_from(n)
            .map_err(|_| state_error(format!("metadata \"data_len\" is {n}, more images than memory holds")))?,
    };
    Ok(Counters { step, data_len })
}
