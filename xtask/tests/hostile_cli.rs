//! Hostile input at the command line: absurd numbers, NaN in the inputs, a
//! checkpoint whose metadata lies, bytes meant for the terminal, data that
//! does not fit the model. Each is refused with one line that names the flag
//! or the file, before any work and without writing anything.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{assert_fails_with, stderr, temp_dir, write_npy, write_npy_bytes, xtask, FIXTURE, SHARED_MNIST};
use ddpm_autograd::Tensor;
use ddpm_nn::checkpoint::{load_tensors, save_tensors};

/// The fixture checkpoint rewritten into `path` after `edit` changed its
/// tensors or its metadata.
fn edited_checkpoint(path: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>, &mut HashMap<String, String>)) {
    let (tensors, mut meta) = load_tensors(Path::new(FIXTURE)).unwrap();
    let mut tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    edit(&mut tensors, &mut meta);
    save_tensors(path, &tensors, &meta).unwrap();
}

fn sample(dir: &Path, checkpoint: &str, extra: &[&str]) -> std::process::Output {
    let out = dir.join("grid.png");
    let mut args = vec!["sample", "--checkpoint", checkpoint, "--out", out.to_str().unwrap(), "--device", "cpu"];
    args.extend_from_slice(extra);
    xtask(&args)
}

/// Nothing but the inputs the test made is left in `dir`.
#[track_caller]
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want, "outputs were left behind");
}

#[test]
fn absurd_numbers_are_refused_with_their_limits() {
    let dir = temp_dir("absurd");
    let d = dir.path();
    for (flags, needle) in [
        (&["--n", "18446744073709551615"][..], "--n must be 1 ..= 100000"),
        (&["--n", "4294967296"], "--n must be 1 ..= 100000"),
        (&["--n", "1001", "--gif", "/tmp/never.gif"], "--n must be 1 ..= 1000"),
        (&["--eta", "1.5"], "--eta must be in [0, 1]"),
        (&["--eta", "NaN"], "--eta must be in [0, 1]"),
        (&["--guidance", "1e9"], "--guidance must be in [-1, 20]"),
        (&["--guidance", "inf"], "--guidance must be in [-1, 20]"),
        (&["--n", "100000", "--scale", "16"], "too large"),
        (&["--steps", "0"], "--steps must be 1 ..= 1000"),
    ] {
        let out = sample(d, FIXTURE, flags);
        assert_fails_with(&out, needle);
    }
    let run = d.join("run");
    let run = run.to_str().unwrap();
    for (flags, needle) in [
        (&["--minutes", "1e300"][..], "--minutes must be a number in (0, 525600]"),
        (&["--minutes=-1"], "--minutes must be"),
        (&["--grid", "1000000"], "--grid must be 1 ..= 1000"),
    ] {
        let mut args = vec!["train", "--data-dir", SHARED_MNIST, "--out", run];
        args.extend_from_slice(flags);
        assert_fails_with(&xtask(&args), needle);
    }
    // An empty --labels file: int64, shape (0,).
    let labels = d.join("labels.npy");
    write_npy_bytes(&labels, "<i8", &[0], &[]);
    assert_fails_with(&sample(d, FIXTURE, &["--labels", labels.to_str().unwrap()]), "--labels gives no images");
    std::fs::remove_file(&labels).unwrap();

    let out = xtask(&["eval", "--checkpoint", FIXTURE, "--n", "1000000", "--data-dir", SHARED_MNIST]);
    assert_fails_with(&out, "--n must be 2 ..= 100000");
    assert_only(d, &[]);
}

#[test]
fn nan_in_the_weights_or_in_x_t_is_refused_by_name() {
    let dir = temp_dir("nan");
    let d = dir.path();
    let poisoned = d.join("nan.safetensors");
    edited_checkpoint(&poisoned, |tensors, _| {
        let (_, t) = tensors.iter_mut().find(|(name, _)| name == "down.0.conv1.weight").unwrap();
        let mut values = t.as_slice().to_vec();
        values[3] = f32::NAN;
        values[7] = f32::INFINITY;
        *t = Tensor::from_vec(values, t.dims().to_vec()).unwrap();
    });
    let out = sample(d, poisoned.to_str().unwrap(), &[]);
    assert_fails_with(&out, "\"down.0.conv1.weight\" holds 2 non-finite values");

    let noise = d.join("x_T.npy");
    let mut values = vec![0.5f32; 2 * 784];
    values[900] = f32::NAN;
    write_npy(&noise, &[2, 1, 28, 28], &values);
    let out = sample(d, FIXTURE, &["--init-noise", noise.to_str().unwrap()]);
    assert_fails_with(&out, "1 values are NaN or infinite (the first at index 900)");
    assert_only(d, &["nan.safetensors", "x_T.npy"]);
}

#[test]
fn metadata_that_lies_is_refused_and_its_bytes_escaped() {
    let dir = temp_dir("meta");
    let d = dir.path();
    let long = d.join("long.safetensors");
    edited_checkpoint(&long, |_, meta| {
        meta.insert("timesteps".into(), "10000000".into());
    });
    assert_fails_with(&sample(d, long.to_str().unwrap(), &[]), "T must be 2 ..= 100000");

    // A missing entry is named once, however many layers pass the error on.
    let missing = d.join("missing.safetensors");
    edited_checkpoint(&missing, |_, meta| {
        meta.remove("preset");
    });
    let out = sample(d, missing.to_str().unwrap(), &[]);
    assert_fails_with(&out, "\"preset\" is missing");
    assert_eq!(stderr(&out).matches("is missing").count(), 1, "the cause once: {}", stderr(&out));

    // Bytes from the file cannot clear the screen or start a second line.
    let escape = d.join("escape.safetensors");
    edited_checkpoint(&escape, |_, meta| {
        meta.insert("schedule".into(), "lin\u{1b}[2J\nerror: forged".into());
    });
    let out = sample(d, escape.to_str().unwrap(), &[]);
    assert_fails_with(&out, "schedule");
    let err = stderr(&out);
    assert!(!err.contains('\u{1b}') && err.lines().count() == 1, "{err:?}");
}

#[test]
fn a_fifo_or_a_folder_as_checkpoint_is_refused_not_waited_on() {
    let dir = temp_dir("fifo");
    let fifo = dir.path().join("model.safetensors");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_fails_with(&sample(dir.path(), fifo.to_str().unwrap(), &[]), "a FIFO, not a regular file");
    assert_fails_with(&sample(dir.path(), dir.path().to_str().unwrap(), &[]), "a directory, not a regular file");
}

/// An uncompressed IDX file: the header's numbers, then the bytes.
fn write_idx(path: &Path, magic: u32, dims: &[u32], body: &[u8]) {
    let mut bytes = magic.to_be_bytes().to_vec();
    dims.iter().for_each(|d| bytes.extend(d.to_be_bytes()));
    bytes.extend(body);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn data_that_does_not_fit_the_models_is_refused() {
    let dir = temp_dir("idx");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // 256 images of 0x0 pixels: nothing to learn, and no 28x28 model takes them.
    write_idx(&data.join("train-images-idx3-ubyte"), 0x803, &[256, 0, 0], &[]);
    write_idx(&data.join("train-labels-idx1-ubyte"), 0x801, &[256], &[0; 256]);
    let run = dir.path().join("run");
    let args = ["train", "--data-dir", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--steps", "1"];
    assert_fails_with(&xtask(&args), "these models take 28x28");
    assert!(!run.exists(), "a refused run leaves no folder");

    // A test split with only zeros: the lecture's row of real digits needs two of each.
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"] {
        std::fs::copy(Path::new(SHARED_MNIST).join(name), data.join(name)).unwrap();
    }
    std::fs::remove_file(data.join("train-images-idx3-ubyte")).unwrap();
    std::fs::remove_file(data.join("train-labels-idx1-ubyte")).unwrap();
    write_idx(&data.join("t10k-images-idx3-ubyte"), 0x803, &[3, 28, 28], &[0; 3 * 784]);
    write_idx(&data.join("t10k-labels-idx1-ubyte"), 0x801, &[3], &[0; 3]);
    let pictures = dir.path().join("lecture");
    let args = [
        "lecture",
        "--checkpoint",
        FIXTURE,
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        pictures.to_str().unwrap(),
        "--draws",
        "2",
    ];
    assert_fails_with(&xtask(&args), "has 0 image(s) of digit 1");
}
