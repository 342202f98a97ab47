//! `cargo xtask train`: train a U-Net on MNIST and leave in `--out`
//!
//! - `model.safetensors`: the EMA weights in the interchange format (what
//!   `cargo xtask sample` and the PyTorch reference load),
//! - `state.safetensors`: raw weights, EMA, Adam's moments and the counters,
//!   for `--resume`,
//! - `log.jsonl`: one JSON object per step (loss, gradient norm, lr, images/s),
//! - `samples.png`: a grid drawn with the EMA model at the end (for a
//!   conditional model, column d holds digit d),
//! - `loss.png`: the loss curve.
//!
//! The state and the model are written every `--save-every` steps and at the
//! end, each atomically, so an interrupted run loses at most the steps since
//! the last save, and `--resume` continues it exactly (same batches, same
//! noise, same weights as a run that never stopped). Each save goes log
//! (fsynced), state, model: killed at any instant, the log has every step the
//! state has (`--resume` drops the rest), and a model left a save behind is
//! rewritten from the state's EMA when the run resumes. Ctrl-C or SIGTERM
//! finishes the step under way, saves, and ends with
//! `interrupted at step K: saved to DIR; continue with --resume` (exit 1).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use ddpm::data::{locate, Split, TRAIN_IMAGES, TRAIN_LABELS};
use ddpm::fit::{Ended, MODEL_FILE as MODEL, STATE_FILE as STATE};
use ddpm::train::{StepStats, TrainConfig, Trainer};
use ddpm::{picture, ScheduleKind};
use ddpm::{Fit, Pipeline, Sampling, Stop};
use ddpm_nn::fs::write_atomically;
use ddpm_nn::Preset;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::device::{resolve, DeviceArg};
use crate::download::Dataset;
use crate::outputs::{self, Plan};
use crate::plot;
use crate::sample::sample_with_bar;

/// The settings that define a run are options: on `--resume` the saved run's
/// values are used, and a flag that contradicts them is refused.
#[derive(Args)]
pub struct TrainArgs {
    /// Model size [default: tiny].
    #[arg(long)]
    preset: Option<Preset>,
    /// 0 (unconditional) or 10 (conditioned on the digit) [default: 10].
    #[arg(long)]
    classes: Option<usize>,
    /// Noise schedule, linear or cosine [default: linear].
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    #[arg(long, value_enum, default_value_t = Dataset::Mnist)]
    dataset: Dataset,
    /// Folder with train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]
    /// (else $DDPM_DATA, else data/<dataset>/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Train until this many steps in total (resumed steps count).
    #[arg(long, group = "length")]
    steps: Option<u64>,
    /// Train until this many passes over the data in total.
    #[arg(long, group = "length")]
    epochs: Option<u64>,
    /// Train for this many minutes of wall-clock time (this invocation).
    #[arg(long, group = "length")]
    minutes: Option<f64>,
    /// Images per step [default: 64].
    #[arg(long)]
    batch: Option<usize>,
    /// Adam's learning rate after the warm-up [default: 1e-3].
    #[arg(long)]
    lr: Option<f32>,
    /// Steps of linear learning-rate warm-up [default: 200].
    #[arg(long)]
    warmup: Option<u64>,
    /// The EMA's decay [default: 0.999].
    #[arg(long)]
    ema: Option<f32>,
    /// Seed of the initial weights, the batch order and the noise [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Output folder [default: runs/<preset>-c<classes>, runs/fashion-mnist-<preset>-c<classes> for Fashion-MNIST].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in --out.
    #[arg(long)]
    resume: bool,
    /// Write the state and the model every this many steps.
    #[arg(long, default_value_t = 500)]
    save_every: u64,
    /// How many images samples.png shows (at the end of training).
    #[arg(long, default_value_t = 100)]
    grid: usize,
}

const LOG: &str = "log.jsonl";

/// The longest --minutes: a year of wall-clock time.
const MAX_MINUTES: f64 = 365.0 * 24.0 * 60.0;

/// The most images samples.png shows: a 32 x 32 grid is already too small to read.
const MAX_GRID: usize = 1_000;

pub fn run(args: TrainArgs) -> Result<()> {
    if args.steps == Some(0) || args.epochs == Some(0) {
        bail!("--steps and --epochs must be at least 1");
    }
    if let Some(m) = args.minutes {
        if !(m > 0.0 && m <= MAX_MINUTES) {
            bail!("--minutes must be a number in (0, {MAX_MINUTES}] (a year; --resume goes on after that), not {m}");
        }
    }
    if !(1..=MAX_GRID).contains(&args.grid) {
        bail!("--grid must be 1 ..= {MAX_GRID} (the images drawn into samples.png), not {}", args.grid);
    }
    if args.save_every == 0 {
        bail!("--save-every must be at least 1");
    }

    // The run's folder: a fresh run refuses to overwrite another run's state.
    let preset = args.preset.unwrap_or(Preset::Tiny);
    let classes = args.classes.unwrap_or(10);
    let out = args.out.clone().unwrap_or_else(|| match args.dataset {
        Dataset::Mnist => PathBuf::from(format!("runs/{preset}-c{classes}")),
        other => PathBuf::from(format!("runs/{}-{preset}-c{classes}", other.name())),
    });
    let state_path = out.join(STATE);
    if args.resume && !state_path.exists() {
        bail!("--resume: {} does not exist; nothing to resume", state_path.display());
    }
    if !args.resume && state_path.exists() {
        bail!(
            "{} already holds a training run ({STATE}); pass --resume to continue it, or choose another --out",
            out.display()
        );
    }

    let config = if args.resume { resumed_config(&args, &state_path)? } else { fresh_config(&args) };
    config.validate()?;
    let device = resolve(args.device)?;

    let env = std::env::var_os("DDPM_DATA").map(PathBuf::from);
    let data_dir = locate(args.dataset.name(), args.data_dir.as_deref(), env.as_deref())?;
    let data = Split::load(&data_dir, TRAIN_IMAGES, TRAIN_LABELS)?;

    let mut trainer = if args.resume {
        Trainer::resume(&state_path, &config, data.len())?
    } else {
        Trainer::new(config.clone(), data.len())?
    };
    trainer.to_device(device)?;
    let start_step = trainer.step_count();
    if args.resume {
        // First, whatever else this run does: a kill between the state's rename and the model's leaves the model a
        // save behind (or missing): the state's EMA is the model of its step.
        if let Some(had) = trainer.repair_model(&out)? {
            let had = had.map_or("of no known step".to_string(), |k| format!("of step {k}"));
            eprintln!(
                "note: {MODEL} was {had} and {STATE} of step {start_step} (the run was stopped between the two \
                 saves): rewrote {MODEL} from the state's EMA weights"
            );
        }
    }
    let stop = stop_of(&args);
    let target = match stop {
        Stop::Steps(n) => Some(n),
        Stop::Epochs(e) => Some(e.saturating_mul(trainer.batches_per_epoch())),
        Stop::Time(_) => None,
    };
    if let Some(n) = target.filter(|&n| n <= start_step) {
        bail!("the run already has {start_step} steps ({n} asked for); ask for more with --steps or --epochs");
    }

    let created = create_folder(&out)?;
    let mut log = Log::open(&out.join(LOG), start_step)?;
    let result = (|| -> Result<()> {
        plan_outputs(&out, &data_dir, args.resume)?;
        for name in [STATE, MODEL, LOG, SAMPLES, LOSS] {
            outputs::remove_stale(&out.join(name));
        }
        train_and_draw(&args, &config, trainer, &data, &data_dir, &out, &mut log, stop, target)
    })();
    // A fresh run that fails before its first save leaves nothing behind: no
    // log, no folder it made. (The state exists only if this run saved it: a
    // fresh run into a folder with a state is refused above.)
    if result.is_err() && !args.resume && !state_path.exists() {
        log.discard();
        for dir in created.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
    result
}

/// The run's picture files.
const SAMPLES: &str = "samples.png";
const LOSS: &str = "loss.png";

/// Creates `out` and any missing folder above it; returns those it created,
/// outermost first.
fn create_folder(out: &Path) -> Result<Vec<PathBuf>> {
    let created: Vec<PathBuf> = out.ancestors().take_while(|dir| !dir.exists()).map(Path::to_path_buf).collect();
    fs::create_dir_all(out).with_context(|| format!("cannot create the output folder {}", out.display()))?;
    Ok(created.into_iter().rev().collect())
}

/// Checks the run's files against the data files (and, as for every job's
/// outputs, that each is a regular file if it exists) before any step.
fn plan_outputs(out: &Path, data_dir: &Path, resume: bool) -> Result<()> {
    let mut plan = Plan::new();
    plan.data_files(data_dir, &[TRAIN_IMAGES, TRAIN_LABELS]);
    // On --resume the state is read and then rewritten: an input and an output.
    let state = if resume { None } else { Some(STATE) };
    for name in state.into_iter().chain([MODEL, LOG, SAMPLES, LOSS]) {
        plan.output("--out", &out.join(name))?;
    }
    Ok(())
}

/// Trains from `trainer`'s step to `stop`, saving as it goes (log, state,
/// model), then draws samples.png and loss.png; or, interrupted by SIGINT or
/// SIGTERM, saves after the step under way and says how to continue.
#[allow(clippy::too_many_arguments)]
fn train_and_draw(
    args: &TrainArgs,
    config: &TrainConfig,
    mut trainer: Trainer,
    data: &Split,
    data_dir: &Path,
    out: &Path,
    log: &mut Log,
    stop: Stop,
    target: Option<u64>,
) -> Result<()> {
    let start_step = trainer.step_count();
    eprintln!(
        "training {} ({} parameters, {} classes) on {} {} images from {}, batch {}, device {}, into {}{}",
        config.preset,
        trainer.num_params(),
        config.classes,
        data.len(),
        args.dataset.name(),
        data_dir.display(),
        config.batch,
        ddpm::device::describe(trainer.device()),
        out.display(),
        if args.resume { format!(", resuming at step {start_step}") } else { String::new() },
    );
    log.event(json!({"event": "start", "step": start_step, "config": format!("{config:?}"), "data": data_dir}));

    // SIGINT (Ctrl-C) and SIGTERM set the flag: the run finishes its step,
    // saves and stops. A second signal, the flag being set, ends the process at
    // once (exit 128 + the signal's number): every file is written atomically
    // and the log before the state, so even that loses only unsaved steps.
    let interrupt = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&interrupt))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&interrupt)))
            .context("cannot install the handler of SIGINT and SIGTERM")?;
    }

    let progress = Bar::new(stop, target, start_step);
    let started = Instant::now();
    let mut speed = Speed::default();
    let fit = Fit { stop, save_every: args.save_every, dir: Some(out), interrupt: Some(&interrupt) };
    let ended = trainer.fit(data, &fit, |event| -> Result<()> {
        match event {
            ddpm::Progress::Step { stats, took, elapsed } => {
                speed.add(config.batch, took);
                log.step(stats, speed.images_per_s(), elapsed)?;
                progress.update(stats, speed.images_per_s(), elapsed);
            }
            // The log goes to disk before the state: it never lacks a step the state has.
            ddpm::Progress::Saving { .. } => log.sync()?,
            ddpm::Progress::Saved { step, dir } => {
                if progress.bar.is_hidden() {
                    eprintln!(
                        "step {step}: loss {:.4}, {:.0} images/s, saved to {}",
                        progress.smoothed_loss(),
                        speed.images_per_s(),
                        dir.display()
                    );
                }
            }
        }
        Ok(())
    })?;
    progress.bar.finish_and_clear();
    if let Ended::Interrupted { step } = ended {
        bail!("interrupted at step {step}: saved to {}; continue with --resume", out.display());
    }
    if interrupt.load(Ordering::SeqCst) {
        let step = trainer.step_count();
        bail!(
            "interrupted after the last step ({step}): the run is saved in {}; {SAMPLES} and {LOSS} were not drawn",
            out.display()
        );
    }
    // From here on a signal ends the process at once (see above): the run is
    // saved, and the pictures are written only at the end, both or neither.
    interrupt.store(true, Ordering::SeqCst);
    let steps = trainer.step_count() - start_step;
    eprintln!(
        "trained {steps} steps in {:.1} min ({:.0} images/s); final loss (smoothed) {:.4}",
        started.elapsed().as_secs_f64() / 60.0,
        (steps as f64 * config.batch as f64) / started.elapsed().as_secs_f64(),
        progress.smoothed_loss()
    );

    // Pictures: the loss curve from the whole log, and samples from the EMA model.
    let loss_png = loss_png(&out.join(LOG))?;
    let pipeline = Pipeline::new(trainer.ema_model()?, trainer.schedule().clone());
    let sampling = Sampling { seed: config.seed, ..pipeline.sampling(args.grid) };
    eprintln!("drawing {} samples ({}) for {SAMPLES}", args.grid, sampling.describe());
    let images = sample_with_bar(&pipeline, &sampling, true)?.images;
    let cols = if config.classes > 0 { config.classes } else { (args.grid as f64).sqrt().ceil() as usize };
    let samples_png = picture::encode_grid_png(&images, cols.max(1), 2)?;
    outputs::commit(&[(&out.join(SAMPLES), samples_png), (&out.join(LOSS), loss_png)])?;
    eprintln!(
        "wrote {}/{{{MODEL}, {STATE}, {LOG}, {SAMPLES}, {LOSS}}}\nsample more with: cargo xtask sample --checkpoint {}",
        out.display(),
        out.join(MODEL).display()
    );
    Ok(())
}

/// Defaults, overridden by the flags given.
fn fresh_config(args: &TrainArgs) -> TrainConfig {
    let mut config = TrainConfig::new(args.preset.unwrap_or(Preset::Tiny), args.classes.unwrap_or(10));
    overlay(&mut config, args);
    config
}

/// The saved run's settings, with the flags given on top: a flag that
/// differs from the saved value makes `Trainer::resume` refuse, naming it.
fn resumed_config(args: &TrainArgs, state: &Path) -> Result<TrainConfig> {
    let mut config = Trainer::saved_config(state)?;
    overlay(&mut config, args);
    Ok(config)
}

fn overlay(config: &mut TrainConfig, args: &TrainArgs) {
    config.preset = args.preset.unwrap_or(config.preset);
    config.classes = args.classes.unwrap_or(config.classes);
    config.schedule = args.schedule.unwrap_or(config.schedule);
    config.batch = args.batch.unwrap_or(config.batch);
    config.lr = args.lr.unwrap_or(config.lr);
    config.warmup = args.warmup.unwrap_or(config.warmup);
    config.ema_decay = args.ema.unwrap_or(config.ema_decay);
    config.seed = args.seed.unwrap_or(config.seed);
}

/// When to stop, from the flags: --steps, --epochs or --minutes, and
/// without any, five passes over the data.
fn stop_of(args: &TrainArgs) -> Stop {
    match (args.steps, args.epochs, args.minutes) {
        (Some(n), _, _) => Stop::Steps(n),
        (_, Some(e), _) => Stop::Epochs(e),
        (_, _, Some(m)) => Stop::Time(Duration::from_secs_f64(m * 60.0)),
        _ => Stop::Epochs(5),
    }
}

/// The progress bar: steps (or seconds, for --minutes), loss, images/s, ETA.
struct Bar {
    bar: ProgressBar,
    /// The last step, or `None` for a time limit (the bar counts seconds).
    target: Option<u64>,
    loss: std::cell::Cell<f64>,
}

impl Bar {
    fn new(stop: Stop, target: Option<u64>, start_step: u64) -> Bar {
        let (len, unit) = match (stop, target) {
            (Stop::Time(d), _) => (d.as_secs().max(1), "s"),
            (_, n) => (n.unwrap_or(0), "steps"),
        };
        let bar = ProgressBar::new(len);
        let template = format!("{{bar:30.cyan/blue}} {{pos}}/{{len}} {unit} [{{elapsed}} < {{eta}}] {{msg}}");
        bar.set_style(ProgressStyle::with_template(&template).expect("a valid template").progress_chars("=> "));
        if target.is_some() {
            bar.set_position(start_step);
        }
        Bar { bar, target, loss: std::cell::Cell::new(f64::NAN) }
    }

    fn update(&self, stats: &StepStats, images_per_s: f64, elapsed: Duration) {
        // An exponential average over ~50 steps: the raw loss jumps with t.
        let previous = self.loss.get();
        let smoothed = if previous.is_nan() { stats.loss as f64 } else { 0.98 * previous + 0.02 * stats.loss as f64 };
        self.loss.set(smoothed);
        match self.target {
            Some(_) => self.bar.set_position(stats.step),
            None => self.bar.set_position(elapsed.as_secs()),
        }
        let step = if self.target.is_none() { format!("step {} ", stats.step) } else { String::new() };
        self.bar.set_message(format!(
            "{step}epoch {} loss {smoothed:.4} lr {:.1e} {images_per_s:.0} img/s",
            stats.epoch + 1,
            stats.lr
        ));
    }

    fn smoothed_loss(&self) -> f64 {
        self.loss.get()
    }
}

/// Images per second over the recent steps.
#[derive(Default)]
struct Speed {
    recent: std::collections::VecDeque<(usize, Duration)>,
}

impl Speed {
    fn add(&mut self, images: usize, took: Duration) {
        self.recent.push_back((images, took));
        if self.recent.len() > 20 {
            self.recent.pop_front();
        }
    }

    fn images_per_s(&self) -> f64 {
        let images: usize = self.recent.iter().map(|(n, _)| n).sum();
        let secs: f64 = self.recent.iter().map(|(_, d)| d.as_secs_f64()).sum();
        images as f64 / secs.max(1e-9)
    }
}

/// log.jsonl: one JSON object per line.
///
/// Lines wait in memory and go to disk (flushed and fsynced) when the run
/// saves, just before the state ([`Log::sync`]): after a kill the log holds
/// every step the state has, and `--resume` drops any after it. A fresh run
/// writes no log until its first save.
struct Log {
    path: PathBuf,
    /// Open once the first lines are on disk (or at once on a resumed run).
    file: Option<File>,
    /// Lines not yet written to the file.
    pending: String,
    /// Whether this run created the file (so a failed fresh run removes it).
    created: bool,
}

/// Lines that may wait in memory once the file is open; past that they go to
/// the file (not yet synced: the sync before each save is what matters).
const LOG_BUFFER: usize = 1 << 16;

impl Log {
    /// Opens the log for a run at step `step`: a fresh run starts an empty
    /// log (on disk at its first save); a resumed run keeps the lines up to
    /// `step` and drops those of steps that were computed after the last save
    /// (they are about to be computed again).
    fn open(path: &Path, step: u64) -> Result<Log> {
        let mut log = Log { path: path.to_path_buf(), file: None, pending: String::new(), created: false };
        if step == 0 || !path.exists() {
            return Ok(log);
        }
        let context = || format!("cannot write the log {}", path.display());
        let kept: String = BufReader::new(File::open(path).with_context(context)?)
            .lines()
            .map_while(std::io::Result::ok)
            .filter(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                value.get("step").and_then(|s| s.as_u64()).is_some_and(|s| s <= step)
            })
            .map(|line| line + "\n")
            .collect();
        write_atomically(path, kept.as_bytes()).with_context(context)?;
        log.file = Some(fs::OpenOptions::new().append(true).open(path).with_context(context)?);
        Ok(log)
    }

    fn event(&mut self, value: serde_json::Value) {
        self.pending += &value.to_string();
        self.pending.push('\n');
    }

    fn step(&mut self, s: &StepStats, images_per_s: f64, elapsed: Duration) -> Result<()> {
        self.event(json!({
            "step": s.step,
            "epoch": s.epoch,
            "loss": s.loss,
            "grad_norm": s.grad_norm,
            "lr": s.lr,
            "images_per_s": (images_per_s * 10.0).round() / 10.0,
            "elapsed_s": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        }));
        if self.file.is_some() && self.pending.len() > LOG_BUFFER {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Writes the pending lines to the file, creating it on a run's first save.
    fn write_pending(&mut self) -> Result<&mut File> {
        let context = || format!("cannot write the log {}", self.path.display());
        if self.file.is_none() {
            self.file = Some(File::create(&self.path).with_context(context)?);
            self.created = true;
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(self.pending.as_bytes()).with_context(context)?;
        self.pending.clear();
        Ok(file)
    }

    /// Every line so far on disk (written and fsynced).
    fn sync(&mut self) -> Result<()> {
        let path = self.path.display().to_string();
        self.write_pending()?.sync_data().with_context(|| format!("cannot write the log {path}"))
    }

    /// Removes the file if this run created it (a fresh run that failed
    /// before its first save).
    fn discard(&mut self) {
        if self.created {
            self.file = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// loss.png, in memory: the raw per-step loss and its moving average, from log.jsonl.
fn loss_png(log: &Path) -> Result<Vec<u8>> {
    let file = File::open(log).with_context(|| format!("cannot read {}", log.display()))?;
    let points: Vec<(f64, f64)> = BufReader::new(file)
        .lines()
        .map_while(std::io::Result::ok)
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            Some((v.get("step")?.as_f64()?, v.get("loss")?.as_f64()?))
        })
        .collect();
    let window = (points.len() / 50).clamp(1, 200);
    let smoothed: Vec<(f64, f64)> = points
        .windows(window)
        .map(|w| (w[w.len() - 1].0, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64))
        .collect();
    let label = format!("mean of {window} steps");
    let series: [(&str, &[(f64, f64)]); 2] = [("loss per step", &points), (&label, &smoothed)];
    plot::line_plot_png(&series, "training loss (epsilon MSE)", "step", "loss", true)
}
