//! `cargo xtask eval` as a user meets it: real t10k digits judged with a
//! quickly trained classifier (cached, then reused), samples drawn from a
//! checkpoint, and every kind of bad input: a one-line error, a non-zero exit,
//! and nothing written.

use std::path::{Path, PathBuf};

mod common;
use common::{assert_fails_with, assert_succeeds, stderr, stdout, temp_dir, write_npy, xtask, FIXTURE, SHARED_MNIST};

use ddpm::data::{Split, TEST_IMAGES, TEST_LABELS};

/// The first `n` t10k digits as samples.npy (in [-1, 1]) and their labels as labels.npy.
fn real_digits(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let test = Split::load(Path::new(SHARED_MNIST), TEST_IMAGES, TEST_LABELS).unwrap();
    let (x, y) = test.batch(&(0..n).collect::<Vec<_>>());
    let (samples, labels) = (dir.join("samples.npy"), dir.join("labels.npy"));
    write_npy(&samples, x.dims(), x.as_slice());
    write_npy(&labels, &[n], &y.iter().map(|&d| d as f32).collect::<Vec<_>>());
    (samples, labels)
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn real_digits_score_well_and_the_classifier_is_cached() {
    let tmp = temp_dir("eval-real");
    let dir = tmp.path();
    let (samples, labels) = real_digits(dir, 300);
    let classifier = dir.join("judge").join("lenet.safetensors");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--samples", samples.to_str().unwrap(), "--data-dir", SHARED_MNIST];
        args.extend(["--classifier", classifier.to_str().unwrap(), "--device", "cpu"]);
        args.extend(extra);
        xtask(&args)
    };

    // First run: no classifier yet, so one is trained (briefly) and cached.
    let first = eval(&["--labels", labels.to_str().unwrap(), "--train-limit", "3000", "--epochs", "3"]);
    assert_succeeds(&first);
    assert!(stderr(&first).contains("training the classifier on 3000 images"), "{}", stderr(&first));
    assert!(classifier.exists());
    let table = stdout(&first);
    assert!(table.contains("t10k accuracy") && table.contains("real training images (floor)"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("samples ") && l.contains('%')), "{table}");

    // The JSON lands beside the samples; real digits are read as asked.
    let report = read_json(&dir.join("samples.eval.json"));
    let s = &report["samples"];
    assert_eq!(s["n"], 300);
    assert_eq!(report["floor"]["n"], 300, "the floor uses as many real digits as there are samples");
    let accuracy = s["accuracy_as_asked"].as_f64().unwrap();
    assert!(accuracy > 0.8, "real t10k digits should be read as their labels: {accuracy}");
    let fractions: Vec<f64> = s["class_fractions"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(fractions.len(), 10);
    assert!((fractions.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let fld = s["fld"].as_f64().unwrap();
    assert!(fld.is_finite() && fld >= 0.0, "{fld}");
    assert_eq!(report["classifier"]["training"]["train_images"], "3000");

    // Second run: the cached classifier is reused; without --labels there is
    // no accuracy as asked, only the class balance.
    let out_json = dir.join("second.json");
    let second = eval(&["--json", out_json.to_str().unwrap()]);
    assert_succeeds(&second);
    assert!(!stderr(&second).contains("training the classifier"), "{}", stderr(&second));
    let report = read_json(&out_json);
    assert!(report["samples"]["accuracy_as_asked"].is_null());
    assert_eq!(report["samples"]["fld"].as_f64().unwrap(), fld, "same samples, same classifier, same FLD");

    // Asking for other training settings than the cached file's is refused.
    assert_fails_with(&eval(&["--epochs", "2"]), "--retrain");
    // So is judging another data set with it (here MNIST's files stand in for
    // Fashion-MNIST's: the classifier's record says what it learnt).
    assert_eq!(report["dataset"], "mnist");
    assert_fails_with(&eval(&["--dataset", "fashion-mnist"]), "is a classifier of mnist, not of fashion-mnist");
}

#[test]
fn samples_from_a_checkpoint_are_judged() {
    let tmp = temp_dir("eval-checkpoint");
    let dir = tmp.path();
    let checkpoint = dir.join("model.safetensors");
    std::fs::copy(FIXTURE, &checkpoint).unwrap();
    let classifier = dir.join("lenet.safetensors");
    let result = xtask(&[
        "eval",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--n",
        "20",
        "--steps",
        "2",
        "--data-dir",
        SHARED_MNIST,
        "--classifier",
        classifier.to_str().unwrap(),
        "--train-limit",
        "500",
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]);
    assert_succeeds(&result);
    // The default JSON name says how the samples were drawn.
    let report = read_json(&dir.join("eval-ddim2-g1-n20.json"));
    assert_eq!(report["samples"]["n"], 20);
    assert!(report["samples"]["accuracy_as_asked"].is_number(), "a conditional model is asked for digits");
    assert_eq!(report["source"]["sampler"], "DDIM, 2 steps, eta 0, guidance 1");
}

#[test]
fn bad_inputs_are_refused_before_any_work() {
    let tmp = temp_dir("eval-bad");
    let dir = tmp.path();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (classifier, report) = (path("lenet.safetensors"), path("report.json"));
    // Every report goes to the temporary folder, even from a case that would
    // wrongly run: never beside the fixture.
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--data-dir", SHARED_MNIST, "--classifier", &classifier, "--device", "cpu"];
        args.extend(["--json", &report]);
        args.extend(extra);
        xtask(&args)
    };
    let good = path("good.npy");
    write_npy(Path::new(&good), &[2, 1, 28, 28], &vec![-1.0; 2 * 784]);

    // Neither source, both, or --labels without --samples: clap's errors (exit 2).
    for args in [&[][..], &["--samples", &good, "--checkpoint", FIXTURE], &["--checkpoint", FIXTURE, "--labels", &good]]
    {
        let result = eval(args);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {}", stderr(&result));
    }

    assert_fails_with(&eval(&["--samples", &path("missing.npy")]), "missing.npy");
    let wrong_shape = path("wrong-shape.npy");
    write_npy(Path::new(&wrong_shape), &[2, 1, 27, 28], &vec![0.0; 2 * 27 * 28]);
    assert_fails_with(&eval(&["--samples", &wrong_shape]), "[N, 1, 28, 28]");
    let bytes = path("bytes.npy");
    write_npy(Path::new(&bytes), &[2, 1, 28, 28], &vec![255.0; 2 * 784]);
    assert_fails_with(&eval(&["--samples", &bytes]), "must lie in [-1, 1]");
    let labels = path("labels.npy");
    write_npy(Path::new(&labels), &[3], &[1.0, 2.0, 3.0]);
    assert_fails_with(&eval(&["--samples", &good, "--labels", &labels]), "has 3 entries but --samples holds 2");
    write_npy(Path::new(&labels), &[2], &[1.0, 12.0]);
    assert_fails_with(&eval(&["--samples", &good, "--labels", &labels]), "entry 1 is 12");

    assert_fails_with(&eval(&["--checkpoint", &path("missing.safetensors")]), "missing.safetensors");
    assert_fails_with(&eval(&["--checkpoint", FIXTURE, "--steps", "0"]), "--steps");
    assert_fails_with(&eval(&["--checkpoint", FIXTURE, "--n", "1"]), "--n");
    assert_fails_with(&eval(&["--checkpoint", FIXTURE, "--eta=-1"]), "--eta");

    let nowhere = path("nowhere");
    let result = xtask(&["eval", "--samples", &good, "--data-dir", &nowhere, "--classifier", &classifier]);
    assert_fails_with(&result, "no mnist data found");
    assert_fails_with(&eval(&["--samples", &good, "--floor-n", "1"]), "--floor-n");
    let unwritable = path("no-such-folder/out.json");
    let result = xtask(&[
        "eval",
        "--samples",
        &good,
        "--data-dir",
        SHARED_MNIST,
        "--classifier",
        &classifier,
        "--json",
        &unwritable,
    ]);
    assert_fails_with(&result, "does not exist");

    // A file that is not the classifier's (here: a U-Net checkpoint) is refused by name.
    let result = xtask(&["eval", "--samples", &good, "--data-dir", SHARED_MNIST, "--classifier", FIXTURE]);
    assert_fails_with(&result, "not a classifier file");

    assert!(!Path::new(&classifier).exists(), "a refused run trained a classifier");
    assert!(!Path::new(&report).exists(), "a refused run wrote its report");
}
