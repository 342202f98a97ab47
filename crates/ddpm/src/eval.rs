//! Judging generated digits with an MNIST classifier (the README's "Sample
//! quality" reports these numbers).
//!
//! 1. [`train_classifier`]: the LeNet-style [`Classifier`] learns the real
//!    training digits (cross-entropy, Adam, small random shifts).
//! 2. [`classify`]: its outputs on a set of images, without gradients: the
//!    penultimate features f(x) (128 per image) and the class probabilities.
//! 3. [`score`]: what is reported of a set of images, against the features
//!    of the t10k split ([`Gaussian::fit`]):
//!    - FLD, the Fréchet distance between the two sets' features ([`frechet_distance`]);
//!    - accuracy as asked: the fraction of images generated for digit d that
//!      the classifier reads as d (when the asked digits are known);
//!    - the class fractions (class balance of unconditional samples);
//!    - the mean confidence, the average of max_k p(k | x).
//!
//! # The Fréchet distance
//!
//! Fit a Gaussian to each set of features, N(mu_1, S_1) and N(mu_2, S_2). The
//! Fréchet (2-Wasserstein) distance between two Gaussians is, squared
//! (Dowson & Landau 1982),
//!
//! ```text
//! d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).
//! ```
//!
//! This is FID's formula (Heusel et al. 2017) with the classifier's 128
//! features in place of Inception's 2048, hence "FLD" (Fréchet LeNet
//! distance). Like FID it is reported as d^2, not d. The choices:
//!
//! - Means and covariances in f64; the covariance divides by n - 1 (`np.cov`,
//!   as pytorch-fid does).
//! - Square roots by a symmetric eigendecomposition: S = V diag(l) V^T gives
//!   S^{1/2} = V diag(sqrt l) V^T ([`symmetric_eigen`], cyclic Jacobi).
//!   pytorch-fid takes `scipy.linalg.sqrtm(S_1 S_2)` instead; S_1 S_2 is not
//!   symmetric, and its square root picks up imaginary parts from rounding.
//!   The two traces agree: with A = S_1^{1/2} and B = S_1^{1/2} S_2, AB = S_1 S_2
//!   and BA = S_1^{1/2} S_2 S_1^{1/2} have the same eigenvalues, and the trace
//!   of a square root is the sum of the square roots of the eigenvalues. BA is
//!   symmetric positive semi-definite, so its eigenvalues are real and >= 0.
//! - Eigenvalues that come out slightly negative are clamped to 0 before their
//!   square root: rounding makes them, and so does a singular covariance (a
//!   feature that is always 0 after the ReLU, or fewer images than features).
//!   A d^2 a rounding error below 0 is reported as 0.
//! - The estimate from n images is biased upward: two sets drawn from one
//!   distribution are at a positive distance that shrinks like 1/n (their
//!   means alone contribute tr(S) (1/n_1 + 1/n_2); the covariances' noise adds
//!   more). So only sets of equal size compare: `cargo xtask eval` computes its
//!   floor (real training digits against t10k) from as many real digits as
//!   there are samples.

use std::collections::HashMap;
use std::path::Path;

use ddpm_autograd::{no_grad, Tensor, TensorError, Var};
use ddpm_nn::checkpoint::{self, CheckpointError};
use ddpm_nn::optim::{Adam, AdamConfig};
use ddpm_nn::{Classifier, Module};
use ddpm_tensor::Device;
use rand::Rng;

use crate::data::{Batches, Split};
use crate::rng::{stream, Stream};

/// Why an evaluation could not be done. Messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Invalid(String),
}

// ------------------------------------------------------------------ training the classifier

/// How the classifier is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierConfig {
    /// Passes over the training digits.
    pub epochs: usize,
    pub batch: usize,
    /// Adam's learning rate at the first step; it decays to 0 along a half cosine.
    pub lr: f32,
    /// Each training image is moved by up to this many pixels in x and in y
    /// (a fresh shift per image and step): the samples' digits are not all centred
    /// as MNIST's are, and 10,000 digits are few enough to overfit.
    pub max_shift: usize,
    /// Seeds the weights, the order of the data and the shifts.
    pub seed: u64,
}

impl Default for ClassifierConfig {
    /// What reaches 98.5% on t10k from the shared 10,000 training digits.
    fn default() -> Self {
        ClassifierConfig { epochs: 15, batch: 128, lr: 2e-3, max_shift: 2, seed: 0 }
    }
}

impl ClassifierConfig {
    /// The learning rate of step k of K: lr (1 + cos(pi k / K)) / 2, from lr down towards 0.
    pub fn lr_at(&self, step: u64, steps: u64) -> f32 {
        let progress = step as f64 / steps.max(1) as f64;
        (self.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
    }
}

/// What one training step of the classifier did, for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct ClassifierStep {
    /// 0-based.
    pub step: u64,
    /// Steps in the whole run.
    pub steps: u64,
    pub epoch: u64,
    /// The batch's mean cross-entropy.
    pub loss: f32,
    pub lr: f32,
}

/// Trains a fresh classifier on `data`: for each mini-batch, shift the
/// images at random, L = cross-entropy of the logits against the labels,
/// backpropagate, one Adam step. `on_step` hears about every step.
pub fn train_classifier(
    data: &Split,
    config: &ClassifierConfig,
    on_step: &mut dyn FnMut(&ClassifierStep),
) -> Result<Classifier, EvalError> {
    if config.epochs == 0 {
        return Err(EvalError::Invalid("the classifier needs at least one epoch of training".into()));
    }
    check_image_size(data.images.rows, data.images.cols)?;
    let mut batches = Batches::new(data.len(), config.batch, config.seed).map_err(EvalError::Invalid)?;
    let steps = config.epochs as u64 * batches.per_epoch();

    let model = Classifier::new(&mut stream(config.seed, Stream::Init, 0));
    let params: Vec<Var> = model.named_params().into_iter().map(|(_, p)| p).collect();
    let mut adam = Adam::new(&params, AdamConfig { lr: config.lr, ..AdamConfig::default() })?;
    for step in 0..steps {
        let (x, labels) = data.batch(batches.indices(step));
        let x = shift_images(&x, config.max_shift, &mut stream(config.seed, Stream::Step, step))?;
        let loss = model.forward(&Var::constant(x))?.cross_entropy(&labels)?;
        let grads = loss.backward()?;
        let lr = config.lr_at(step, steps);
        adam.set_lr(lr);
        adam.step(&params, &grads)?;
        let loss = loss.value().item()?;
        if !loss.is_finite() {
            return Err(EvalError::Invalid(format!("the classifier's loss became {loss} at step {step}")));
        }
        on_step(&ClassifierStep { step, steps, epoch: batches.epoch_of(step), loss, lr });
    }
    Ok(model)
}

/// Moves each image of x [N, 1, H, W] by its own (dy, dx), each uniform in
/// -max ..= max; pixels moved in from outside are background (-1).
pub fn shift_images(x: &Tensor, max: usize, rng: &mut impl Rng) -> Result<Tensor, EvalError> {
    let &[n, 1, h, w] = x.dims() else {
        return Err(EvalError::Invalid(format!("shift_images takes [N, 1, H, W], got {}", x.shape())));
    };
    if max == 0 {
        return Ok(x.clone());
    }
    let max = max as isize;
    let src = x.as_slice();
    let mut out = vec![-1.0f32; src.len()];
    for i in 0..n {
        let (dy, dx) = (rng.gen_range(-max..=max), rng.gen_range(-max..=max));
        let (image, moved) = (&src[i * h * w..][..h * w], &mut out[i * h * w..][..h * w]);
        for r in 0..h as isize {
            let from = r - dy;
            if from < 0 || from >= h as isize {
                continue;
            }
            for c in 0..w as isize {
                let from_c = c - dx;
                if from_c >= 0 && from_c < w as isize {
                    moved[(r * w as isize + c) as usize] = image[(from * w as isize + from_c) as usize];
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, x.shape().clone())?)
}

fn check_image_size(rows: usize, cols: usize) -> Result<(), EvalError> {
    if (rows, cols) != (Classifier::SIDE, Classifier::SIDE) {
        let side = Classifier::SIDE;
        return Err(EvalError::Invalid(format!("the classifier takes {side}x{side} images, not {rows}x{cols}")));
    }
    Ok(())
}

// ------------------------------------------------------------------ saving and loading it

/// The metadata entry that marks a file as this classifier's weights.
const KIND: (&str, &str) = ("kind", "lenet-mnist-classifier");

/// Writes the classifier's weights (names `conv1.weight` ... `fc2.bias`) with
/// its training settings and the data set it learnt (`dataset`, e.g. "mnist")
/// as metadata, atomically.
pub fn save_classifier(
    path: &Path,
    model: &Classifier,
    config: &ClassifierConfig,
    train_images: usize,
    dataset: &str,
) -> Result<(), EvalError> {
    let tensors: Vec<(String, Tensor)> = model.named_params().into_iter().map(|(n, p)| (n, p.value())).collect();
    let metadata = HashMap::from([
        (KIND.0.to_string(), KIND.1.to_string()),
        ("dataset".to_string(), dataset.to_string()),
        ("train_images".to_string(), train_images.to_string()),
        ("epochs".to_string(), config.epochs.to_string()),
        ("batch".to_string(), config.batch.to_string()),
        ("lr".to_string(), config.lr.to_string()),
        ("max_shift".to_string(), config.max_shift.to_string()),
        ("seed".to_string(), config.seed.to_string()),
    ]);
    Ok(checkpoint::save_tensors(path, &tensors, &metadata)?)
}

/// Reads a file written by [`save_classifier`]: the model and the metadata
/// (training settings, as strings). Refuses any other safetensors file.
pub fn load_classifier(path: &Path) -> Result<(Classifier, HashMap<String, String>), EvalError> {
    let model = Classifier::new(&mut stream(0, Stream::Init, 0));
    let metadata = checkpoint::read_metadata_map(path)?;
    if metadata.get(KIND.0).map(String::as_str) != Some(KIND.1) {
        let msg = format!("{}: not a classifier file (no metadata \"{}\": \"{}\")", path.display(), KIND.0, KIND.1);
        return Err(EvalError::Invalid(msg));
    }
    checkpoint::load_tensors_into(path, &model.named_params())?;
    Ok((model, metadata))
}

// ------------------------------------------------------------------ the classifier's outputs

/// The classifier's view of N images.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// [N, 128] row-major: the penultimate features.
    pub features: Vec<f32>,
    /// [N, 10] row-major: softmax of the logits.
    pub probs: Vec<f32>,
}

impl Outputs {
    pub fn len(&self) -> usize {
        self.probs.len() / Classifier::CLASSES
    }

    pub fn is_empty(&self) -> bool {
        self.probs.is_empty()
    }

    fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.probs.chunks_exact(Classifier::CLASSES)
    }

    /// The most probable class of each image.
    pub fn predictions(&self) -> Vec<usize> {
        let argmax = |p: &[f32]| (0..p.len()).fold(0, |best, k| if p[k] > p[best] { k } else { best });
        self.rows().map(argmax).collect()
    }

    /// The fraction of images whose most probable class is the label.
    pub fn accuracy(&self, labels: &[usize]) -> Result<f64, EvalError> {
        if labels.len() != self.len() {
            return Err(EvalError::Invalid(format!("{} labels for {} images", labels.len(), self.len())));
        }
        let hits = self.predictions().iter().zip(labels).filter(|(p, y)| p == y).count();
        Ok(hits as f64 / self.len().max(1) as f64)
    }

    /// The mean over images of max_k p(k | x).
    pub fn mean_confidence(&self) -> f64 {
        let total: f64 = self.rows().map(|p| p.iter().fold(0.0f32, |a, &b| a.max(b)) as f64).sum();
        total / self.len().max(1) as f64
    }

    /// The fraction of images predicted as each class (sums to 1).
    pub fn class_fractions(&self) -> Vec<f64> {
        let mut counts = vec![0usize; Classifier::CLASSES];
        self.predictions().into_iter().for_each(|k| counts[k] += 1);
        counts.into_iter().map(|c| c as f64 / self.len().max(1) as f64).collect()
    }
}

/// Images classified per forward pass.
const CHUNK: usize = 500;

/// Runs the classifier on images [N, 1, 28, 28] in [-1, 1], in chunks and
/// recording no graph, on the classifier's device (the images go there,
/// chunk by chunk; the features and probabilities come back).
pub fn classify(model: &Classifier, images: &Tensor) -> Result<Outputs, EvalError> {
    let n = match *images.dims() {
        [n, 1, h, w] if n > 0 => {
            check_image_size(h, w)?;
            n
        }
        _ => return Err(EvalError::Invalid(format!("images must be [N, 1, 28, 28], got {}", images.shape()))),
    };
    let (mut features, mut probs) = (vec![], vec![]);
    no_grad(|| -> Result<(), EvalError> {
        for start in (0..n).step_by(CHUNK) {
            let x = Var::constant(images.narrow(0, start, CHUNK.min(n - start))?.to(model.device())?);
            let f = model.features(&x)?;
            let p = model.head(&f)?.softmax()?;
            features.extend_from_slice(f.value().to(Device::Cpu)?.as_slice());
            probs.extend_from_slice(p.value().to(Device::Cpu)?.as_slice());
        }
        Ok(())
    })?;
    // Never score what is not a number: a NaN image or weight makes NaN
    // features, and NaN compares false with everything downstream.
    let bad = features.iter().chain(&probs).filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(EvalError::Invalid(format!(
            "the classifier gave {bad} NaN or infinite outputs for {n} images; they are not scored"
        )));
    }
    Ok(Outputs { features, probs })
}

// ------------------------------------------------------------------ scores of a set

/// What is reported about one set of images.
#[derive(Debug, Clone)]
pub struct Score {
    pub n: usize,
    /// The Fréchet distance (squared, as FID) from the reference features.
    pub fld: f64,
    /// Fraction classified as the asked (or true) digit; `None` when unknown.
    pub accuracy: Option<f64>,
    /// Fraction predicted as each digit 0-9.
    pub class_fractions: Vec<f64>,
    pub mean_confidence: f64,
}

impl Score {
    /// The smallest and largest class fraction (both 0.1 when balanced).
    pub fn class_range(&self) -> (f64, f64) {
        let lo = self.class_fractions.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.class_fractions.iter().copied().fold(0.0, f64::max);
        (lo, hi)
    }

    /// KL(p || uniform) = sum_k p_k ln(K p_k), in nats: 0 when balanced,
    /// ln 10 = 2.30 when every image is one digit.
    pub fn kl_to_uniform(&self) -> f64 {
        let k = self.class_fractions.len() as f64;
        self.class_fractions.iter().filter(|&&p| p > 0.0).map(|&p| p * (k * p).ln()).sum()
    }
}

/// Scores a set: its features against `reference` (the t10k Gaussian), its
/// predictions against `asked` (the digits the images should show), if known.
pub fn score(outputs: &Outputs, asked: Option<&[usize]>, reference: &Gaussian) -> Result<Score, EvalError> {
    let gaussian = Gaussian::fit(&outputs.features, Classifier::FEATURES)?;
    Ok(Score {
        n: outputs.len(),
        fld: frechet_distance(&gaussian, reference)?,
        accuracy: asked.map(|labels| outputs.accuracy(labels)).transpose()?,
        class_fractions: outputs.class_fractions(),
        mean_confidence: outputs.mean_confidence(),
    })
}

// ------------------------------------------------------------------ Gaussians and the Fréchet distance

/// A Gaussian N(mean, cov) in d dimensions; `cov` is d x d, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    pub mean: Vec<f64>,
    pub cov: Vec<f64>,
}

impl Gaussian {
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The sample mean and covariance of n points, given as [n, d] row-major:
    /// mu = (1/n) sum_i x_i, S = (1/(n-1)) sum_i (x_i - mu)(x_i - mu)^T.
    pub fn fit(points: &[f32], d: usize) -> Result<Gaussian, EvalError> {
        if d == 0 || !points.len().is_multiple_of(d) || points.len() / d < 2 {
            let msg = format!("a Gaussian needs at least 2 points of dimension {d}, got {} values", points.len());
            return Err(EvalError::Invalid(msg));
        }
        let n = points.len() / d;
        let mut mean = vec![0.0f64; d];
        for row in points.chunks_exact(d) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        // The upper triangle, one outer product of a centred point at a time.
        let mut cov = vec![0.0f64; d * d];
        let mut centred = vec![0.0f64; d];
        for row in points.chunks_exact(d) {
            centred.iter_mut().zip(row).zip(&mean).for_each(|((c, &x), m)| *c = x as f64 - m);
            for i in 0..d {
                let ci = centred[i];
                cov[i * d + i..(i + 1) * d].iter_mut().zip(&centred[i..]).for_each(|(s, &cj)| *s += ci * cj);
            }
        }
        for i in 0..d {
            for j in i..d {
                let v = cov[i * d + j] / (n - 1) as f64;
                cov[i * d + j] = v;
                cov[j * d + i] = v;
            }
        }
        Ok(Gaussian { mean, cov })
    }
}

/// The squared Fréchet distance between two Gaussians (see the module docs):
/// |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2}).
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64, EvalError> {
    let d = a.dim();
    if b.dim() != d || a.cov.len() != d * d || b.cov.len() != d * d {
        let msg = format!("Gaussians of different sizes: dimensions {} and {}", a.dim(), b.dim());
        return Err(EvalError::Invalid(msg));
    }
    let mean_term: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    // M = S_1^{1/2} S_2 S_1^{1/2}, symmetrised against rounding.
    let root_a = sqrt_psd(&a.cov, d);
    let m = matmul(&matmul(&root_a, &b.cov, d), &root_a, d);
    let m: Vec<f64> = (0..d * d).map(|k| 0.5 * (m[k] + m[(k % d) * d + k / d])).collect();
    // tr(M^{1/2}) = sum_i sqrt(l_i), the eigenvalues l_i clamped at 0.
    let (eigenvalues, _) = symmetric_eigen(&m, d);
    let trace_sqrt: f64 = eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).sum();
    let d2 = mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * trace_sqrt;
    // f64::max(NaN, 0) is 0: a NaN feature would score as a perfect match.
    if !d2.is_finite() {
        return Err(EvalError::Invalid(format!("the Fréchet distance is {d2}: a feature is NaN or infinite")));
    }
    Ok(d2.max(0.0))
}

/// C = A B for d x d row-major matrices.
fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            c[i * d..(i + 1) * d].iter_mut().zip(&b[k * d..(k + 1) * d]).for_each(|(c, &bkj)| *c += aik * bkj);
        }
    }
    c
}

/// S^{1/2} = V diag(sqrt(max(l, 0))) V^T for a symmetric positive
/// semi-definite d x d matrix S = V diag(l) V^T (row-major).
pub fn sqrt_psd(s: &[f64], d: usize) -> Vec<f64> {
    let (eigenvalues, v) = symmetric_eigen(s, d);
    let roots: Vec<f64> = eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).collect();
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in i..d {
            let x: f64 = (0..d).map(|k| v[i * d + k] * roots[k] * v[j * d + k]).sum();
            out[i * d + j] = x;
            out[j * d + i] = x;
        }
    }
    out
}

/// The eigendecomposition A = V diag(l) V^T of a symmetric d x d matrix
/// (row-major), by the cyclic Jacobi method (Golub & Van Loan, section 8.5).
/// Returns the eigenvalues, largest first, and V (row-major, eigenvector k in
/// column k, orthonormal).
///
/// Each rotation J in the (p, q) plane (c = cos, s = sin; J_pp = J_qq = c,
/// J_pq = s, J_qp = -s) is chosen so that A' = J^T A J has a'_pq = 0:
/// with theta = (a_qq - a_pp) / (2 a_pq), t = tan = sign(theta) / (|theta| + sqrt(theta^2 + 1)),
/// the smaller root of t^2 + 2 theta t - 1 = 0. A sweep rotates every pair
/// p < q once; the off-diagonal mass shrinks quadratically once small, and the
/// sweeps stop when it is below 1e-30 of the whole (or after 100 sweeps).
/// V accumulates the rotations: A = V diag(l) V^T.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), d * d, "symmetric_eigen: {} values for a {d} x {d} matrix", a.len());
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    (0..d).for_each(|i| v[i * d + i] = 1.0);
    let total: f64 = a.iter().map(|x| x * x).sum();
    let off_diagonal = |a: &[f64]| -> f64 { (0..d * d).filter(|k| k / d != k % d).map(|k| a[k] * a[k]).sum() };
    for _sweep in 0..100 {
        if off_diagonal(&a) <= 1e-30 * total {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A <- A J (columns p and q), then A <- J^T A (rows p and q), V <- V J.
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                a[p * d + q] = 0.0;
                a[q * d + p] = 0.0;
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    // Largest eigenvalue first, the columns of V in the same order.
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&i, &j| a[j * d + j].total_cmp(&a[i * d + i]));
    let eigenvalues = order.iter().map(|&k| a[k * d + k]).collect();
    let mut sorted = vec![0.0; d * d];
    for (new, &old) in order.iter().enumerate() {
        (0..d).for_each(|i| sorted[i * d + new] = v[i * d + old]);
    }
    (eigenvalues, sorted)
}
