//! `cargo xtask sample`: digits from a checkpoint.
//!
//! x_T is drawn from the seed (or read with `--init-noise`), then the reverse
//! process runs: DDIM with `--steps` (deterministic at `--eta 0`), DDPM over
//! all T steps, or the lecture's literal formula (to see it fail). Output: a
//! PNG grid, optionally the raw samples as .npy, the denoising chain as a GIF
//! and as a strip (one row per image, x_t from t = T-1 down to 0).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ddpm::rng::{stream, Stream};
use ddpm::sampler::{self, Conditioning, Method};
use ddpm::{Schedule, ScheduleKind};
use ddpm_autograd::Tensor;
use ddpm_nn::checkpoint;
use ddpm_nn::{Module, Preset, UNet};
use ddpm_tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;

use crate::device::{resolve, DeviceArg};
use crate::{npy, picture};

/// The reverse process, as `--sampler` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Ho et al.'s ancestral sampler, all T steps
    Ddpm,
    /// Song et al.'s DDIM, --steps steps, noise scaled by --eta
    Ddim,
    /// the lecture's literal x_{t-1} = (x_t - b_t e) / a_t, all T steps (it fails: see docs/lecture.md)
    Lecture,
}

#[derive(Args)]
pub struct SampleArgs {
    /// A model file (interchange format: model.safetensors of a training run,
    /// or one written by the PyTorch reference).
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, value_enum, default_value_t = SamplerArg::Ddim)]
    sampler: SamplerArg,
    /// DDIM steps (DDPM and the lecture's formula always take T).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// DDIM's noise: 0 is deterministic, 1 is DDPM-like.
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// How many images (default 100, or as many as --labels or --init-noise hold).
    #[arg(long)]
    n: Option<usize>,
    /// Draw this digit only (conditional models).
    #[arg(long, conflicts_with = "labels")]
    digit: Option<usize>,
    /// One digit per image, a 1-D integer .npy file (conditional models).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Classifier-free guidance weight w: eps = (1 + w) eps(x, y) - w eps(x).
    #[arg(long)]
    guidance: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// x_T as float32 [N, 1, 28, 28] instead of noise drawn from the seed.
    #[arg(long)]
    init_noise: Option<PathBuf>,
    /// The grid of samples.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write the samples as float32 [N, 1, 28, 28] in [-1, 1].
    #[arg(long)]
    npy: Option<PathBuf>,
    /// Also write the denoising chain as an animated GIF.
    #[arg(long)]
    gif: Option<PathBuf>,
    /// Also write the chain as a PNG strip: one row per image (first 10), x_t left to right.
    #[arg(long)]
    strip: Option<PathBuf>,
    /// Columns of the grid (default: 10 for digit-conditioned grids, else about sqrt(N)).
    #[arg(long)]
    cols: Option<usize>,
}

/// Guidance when none is asked for: mild, for conditional models. It makes the
/// asked-for digit clearer without the saturated strokes of large w.
pub const DEFAULT_GUIDANCE: f32 = 1.0;

/// How to sample.
#[derive(Debug, Clone, Copy)]
pub struct SampleSettings {
    pub method: Method,
    pub guidance: f32,
}

impl SampleSettings {
    /// DDIM with 50 steps, eta 0, and default guidance for a conditional model.
    pub fn default_for(model: &UNet) -> SampleSettings {
        let guidance = if model.num_classes > 0 { DEFAULT_GUIDANCE } else { 0.0 };
        SampleSettings { method: Method::Ddim { steps: 50, eta: 0.0 }, guidance }
    }

    /// The settings `--sampler`, `--steps`, `--eta` and `--guidance` ask for,
    /// checked against the model: eta >= 0, DDIM steps in 1 ..= T, guidance
    /// finite and only for a conditional model (which gets [`DEFAULT_GUIDANCE`]
    /// when none is given).
    pub fn from_flags(
        model: &UNet,
        schedule: &Schedule,
        sampler: SamplerArg,
        steps: usize,
        eta: f64,
        guidance: Option<f32>,
    ) -> Result<SampleSettings> {
        if !(eta >= 0.0 && eta.is_finite()) {
            bail!("--eta must be a number >= 0, not {eta}");
        }
        if steps == 0 || steps > schedule.timesteps() {
            bail!("--steps must be 1 ..= {} (T), not {steps}", schedule.timesteps());
        }
        let method = match sampler {
            SamplerArg::Ddpm => Method::Ddpm,
            SamplerArg::Ddim => Method::Ddim { steps, eta },
            SamplerArg::Lecture => Method::Lecture,
        };
        let conditional = model.num_classes > 0;
        let guidance = guidance.unwrap_or(if conditional { DEFAULT_GUIDANCE } else { 0.0 });
        if !guidance.is_finite() {
            bail!("--guidance must be a number, not {guidance}");
        }
        if guidance != 0.0 && !conditional {
            bail!("--guidance needs a conditional model (trained with --classes 10)");
        }
        Ok(SampleSettings { method, guidance })
    }

    pub fn describe(&self) -> String {
        let method = match self.method {
            Method::Ddpm => "DDPM, all T steps".to_string(),
            Method::Ddim { steps, eta } => format!("DDIM, {steps} steps, eta {eta}"),
            Method::Lecture => "the lecture's formula, all T steps".to_string(),
        };
        if self.guidance != 0.0 {
            format!("{method}, guidance {}", self.guidance)
        } else {
            method
        }
    }
}

/// Labels for a grid of `n` with 10 columns: image i asks for digit i mod 10,
/// so column d holds digit d. `None` for an unconditional model.
pub fn grid_labels(model: &UNet, n: usize) -> Option<Vec<usize>> {
    (model.num_classes > 0).then(|| (0..n).map(|i| i % model.num_classes).collect())
}

/// Images sampled per network call: enough to keep both cores busy, few
/// enough to stay in cache.
const CHUNK: usize = 100;

/// x_T for `n` images from `seed`.
pub fn initial_noise(n: usize, seed: u64) -> Tensor {
    Tensor::randn([n, 1, 28, 28], &mut stream(seed, Stream::Sample, 0))
}

/// Samples `n` images from x_T drawn from `seed`; see [`draw_from`].
pub fn draw(
    model: &UNet,
    schedule: &Schedule,
    settings: &SampleSettings,
    n: usize,
    labels: Option<&[usize]>,
    seed: u64,
    progress: bool,
) -> Result<Tensor> {
    draw_from(model, schedule, settings, &initial_noise(n, seed), labels, seed, progress, None)
}

/// The Philox stream of chunk `c`'s noise, from the run's seed.
fn chunk_noise(seed: u64, c: usize) -> u64 {
    stream(seed, Stream::Sample, c as u64 + 1).gen()
}

/// Runs the sampler from `x_t` (on the host) in chunks of [`CHUNK`] images
/// on the model's device, and returns the result clamped to [-1, 1], on the
/// host. The noise of chunk c comes from the Philox stream [`chunk_noise`],
/// so the result depends only on the inputs and the seed, whatever the
/// device. `frames`, if given, collects x_T and x after about 20 evenly
/// spaced steps, as they are (the pictures clamp them for display); the last
/// frame is the result before its clamp.
#[allow(clippy::too_many_arguments)]
pub fn draw_from(
    model: &UNet,
    schedule: &Schedule,
    settings: &SampleSettings,
    x_t: &Tensor,
    labels: Option<&[usize]>,
    seed: u64,
    progress: bool,
    frames: Option<&mut Vec<Tensor>>,
) -> Result<Tensor> {
    let n = x_t.dims()[0];
    let device = model.device();
    let steps = settings.method.num_steps(schedule);
    let chunks = n.div_ceil(CHUNK);
    let bar = if progress { ProgressBar::new((chunks * steps) as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} denoising steps [{elapsed} < {eta}] {msg}")
            .expect("a valid template"),
    );
    let every = steps.div_ceil(20).max(1);
    let mut outputs = vec![];
    let mut chain: Vec<Vec<Tensor>> = vec![];
    for c in 0..chunks {
        let (start, len) = (c * CHUNK, CHUNK.min(n - c * CHUNK));
        let x = x_t.narrow(0, start, len)?.to(device)?;
        let chunk_labels = labels.map(|l| &l[start..start + len]);
        let cond = Conditioning { labels: chunk_labels, guidance: settings.guidance };
        let noise = chunk_noise(seed, c);
        let mut chunk_frames = vec![x_t.narrow(0, start, len)?];
        let wanted = |i: usize| frames.is_some() && ((i + 1).is_multiple_of(every) || i + 1 == steps);
        // A frame is read back from the device only when it is wanted.
        let mut failed = None;
        let end = sampler::run(model, schedule, &x, settings.method, cond, noise, &mut |i, _, x| {
            bar.inc(1);
            if wanted(i) {
                match x.to(Device::Cpu) {
                    Ok(frame) => chunk_frames.push(frame),
                    Err(e) => failed = Some(e),
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        outputs.push(end.clamp(-1.0, 1.0)?.to(Device::Cpu)?);
        chain.push(chunk_frames);
    }
    bar.finish_and_clear();
    if let Some(frames) = frames {
        for f in 0..chain[0].len() {
            let parts: Vec<&Tensor> = chain.iter().map(|c| &c[f]).collect();
            frames.push(Tensor::concat(&parts, 0)?);
        }
    }
    let parts: Vec<&Tensor> = outputs.iter().collect();
    Ok(Tensor::concat(&parts, 0)?)
}

/// Loads a model file: the preset and classes come from its metadata.
pub fn load_model(path: &std::path::Path) -> Result<(UNet, Schedule)> {
    let meta = checkpoint::read_metadata(path)?;
    let preset: Preset =
        meta.preset.parse().map_err(|e| anyhow::anyhow!("checkpoint {}: metadata \"preset\": {e}", path.display()))?;
    if meta.num_classes != 0 && meta.num_classes != 10 {
        bail!("checkpoint {}: {} classes; this project's models have 0 or 10", path.display(), meta.num_classes);
    }
    let kind: ScheduleKind = meta
        .schedule
        .parse()
        .map_err(|e| anyhow::anyhow!("checkpoint {}: metadata \"schedule\": {e}", path.display()))?;
    if meta.timesteps < 2 {
        bail!("checkpoint {}: metadata \"timesteps\" = {}: T must be at least 2", path.display(), meta.timesteps);
    }
    let model = UNet::new(preset, meta.num_classes, &mut stream(0, Stream::Init, 0));
    checkpoint::load_into(path, &model.named_params())?;
    Ok((model, Schedule::new(kind, meta.timesteps)))
}

pub fn run(args: SampleArgs) -> Result<()> {
    let device = resolve(args.device)?;
    if args.n == Some(0) {
        bail!("--n must be at least 1");
    }
    if args.cols == Some(0) {
        bail!("--cols must be at least 1");
    }
    let (model, schedule) = load_model(&args.checkpoint)?;
    model.to_device(device)?;
    let settings = SampleSettings::from_flags(&model, &schedule, args.sampler, args.steps, args.eta, args.guidance)?;
    let (method, guidance) = (settings.method, settings.guidance);

    // x_T: read, or drawn from the seed; N follows from whichever input fixes it.
    let init = match &args.init_noise {
        Some(path) => {
            let (shape, data) = npy::read_f32(path)?;
            if shape.len() != 4 || shape[1..] != [1, 28, 28] || shape[0] == 0 {
                bail!("--init-noise {}: shape {shape:?}, expected [N, 1, 28, 28]", path.display());
            }
            Some(Tensor::from_vec(data, shape)?)
        }
        None => None,
    };
    let file_labels = match &args.labels {
        Some(path) => Some(npy::read_labels(path)?),
        None => None,
    };
    let sizes = [
        ("--n", args.n),
        ("--init-noise", init.as_ref().map(|t| t.dims()[0])),
        ("--labels", file_labels.as_ref().map(Vec::len)),
    ];
    let given: Vec<(&str, usize)> = sizes.iter().filter_map(|&(name, n)| n.map(|n| (name, n))).collect();
    if let Some(&(a, na)) = given.iter().find(|&&(_, n)| n != given[0].1) {
        bail!("{} gives {} images but {a} gives {na}", given[0].0, given[0].1);
    }
    let n = given.first().map_or(100, |&(_, n)| n);

    let labels: Option<Vec<usize>> = match (args.digit, file_labels) {
        (Some(_), _) | (_, Some(_)) if model.num_classes == 0 => {
            bail!(
                "{} is an unconditional model: --digit and --labels need one trained with --classes 10",
                args.checkpoint.display()
            )
        }
        (Some(d), _) if d >= model.num_classes => bail!("--digit must be 0-{}, not {d}", model.num_classes - 1),
        (Some(d), _) => Some(vec![d; n]),
        (None, Some(l)) => {
            if let Some((i, y)) = l.iter().enumerate().find(|(_, &y)| y >= model.num_classes) {
                bail!("--labels: entry {i} is {y}, not a digit 0-{}", model.num_classes - 1);
            }
            Some(l)
        }
        (None, None) => grid_labels(&model, n),
    };

    // Fail before the work, not after: every output's folder must exist.
    for path in [Some(&args.out), args.npy.as_ref(), args.gif.as_ref(), args.strip.as_ref()].into_iter().flatten() {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            bail!("cannot write {}: the folder {} does not exist", path.display(), dir.display());
        }
    }

    eprintln!(
        "sampling {n} images from {} ({} {} parameters, {} classes) with {} on {}",
        args.checkpoint.display(),
        model.preset,
        model.num_params(),
        model.num_classes,
        settings.describe(),
        ddpm::device::describe(device)
    );
    let x_t = init.unwrap_or_else(|| initial_noise(n, args.seed));
    let want_chain = args.gif.is_some() || args.strip.is_some();
    let mut frames = vec![];
    let started = std::time::Instant::now();
    let images = draw_from(
        &model,
        &schedule,
        &settings,
        &x_t,
        labels.as_deref(),
        args.seed,
        true,
        want_chain.then_some(&mut frames),
    )?;
    let secs = started.elapsed().as_secs_f64();
    let evals = n * method.num_steps(&schedule) * if guidance != 0.0 { 2 } else { 1 };
    eprintln!("done in {secs:.1} s ({:.0} image-evaluations/s)", evals as f64 / secs);

    let cols = args.cols.unwrap_or(if labels.is_some() && args.digit.is_none() && args.labels.is_none() {
        model.num_classes
    } else {
        (n as f64).sqrt().ceil() as usize
    });
    picture::grid_png(&args.out, images.as_slice(), n, 28, 28, cols, 2)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    if let Some(path) = &args.npy {
        npy::write_f32(path, images.dims(), images.as_slice())?;
        eprintln!("wrote {} (float32 {:?})", path.display(), images.dims());
    }
    if let Some(path) = &args.gif {
        let data: Vec<Vec<f32>> = frames.iter().map(Tensor::to_vec).collect();
        picture::gif(path, &data, n, 28, 28, cols, 2, 8)?;
        eprintln!("wrote {} ({} frames)", path.display(), frames.len());
    }
    if let Some(path) = &args.strip {
        let rows = n.min(10);
        let data: Vec<Vec<f32>> =
            frames.iter().map(|f| f.narrow(0, 0, rows).map(|t| t.to_vec())).collect::<Result<_, _>>()?;
        picture::strip_png(path, &data, rows, 28, 28, 2)?;
        eprintln!("wrote {} ({rows} chains of {} frames)", path.display(), frames.len());
    }
    Ok(())
}
