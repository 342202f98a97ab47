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
use ddpm::picture;
use ddpm::pipeline::{GUIDANCE, MAX_IMAGES, MAX_IMAGES_WITH_FRAMES};
use ddpm::sampler::Method;
use ddpm::{Pipeline, Samples, Sampling};
use ddpm_autograd::Tensor;
use ddpm_nn::Module;
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{resolve, DeviceArg};
use crate::download::Dataset;
use crate::outputs::{self, Plan};
use crate::{npy, plot};

/// The reverse process, as `--sampler` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Ho et al.'s ancestral sampler, all T steps
    Ddpm,
    /// Song et al.'s DDIM, --steps steps, noise scaled by --eta
    Ddim,
    /// the lecture's literal x_{t-1} = (x_t - b_t e) / a_t, all T steps (it fails: see docs/lecture.md)
    Lecture,
    /// the lecture's second loop, x = (x - bbar_t e) / abar_t for t from 1 up to T (it fails too)
    LectureJump,
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
    /// Each grid pixel is this many pixels square.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    scale: u8,
    /// Name the grid's columns above them: the classes of a data set
    /// (mnist, fashion-mnist), for a grid of one column per class.
    #[arg(long, value_enum, value_name = "DATASET")]
    class_names: Option<Dataset>,
}

/// The sampler the flags ask for, checked against the pipeline's model
/// with messages that name the flags (the pipeline checks again, by field):
/// eta in [0, 1], DDIM steps in 1 ..= T, guidance in [`GUIDANCE`] and only
/// for a conditional model (which gets the default guidance when none is
/// given).
/// `n` and the labels are filled in by the caller.
pub fn sampling_from_flags(
    pipeline: &Pipeline,
    sampler: SamplerArg,
    steps: usize,
    eta: f64,
    guidance: Option<f32>,
) -> Result<Sampling> {
    if !(0.0..=1.0).contains(&eta) {
        bail!("--eta must be in [0, 1] (0 is deterministic, 1 has DDPM's noise; above 1 DDIM's step is undefined), not {eta}");
    }
    let t = pipeline.schedule().timesteps();
    if steps == 0 || steps > t {
        bail!("--steps must be 1 ..= {t} (T), not {steps}");
    }
    let method = match sampler {
        SamplerArg::Ddpm => Method::Ddpm,
        SamplerArg::Ddim => Method::Ddim { steps, eta },
        SamplerArg::Lecture => Method::Lecture,
        SamplerArg::LectureJump => Method::LectureJump,
    };
    let defaults = pipeline.sampling(1);
    let conditional = pipeline.model().num_classes > 0;
    let guidance = guidance.unwrap_or(defaults.guidance);
    if !GUIDANCE.contains(&guidance) {
        bail!(
            "--guidance must be in [{}, {}] (-1 is the unconditional model, 0 the conditional one; past about 5 the \
             strokes saturate), not {guidance}",
            GUIDANCE.start(),
            GUIDANCE.end()
        );
    }
    if guidance != 0.0 && !conditional {
        bail!("--guidance needs a conditional model (trained with --classes 10)");
    }
    Ok(Sampling { method, guidance, ..defaults })
}

/// Why the image count is capped where it is, for a message.
fn frames_note(max_n: usize) -> &'static str {
    if max_n == MAX_IMAGES_WITH_FRAMES {
        " with --gif or --strip, which keep about 21 copies of every image"
    } else {
        ": 314 MB of results; use several runs with other seeds for more"
    }
}

/// Samples with a progress bar of denoising steps (hidden when `progress`
/// is false).
pub fn sample_with_bar(pipeline: &Pipeline, sampling: &Sampling, progress: bool) -> Result<Samples> {
    let bar = if progress { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} denoising steps [{elapsed} < {eta}] {msg}")
            .expect("a valid template"),
    );
    let samples = pipeline.sample_with_progress(sampling, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    Ok(samples)
}

pub fn run(args: SampleArgs) -> Result<()> {
    let device = resolve(args.device)?;
    let max_n = if args.gif.is_some() || args.strip.is_some() { MAX_IMAGES_WITH_FRAMES } else { MAX_IMAGES };
    if let Some(n) = args.n.filter(|&n| n == 0 || n > max_n) {
        bail!("--n must be 1 ..= {max_n} (the most one run samples{}), not {n}", frames_note(max_n));
    }
    if args.cols == Some(0) {
        bail!("--cols must be at least 1");
    }
    let pipeline = Pipeline::from_checkpoint(&args.checkpoint, device)?;
    let model = pipeline.model();
    let settings = sampling_from_flags(&pipeline, args.sampler, args.steps, args.eta, args.guidance)?;

    // x_T: read, or drawn from the seed; N follows from whichever input fixes it.
    let init = match &args.init_noise {
        Some(path) => {
            let (shape, data) = npy::read_f32(path)?;
            if shape.len() != 4 || shape[1..] != [1, 28, 28] || shape[0] == 0 {
                bail!("--init-noise {}: shape {shape:?}, expected [N, 1, 28, 28]", path.display());
            }
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                let count = data.iter().filter(|v| !v.is_finite()).count();
                bail!("--init-noise {}: {count} values are NaN or infinite (the first at index {i})", path.display());
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
    if let Some(&(flag, _)) = given.first().filter(|_| n == 0) {
        bail!("{flag} gives no images");
    }
    if let Some(&(flag, _)) = given.first().filter(|_| n > max_n) {
        bail!("{flag} gives {n} images, at most {max_n} (the most one run samples{})", frames_note(max_n));
    }

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
        (None, None) => pipeline.grid_labels(n),
    };

    let cols = args.cols.unwrap_or(if labels.is_some() && args.digit.is_none() && args.labels.is_none() {
        model.num_classes
    } else {
        (n as f64).sqrt().ceil() as usize
    });
    if args.class_names.is_some() && cols != 10 {
        bail!("--class-names names 10 columns, one per class; this grid has {cols} (use --cols 10)");
    }
    // The pictures' sizes follow from the flags: a grid too large is refused now.
    let geometry = picture::Geometry { n, h: 28, w: 28 };
    picture::grid_size(geometry, cols, usize::from(args.scale))?;
    if args.gif.is_some() {
        picture::gif_size(geometry, cols, usize::from(args.scale))
            .context("--gif (use a smaller --scale or more --cols)")?;
    }

    // Fail before the work, not after: every output is checked against the
    // inputs and each other, and its folder must exist.
    let mut plan = Plan::new();
    plan.input("--checkpoint", &args.checkpoint);
    for (flag, path) in [("--init-noise", &args.init_noise), ("--labels", &args.labels)] {
        if let Some(path) = path {
            plan.input(flag, path);
        }
    }
    plan.output("--out", &args.out)?;
    for (flag, path) in [("--npy", &args.npy), ("--gif", &args.gif), ("--strip", &args.strip)] {
        if let Some(path) = path {
            plan.output(flag, path)?;
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
    let keep_frames = args.gif.is_some() || args.strip.is_some();
    let sampling = Sampling { n, labels, seed: args.seed, init_noise: init, keep_frames, ..settings };
    let started = std::time::Instant::now();
    let Samples { images, frames } = sample_with_bar(&pipeline, &sampling, true)?;
    let secs = started.elapsed().as_secs_f64();
    let evals = n * sampling.evaluations_per_image(pipeline.schedule());
    eprintln!("done in {secs:.1} s ({:.0} image-evaluations/s)", evals as f64 / secs);

    // Every file is made in memory, then all are written (or none: see
    // outputs.rs). Nothing is written before this point, so a Ctrl-C during
    // sampling may simply kill the process: it leaves no partial output.
    let scale = usize::from(args.scale);
    let grid = match args.class_names {
        None => picture::encode_grid_png(&images, cols, scale)?,
        Some(dataset) => {
            let geometry = picture::Geometry { n, h: 28, w: 28 };
            let grid = picture::grid_pixels(images.as_slice(), geometry, cols, scale)?;
            let names = dataset.class_names();
            picture::encode_png(&plot::with_column_names(&grid, 28 * scale, &names))?
        }
    };
    let mut files = vec![(args.out.as_path(), grid)];
    let mut wrote = vec![format!("wrote {}", args.out.display())];
    if let Some(path) = &args.npy {
        files.push((path, npy::f32_file_bytes(images.dims(), images.as_slice())?));
        wrote.push(format!("wrote {} (float32 {:?})", path.display(), images.dims()));
    }
    if let Some(path) = &args.gif {
        files.push((path, picture::encode_gif(&frames, cols, scale, 8)?));
        wrote.push(format!("wrote {} ({} frames)", path.display(), frames.len()));
    }
    if let Some(path) = &args.strip {
        let rows = n.min(10);
        let chains = frames.iter().map(|f| f.narrow(0, 0, rows)).collect::<Result<Vec<_>, _>>()?;
        files.push((path, picture::encode_strip_png(&chains, scale)?));
        wrote.push(format!("wrote {} ({rows} chains of {} frames)", path.display(), frames.len()));
    }
    outputs::commit(&files)?;
    for line in wrote {
        eprintln!("{line}");
    }
    Ok(())
}
