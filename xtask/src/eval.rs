//! `cargo xtask eval`: how good are the generated digits? (the README's "Sample quality")
//!
//! The images come from a checkpoint (`--checkpoint`: sampled here, with the
//! samplers and defaults of `cargo xtask sample`; a conditional model is asked
//! for digit i % 10 for image i, so the classes are balanced) or from a file
//! (`--samples`, float32 [N, 1, 28, 28] in [-1, 1] as `cargo xtask sample --npy`
//! writes it, with the asked digits in `--labels` if they are known).
//!
//! The judge is the LeNet-style classifier of `ddpm::eval`, trained on the
//! training split and cached in `--classifier` (trained there, once, when the
//! file is missing; `--retrain` trains it again). Against the t10k split it
//! reports, for the samples and for real training digits (the floor: what a
//! perfect generator would score, with as many images as there are samples,
//! since the Fréchet distance of finite sets is biased upward as N shrinks):
//!
//! - FLD: the Fréchet distance between the classifier's penultimate features
//!   of the set and of t10k (squared, as FID is);
//! - accuracy as asked: the fraction classified as the digit they were made for;
//! - class balance: the smallest and largest fraction of any predicted digit,
//!   and KL(p || uniform) in nats (0 when balanced);
//! - mean confidence: the average of the classifier's largest probability.
//!
//! The table goes to stdout; the same numbers go to a JSON file (`--json`,
//! by default beside the input: `<samples>.eval.json` for `--samples x.npy`,
//! `eval-<sampler>-n<N>.json` beside the checkpoint, e.g. `eval-ddim50-g1-n1000.json`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use ddpm::data::{locate, Split, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};
use ddpm::eval::{
    classify, load_classifier, save_classifier, score, train_classifier, ClassifierConfig, Gaussian, Score,
};
use ddpm::pipeline::MAX_IMAGES;
use ddpm::sampler::Method;
use ddpm::{Pipeline, Sampling};
use ddpm_autograd::Tensor;
use ddpm_nn::{Classifier, Module};
use ddpm_tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::device::{resolve, DeviceArg};
use crate::download::Dataset;
use crate::npy;
use crate::outputs::{self, Plan};
use crate::sample::{sample_with_bar, sampling_from_flags, SamplerArg};

#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["checkpoint", "samples"])))]
pub struct EvalArgs {
    /// A model file: draw --n images from it, then judge them.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Images to judge: float32 [N, 1, 28, 28] in [-1, 1] (what `cargo xtask sample --npy` writes).
    #[arg(long)]
    samples: Option<PathBuf>,
    /// The digit each image of --samples was generated for (1-D integer .npy).
    #[arg(long, requires = "samples", conflicts_with = "checkpoint")]
    labels: Option<PathBuf>,
    /// Images to draw from --checkpoint.
    #[arg(long, default_value_t = 1000, conflicts_with = "samples")]
    n: usize,
    #[arg(long, value_enum, default_value_t = SamplerArg::Ddim, conflicts_with = "samples")]
    sampler: SamplerArg,
    /// DDIM steps (DDPM always takes T).
    #[arg(long, default_value_t = 50, conflicts_with = "samples")]
    steps: usize,
    /// DDIM's noise: 0 is deterministic, 1 is DDPM-like.
    #[arg(long, default_value_t = 0.0, conflicts_with = "samples")]
    eta: f64,
    /// Classifier-free guidance weight w [default: 1 for a conditional model, else 0].
    #[arg(long, conflicts_with = "samples")]
    guidance: Option<f32>,
    /// Seed of the sampling noise.
    #[arg(long, default_value_t = 0, conflicts_with = "samples")]
    seed: u64,
    /// The data set the model learnt: the classifier is trained on its training
    /// split, and the FLD compares with its t10k split.
    #[arg(long, value_enum, default_value_t = Dataset::Mnist)]
    dataset: Dataset,
    /// Folder with the data set's files, both splits (else $DDPM_DATA, else
    /// data/<dataset>/, else /usr/share/datasets/<dataset>/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The classifier's weights: read if the file exists, else trained and written there
    /// [default: runs/classifier/lenet.safetensors for MNIST, runs/classifier-<dataset>/ for others].
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Train the classifier again (and overwrite --classifier) even if the file exists.
    #[arg(long)]
    retrain: bool,
    /// Train the classifier on the first N training images only [default: all].
    #[arg(long)]
    train_limit: Option<usize>,
    /// Epochs of classifier training [default: 15].
    #[arg(long)]
    epochs: Option<usize>,
    /// Real training images in the floor [default: as many as there are samples].
    #[arg(long)]
    floor_n: Option<usize>,
    /// Where to write the numbers as JSON [default: beside the checkpoint or the samples].
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

/// Where the images to judge come from, checked before any work is done.
enum Source {
    Checkpoint { path: PathBuf, pipeline: Box<Pipeline>, settings: Sampling },
    File { path: PathBuf, images: Tensor, labels: Option<(PathBuf, Vec<usize>)> },
}

impl Source {
    fn len(&self, n: usize) -> usize {
        match self {
            Source::Checkpoint { .. } => n,
            Source::File { images, .. } => images.dims()[0],
        }
    }
}

/// The most epochs of classifier training asked for: 15 reach 99% on MNIST.
const MAX_CLASSIFIER_EPOCHS: usize = 1_000;

pub fn run(args: EvalArgs) -> Result<()> {
    let device = resolve(args.device)?;
    if args.train_limit == Some(0) {
        bail!("--train-limit must be at least 1");
    }
    if let Some(e) = args.epochs.filter(|e| !(1..=MAX_CLASSIFIER_EPOCHS).contains(e)) {
        bail!("--epochs must be 1 ..= {MAX_CLASSIFIER_EPOCHS} (the classifier learns MNIST in 15), not {e}");
    }
    let source = open_source(&args, device)?;
    let n = source.len(args.n);
    let env = std::env::var_os("DDPM_DATA").map(PathBuf::from);
    let data_dir = locate(args.dataset.name(), args.data_dir.as_deref(), env.as_deref())?;
    let train = Split::load(&data_dir, TRAIN_IMAGES, TRAIN_LABELS)?;
    let test = Split::load(&data_dir, TEST_IMAGES, TEST_LABELS)?;
    if train.len() < 2 {
        bail!("{}: {} training image(s); the floor needs at least 2", data_dir.display(), train.len());
    }
    let floor_n = args.floor_n.unwrap_or(n.min(train.len()));
    if floor_n < 2 || floor_n > train.len() {
        bail!("--floor-n must be 2 ..= {} (the training images), not {floor_n}", train.len());
    }
    let json_path = args.json.clone().unwrap_or_else(|| default_json_path(&args, &source));
    plan_outputs(&args, &json_path, &data_dir)?;

    // The judge, and the t10k statistics every set is compared with.
    let (classifier, classifier_meta) = classifier(&args, &train)?;
    // The judge runs where the sampler does (it is trained on the host, once).
    classifier.to_device(device)?;
    let (test_x, test_y) = test.batch(&(0..test.len()).collect::<Vec<_>>());
    let test_out = classify(&classifier, &test_x)?;
    let test_accuracy = test_out.accuracy(&test_y)?;
    let reference = Gaussian::fit(&test_out.features, Classifier::FEATURES)?;

    // The samples and what they were asked to be.
    let started = Instant::now();
    let (images, asked) = match &source {
        Source::Checkpoint { path, pipeline, settings } => {
            let model = pipeline.model();
            let labels = pipeline.grid_labels(n);
            eprintln!(
                "sampling {n} images from {} ({} classes) with {} on {}",
                path.display(),
                model.num_classes,
                settings.describe(),
                ddpm::device::describe(device)
            );
            let sampling = Sampling { n, labels: labels.clone(), seed: args.seed, ..settings.clone() };
            (sample_with_bar(pipeline, &sampling, true)?.images, labels)
        }
        Source::File { images, labels, .. } => (images.clone(), labels.as_ref().map(|(_, l)| l.clone())),
    };
    let sampling_seconds = started.elapsed().as_secs_f64();
    let samples = score(&classify(&classifier, &images)?, asked.as_deref(), &reference)?;

    // The floor: `floor_n` real training digits, the same ones every time.
    let mut indices = rand::seq::index::sample(&mut StdRng::seed_from_u64(0), train.len(), floor_n).into_vec();
    indices.sort_unstable();
    let (floor_x, floor_y) = train.batch(&indices);
    let floor = score(&classify(&classifier, &floor_x)?, Some(&floor_y), &reference)?;

    // The report.
    println!(
        "classifier {}: t10k accuracy {:.2}% ({} images), mean confidence {:.3}",
        classifier_path(&args).display(),
        100.0 * test_accuracy,
        test.len(),
        test_out.mean_confidence()
    );
    let what = match &source {
        Source::Checkpoint { path, settings, .. } => {
            format!("{} with {}, seed {} ({sampling_seconds:.1} s)", path.display(), settings.describe(), args.seed)
        }
        Source::File { path, labels, .. } => match labels {
            Some((l, _)) => format!("{}, asked digits from {}", path.display(), l.display()),
            None => format!("{} (asked digits unknown)", path.display()),
        },
    };
    println!("samples: {what}");
    println!();
    print!("{}", table(&[("real training images (floor)", &floor), ("samples", &samples)]));

    let source_json = match &source {
        Source::Checkpoint { path, settings, .. } => json!({
            "checkpoint": path, "sampler": settings.describe(), "seed": args.seed, "seconds": sampling_seconds,
        }),
        Source::File { path, labels, .. } => json!({"samples": path, "labels": labels.as_ref().map(|(p, _)| p)}),
    };
    let report = json!({
        "dataset": args.dataset.name(),
        "data": data_dir,
        "classifier": {
            "path": classifier_path(&args),
            "t10k_accuracy": test_accuracy,
            "t10k_mean_confidence": test_out.mean_confidence(),
            "training": classifier_meta,
        },
        "source": source_json,
        "floor": score_json(&floor, "real training images"),
        "samples": score_json(&samples, "samples"),
    });
    let text = serde_json::to_string_pretty(&report)? + "\n";
    // The report is the one output made at the end (the classifier cache, if
    // trained, was written when it was ready: see `classifier`). Nothing of the
    // report is written before this point, so a Ctrl-C may simply kill the
    // process: it leaves no partial output.
    outputs::commit(&[(json_path.as_path(), text.into_bytes())])?;
    eprintln!("wrote {}", json_path.display());
    Ok(())
}

/// Checks the outputs (the report, and the classifier's file if it is to be
/// trained) against the inputs and each other before any work is done.
fn plan_outputs(args: &EvalArgs, json_path: &Path, data_dir: &Path) -> Result<()> {
    let mut plan = Plan::new();
    let given = [("--checkpoint", &args.checkpoint), ("--samples", &args.samples), ("--labels", &args.labels)];
    for (flag, path) in given {
        if let Some(path) = path {
            plan.input(flag, path);
        }
    }
    plan.data_files(data_dir, &[TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS]);
    let classifier = classifier_path(args);
    let trains = args.retrain || !classifier.exists();
    if !trains {
        plan.input("--classifier", &classifier);
    }
    plan.output("--json", json_path)?;
    // A classifier's folder that does not exist yet is created when it is
    // written, and holds nothing that it could clash with.
    if trains && ddpm_nn::fs::folder_of(&classifier).is_dir() {
        plan.output("--classifier", &classifier)?;
    }
    Ok(())
}

/// Reads --samples (and --labels) or loads --checkpoint and checks the
/// sampling flags against it: every bad input is refused before any work.
fn open_source(args: &EvalArgs, device: Device) -> Result<Source> {
    if let Some(path) = &args.samples {
        let (shape, data) = npy::read_f32(path)?;
        if shape.len() != 4 || shape[1..] != [1, 28, 28] || shape[0] < 2 {
            bail!("--samples {}: shape {shape:?}, expected [N, 1, 28, 28] with N >= 2", path.display());
        }
        // Images in [0, 1] or [0, 255] would be judged as nonsense: refuse them.
        if let Some(v) = data.iter().find(|v| !v.is_finite() || v.abs() > 1.0 + 1e-3) {
            bail!("--samples {}: a value is {v}; images must lie in [-1, 1]", path.display());
        }
        let images = Tensor::from_vec(data, shape.clone())?;
        let labels = match &args.labels {
            Some(lpath) => {
                let labels = npy::read_labels(lpath)?;
                if labels.len() != shape[0] {
                    bail!(
                        "--labels {} has {} entries but --samples holds {} images",
                        lpath.display(),
                        labels.len(),
                        shape[0]
                    );
                }
                if let Some((i, y)) = labels.iter().enumerate().find(|(_, &y)| y >= Classifier::CLASSES) {
                    bail!("--labels {}: entry {i} is {y}, not a digit 0-9", lpath.display());
                }
                Some((lpath.clone(), labels))
            }
            None => None,
        };
        return Ok(Source::File { path: path.clone(), images, labels });
    }

    let path = args.checkpoint.clone().expect("clap requires --checkpoint or --samples");
    if !(2..=MAX_IMAGES).contains(&args.n) {
        bail!(
            "--n must be 2 ..= {MAX_IMAGES} (a covariance needs two images; the most one run samples), not {}",
            args.n
        );
    }
    let pipeline = Pipeline::from_checkpoint(&path, device)?;
    let settings = sampling_from_flags(&pipeline, args.sampler, args.steps, args.eta, args.guidance)?;
    Ok(Source::Checkpoint { path, pipeline: Box::new(pipeline), settings })
}

/// `<stem>.eval.json` beside --samples; `eval-<sampler>-n<N>.json` beside
/// --checkpoint, naming the sampler, guidance, eta and seed where they are
/// not the defaults (`eval-ddim50-g1-n1000.json`, `eval-ddpm-n200.json`).
fn default_json_path(args: &EvalArgs, source: &Source) -> PathBuf {
    match source {
        Source::File { path, .. } => {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            path.with_file_name(format!("{stem}.eval.json"))
        }
        Source::Checkpoint { path, settings, .. } => {
            let mut tag = match settings.method {
                Method::Ddpm => "ddpm".to_string(),
                Method::Ddim { steps, eta: 0.0 } => format!("ddim{steps}"),
                Method::Ddim { steps, eta } => format!("ddim{steps}-eta{eta}"),
                Method::Lecture => "lecture".to_string(),
                Method::LectureJump => "lecture-jump".to_string(),
            };
            if settings.guidance != 0.0 {
                tag += &format!("-g{}", settings.guidance);
            }
            tag += &format!("-n{}", args.n);
            if args.seed != 0 {
                tag += &format!("-seed{}", args.seed);
            }
            path.with_file_name(format!("eval-{tag}.json"))
        }
    }
}

/// `--classifier`, or the data set's default cache.
fn classifier_path(args: &EvalArgs) -> PathBuf {
    args.classifier.clone().unwrap_or_else(|| match args.dataset {
        Dataset::Mnist => PathBuf::from("runs/classifier/lenet.safetensors"),
        other => PathBuf::from(format!("runs/classifier-{}/lenet.safetensors", other.name())),
    })
}

/// The cached classifier, or a freshly trained one (then cached).
fn classifier(args: &EvalArgs, train: &Split) -> Result<(Classifier, HashMap<String, String>)> {
    let path = &classifier_path(args);
    let dataset = args.dataset.name();
    let config =
        ClassifierConfig { epochs: args.epochs.unwrap_or(ClassifierConfig::default().epochs), ..Default::default() };
    let train_images = args.train_limit.unwrap_or(train.len()).min(train.len());
    if path.exists() && !args.retrain {
        let (model, meta) = load_classifier(path)?;
        // Files from before the data set was recorded were all MNIST's.
        let learnt = meta.get("dataset").map_or("mnist", String::as_str);
        if learnt != dataset {
            bail!(
                "{} is a classifier of {}, not of {dataset}; pass --classifier FILE (or --retrain to replace it)",
                path.display(),
                learnt.escape_debug()
            );
        }
        // Asked-for training settings that the cached file does not have would
        // be silently ignored: refuse instead.
        let asked = [("epochs", args.epochs, config.epochs), ("train_images", args.train_limit, train_images)];
        for (key, given, value) in asked {
            let cached = meta.get(key).map(String::as_str).unwrap_or("?");
            if given.is_some() && cached != value.to_string() {
                bail!(
                    "{} was trained with {key} = {cached}, not {value}; pass --retrain to train it again",
                    path.display()
                );
            }
        }
        eprintln!(
            "classifier: {} (trained on {} images for {} epochs)",
            path.display(),
            meta_or(&meta, "train_images"),
            meta_or(&meta, "epochs")
        );
        return Ok((model, meta));
    }

    let why = if path.exists() { "--retrain" } else { "no classifier file yet" };
    eprintln!(
        "note: {why}: training the classifier on {train_images} images for {} epochs, then caching it in {}",
        config.epochs,
        path.display()
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the folder {}", dir.display()))?;
    }
    let data = train.head(train_images);
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} steps [{elapsed} < {eta}] {msg}");
    bar.set_style(style.expect("a valid template").progress_chars("=> "));
    let mut smoothed = f64::NAN;
    let model = train_classifier(&data, &config, &mut |s| {
        smoothed = if smoothed.is_nan() { s.loss as f64 } else { 0.95 * smoothed + 0.05 * s.loss as f64 };
        bar.set_length(s.steps);
        bar.set_position(s.step + 1);
        bar.set_message(format!("epoch {} loss {smoothed:.4} lr {:.1e}", s.epoch + 1, s.lr));
    })?;
    bar.finish_and_clear();
    save_classifier(path, &model, &config, data.len(), dataset)?;
    let (_, meta) = load_classifier(path)?;
    eprintln!("wrote {} (final loss {smoothed:.4})", path.display());
    Ok((model, meta))
}

fn meta_or<'a>(meta: &'a HashMap<String, String>, key: &str) -> &'a str {
    meta.get(key).map(String::as_str).unwrap_or("?")
}

/// The rows of the report, aligned.
fn table(rows: &[(&str, &Score)]) -> String {
    let mut out = format!(
        "{:<30} {:>6} {:>8} {:>9} {:>15} {:>8} {:>10}\n",
        "", "N", "FLD", "as asked", "classes min-max", "KL(unif)", "confidence"
    );
    for (name, s) in rows {
        let asked = s.accuracy.map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
        let (lo, hi) = s.class_range();
        out += &format!(
            "{name:<30} {:>6} {:>8.3} {asked:>9} {:>15} {:>8.4} {:>10.3}\n",
            s.n,
            s.fld,
            format!("{:.1}%-{:.1}%", 100.0 * lo, 100.0 * hi),
            s.kl_to_uniform(),
            s.mean_confidence
        );
    }
    out
}

fn score_json(s: &Score, what: &str) -> Value {
    json!({
        "what": what,
        "n": s.n,
        "fld": s.fld,
        "accuracy_as_asked": s.accuracy,
        "class_fractions": s.class_fractions,
        "kl_to_uniform": s.kl_to_uniform(),
        "mean_confidence": s.mean_confidence,
    })
}
