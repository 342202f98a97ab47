//! The command line as a user meets it: a short training run that is stopped
//! and resumed, sampling from it, and every kind of bad input named in the
//! design (missing or corrupt data, unknown presets, a checkpoint of the wrong
//! preset, zero steps, an output folder that cannot be written): a one-line
//! error, a non-zero exit, and nothing half-written.

use std::path::Path;
use std::process::Command;

mod common;
use common::{assert_fails_with, read_npy_f32, stderr, temp_dir, write_npy, xtask, FIXTURE, SHARED_MNIST};

fn step_lines(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

#[test]
fn train_resume_and_sample_end_to_end() {
    let tmp = temp_dir("e2e");
    let dir = tmp.path();
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--data-dir", SHARED_MNIST, "--out", out_s, "--batch", "8", "--grid", "4"];
        args.extend(["--device", "cpu", "--save-every", "1"]);
        args.extend(extra);
        xtask(&args)
    };

    let first = train(&["--steps", "2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    for file in ["model.safetensors", "state.safetensors", "log.jsonl", "samples.png", "loss.png"] {
        assert!(out.join(file).is_file(), "{file} was not written");
    }
    assert_eq!(step_lines(&out.join("log.jsonl")), [1, 2]);

    // A second fresh run into the same folder would overwrite it: refused.
    assert_fails_with(&train(&["--steps", "2"]), "--resume");
    // A resumed run must keep the run's settings.
    assert_fails_with(&train(&["--steps", "3", "--resume", "--lr", "0.5"]), "lr: 0.001 in the saved run, 0.5 now");
    assert_fails_with(&train(&["--steps", "3", "--resume", "--preset", "small"]), "preset: tiny");
    assert_fails_with(&train(&["--steps", "2", "--resume"]), "already has 2 steps");

    let resumed = train(&["--steps", "3", "--resume"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("resuming at step 2"), "{}", stderr(&resumed));
    assert_eq!(step_lines(&out.join("log.jsonl")), [1, 2, 3]);

    // Sampling: DDIM at eta 0 from a given x_T is deterministic.
    let model = out.join("model.safetensors");
    let noise = dir.join("noise.npy");
    let values: Vec<f32> = (0..3 * 784).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    write_npy(&noise, &[3, 1, 28, 28], &values);
    let sample = |name: &str, extra: &[&str]| {
        let png = dir.join(format!("{name}.png"));
        let npy = dir.join(format!("{name}.npy"));
        let mut args = vec!["sample", "--checkpoint", model.to_str().unwrap(), "--steps", "3", "--device", "cpu"];
        args.extend(["--out", png.to_str().unwrap(), "--npy", npy.to_str().unwrap()]);
        args.extend(extra);
        let result = xtask(&args);
        assert!(result.status.success(), "{}", stderr(&result));
        assert!(png.is_file());
        std::fs::read(npy).unwrap()
    };
    let noise_s = noise.to_str().unwrap();
    let a = sample("a", &["--init-noise", noise_s, "--digit", "7", "--gif", dir.join("a.gif").to_str().unwrap()]);
    let b =
        sample("b", &["--init-noise", noise_s, "--digit", "7", "--strip", dir.join("b-strip.png").to_str().unwrap()]);
    assert_eq!(a, b, "DDIM at eta 0 from the same x_T gave different samples");
    assert_eq!(a.len(), 128 + 3 * 784 * 4, "3 images of 28x28 float32 behind a 128-byte header");
    assert!(dir.join("a.gif").is_file() && dir.join("b-strip.png").is_file());
    let c = sample("c", &["--init-noise", noise_s, "--digit", "3"]);
    assert_ne!(a, c, "the label made no difference");
    let d = sample("d", &["--n", "2", "--seed", "5", "--sampler", "ddpm"]);
    assert_eq!(d.len(), 128 + 2 * 784 * 4);
}

#[test]
fn bad_data_is_a_one_line_error() {
    let tmp = temp_dir("data");
    let dir = tmp.path();
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let nowhere = dir.join("nowhere");
    let train = |data: &Path| xtask(&["train", "--data-dir", data.to_str().unwrap(), "--out", out_s, "--steps", "1"]);

    assert_fails_with(&train(&nowhere), "no mnist data found");
    assert_fails_with(&train(&nowhere), "cargo xtask data");

    // A truncated images file and a labels file in place of the images.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let images = std::fs::read(Path::new(SHARED_MNIST).join("train-images-idx3-ubyte.gz")).unwrap();
    let labels = std::fs::read(Path::new(SHARED_MNIST).join("train-labels-idx1-ubyte.gz")).unwrap();
    std::fs::write(broken.join("train-images-idx3-ubyte.gz"), &images[..images.len() / 2]).unwrap();
    std::fs::write(broken.join("train-labels-idx1-ubyte.gz"), &labels).unwrap();
    assert_fails_with(&train(&broken), "train-images-idx3-ubyte.gz");
    std::fs::write(broken.join("train-images-idx3-ubyte.gz"), &labels).unwrap();
    assert_fails_with(&train(&broken), "magic number");

    assert!(!out.exists(), "a failed run left {} behind", out.display());
}

#[test]
fn bad_flags_are_refused_before_any_work() {
    let tmp = temp_dir("flags");
    let dir = tmp.path();
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--data-dir", SHARED_MNIST, "--out", out_s];
        args.extend(extra);
        xtask(&args)
    };
    assert_fails_with(&train(&["--steps", "0"]), "--steps");
    assert_fails_with(&train(&["--minutes=-1"]), "--minutes");
    assert_fails_with(&train(&["--classes", "3"]), "--classes");
    assert_fails_with(&train(&["--batch", "0"]), "--batch");
    assert_fails_with(&train(&["--steps", "1", "--resume"]), "nothing to resume");
    assert_fails_with(&train(&["--device", "cuda"]), "cuda");
    // Unknown values and flags are clap's errors: non-zero, naming the value.
    for args in [&["--preset", "huge"][..], &["--steps", "-5"], &["--frobnicate"]] {
        let result = train(args);
        assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
        assert!(stderr(&result).contains(args[args.len() - 1]) || stderr(&result).contains(args[0]));
    }
    assert!(!out.exists(), "a refused run left {} behind", out.display());

    // An output folder that cannot be created (its parent is a file).
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let blocked = file.join("run");
    let result = xtask(&[
        "train",
        "--data-dir",
        SHARED_MNIST,
        "--out",
        blocked.to_str().unwrap(),
        "--steps",
        "1",
        "--batch",
        "4",
    ]);
    assert_fails_with(&result, "cannot create the output folder");
}

#[test]
fn bad_checkpoints_and_sampling_flags_are_refused() {
    let tmp = temp_dir("sample");
    let dir = tmp.path();
    let fixture = FIXTURE;
    let png = dir.join("out.png");
    let png_s = png.to_str().unwrap();
    let sample = |checkpoint: &str, extra: &[&str]| {
        // Every case is refused before sampling starts.
        let mut args = vec!["sample", "--checkpoint", checkpoint, "--out", png_s, "--n", "2"];
        args.extend(extra);
        xtask(&args)
    };

    assert_fails_with(&sample(dir.join("missing.safetensors").to_str().unwrap(), &[]), "missing.safetensors");
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint at all").unwrap();
    assert_fails_with(&sample(garbage.to_str().unwrap(), &[]), "garbage.safetensors");

    // The tiny checkpoint relabelled as `small`: the tensors do not fit.
    let bytes = std::fs::read(fixture).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    assert!(header.contains("\"preset\":\"tiny\""), "{header}");
    let header = header.replace("\"preset\":\"tiny\"", "\"preset\":\"small\"");
    let mut relabelled = (header.len() as u64).to_le_bytes().to_vec();
    relabelled.extend(header.as_bytes());
    relabelled.extend(&bytes[8 + header_len..]);
    let wrong = dir.join("wrong-preset.safetensors");
    std::fs::write(&wrong, relabelled).unwrap();
    assert_fails_with(&sample(wrong.to_str().unwrap(), &[]), "the model expects");

    assert_fails_with(&sample(fixture, &["--steps", "0"]), "--steps");
    assert_fails_with(&sample(fixture, &["--steps", "1001"]), "--steps");
    assert_fails_with(&sample(fixture, &["--digit", "12"]), "--digit");
    assert_fails_with(&sample(fixture, &["--eta=-1"]), "--eta");
    let noise = dir.join("noise.npy");
    write_npy(&noise, &[2, 1, 27, 28], &vec![0.0; 2 * 27 * 28]);
    assert_fails_with(&sample(fixture, &["--init-noise", noise.to_str().unwrap()]), "[N, 1, 28, 28]");
    write_npy(&noise, &[3, 1, 28, 28], &vec![0.0; 3 * 784]);
    assert_fails_with(&sample(fixture, &["--init-noise", noise.to_str().unwrap()]), "--n gives 2 images");
    let labels = dir.join("labels.npy");
    write_npy(&labels, &[2], &[1.0, 11.0]);
    assert_fails_with(&sample(fixture, &["--labels", labels.to_str().unwrap()]), "entry 1 is 11");
    let unwritable = dir.join("no-such-folder").join("grid.png");
    let result = xtask(&["sample", "--checkpoint", fixture, "--out", unwritable.to_str().unwrap(), "--steps", "1"]);
    assert_fails_with(&result, "does not exist");
    assert!(!png.exists(), "a refused run wrote {}", png.display());
}

#[test]
fn the_lecture_runs_its_sections() {
    let tmp = temp_dir("lecture");
    let dir = tmp.path();
    let out = dir.join("pictures");
    // Run from a folder without runs/: section 4 says how to get a model.
    let result = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["lecture", "--data-dir", SHARED_MNIST, "--out", out.to_str().unwrap(), "--draws", "40"])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{}", stderr(&result));
    for needle in
        ["1. Adding a little noise", "2. The chain collapses", "var(chain)", "4. Denoising", "cargo xtask train"]
    {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(out.join("noising.png").is_file());
    let missing = dir.join("nope.safetensors");
    assert_fails_with(&xtask(&["lecture", "--checkpoint", missing.to_str().unwrap()]), "no such file");
    assert_fails_with(&xtask(&["lecture", "--data-dir", SHARED_MNIST, "--draws", "1"]), "--draws");
}

/// `cargo xtask sample` is a thin layer over the library's pipeline: the
/// same checkpoint, settings and seed give the same images, to the bit,
/// through the CLI and through `ddpm::Pipeline` (with DDPM's noise, and
/// across two chunks, so that the chunks' Philox streams must agree too).
#[test]
fn the_cli_samples_what_the_library_samples() {
    use ddpm::sampler::Method;
    use ddpm::{Pipeline, Sampling};
    use ddpm_tensor::Device;

    let tmp = temp_dir("library");
    let npy = tmp.path().join("cli.npy");
    let png = tmp.path().join("cli.png");
    let schedule_steps = 1000;
    // DDIM with noise (eta 1) over 3 steps: fresh noise at every step but the last.
    let args = ["--sampler", "ddim", "--steps", "3", "--eta", "1", "--n", "103", "--seed", "5", "--device", "cpu"];
    let mut cli =
        vec!["sample", "--checkpoint", FIXTURE, "--npy", npy.to_str().unwrap(), "--out", png.to_str().unwrap()];
    cli.extend(args);
    let result = xtask(&cli);
    assert!(result.status.success(), "{}", stderr(&result));

    let pipeline = Pipeline::from_checkpoint(FIXTURE.as_ref(), Device::Cpu).unwrap();
    assert_eq!(pipeline.schedule().timesteps(), schedule_steps);
    let request = Sampling { method: Method::Ddim { steps: 3, eta: 1.0 }, seed: 5, ..pipeline.sampling(103) };
    let library = pipeline.sample(&request).unwrap().images;
    assert_eq!(read_npy_f32(&npy), library.to_vec(), "the CLI's samples are the library's");
}
