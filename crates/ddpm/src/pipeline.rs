//! Digits from a trained model in a few lines: load a checkpoint onto a
//! device, ask for images, get them back. This is the seed-to-images
//! contract of `cargo xtask sample` and `cargo xtask eval`, which call it:
//! for the same checkpoint and settings, the library and the command line
//! give the same images, on any device.
//!
//! ```
//! use ddpm::pipeline::{Pipeline, Sampling};
//! use ddpm::sampler::Method;
//! use ddpm_tensor::Device;
//!
//! # let checkpoint = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/rust_trained_tiny_c10.safetensors");
//! let pipeline = Pipeline::from_checkpoint(checkpoint.as_ref(), Device::Cpu)?;
//! // One of each digit, DDIM with 4 steps (50 is the default), seed 7.
//! let request = Sampling {
//!     method: Method::Ddim { steps: 4, eta: 0.0 },
//!     labels: Some((0..10).collect()),
//!     seed: 7,
//!     ..pipeline.sampling(10)
//! };
//! let samples = pipeline.sample(&request)?;
//! assert_eq!(samples.images.dims(), &[10, 1, 28, 28]);
//! assert!(samples.images.as_slice().iter().all(|v| (-1.0..=1.0).contains(v)));
//! # Ok::<(), ddpm::pipeline::PipelineError>(())
//! ```
//!
//! Where the randomness comes from, so that a seed means the same images
//! everywhere: x_T is N(0, 1) from the seed's sampling stream
//! ([`Pipeline::initial_noise`]); the images are drawn in chunks of
//! [`CHUNK`], and chunk c's fresh noise (DDPM's, and DDIM's at eta > 0) is
//! the Philox stream of [`chunk_noise`]`(seed, c)`, the same numbers on the
//! CPU and on a GPU.

use std::path::{Path, PathBuf};

use ddpm_autograd::{Tensor, TensorError};
use ddpm_nn::checkpoint::{self, CheckpointError};
use ddpm_nn::{Module, Preset, UNet};
use ddpm_tensor::Device;
use rand::Rng;

use crate::rng::{stream, Stream};
use crate::sampler::{self, check_method, Conditioning, Method, SampleError};
use crate::{Schedule, ScheduleKind, TIMESTEPS};

/// Guidance when none is asked for: mild, for conditional models. It makes
/// the asked-for digit clearer without the saturated strokes of large w.
pub const DEFAULT_GUIDANCE: f32 = 1.0;

/// Images sampled per network call: enough to keep two CPU cores busy, few
/// enough to stay in cache.
pub const CHUNK: usize = 100;

/// The most images one call samples: 100,000 images are 314 MB of results
/// (and as much again for x_T), and take hours on a CPU; more images come
/// from more calls with other seeds.
pub const MAX_IMAGES: usize = 100_000;

/// The most images whose denoising chains are kept (`keep_frames`): about 21
/// copies of every image, 66 KB each.
pub const MAX_IMAGES_WITH_FRAMES: usize = 1_000;

/// The guidance weights w accepted: w = -1 gives the model's unconditional
/// noise estimate, 0 its conditional one, and past about 5 the strokes
/// saturate; 20 is far beyond any useful weight, and larger ones only
/// amplify the network's errors.
pub const GUIDANCE: std::ops::RangeInclusive<f32> = -1.0..=20.0;

/// Why a pipeline could not be made, or could not sample. One line each,
/// naming the file and the field, or the setting.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("checkpoint {}: metadata \"{field}\": {reason}", path.display())]
    Metadata { path: PathBuf, field: &'static str, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Sample(#[from] SampleError),
}

/// What to sample: the reverse process, how many images, what they are
/// asked to be, and from which randomness.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// DDPM, DDIM (steps, eta), or the lecture's literal formula.
    pub method: Method,
    /// Classifier-free guidance w: eps = (1 + w) eps(x, y) - w eps(x, null).
    /// Only for a conditional model, and only with labels; 0 for none.
    pub guidance: f32,
    /// How many images.
    pub n: usize,
    /// One digit per image (a conditional model), or `None`: no label (the
    /// "null" class of a conditional model, or an unconditional model).
    pub labels: Option<Vec<usize>>,
    /// x_T and the fresh noise come from it.
    pub seed: u64,
    /// x_T itself, [n, 1, 28, 28], instead of noise drawn from the seed.
    pub init_noise: Option<Tensor>,
    /// Also return about 20 frames of the denoising chain.
    pub keep_frames: bool,
}

impl Sampling {
    /// "DDIM, 50 steps, eta 0, guidance 1", say.
    pub fn describe(&self) -> String {
        let method = match self.method {
            Method::Ddpm => "DDPM, all T steps".to_string(),
            Method::Ddim { steps, eta } => format!("DDIM, {steps} steps, eta {eta}"),
            Method::Lecture => "the lecture's formula, all T steps".to_string(),
            Method::LectureJump => "the lecture's second loop, t from 1 up to T".to_string(),
        };
        if self.guidance != 0.0 {
            format!("{method}, guidance {}", self.guidance)
        } else {
            method
        }
    }

    /// Network evaluations per image: the steps, twice that with guidance.
    pub fn evaluations_per_image(&self, schedule: &Schedule) -> usize {
        self.method.num_steps(schedule) * if self.guided() { 2 } else { 1 }
    }

    fn guided(&self) -> bool {
        self.labels.is_some() && self.guidance != 0.0
    }
}

/// What [`Pipeline::sample`] returns, on the host.
#[derive(Debug, Clone)]
pub struct Samples {
    /// [n, 1, 28, 28], clamped to [-1, 1] (pixels: (v + 1) 127.5).
    pub images: Tensor,
    /// With `keep_frames`: x_T, then x after about 20 evenly spaced steps, as
    /// they are (not clamped); the last frame is the result before its clamp.
    pub frames: Vec<Tensor>,
}

/// A trained U-Net, its noise schedule and its device: what sampling needs.
pub struct Pipeline {
    model: UNet,
    schedule: Schedule,
}

impl Pipeline {
    /// The model of a checkpoint in the interchange format (a training
    /// run's `model.safetensors`, or one the PyTorch reference wrote), on
    /// `device`: the preset, the classes and the schedule come from the
    /// file's metadata.
    pub fn from_checkpoint(path: &Path, device: Device) -> Result<Pipeline, PipelineError> {
        let meta = checkpoint::read_metadata(path)?;
        let field = |field: &'static str, reason: String| PipelineError::Metadata { path: path.into(), field, reason };
        let preset: Preset = meta.preset.parse().map_err(|e| field("preset", e))?;
        if meta.num_classes != 0 && meta.num_classes != 10 {
            let reason = format!("{}: this project's models have 0 or 10 classes", meta.num_classes);
            return Err(field("num_classes", reason));
        }
        let kind: ScheduleKind = meta.schedule.parse().map_err(|e| field("schedule", e))?;
        if !TIMESTEPS.contains(&meta.timesteps) {
            let reason = format!("{}: T must be {} ..= {}", meta.timesteps, TIMESTEPS.start(), TIMESTEPS.end());
            return Err(field("timesteps", reason));
        }
        // The weights are overwritten by the file's: the initial ones do not matter.
        let model = UNet::new(preset, meta.num_classes, &mut stream(0, Stream::Init, 0));
        checkpoint::load_into(path, &model.named_params())?;
        model.to_device(device)?;
        Ok(Pipeline { model, schedule: Schedule::new(kind, meta.timesteps) })
    }

    /// A pipeline for a model in memory (a trainer's EMA model), on its device.
    pub fn new(model: UNet, schedule: Schedule) -> Pipeline {
        Pipeline { model, schedule }
    }

    pub fn model(&self) -> &UNet {
        &self.model
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// The defaults for `n` images: DDIM with 50 steps at eta 0, seed 0; a
    /// conditional model is asked for digit i % 10 for image i (so column d
    /// of a 10-wide grid holds digit d) with [`DEFAULT_GUIDANCE`].
    pub fn sampling(&self, n: usize) -> Sampling {
        let conditional = self.model.num_classes > 0;
        Sampling {
            method: Method::Ddim { steps: 50, eta: 0.0 },
            guidance: if conditional { DEFAULT_GUIDANCE } else { 0.0 },
            n,
            labels: self.grid_labels(n),
            seed: 0,
            init_noise: None,
            keep_frames: false,
        }
    }

    /// Digit i % 10 for image i, for a conditional model; `None` otherwise.
    pub fn grid_labels(&self, n: usize) -> Option<Vec<usize>> {
        let classes = self.model.num_classes;
        (classes > 0).then(|| (0..n).map(|i| i % classes).collect())
    }

    /// x_T for `n` images from `seed`: N(0, 1), [n, 1, 28, 28], on the host.
    pub fn initial_noise(n: usize, seed: u64) -> Tensor {
        Tensor::randn([n, 1, 28, 28], &mut stream(seed, Stream::Sample, 0))
    }

    /// Refuses settings that cannot sample from this model, naming the
    /// setting: no images or more than [`MAX_IMAGES`] ([`MAX_IMAGES_WITH_FRAMES`]
    /// with the chains kept), DDIM steps outside 1 ..= T or an eta outside
    /// [0, 1], guidance outside [`GUIDANCE`] or without a conditional model
    /// and labels, labels that are not digits of the model or not one per
    /// image, an x_T of another shape or with a NaN or an infinity.
    pub fn check(&self, s: &Sampling) -> Result<(), PipelineError> {
        let bad = |msg: String| Err(PipelineError::Invalid(msg));
        if s.n == 0 {
            return bad("no images asked for (n is 0)".into());
        }
        if s.n > MAX_IMAGES {
            return bad(format!(
                "{} images asked for, at most {MAX_IMAGES} per run (each is 3 KB of results, and takes a fraction of a \
                 second); sample more in several runs with other seeds",
                s.n
            ));
        }
        if s.keep_frames && s.n > MAX_IMAGES_WITH_FRAMES {
            return bad(format!(
                "{} images asked for with their denoising chains, at most {MAX_IMAGES_WITH_FRAMES} (each chain keeps \
                 about 21 copies of its image)",
                s.n
            ));
        }
        check_method(&self.schedule, s.method).or_else(|e| bad(e.to_string()))?;
        if !GUIDANCE.contains(&s.guidance) {
            return bad(format!(
                "the guidance must be in [{}, {}], not {}",
                GUIDANCE.start(),
                GUIDANCE.end(),
                s.guidance
            ));
        }
        let classes = self.model.num_classes;
        if s.guidance != 0.0 && (classes == 0 || s.labels.is_none()) {
            return bad("guidance needs a conditional model and labels".into());
        }
        if let Some(labels) = &s.labels {
            if classes == 0 {
                return bad("labels need a conditional model (one trained with 10 classes)".into());
            }
            if labels.len() != s.n {
                return bad(format!("{} labels for {} images", labels.len(), s.n));
            }
            if let Some((i, y)) = labels.iter().enumerate().find(|(_, &y)| y >= classes) {
                return bad(format!("label {i} is {y}, not a digit 0-{}", classes - 1));
            }
        }
        if let Some(x_t) = &s.init_noise {
            if x_t.dims() != [s.n, 1, 28, 28] {
                return bad(format!("the initial noise has shape {}, expected [{}, 1, 28, 28]", x_t.shape(), s.n));
            }
            let x_t = x_t.to(Device::Cpu)?;
            let count = x_t.as_slice().iter().filter(|v| !v.is_finite()).count();
            if count > 0 {
                return bad(format!("the initial noise holds {count} NaN or infinite values"));
            }
        }
        Ok(())
    }

    /// The images `s` asks for (see the module doc for where the
    /// randomness comes from), on the host.
    pub fn sample(&self, s: &Sampling) -> Result<Samples, PipelineError> {
        self.sample_with_progress(s, &mut |_, _| {})
    }

    /// [`Pipeline::sample`], calling `progress(done, total)` after each of
    /// the `total` denoising steps of all the chunks (for a progress bar).
    pub fn sample_with_progress(
        &self,
        s: &Sampling,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Samples, PipelineError> {
        self.check(s)?;
        let x_t = match &s.init_noise {
            Some(x_t) => x_t.to(Device::Cpu)?,
            None => Pipeline::initial_noise(s.n, s.seed),
        };
        let device = self.device();
        let steps = s.method.num_steps(&self.schedule);
        let chunks = s.n.div_ceil(CHUNK);
        let every = steps.div_ceil(20).max(1);
        let (mut images, mut chains) = (vec![], vec![]);
        for c in 0..chunks {
            let (start, len) = (c * CHUNK, CHUNK.min(s.n - c * CHUNK));
            let x = x_t.narrow(0, start, len)?;
            let labels = s.labels.as_ref().map(|l| &l[start..start + len]);
            let cond = Conditioning { labels, guidance: s.guidance };
            let mut frames = vec![x.clone()];
            // A frame comes back from the device only when it is kept.
            let mut failed = None;
            let end = sampler::run(
                &self.model,
                &self.schedule,
                &x.to(device)?,
                s.method,
                cond,
                chunk_noise(s.seed, c),
                &mut |i, _, x| {
                    progress(c * steps + i + 1, chunks * steps);
                    let kept = (i + 1).is_multiple_of(every) || i + 1 == steps;
                    if s.keep_frames && kept {
                        match x.to(Device::Cpu) {
                            Ok(frame) => frames.push(frame),
                            Err(e) => failed = Some(e),
                        }
                    }
                },
            )?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            images.push(end.clamp(-1.0, 1.0)?.to(Device::Cpu)?);
            chains.push(frames);
        }
        let frames = match s.keep_frames {
            true => (0..chains[0].len())
                .map(|f| Tensor::concat(&chains.iter().map(|c| &c[f]).collect::<Vec<_>>(), 0))
                .collect::<Result<_, _>>()?,
            false => vec![],
        };
        Ok(Samples { images: Tensor::concat(&images.iter().collect::<Vec<_>>(), 0)?, frames })
    }
}

/// The Philox stream of chunk `c`'s fresh noise, from the run's seed.
pub fn chunk_noise(seed: u64, c: usize) -> u64 {
    stream(seed, Stream::Sample, c as u64 + 1).gen()
}
