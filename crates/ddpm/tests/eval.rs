//! The judge of generated digits: the Fréchet distance against closed forms,
//! the eigen-solver behind its matrix square roots, and the classifier's training.

use std::path::PathBuf;

use ddpm::data::{Split, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS};
use ddpm::eval::{
    classify, frechet_distance, load_classifier, save_classifier, shift_images, sqrt_psd, symmetric_eigen,
    train_classifier, ClassifierConfig, Gaussian, Outputs, Score,
};
use ddpm_autograd::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// `../shared/data/mnist` beside the checkout, where CI and these machines have it.
fn shared_mnist() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    dir.join(format!("{TRAIN_IMAGES}.gz")).exists().then_some(dir)
}

fn normal(rng: &mut StdRng) -> f64 {
    rng.sample(StandardNormal)
}

/// C = A B, d x d row-major.
fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    (0..d * d).map(|k| (0..d).map(|m| a[k / d * d + m] * b[m * d + k % d]).sum()).collect()
}

fn transpose(a: &[f64], d: usize) -> Vec<f64> {
    (0..d * d).map(|k| a[k % d * d + k / d]).collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// A random orthogonal d x d matrix: Gram-Schmidt on the columns of a Gaussian one.
fn random_rotation(d: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut cols: Vec<Vec<f64>> = vec![];
    while cols.len() < d {
        let mut v: Vec<f64> = (0..d).map(|_| normal(rng)).collect();
        for u in &cols {
            let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        cols.push(v.into_iter().map(|a| a / norm).collect());
    }
    (0..d * d).map(|k| cols[k % d][k / d]).collect()
}

/// Q diag(l) Q^T.
fn with_eigenvalues(q: &[f64], l: &[f64]) -> Vec<f64> {
    let d = l.len();
    let ql: Vec<f64> = (0..d * d).map(|k| q[k] * l[k % d]).collect();
    matmul(&ql, &transpose(q, d), d)
}

fn diagonal(l: &[f64]) -> Vec<f64> {
    let d = l.len();
    (0..d * d).map(|k| if k / d == k % d { l[k / d] } else { 0.0 }).collect()
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

// ------------------------------------------------------------------ the eigen-solver

#[test]
fn eigen_decomposition_reconstructs_the_matrix() {
    // A = V diag(l) V^T with V^T V = I, eigenvalues largest first.
    let mut rng = StdRng::seed_from_u64(1);
    for d in [1, 2, 7, 40] {
        let b: Vec<f64> = (0..d * d).map(|_| normal(&mut rng)).collect();
        let a: Vec<f64> = (0..d * d).map(|k| b[k] + b[k % d * d + k / d]).collect(); // B + B^T
        let (l, v) = symmetric_eigen(&a, d);
        let rebuilt = with_eigenvalues(&v, &l);
        assert!(max_abs_diff(&rebuilt, &a) < 1e-10, "d = {d}: V diag(l) V^T is off by {}", max_abs_diff(&rebuilt, &a));
        let identity = diagonal(&vec![1.0; d]);
        assert!(max_abs_diff(&matmul(&transpose(&v, d), &v, d), &identity) < 1e-12, "d = {d}: V is not orthonormal");
        assert!(l.windows(2).all(|w| w[0] >= w[1]), "d = {d}: eigenvalues not sorted: {l:?}");
    }
}

#[test]
fn eigenvalues_of_a_known_spectrum_with_repeats() {
    // Q diag(l) Q^T has eigenvalues l, whatever the rotation Q; a repeated
    // eigenvalue and a zero are the cases a careless solver gets wrong.
    let mut rng = StdRng::seed_from_u64(2);
    let l = [9.0, 4.0, 4.0, 1.5, 0.25, 0.0];
    let a = with_eigenvalues(&random_rotation(6, &mut rng), &l);
    let (found, _) = symmetric_eigen(&a, 6);
    assert!(max_abs_diff(&found, &l) < 1e-12, "{found:?} vs {l:?}");
    // A diagonal matrix is already diagonal: no rotation, values sorted.
    let (found, v) = symmetric_eigen(&diagonal(&[1.0, 3.0, 2.0]), 3);
    assert_eq!(found, vec![3.0, 2.0, 1.0]);
    assert_eq!(v, vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn square_root_of_a_psd_matrix_squares_back() {
    // (S^{1/2})^2 = S, and S^{1/2} has eigenvalues sqrt(l), at the size the
    // Fréchet distance uses (128 features).
    let mut rng = StdRng::seed_from_u64(3);
    let d = 128;
    let l: Vec<f64> = (0..d).map(|i| 4.0 / (1.0 + i as f64)).collect();
    let s = with_eigenvalues(&random_rotation(d, &mut rng), &l);
    let root = sqrt_psd(&s, d);
    let err = max_abs_diff(&matmul(&root, &root, d), &s);
    assert!(err < 1e-10, "(S^1/2)^2 is off by {err}");
    let (root_l, _) = symmetric_eigen(&root, d);
    let expected: Vec<f64> = l.iter().map(|x| x.sqrt()).collect();
    assert!(max_abs_diff(&root_l, &expected) < 1e-10);
}

// ------------------------------------------------------------------ the Fréchet distance, closed forms

fn gaussian(mean: Vec<f64>, cov: Vec<f64>) -> Gaussian {
    Gaussian { mean, cov }
}

#[test]
fn frechet_distance_of_diagonal_gaussians() {
    // Diagonal S_1 = diag(s), S_2 = diag(r): the matrices commute, so
    // (S_1^1/2 S_2 S_1^1/2)^1/2 = diag(sqrt(s r)) and
    // d^2 = |mu_1 - mu_2|^2 + sum_i (sqrt(s_i) - sqrt(r_i))^2.
    let (m1, m2) = (vec![0.5, -1.0, 2.0, 0.0], vec![1.5, 1.0, 2.0, -3.0]);
    let (s, r) = ([4.0, 1.0, 0.25, 9.0], [1.0, 1.0, 2.25, 0.01]);
    let expected = squared_distance(&m1, &m2)
        + s.iter().zip(&r).map(|(a, b): (&f64, &f64)| (a.sqrt() - b.sqrt()).powi(2)).sum::<f64>();
    let d2 = frechet_distance(&gaussian(m1.clone(), diagonal(&s)), &gaussian(m2.clone(), diagonal(&r))).unwrap();
    assert!((d2 - expected).abs() < 1e-12, "{d2} vs {expected}");
    // Equal Gaussians are at distance 0; a point mass (S = 0) is at |mu|^2 + tr S.
    let a = gaussian(m1.clone(), diagonal(&s));
    assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-12);
    let point = gaussian(m2.clone(), diagonal(&[0.0; 4]));
    let expected = squared_distance(&m1, &m2) + s.iter().sum::<f64>();
    assert!((frechet_distance(&a, &point).unwrap() - expected).abs() < 1e-12);
    assert!((frechet_distance(&point, &a).unwrap() - expected).abs() < 1e-12);
}

#[test]
fn frechet_distance_of_rotated_commuting_gaussians() {
    // S_1 = Q diag(s) Q^T and S_2 = Q diag(r) Q^T share eigenvectors: the
    // distance is that of the diagonal case, rotated, so the same sum.
    let mut rng = StdRng::seed_from_u64(4);
    let d = 10;
    let q = random_rotation(d, &mut rng);
    let s: Vec<f64> = (0..d).map(|i| 0.1 + i as f64).collect();
    let r: Vec<f64> = (0..d).map(|i| 5.0 / (1.0 + i as f64)).collect();
    let (m1, m2): (Vec<f64>, Vec<f64>) = ((0..d).map(|_| normal(&mut rng)).collect(), vec![0.0; d]);
    let expected =
        squared_distance(&m1, &m2) + s.iter().zip(&r).map(|(a, b)| (a.sqrt() - b.sqrt()).powi(2)).sum::<f64>();
    let (a, b) = (gaussian(m1, with_eigenvalues(&q, &s)), gaussian(m2, with_eigenvalues(&q, &r)));
    let d2 = frechet_distance(&a, &b).unwrap();
    assert!((d2 - expected).abs() < 1e-9 * expected, "{d2} vs {expected}");
}

#[test]
fn frechet_distance_of_non_commuting_gaussians_in_two_dimensions() {
    // For a 2x2 PSD matrix M, tr(M^1/2) = sqrt(tr M + 2 sqrt(det M)) (the
    // eigenvalues' square roots a, b satisfy (a + b)^2 = tr M + 2ab). With
    // M = S_1^1/2 S_2 S_1^1/2: tr M = tr(S_1 S_2) and det M = det S_1 det S_2, so
    // d^2 = |mu_1 - mu_2|^2 + tr S_1 + tr S_2 - 2 sqrt(tr(S_1 S_2) + 2 sqrt(det S_1 det S_2)).
    let s1 = vec![2.0, 0.8, 0.8, 1.0];
    let s2 = vec![0.5, -0.3, -0.3, 3.0];
    let (m1, m2) = (vec![1.0, 2.0], vec![-0.5, 0.0]);
    let det = |s: &[f64]| s[0] * s[3] - s[1] * s[2];
    let tr_s1s2 = s1[0] * s2[0] + s1[1] * s2[2] + s1[2] * s2[1] + s1[3] * s2[3];
    let expected = squared_distance(&m1, &m2) + (s1[0] + s1[3]) + (s2[0] + s2[3])
        - 2.0 * (tr_s1s2 + 2.0 * (det(&s1) * det(&s2)).sqrt()).sqrt();
    let (a, b) = (gaussian(m1, s1), gaussian(m2, s2));
    let d2 = frechet_distance(&a, &b).unwrap();
    assert!((d2 - expected).abs() < 1e-12, "{d2} vs {expected}");
    // The formula is symmetric although S_1^1/2 S_2 S_1^1/2 is not S_2^1/2 S_1 S_2^1/2.
    assert!((frechet_distance(&b, &a).unwrap() - expected).abs() < 1e-12);
}

#[test]
fn frechet_distance_is_symmetric_in_high_dimension() {
    // d(a, b) = d(b, a) for general (non-commuting) covariances of 128 features.
    let mut rng = StdRng::seed_from_u64(5);
    let d = 128;
    let random_cov = |rng: &mut StdRng| {
        let l: Vec<f64> = (0..d).map(|_| rng.gen_range(0.0..2.0)).collect();
        with_eigenvalues(&random_rotation(d, rng), &l)
    };
    let a = gaussian((0..d).map(|_| normal(&mut rng)).collect(), random_cov(&mut rng));
    let b = gaussian(vec![0.0; d], random_cov(&mut rng));
    let (ab, ba) = (frechet_distance(&a, &b).unwrap(), frechet_distance(&b, &a).unwrap());
    assert!((ab - ba).abs() < 1e-9 * ab, "{ab} vs {ba}");
    assert!(frechet_distance(&a, &gaussian(vec![0.0; 3], diagonal(&[1.0; 3]))).is_err(), "sizes must match");
}

/// n points of N(mean, L L^T): x = mean + L z, as [n, d] f32.
fn draw(mean: &[f64], l: &[f64], n: usize, rng: &mut StdRng) -> Vec<f32> {
    let d = mean.len();
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        let z: Vec<f64> = (0..d).map(|_| normal(rng)).collect();
        out.extend((0..d).map(|i| (mean[i] + (0..d).map(|j| l[i * d + j] * z[j]).sum::<f64>()) as f32));
    }
    out
}

#[test]
fn frechet_distance_from_samples_converges_to_the_closed_form() {
    // Fit Gaussians to 40,000 draws of two non-commuting 3-D Gaussians: the
    // fitted means and covariances, and the distance between them, approach
    // the exact ones (errors shrink as 1/sqrt(n); the bounds are several
    // standard errors wide). Two samples of one Gaussian are close to 0.
    let mut rng = StdRng::seed_from_u64(6);
    let (m1, m2) = (vec![1.0, 0.0, -1.0], vec![0.0, 0.5, 0.0]);
    let l1 = vec![1.0, 0.0, 0.0, 0.5, 1.2, 0.0, -0.3, 0.4, 0.7];
    let l2 = vec![0.6, 0.0, 0.0, -0.4, 0.9, 0.0, 0.2, 0.1, 1.5];
    let cov = |l: &[f64]| matmul(l, &transpose(l, 3), 3);
    let exact = frechet_distance(&gaussian(m1.clone(), cov(&l1)), &gaussian(m2.clone(), cov(&l2))).unwrap();
    let n = 40_000;
    let a = Gaussian::fit(&draw(&m1, &l1, n, &mut rng), 3).unwrap();
    let b = Gaussian::fit(&draw(&m2, &l2, n, &mut rng), 3).unwrap();
    assert!(max_abs_diff(&a.mean, &m1) < 0.03 && max_abs_diff(&a.cov, &cov(&l1)) < 0.05, "{a:?}");
    let estimated = frechet_distance(&a, &b).unwrap();
    assert!(exact > 1.5, "the two Gaussians should be far apart: {exact}");
    assert!((estimated - exact).abs() < 0.05, "estimated {estimated}, exact {exact}");
    let again = Gaussian::fit(&draw(&m1, &l1, n, &mut rng), 3).unwrap();
    let same = frechet_distance(&a, &again).unwrap();
    assert!(same < 0.01, "two samples of one Gaussian: {same}");
}

#[test]
fn fitting_needs_two_points() {
    assert!(Gaussian::fit(&[1.0, 2.0], 2).is_err());
    assert!(Gaussian::fit(&[1.0, 2.0, 3.0], 2).is_err());
    // Two points: mean in the middle, covariance with the n - 1 divisor.
    let g = Gaussian::fit(&[0.0, 0.0, 2.0, 4.0], 2).unwrap();
    assert_eq!(g.mean, vec![1.0, 2.0]);
    assert_eq!(g.cov, vec![2.0, 4.0, 4.0, 8.0]);
}

// ------------------------------------------------------------------ scores of a set

#[test]
fn accuracy_confidence_and_class_balance() {
    // Three images, predicted 2, 2 and 0 with confidences 0.9, 0.5, 0.6.
    let mut probs = vec![0.0f32; 30];
    probs[2] = 0.9;
    probs[1] = 0.1;
    probs[10 + 2] = 0.5;
    probs[10 + 7] = 0.5; // a tie goes to the lower digit
    probs[20] = 0.6;
    probs[20 + 3] = 0.4;
    let outputs = Outputs { features: vec![0.0; 3 * 128], probs };
    assert_eq!(outputs.predictions(), vec![2, 2, 0]);
    assert_eq!(outputs.accuracy(&[2, 7, 0]).unwrap(), 2.0 / 3.0);
    assert!(outputs.accuracy(&[2, 7]).is_err());
    assert!((outputs.mean_confidence() - 2.0 / 3.0).abs() < 1e-7);
    let fractions = outputs.class_fractions();
    assert_eq!((fractions[0], fractions[2], fractions[7]), (1.0 / 3.0, 2.0 / 3.0, 0.0));
    // KL(p || uniform) = sum p ln(10 p): 0 when balanced, ln 10 for one class.
    let score =
        |class_fractions: Vec<f64>| Score { n: 10, fld: 0.0, accuracy: None, class_fractions, mean_confidence: 1.0 };
    assert!(score(vec![0.1; 10]).kl_to_uniform().abs() < 1e-12);
    let one = score((0..10).map(|k| if k == 4 { 1.0 } else { 0.0 }).collect());
    assert!((one.kl_to_uniform() - 10f64.ln()).abs() < 1e-12);
    assert_eq!(one.class_range(), (0.0, 1.0));
}

#[test]
fn shifts_move_digits_within_the_bound() {
    // Every shifted image is its original moved by some (dy, dx) in -2..=2,
    // with background (-1) moved in; over many images every shift occurs.
    let mut rng = StdRng::seed_from_u64(7);
    let n = 200;
    let x = Tensor::rand_uniform([n, 1, 28, 28], 0.0, 1.0, &mut rng);
    let y = shift_images(&x, 2, &mut rng).unwrap();
    let mut seen = std::collections::HashSet::new();
    for i in 0..n {
        let (a, b) = (&x.as_slice()[i * 784..][..784], &y.as_slice()[i * 784..][..784]);
        let moved = |dy: i32, dx: i32| {
            (0..28i32).all(|r| {
                (0..28i32).all(|c| {
                    let (fr, fc) = (r - dy, c - dx);
                    let want =
                        if (0..28).contains(&fr) && (0..28).contains(&fc) { a[(fr * 28 + fc) as usize] } else { -1.0 };
                    b[(r * 28 + c) as usize] == want
                })
            })
        };
        let shift = (-2..=2).flat_map(|dy| (-2..=2).map(move |dx| (dy, dx))).find(|&(dy, dx)| moved(dy, dx));
        seen.insert(shift.unwrap_or_else(|| panic!("image {i} is not a shift of its original")));
    }
    assert_eq!(seen.len(), 25, "every shift in -2..=2 x -2..=2 should occur");
    assert_eq!(shift_images(&x, 0, &mut rng).unwrap().to_vec(), x.to_vec());
}

// ------------------------------------------------------------------ the classifier

#[test]
fn classifier_training_reduces_its_loss() {
    // 2,000 real training digits, 248 steps of 32: the mean cross-entropy of
    // the last 10 steps is far below that of the first 10 (ln 10 = 2.3 at
    // chance), and the classifier reads unseen t10k digits well above chance.
    // A wrong gradient anywhere in conv, max-pool, linear or cross-entropy
    // would stall the loss.
    let Some(dir) = shared_mnist() else {
        eprintln!("skipped: ../shared/data/mnist is not beside this checkout");
        return;
    };
    let train = Split::load(&dir, TRAIN_IMAGES, TRAIN_LABELS).unwrap().head(2000);
    let test = Split::load(&dir, TEST_IMAGES, TEST_LABELS).unwrap().head(1000);
    let config = ClassifierConfig { epochs: 4, batch: 32, lr: 2e-3, max_shift: 1, seed: 3 };
    let mut losses = vec![];
    let model = train_classifier(&train, &config, &mut |s| losses.push(s.loss)).unwrap();
    assert_eq!(losses.len(), 4 * (2000 / 32));
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let (first, last) = (mean(&losses[..10]), mean(&losses[losses.len() - 10..]));
    assert!(first > 1.5, "the untrained classifier should be near chance: {first}");
    assert!(last < 0.4 * first, "the loss went from {first} to {last}");

    let (x, labels) = test.batch(&(0..test.len()).collect::<Vec<_>>());
    let outputs = classify(&model, &x).unwrap();
    let accuracy = outputs.accuracy(&labels).unwrap();
    assert!(accuracy > 0.85, "t10k accuracy after a short training: {accuracy}");

    // Saved and loaded, it computes the same outputs; a file of something
    // else is refused by name.
    let tmp = tempfile::Builder::new().prefix("ddpm-eval-").tempdir().unwrap();
    let path = tmp.path().join("classifier.safetensors");
    save_classifier(&path, &model, &config, train.len(), "mnist").unwrap();
    let (loaded, metadata) = load_classifier(&path).unwrap();
    assert_eq!(metadata["train_images"], "2000");
    assert_eq!(classify(&loaded, &x).unwrap().probs, outputs.probs);
    ddpm_nn::checkpoint::save_tensors(&path, &[("w".into(), Tensor::zeros([2]))], &Default::default()).unwrap();
    let err = load_classifier(&path).err().unwrap().to_string();
    assert!(err.contains("not a classifier file"), "{err}");
}
