//! `cargo xtask lecture`: the lecture's sections, in numbers and pictures.
//!
//! 1. One noising step, x_t = a_t x_{t-1} + b_t e_t: a real digit at
//!    t = 0, 100, ..., 900, 999 (`noising.png`).
//! 2. The chain collapses: running the steps one by one and jumping with the
//!    closed form x_t = abar_t x_0 + bbar_t e give the same distribution (a
//!    table of means and variances from thousands of draws of each).
//! 3. The training objective in the lecture's names, with the numbers.
//! 4. Sampling: the lecture's x_{t-1} = (x_t - b_t e) / a_t next to the DDPM
//!    step on a trained checkpoint, from the same x_T (`lecture_formula.png`,
//!    `ddpm.png`), and why the first fails.
//!
//! docs/lecture.md maps every formula to the function that implements it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use ddpm::data::{locate, Split, TEST_IMAGES, TEST_LABELS};
use ddpm::picture;
use ddpm::rng::{stream, Stream};
use ddpm::sampler::{self, Conditioning, Method, SampleError};
use ddpm::{Pipeline, Sampling, Schedule, ScheduleKind};
use ddpm_autograd::Tensor;
use ddpm_tensor::Device;

use crate::outputs::{self, Plan};
use crate::sample::sample_with_bar;

#[derive(Args)]
pub struct LectureArgs {
    /// A trained model for section 4 [default: runs/tiny-c10/model.safetensors, the
    /// one `cargo xtask train` writes; section 4 is skipped with a note if it is absent].
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Folder with the MNIST files (else $DDPM_DATA, else data/mnist/).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the pictures go.
    #[arg(long, default_value = "runs/lecture")]
    out: PathBuf,
    /// Draws of the chain and of the closed form in section 2.
    #[arg(long, default_value_t = 4000)]
    draws: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The most draws section 2 takes.
const MAX_DRAWS: usize = 100_000;

pub fn run(args: LectureArgs) -> Result<()> {
    // Section 2 holds four copies of the draws (x_0, the chain's x_t, the
    // closed form's and the noise), 3 KB each.
    if !(2..=MAX_DRAWS).contains(&args.draws) {
        anyhow::bail!("--draws must be 2 ..= {MAX_DRAWS} (1.25 GB of images at the most), not {}", args.draws);
    }
    if let Some(path) = &args.checkpoint {
        if !path.is_file() {
            anyhow::bail!("--checkpoint {}: no such file", path.display());
        }
    }
    let checkpoint = args.checkpoint.clone().unwrap_or_else(|| PathBuf::from("runs/tiny-c10/model.safetensors"));
    let env = std::env::var_os("DDPM_DATA").map(PathBuf::from);
    let dir = locate("mnist", args.data_dir.as_deref(), env.as_deref())?;
    let test = Split::load(&dir, TEST_IMAGES, TEST_LABELS)?;
    plan_outputs(&args.out, &checkpoint, &dir)?;
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    let (x0, label) = test.batch(&[0]);

    // The pictures are made in memory as the sections go and written together
    // at the end (all or none: see outputs.rs), so a failure or a Ctrl-C
    // midway leaves no partial set behind.
    let mut pictures = Pictures::default();
    section_1(&schedule, &x0, label[0], &args.out, args.seed, &mut pictures)?;
    section_2(&schedule, &x0, args.draws, args.seed);
    section_3(&schedule);
    section_4(&checkpoint, &test, &args.out, args.seed, &mut pictures)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    outputs::commit(&pictures.0)
}

/// The pictures of the sections, path and PNG bytes, to be written at the end.
#[derive(Default)]
struct Pictures(Vec<(PathBuf, Vec<u8>)>);

/// The names of the pictures the lecture writes into --out.
const PICTURES: [&str; 5] = ["noising.png", "real.png", "lecture_formula.png", "ddpm.png", "lecture_jump.png"];

/// Checks the pictures' paths in `out` against the inputs before any work.
/// A folder that does not exist yet is created at the end, and holds nothing
/// that a picture could clash with.
fn plan_outputs(out: &Path, checkpoint: &Path, data_dir: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        anyhow::bail!("--out {} is not a folder", out.display());
    }
    if !out.is_dir() {
        return Ok(());
    }
    let mut plan = Plan::new();
    plan.input("--checkpoint", checkpoint);
    plan.data_files(data_dir, &[TEST_IMAGES, TEST_LABELS]);
    for name in PICTURES {
        plan.output("--out", &out.join(name))?;
    }
    Ok(())
}

fn heading(title: &str) {
    println!("\n== {title} {}", "=".repeat(70usize.saturating_sub(title.len())));
}

/// Section 1: one noising step, repeated; shown with the closed form at chosen t.
fn section_1(
    schedule: &Schedule,
    x0: &Tensor,
    label: usize,
    out: &Path,
    seed: u64,
    pictures: &mut Pictures,
) -> Result<()> {
    heading("1. Adding a little noise many times");
    println!("x_t = a_t x_(t-1) + b_t e_t,  a_t^2 + b_t^2 = 1,  e_t ~ N(0, I)   (linear schedule, T = 1000)");
    println!("\n{:>5} {:>9} {:>9} {:>9} {:>9}", "t", "a_t", "b_t", "abar_t", "bbar_t");
    let ts: Vec<usize> = (0..10).map(|i| i * 100).chain([999]).collect();
    for &t in &ts {
        let (a, b, abar, bbar) = (schedule.a(t), schedule.b(t), schedule.abar(t), schedule.bbar(t));
        println!("{t:>5} {a:>9.5} {b:>9.5} {abar:>9.5} {bbar:>9.5}");
    }
    let e = Tensor::randn(x0.shape().clone(), &mut stream(seed, Stream::Sample, 0));
    let mut frames = vec![];
    for &t in &ts {
        frames.push(schedule.q_sample(x0, &[t], &e)?.clamp(-1.0, 1.0)?);
    }
    let path = out.join("noising.png");
    pictures.0.push((path.clone(), picture::encode_strip_png(&frames, 3)?));
    println!("\na test digit (a {label}) at t = 0, 100, ..., 900, 999, one noise draw: {}", path.display());
    println!("by t = 999, abar_t = {:.4}: almost nothing of the digit is left.", schedule.abar(999));
    Ok(())
}

/// Section 2: the iterated chain and the closed form agree in distribution.
fn section_2(schedule: &Schedule, x0: &Tensor, draws: usize, seed: u64) {
    heading("2. The chain collapses into one step");
    println!(
        "iterating x_t = a_t x_(t-1) + b_t e_t (Schedule::noise_step) from x_0 gives x_t ~ N(abar_t x_0, bbar_t^2 I),"
    );
    println!("abar_t = a_0 a_1 ... a_t, bbar_t^2 = 1 - abar_t^2: so x_t = abar_t x_0 + bbar_t e in one step (Schedule::q_sample).");
    println!("{draws} draws of each, per pixel of one digit: variances averaged over the pixels, and the worst");
    println!("pixel's |mean - abar_t x_0|:\n");
    let checkpoints = [0usize, 9, 99, 499, 999];
    let n_pix = x0.numel();
    // `draws` copies of the digit, each noised on its own: [draws, 1, 28, 28].
    let copies: Vec<&Tensor> = vec![x0; draws];
    let x0s = Tensor::concat(&copies, 0).expect("copies of one image");
    let x0: Vec<f64> = x0.as_slice().iter().map(|&v| v as f64).collect();
    // Per checkpoint and pixel: sum and sum of squares of the chain's x_t and the closed form's.
    let mut sums = vec![[[0.0f64; 2]; 2]; checkpoints.len() * n_pix];
    let mut rng = stream(seed, Stream::Sample, 1);
    let mut x = x0s.clone();
    for t in 0..schedule.timesteps() {
        let e = Tensor::randn(x.shape().clone(), &mut rng);
        x = schedule.noise_step(&x, t, &e).expect("shapes agree");
        let Some(c) = checkpoints.iter().position(|&s| s == t) else { continue };
        let e = Tensor::randn(x.shape().clone(), &mut rng);
        let closed = schedule.q_sample(&x0s, &vec![t; draws], &e).expect("shapes agree");
        for (k, values) in [x.as_slice(), closed.as_slice()].into_iter().enumerate() {
            for image in values.chunks(n_pix) {
                for (p, &v) in image.iter().enumerate() {
                    let s = &mut sums[c * n_pix + p][k];
                    s[0] += v as f64;
                    s[1] += (v as f64) * (v as f64);
                }
            }
        }
    }
    println!(
        "{:>5} | {:>8} {:>11} {:>11} | {:>17} {:>17}",
        "t", "bbar_t^2", "var(chain)", "var(closed)", "mean err (chain)", "mean err (closed)"
    );
    let n = draws as f64;
    for (c, &t) in checkpoints.iter().enumerate() {
        let (abar, bbar) = (schedule.abar(t), schedule.bbar(t));
        let (mut var, mut mean_err) = ([0.0f64; 2], [0.0f64; 2]);
        for p in 0..n_pix {
            for (k, s) in sums[c * n_pix + p].iter().enumerate() {
                let mean = s[0] / n;
                var[k] += (s[1] / n - mean * mean) * n / (n - 1.0) / n_pix as f64;
                mean_err[k] = f64::max(mean_err[k], (mean - abar * x0[p]).abs());
            }
        }
        println!(
            "{t:>5} | {:>8.5} {:>11.5} {:>11.5} | {:>17.5} {:>17.5}",
            bbar * bbar,
            var[0],
            var[1],
            mean_err[0],
            mean_err[1]
        );
    }
    println!(
        "\nboth match N(abar_t x_0, bbar_t^2) to sampling error (a mean of {draws} draws of a unit variance is \
         off by about {:.3}; the worst of 784 pixels by about 3.5 times that).",
        1.0 / n.sqrt()
    );
}

/// Section 3: the training objective.
fn section_3(schedule: &Schedule) {
    heading("3. One network, trained to predict the noise");
    println!("pick x_0 from the data, t uniform in 0..T, e ~ N(0, I); x_t = abar_t x_0 + bbar_t e;");
    println!("loss = mean (f(x_t, t) - e)^2. One network f serves every t: t enters through a sinusoidal embedding.");
    println!(
        "predicting nothing (f = 0) scores 1.0; a trained tiny model reaches about 0.03 (see runs/*/loss.png).\n\
         at t = 999 the input is {:.1}% noise by variance, at t = 0 only {:.3}%.",
        100.0 * schedule.bbar(999).powi(2),
        100.0 * schedule.bbar(0).powi(2)
    );
    println!("`cargo xtask train` runs this loop: crates/ddpm/src/loss.rs, crates/ddpm/src/train.rs.");
}

/// Section 4: the lecture's sampling formula beside the DDPM step.
fn section_4(checkpoint: &Path, test: &Split, out: &Path, seed: u64, pictures: &mut Pictures) -> Result<()> {
    heading("4. Denoising: the lecture's formula and the paper's");
    println!("lecture:  x_(t-1) = (x_t - b_t e) / a_t");
    println!("paper:    x_(t-1) = (x_t - (b_t^2 / bbar_t) e) / a_t + b_t z,   z ~ N(0, I), no z at t = 0");
    let schedule = Schedule::new(ScheduleKind::Linear, 1000);
    println!("\n{:>5} {:>12} {:>16}   (how much of e each formula removes)", "t", "b_t", "b_t^2 / bbar_t");
    for t in [999, 500, 100, 10, 0] {
        let (b, bbar) = (schedule.b(t), schedule.bbar(t));
        println!("{t:>5} {b:>12.5} {:>16.5}", b * b / bbar);
    }
    if !checkpoint.exists() {
        println!(
            "\n(no trained model at {}: run `cargo xtask train` first, or pass --checkpoint, to see the two side by side)",
            checkpoint.display()
        );
        return Ok(());
    }
    let pipeline = Pipeline::from_checkpoint(checkpoint, Device::Cpu)?;
    let n = 20;
    // Real digits laid out the same way: the first two test images of each digit.
    let mut pairs: Vec<Vec<usize>> = vec![vec![]; 10];
    for (i, &y) in test.labels.iter().enumerate() {
        if pairs[y as usize].len() < 2 {
            pairs[y as usize].push(i);
        }
    }
    if let Some((digit, found)) = pairs.iter().enumerate().find(|(_, p)| p.len() < 2) {
        anyhow::bail!(
            "the test split ({TEST_LABELS}) has {} image(s) of digit {digit}; the row of real digits needs two of each",
            found.len()
        );
    }
    let order: Vec<usize> = (0..2).flat_map(|k| pairs.iter().map(move |p| p[k])).collect();
    let mut results = vec![("real test digits", test.batch(&order).0, out.join("real.png"))];
    for (method, name) in [(Method::Lecture, "lecture_formula.png"), (Method::Ddpm, "ddpm.png")] {
        // The same x_T for both (from the seed); digit i % 10 for image i.
        let sampling = Sampling { method, guidance: 0.0, seed, keep_frames: true, ..pipeline.sampling(n) };
        let raw = draw_raw(&pipeline, &sampling)?;
        let path = out.join(name);
        let shown = raw.clamp(-1.0, 1.0)?;
        pictures.0.push((path.clone(), picture::encode_grid_png(&shown, 10, 3)?));
        results.push((name.trim_end_matches(".png"), raw, path));
    }
    pictures.0.push((results[0].2.clone(), picture::encode_grid_png(&results[0].1, 10, 3)?));
    println!("\nthe same x_T and model ({}), all T = 1000 steps each:\n", checkpoint.display());
    println!("{:<18} {:>7} {:>7} {:>8} {:>22}", "", "mean", "std", "max |x|", "same digit, other x_T");
    for (name, raw, path) in &results {
        let v = raw.as_slice();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        // Image i and image i + 10 ask for the same digit from different x_T:
        // how different are they (mean |difference| of pixels, clamped)?
        let (first, second) = (&v[..10 * 784], &v[10 * 784..]);
        let diff = first.iter().zip(second).map(|(a, b)| (a.clamp(-1.0, 1.0) - b.clamp(-1.0, 1.0)).abs() as f64);
        let diversity = diff.sum::<f64>() / first.len() as f64;
        println!("{name:<18} {mean:>7.3} {std:>7.3} {max:>8.2} {diversity:>22.3}   {}", path.display());
    }
    println!(
        "\nwhy the lecture's formula fails: f estimates all the noise in x_t, which is bbar_t e. One step should remove\n\
         only its share, b_t^2 / bbar_t of e; the formula removes b_t of e, 7 to 10 times more from t = 100 on (see\n\
         the table), and adds no fresh noise. Every step pushes x hard along the network's noise estimate, so all\n\
         chains fall into the same few smooth, saturated strokes: the two rows come out (almost) identical whatever\n\
         x_T, and most columns are not the digit asked for. The DDPM step removes the right amount and adds b_t z,\n\
         keeping x_t at the noise level bbar_t the network was trained on, down to a clean, varied digit at t = 0."
    );
    second_loop(&pipeline, out, n, seed, pictures)?;
    Ok(())
}

/// Samples without the final clamp, to measure how far a sampler strays:
/// the chain's last frame.
fn draw_raw(pipeline: &Pipeline, sampling: &Sampling) -> Result<Tensor> {
    let mut frames = sample_with_bar(pipeline, sampling, true)?.frames;
    Ok(frames.pop().expect("the chain ends with the last step"))
}

/// The end of section 4: the lecture's second loop, x = (x - bbar_t f(x, t))
/// / abar_t with t running up from the first step to T, from the same x_T:
/// x, frame by frame, until it overflows (`lecture_jump.png`, the chain of
/// the first ten images while it is finite).
///
/// The sampler refuses to go on once x holds an infinity or a NaN, so the
/// loop is run here through `sampler::run` itself: its observer keeps the
/// frames, and its "diverged" error, expected here, says at which step.
fn second_loop(pipeline: &Pipeline, out: &Path, n: usize, seed: u64, pictures: &mut Pictures) -> Result<()> {
    println!(
        "\nthe lecture's second loop:  x = (1 / abar_t) (x - bbar_t f(x, t)),  t = 0, 1, ..., T-1, from the same x_T:\n"
    );
    let (model, schedule) = (pipeline.model(), pipeline.schedule());
    let x_t = Pipeline::initial_noise(n, seed);
    let labels = pipeline.grid_labels(n);
    let cond = Conditioning { labels: labels.as_deref(), guidance: 0.0 };
    let method = Method::LectureJump;
    let every = method.num_steps(schedule).div_ceil(20);
    // (the step's timestep, x after it) every `every` steps, x_T first.
    let mut frames: Vec<(Option<usize>, Tensor)> = vec![(None, x_t.clone())];
    let ended = sampler::run(model, schedule, &x_t.to(pipeline.device())?, method, cond, 0, &mut |i, t, x| {
        if (i + 1) % every == 0 {
            frames.push((Some(t), x.clone()));
        }
    });
    let diverged = match ended {
        Ok(_) => None,
        Err(SampleError::Diverged { t, count, .. }) => Some((t, count)),
        Err(e) => return Err(e.into()),
    };
    println!("{:>9} {:>12} {:>12}", "after t", "mean", "max |x|");
    let mut shown = vec![];
    for (t, frame) in &frames {
        let frame = frame.to(Device::Cpu)?;
        let v = frame.as_slice();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let at = t.map_or("x_T".to_string(), |t| t.to_string());
        println!("{at:>9} {mean:>12.4e} {max:>12.4e}");
        shown.push(frame.narrow(0, 0, 10)?.clamp(-1.0, 1.0)?);
    }
    if let Some((t, count)) = diverged {
        println!("{t:>9} (x has overflowed f32: {count} of its {} values are infinite or NaN)", n * 784);
    }
    let path = out.join("lecture_jump.png");
    pictures.0.push((path.clone(), picture::encode_strip_png(&shown, 2)?));
    println!(
        "\nwhy it fails: each step is the network's estimate of x_0 from x taken as x_t, in one jump (the closed form\n\
         x_t = abar_t x_0 + bbar_t e turned round), and it hands that estimate on as if it were x at the next, noisier\n\
         t. For the first steps t is small: the network is told x is nearly clean and removes a little of its noise\n\
         each time, and after about 50 steps x shows thin strokes (not the digits asked for). But t keeps rising\n\
         while x gets cleaner, the opposite of what the network saw in training: it finds noise of size bbar_t in an\n\
         image that has almost none, the loop subtracts it and divides by abar_t < 1, and x sinks below the\n\
         background (-1) and on; the network's answer grows with an input so far out of its range, so x is\n\
         multiplied up step after step until it overflows. The chain is in {}.",
        path.display()
    );
    Ok(())
}
